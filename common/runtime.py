"""Device, numeric precision and seeding: the few decisions every training script makes first."""
from __future__ import annotations

import contextlib
import math
import os
import random
import sys
from collections.abc import Callable

import numpy as np
import torch


class ResourceError(RuntimeError):
    """This machine lacks the memory a run needs; the message says what to lower."""


def select_device(requested: str = "auto") -> torch.device:
    """Return the torch device to run on.

    `requested` is "auto" (CUDA if available, else CPU), "cuda", "cuda:N", "mps" or "cpu" (the
    flag's type, common.cli.device, refuses anything else). Asking for CUDA or MPS on a machine
    without it prints one notice and falls back to the CPU rather than failing.
    """
    if requested == "cpu":
        return torch.device("cpu")
    if requested == "mps":
        if torch.backends.mps.is_available():
            return torch.device("mps")
        print("notice: no MPS device found, running on the CPU (slow, but it works)", file=sys.stderr)
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda" if requested == "auto" else requested)
    print("notice: no CUDA device found, running on the CPU (slow, but it works)", file=sys.stderr)
    return torch.device("cpu")


def device_type(requested: str = "auto") -> str:
    """"cuda" or "cpu": the kind of device select_device(requested) returns (without its notice),
    so that command-line defaults can be resolved per device while the flags are parsed. MPS
    counts as "cpu": it gets the CPU's defaults (batch size, no compilation)."""
    return "cuda" if requested not in ("cpu", "mps") and torch.cuda.is_available() else "cpu"


def free_memory(device: torch.device) -> int | None:
    """Bytes of `device` memory free now: CUDA from the driver, the CPU from /proc/meminfo's
    MemAvailable (what can be allocated without swapping); None where unknown (MPS, no /proc)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    return kib * 1024


def check_memory(needed_bytes: int, device: torch.device, what: str) -> None:
    """Refuse, in one line, to start `what` when its estimated footprint `needed_bytes` exceeds
    the free memory of `device`, before it fails minutes later with an out-of-memory traceback
    (CUDA) or drives the machine into swapping (CPU). Does nothing where the free memory is
    unknown."""
    free = free_memory(device)
    if free is not None and needed_bytes > free:
        raise ResourceError(f"{what} needs about {needed_bytes / 1e9:.1f} GB of {device} memory, "
                            f"this machine has {free / 1e9:.1f} GB free: lower --batch-size or the "
                            "model width, or stop other jobs using it")


def device_batch(batch: int | str, lr: float | str, kind: str, cpu_batch: int, cuda_batch: int,
                 base_lr: float) -> tuple[int, float]:
    """(batch size, peak learning rate) of a run on a device of `kind` ("cpu" | "cuda").

    batch "auto": the device's default, cpu_batch on the CPU and cuda_batch on CUDA (a GPU is
    idle at the CPU's small batches). lr "auto": base_lr, the rate tuned at cpu_batch, scaled
    by sqrt(batch / cpu_batch) when the batch was left to the device (square-root scaling,
    which keeps the variance of an Adam update about constant; linear scaling overshoots at
    8x). An explicit batch keeps base_lr. On the CPU both resolve to the values CPU runs have
    always used, so their saved configs and --resume identity do not change.
    """
    chosen = batch == "auto"
    if chosen:
        batch = cuda_batch if kind == "cuda" else cpu_batch
    if lr == "auto":
        lr = base_lr * math.sqrt(batch / cpu_batch) if chosen and batch != cpu_batch else base_lr
    return batch, lr


def compile_enabled(flag: str, kind: str) -> bool:
    """--compile auto|on|off on a device of `kind` -> whether to torch.compile the model.

    auto = on for CUDA only: there it fuses the small kernels the launch overhead is made of;
    on the CPU compilation takes minutes and CPU runs have always trained eagerly.
    """
    return flag == "on" or (flag == "auto" and kind == "cuda")


def adamw(params, device: torch.device, **kwargs) -> torch.optim.AdamW:
    """AdamW, fused into a few kernels per step on CUDA. On the CPU the default implementation
    that CPU runs have always used (fused=None)."""
    return torch.optim.AdamW(params, fused=True if device.type == "cuda" else None, **kwargs)


def cpu_has_amx_bf16() -> bool:
    """Whether this CPU has AMX-BF16 tile units (Linux /proc/cpuinfo flag amx_bf16)."""
    try:
        with open("/proc/cpuinfo") as f:
            return any("amx_bf16" in line for line in f if line.startswith("flags"))
    except OSError:
        return False


def autocast_dtype(device: torch.device, cpu_bf16: bool = False) -> torch.dtype | None:
    """Mixed-precision dtype for `device`, or None for plain fp32.

    CUDA: bf16 where supported (no loss scaling needed), else fp16. CPU: fp32, unless
    `cpu_bf16` and the CPU has AMX-BF16 units: there bf16 autocast trains the Q1 U-Nets 1.4x
    (width 16) to 2.7x (the plain U-Net, width 32) faster than fp32 (one core of a 2-core
    Xeon, BatchNorm models, measured); without AMX it is emulated and slower.
    """
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_bf16 and cpu_has_amx_bf16() else None


def autocast(device: torch.device, cpu_bf16: bool = False):
    """Context manager running the forward pass in `autocast_dtype(device)` (no-op for fp32)."""
    dtype = autocast_dtype(device, cpu_bf16)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def precision(device: torch.device, enabled: bool = True, cpu_bf16: bool = False
              ) -> tuple[Callable, str]:
    """(context-manager factory for the forward pass, its name) for `device`.

    With `enabled` False, or where autocast does not pay off, plain fp32.
    """
    dtype = autocast_dtype(device, cpu_bf16) if enabled else None
    if dtype is None:
        return contextlib.nullcontext, "fp32"
    return (lambda: autocast(device, cpu_bf16)), str(dtype).removeprefix("torch.")


def grad_scaler(device: torch.device) -> torch.amp.GradScaler:
    """Loss scaler: active only for fp16, where small gradients would underflow; bf16 and fp32 need none."""
    return torch.amp.GradScaler(device.type, enabled=autocast_dtype(device) == torch.float16)


def optimiser_step(loss: torch.Tensor, model: torch.nn.Module, opt: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler, ema, max_norm: float = 1.0) -> None:
    """Backward `loss`, clip the unscaled gradient norm to `max_norm`, step the optimiser through
    the loss scaler (a no-op scale outside fp16) and update the EMA of the weights."""
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    scaler.step(opt)
    scaler.update()
    ema.update(model)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, numpy and torch; return a dedicated torch generator for batch order and augmentation.

    Training draws all of its randomness from the returned generator, whose state goes into the
    checkpoint, so a resumed run continues the same random stream as an uninterrupted one.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    return torch.Generator().manual_seed(seed)


def configure_threads() -> None:
    """Use every core the process may run on (torch sometimes picks fewer inside containers),
    or OMP_NUM_THREADS where it is set: on a machine shared with other jobs, more threads than
    free cores make every step wait for the slowest thread (10x slower seen on 2 busy cores)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or n))


def device_generator(device: torch.device, seed: int) -> torch.Generator:
    """A generator on `device`, so augmentation noise is drawn where it is used (no host copy)."""
    return torch.Generator(device=device).manual_seed(seed + 1)


def rng_state(gen: torch.Generator, device_gen: torch.Generator | None = None) -> dict:
    """Everything random a training step may draw from: the training generator, the optional
    device generator, the global torch generator (dropout) and the CUDA generators. Goes into
    the checkpoint."""
    state = {"gen": gen.get_state(), "torch": torch.get_rng_state()}
    if device_gen is not None:
        state["device_gen"] = device_gen.get_state()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(gen: torch.Generator, state: dict,
                  device_gen: torch.Generator | None = None) -> None:
    gen.set_state(state["gen"])
    torch.set_rng_state(state["torch"])
    if device_gen is not None and "device_gen" in state:  # older checkpoints of CUDA runs lack it
        device_gen.set_state(state["device_gen"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
