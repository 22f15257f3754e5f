"""What a benchmark ran on: the device and its software, the CPU's model, the device's matmul peak; and where
benchmarks find their data and leave their results.

Shared by every benchmark here, so each result names its machine the same way.
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it is used: benchmarks.scale forks 64 workers without it
    import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.xz"  # the workplace's JPEG copy of CIFAR-10
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"


def default_data() -> str:
    """The shared JPEG copy of CIFAR-10 when it is there, else the official set (downloaded)."""
    return str(SHARED_DATA) if SHARED_DATA.exists() else "cifar10"


# Peak: one square matmul timed repeatedly; the best repetition is the peak (the 8192^3 bf16 on CUDA).
CUDA_PEAK_SIZE = 8192  # issue; 1.1 TFLOP per matmul: ~1-2 ms at an H100's bf16 rate (spec, not measured here)
CPU_PEAK_SIZE = 2048  # 17 GFLOP per fp32 matmul: 0.1-0.3 s on 2 cores here (measured), so ~3 s for the peak
CUDA_PEAK_REPS, CPU_PEAK_REPS = 20, 10  # best-of: on a shared CPU, more tries catch a quiet moment
PEAK_WARMUP = 2  # untimed matmuls first: cuBLAS handle and kernel selection, CPU thread pool start-up


def measure_peak(device: torch.device, *, size: int | None = None, reps: int | None = None) -> dict[str, Any]:
    """The device's matmul peak in TFLOP/s: bf16 on CUDA (CUDA events), fp32 on the CPU (perf_counter).

    Each repetition is one ``size``^3 matmul (2 * size^3 FLOP) after PEAK_WARMUP untimed ones; the best repetition
    is the peak, the median is kept too. On CUDA each repetition's time is the GPU time between two events
    recorded around the one matmul, read after synchronizing on the end event: kernel time plus launch gaps.
    """
    import torch

    cuda = device.type == "cuda"
    size = size or (CUDA_PEAK_SIZE if cuda else CPU_PEAK_SIZE)
    reps = reps or (CUDA_PEAK_REPS if cuda else CPU_PEAK_REPS)
    dtype = torch.bfloat16 if cuda else torch.float32
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=gen)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=gen)
    for _ in range(PEAK_WARMUP):
        a @ b
    seconds = []
    if cuda:
        torch.cuda.synchronize(device)
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            a @ b
            end.record()
            end.synchronize()
            seconds.append(start.elapsed_time(end) / 1000.0)  # elapsed_time: milliseconds
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            a @ b
            seconds.append(time.perf_counter() - t0)
    flop = 2.0 * size**3
    return {
        "tflops": flop / min(seconds) / 1e12,
        "median_tflops": flop / statistics.median(seconds) / 1e12,
        "dtype": str(dtype).removeprefix("torch."),
        "size": size,
        "reps": reps,
        "method": f"{'bf16' if cuda else 'fp32'} matmul {size}^3, best of {reps} "
        + ("(CUDA events)" if cuda else "(perf_counter)"),
    }


def device_info(device: torch.device) -> dict[str, Any]:
    import torch

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu {cpu_model()}".strip()
    return {
        "type": device.type,
        "name": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_precision": torch.get_float32_matmul_precision(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48] or "device"
