"""Small helpers for `make bench`: timing training steps and reading peak memory."""
from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def items_per_second(step: Callable[[], int], device: torch.device, steps: int,
                     warmup: int = 3) -> float:
    """Run `step()` (which returns the number of items it processed) and return items/s.

    The first `warmup` calls (allocator, autotuning, compilation) are not timed.
    """
    for _ in range(warmup):
        step()
    sync(device)
    start, items = time.perf_counter(), 0
    for _ in range(steps):
        items += step()
    sync(device)
    return items / (time.perf_counter() - start)


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    """Peak resident memory of this process, and peak GPU memory allocated on CUDA (MiB)."""
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"peak_rss_mb": rss_kb / 1024 if sys.platform != "darwin" else rss_kb / 2**20}
    if device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out
