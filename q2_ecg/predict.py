"""Feeding beats to a model: chunk layout, input gathering on the device, batched inference."""
from __future__ import annotations

import numpy as np
import torch

from common.runtime import autocast
from q2_ecg.beats import centred_windows, segment_windows


def record_bounds(record: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B,) record index per beat -> first and last beat index of each beat's record, (B,) each."""
    starts = np.flatnonzero(np.r_[True, record[1:] != record[:-1]])
    ends = np.r_[starts[1:], len(record)] - 1
    which = np.searchsorted(starts, np.arange(len(record)), side="right") - 1
    return starts[which], ends[which]


def chunk_indices(starts: np.ndarray, length: int, last: np.ndarray) -> np.ndarray:
    """(C,) chunk start beats -> (C, length) beat indices, never past each chunk's record end."""
    return np.minimum(starts[:, None] + np.arange(length), last[:, None])


def inputs(dev: dict, idx: torch.Tensor, cfg, shift: torch.Tensor | None = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Model inputs for beats `idx` (B, L): waveforms (B, L, C, W) and RR features (B, L, F).

    Channel 0 is the beat (R-centred window, or the ablation's segment); with `cfg.template`
    channel 1 is its record's median beat.
    """
    if cfg.rr_features == 0:
        waves = segment_windows(dev, idx, shift)[..., None, :]
    else:
        waves = centred_windows(dev, idx, shift)[..., None, :]
    if cfg.template:
        waves = torch.cat([waves, dev["template"][dev["record"][idx]][..., None, :]], dim=-2)
    return waves, dev["rr"][idx]


@torch.no_grad()
def predict(model: torch.nn.Module, dev: dict, beats: np.ndarray, record: np.ndarray,
            device: torch.device, batch_beats: int = 4096) -> np.ndarray:
    """Model output for each beat in `beats` (sorted global indices): (n, classes) logits, or
    (n,) anomaly scores for the autoencoder.

    A context model sees each beat inside a chunk of L neighbours. Chunks start every L/2 beats
    of a record, and each beat takes its output from the chunk where it sits nearest the middle,
    so it has context on both sides wherever its record allows, at twice the cost of L = 1.
    """
    model.eval()
    length = model.cfg.context
    first, last = record_bounds(record)
    if length == 1:
        starts, pos = beats, np.zeros(len(beats), np.int64)
    else:
        half = length // 2
        f, la = first[beats], last[beats]
        k = np.maximum((beats - f - length // 4) // half, 0)
        starts = np.maximum(np.minimum(f + k * half, la - length + 1), f)
        pos = beats - starts
    unique, inverse = np.unique(starts, return_inverse=True)
    chunks = chunk_indices(unique, length, last[unique])
    outs = []
    for i in range(0, len(chunks), max(1, batch_beats // length)):
        idx = torch.from_numpy(chunks[i:i + batch_beats // length]).to(device)
        with autocast(device):
            outs.append(model(*inputs(dev, idx, model.cfg)).float().cpu())
    out = torch.cat(outs).numpy()                        # (C, L, classes) or (C, L)
    return out[inverse, pos]
