"""Benchmarks: scripts that time the trainer against the notebook-style baseline (``python -m benchmarks.bench``).

Not part of the installed ``sweeper`` package: run them from the repository root.

The public names are re-exported lazily (PEP 562 ``__getattr__``): importing this package must not import torch,
because ``benchmarks.bench`` starts its whole-process clock at its own import, before torch's (about 1-3 s).
"""

from __future__ import annotations

from typing import Any

__all__ = ["BaselineResult", "main", "run_baseline"]


def __getattr__(name: str) -> Any:
    if name in ("BaselineResult", "run_baseline"):
        from benchmarks import baseline

        return getattr(baseline, name)
    if name == "main":
        from benchmarks import bench

        return bench.main
    raise AttributeError(f"module 'benchmarks' has no attribute {name!r}")
