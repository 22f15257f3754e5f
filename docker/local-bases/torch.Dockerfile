# Stand-in for pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime where no image registry can be reached:
# the python stand-in with torch and torchvision from PyPI (the CUDA builds, which also run on the CPU;
# the stack's CPU override runs the workers without a GPU). Built by scripts/local-bases.sh.
ARG PYTHON_BASE=sweeper-local/python:bookworm
FROM ${PYTHON_BASE}
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
    && python -c "import torch, torchvision; print(torch.__version__, torchvision.__version__)"
