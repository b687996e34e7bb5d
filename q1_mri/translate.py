"""Running a Q1 translator over slices: its input (2-D or 2.5-D), batched prediction, test-time
flips.

Shared by training (per-epoch monitor, the run's prediction file) and q1_mri.infer (the
deployed model on other data); evaluation never imports it.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from q1_mri.data import LR_FLIP_VIEWS, VIEWS

_FLIP_TABLES: dict[torch.device, torch.Tensor] = {}


def model_input(t1: torch.Tensor, neighbours: torch.Tensor | None, idx: torch.Tensor
                ) -> torch.Tensor:
    """(B, C, H, W) float32 input for slices `idx` (B,) of the set `t1` (N, 1, H, W).

    neighbours: (N, C) int64 rows of each slice's stack neighbours (q1_mri.neighbours), or None
    for the 2-D model (C = 1).
    """
    if neighbours is None:
        return t1[idx].float()
    return t1[neighbours[idx]][:, :, 0].float()            # (B, C, 1, H, W) -> (B, C, H, W)


def lr_flippable(view: torch.Tensor) -> torch.Tensor:
    """(B,) bool: whether a slice of this view index has a left-right axis (its rows). The
    lookup table is built once per device, so no host copy happens inside a training step."""
    table = _FLIP_TABLES.get(view.device)
    if table is None:
        table = torch.tensor([v in LR_FLIP_VIEWS for v in VIEWS], device=view.device)
        _FLIP_TABLES[view.device] = table
    return table[view]


@torch.no_grad()
def predict(model: torch.nn.Module, t1: torch.Tensor, neighbours: torch.Tensor | None,
            rows: np.ndarray, device: torch.device, flip: torch.Tensor | None = None,
            batch_size: int = 256, amp=contextlib.nullcontext) -> torch.Tensor:
    """(n, 1, H, W) float32 predicted T2 for slices `rows` of the set `t1` (N, 1, H, W).

    flip: (N,) bool; where true the input is mirrored left-right (rows, axis -2) and the
    prediction mirrored back. amp: the forward pass's precision context (common.runtime).
    """
    model.eval()
    out = []
    rows = torch.as_tensor(rows, dtype=torch.int64)
    for start in range(0, len(rows), batch_size):
        idx = rows[start:start + batch_size].to(t1.device)
        x = model_input(t1, neighbours, idx)
        mirror = flip[idx][:, None, None, None] if flip is not None else None
        if mirror is not None:
            x = torch.where(mirror, x.flip(-2), x)
        with amp():
            y = model(x.to(device)).float()
        if mirror is not None:
            y = torch.where(mirror.to(device), y.flip(-2), y)
        out.append(y)
    return torch.cat(out) if out else torch.zeros(0, 1, *t1.shape[-2:], device=device)


def predict_with_flip(model: torch.nn.Module, data: dict, neighbours: torch.Tensor | None,
                      rows: np.ndarray, device: torch.device, amp=contextlib.nullcontext
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(plain, flip-averaged) predictions for `rows` of a to_device() dict, each (n, 1, H, W).

    The flip-averaged one is the mean of the plain prediction and the mirrored prediction of
    the left-right mirrored slice, on axial and coronal slices; sagittal ones stay plain.
    """
    flippable = lr_flippable(data["view"])
    plain = predict(model, data["t1"], neighbours, rows, device, amp=amp)
    mirrored = predict(model, data["t1"], neighbours, rows, device, flip=flippable, amp=amp)
    use = flippable[torch.as_tensor(rows, dtype=torch.int64)].to(device)[:, None, None, None]
    return plain, torch.where(use, (plain + mirrored) / 2, plain)
