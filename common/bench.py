"""Helpers for `make bench`: throughput, peak memory, FLOPs and the device's peak FLOP/s.

Both benches time their training script's own step through `measure` and print its result
with `row`; each model runs in its own process (`isolated`), so the peak memory is its own.
FLOPs are those of torch's FLOP counter (matrix products and convolutions, forward and
backward; element-wise work, normalisation and the optimiser are not counted), so the
fraction of the peak is a model-FLOPs utilisation, the figure nanoGPT logs as MFU.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

# bf16 dense tensor-core peaks (TFLOP/s, without 2:4 sparsity) from NVIDIA's datasheets, keyed
# by a word of torch.cuda.get_device_name(); the longest matching key wins ("H100 PCIe" over
# "H100"), and a key matches whole words only ("A10" is not the A100 or the A10G)
GPU_BF16_TFLOPS = {
    "H200": 989, "GH200": 989, "H100": 989,        # SXM (the H100 SXM reports "H100 80GB HBM3")
    "H100 PCIe": 756, "H100 NVL": 835,
    "A100": 312, "L40S": 362, "L4": 121, "A10": 125,
}
AVX512_FMA_UNITS = 2      # per core, assumed (Xeon Gold/Platinum; some Silver/Bronze have 1)
AVX512_FP32_LANES = 16


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


def count_flops(fn: Callable[[], object]) -> tuple[int, object]:
    """(FLOPs that torch's FlopCounterMode counts while `fn()` runs, what fn returned).

    A multiply-add counts 2; nn.Linear(8, 4) on a batch of 2 costs 2*2*8*4 = 128 forward and
    twice that backward (input and weight gradients; only the weight's where the input needs
    no gradient). Run it on an eager model: the counter does not see inside compiled graphs.
    """
    with FlopCounterMode(display=False) as counter:
        out = fn()
    return counter.get_total_flops(), out


def gpu_peak_tflops(name: str) -> float | None:
    """bf16 dense peak (TFLOP/s) of the GPU called `name` in GPU_BF16_TFLOPS, or None."""
    for key in sorted(GPU_BF16_TFLOPS, key=len, reverse=True):
        if re.search(rf"(?<![A-Za-z0-9]){re.escape(key)}(?![A-Za-z0-9])", name, re.IGNORECASE):
            return GPU_BF16_TFLOPS[key]
    return None


def cpu_peak(cores: int, cpuinfo: str) -> tuple[float | None, str]:
    """(fp32 peak FLOP/s estimate, how it was found) of `cores` cores of the CPU that the
    text of /proc/cpuinfo describes: cores x FMA units x 16 fp32 lanes x 2 x clock, where
    the flags show AVX-512; (None, why not) otherwise. An upper bound: AVX-512 code runs
    below the nominal clock."""
    flags = re.search(r"^flags\s*:(.*)$", cpuinfo, re.MULTILINE)
    mhz = re.search(r"^cpu MHz\s*:\s*([0-9.]+)", cpuinfo, re.MULTILINE)
    if not flags or "avx512f" not in flags.group(1).split():
        return None, "n/a (no AVX-512 in /proc/cpuinfo: no estimate)"
    if not mhz:
        return None, "n/a (no clock in /proc/cpuinfo)"
    ghz = float(mhz.group(1)) / 1000
    peak = cores * AVX512_FMA_UNITS * AVX512_FP32_LANES * 2 * ghz * 1e9
    return peak, (f"fp32 peak estimate {peak / 1e12:.2f} TFLOP/s = {cores} core(s) x "
                  f"{AVX512_FMA_UNITS} FMA units x {AVX512_FP32_LANES} lanes x 2 x {ghz:.2f} GHz "
                  f"(AVX-512; {AVX512_FMA_UNITS} FMA units per core assumed)")


def device_peak(device: torch.device) -> tuple[float | None, str]:
    """(peak FLOP/s, its description) of `device`: the bf16 dense table value on CUDA, the
    fp32 estimate of the cores torch uses on the CPU; None where unknown."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        tflops = gpu_peak_tflops(name)
        if tflops is None:
            return None, f"n/a ({name} is not in common.bench.GPU_BF16_TFLOPS)"
        return tflops * 1e12, f"bf16 dense peak {tflops} TFLOP/s of the {name} (datasheet)"
    if device.type != "cpu":
        return None, f"n/a ({device.type})"
    cores = min(torch.get_num_threads(), os.cpu_count() or 1)
    try:
        with open("/proc/cpuinfo") as f:
            return cpu_peak(cores, f.read())
    except OSError:
        return None, "n/a (no /proc/cpuinfo)"


@contextlib.contextmanager
def eager(r):
    """Run the training step of a run `r` (a train.setup(): its `step_model`) with the eager
    model."""
    compiled, r.step_model = r.step_model, r.model
    try:
        yield
    finally:
        r.step_model = compiled


def measure(r, step: Callable[[], int], steps: int) -> dict:
    """Throughput, peak memory and FLOPs of `step()`, one training step of the run `r` (what a
    train.setup() returns) that returns the number of items (slices, beats) it trained on.

    One step is counted on the eager model, then `steps` steps are timed after a warm-up
    (longer when compiled: the first calls compile).
    """
    if r.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(r.device)
    with eager(r):
        flops, items = count_flops(step)
    compiled = r.step_model is not r.model
    rate = items_per_second(step, r.device, steps, warmup=5 if compiled else 2)
    peak, peak_text = device_peak(r.device)
    if r.device.type == "cpu" and r.precision != "fp32":     # AMX/bf16 units: no fp32 yardstick
        peak, peak_text = None, f"n/a ({r.precision} on the CPU; the CPU estimate is for fp32)"
    achieved = flops / items * rate
    return {"items_per_s": rate, "flops_per_item": flops / items, "flop_s": achieved,
            "peak_flop_s": peak, "peak": peak_text, "mfu": achieved / peak if peak else None,
            "batch": items, "compile": compiled, "precision": r.precision,
            **peak_memory_mb(r.device)}


def row(label: str, unit: str, m: dict) -> str:
    """One printed line of a `measure` result; `unit` is the item ("slice", "beat")."""
    gpu = f", GPU {m['peak_gpu_mb']:.0f} MiB" if "peak_gpu_mb" in m else ""
    mfu = f"{100 * m['mfu']:.2f}% of peak" if m["mfu"] is not None else "peak n/a"
    return (f"  {label:<22} {m['items_per_s']:9.1f} {unit}s/s  peak RSS {m['peak_rss_mb']:.0f} "
            f"MiB{gpu}  {m['flops_per_item'] / 1e9:.3f} GFLOP/{unit}  "
            f"{m['flop_s'] / 1e12:.3f} TFLOP/s  {mfu}  (batch {m['batch']}, {m['precision']}, "
            f"{'compiled' if m['compile'] else 'eager'})")


def isolated(module: str, argv: list[str]) -> dict:
    """Run `python -m module *argv` in its own process (its own peak memory and compile
    caches) and return the JSON object its last output line holds; exit with its error."""
    done = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True)
    if done.returncode:
        lines = done.stderr.strip().splitlines() or [f"{module} failed ({done.returncode})"]
        sys.exit(lines[-1])
    return json.loads(done.stdout.strip().splitlines()[-1])
