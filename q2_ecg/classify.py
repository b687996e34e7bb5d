"""Running a beat classifier: chunk layout, input gathering on the device, batched prediction,
and the label-free per-record adaptation of its output. Shared by training (the epoch monitor,
the run's prediction file) and q2_ecg.infer (the deployed model on other data)."""
from __future__ import annotations

import numpy as np
import torch
from scipy.special import softmax

from common.runtime import autocast
from q2_ecg.adapt import reconcile_by_cluster
from q2_ecg.beats import centred_windows


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
    """Model inputs for beats `idx` (B, L): waveforms (B, L, C, W) and every RR feature
    (B, L, len(RR_NAMES)). Channel 0 is the R-centred window; with `cfg.template` channel 1 is
    its record's median beat.
    """
    waves = centred_windows(dev, idx, shift)[..., None, :]
    if cfg.template:
        waves = torch.cat([waves, dev["template"][dev["record"][idx]][..., None, :]], dim=-2)
    return waves, dev["rr"][idx]


def chunk_plan(beats: np.ndarray, record: np.ndarray, length: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where each beat of `beats` (sorted global indices) is read from: chunks (C, length) of
    beat indices, and per beat its chunk (n,) and position in that chunk (n,).

    A context model sees each beat inside a chunk of L neighbours. Chunks start every L/2 beats
    of a record, and each beat takes its output from the chunk where it sits nearest the middle,
    so it has context on both sides wherever its record allows, at twice the cost of L = 1.
    """
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
    return chunk_indices(unique, length, last[unique]), inverse, pos


@torch.no_grad()
def predict(model: torch.nn.Module, dev: dict, beats: np.ndarray, record: np.ndarray,
            device: torch.device, batch_beats: int = 4096) -> np.ndarray:
    """Model output for each beat in `beats` (sorted global indices): (n, classes) logits.
    Chunk layout: `chunk_plan`."""
    return _run(model, model, dev, beats, record, device, batch_beats)[0]


@torch.no_grad()
def predict_embedded(model: torch.nn.Module, dev: dict, beats: np.ndarray, record: np.ndarray,
                     device: torch.device, batch_beats: int = 4096
                     ) -> tuple[np.ndarray, np.ndarray]:
    """A BeatClassifier's logits (n, classes) and beat embeddings (n, cfg.embed) float32 for
    `beats`, in one pass (the embedding is what the head reads, see BeatClassifier.embed)."""
    def both(windows, rr):
        tokens = model.embed(windows, rr)
        return model.head(tokens), tokens
    logits, tokens = _run(model, both, dev, beats, record, device, batch_beats)
    return logits, tokens.astype(np.float32)


def _run(model: torch.nn.Module, fn, dev: dict, beats: np.ndarray, record: np.ndarray,
         device: torch.device, batch_beats: int) -> list[np.ndarray]:
    """Apply `fn` (windows, rr) -> a (B, L, ...) tensor or a tuple of them to the chunks of
    `beats` (`model` sets the chunk length); -> one (n, ...) float32 array per output."""
    model.eval()
    length = model.cfg.context
    chunks, inverse, pos = chunk_plan(beats, record, length)
    step = max(1, batch_beats // length)
    outs = []
    for i in range(0, len(chunks), step):
        idx = torch.from_numpy(chunks[i:i + step]).to(device)
        with autocast(device):
            out = fn(*inputs(dev, idx, model.cfg))
        outs.append([o.float().cpu() for o in (out if isinstance(out, tuple) else (out,))])
    return [torch.cat(parts).numpy()[inverse, pos] for parts in zip(*outs)]


def predict_and_adapt(model: torch.nn.Module, dev: dict, beats: np.ndarray, table,
                      device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Logits (n, 3) for `beats` and the probabilities (n, 3) after label-free per-record
    cluster reconciliation (q2_ecg.adapt); `beats` should hold whole records.
    """
    logits, emb = predict_embedded(model, dev, beats, table.record, device)
    prob = softmax(logits.astype(np.float64), axis=1)
    return logits, reconcile_by_cluster(emb, table.rr[beats], prob, table.record[beats])
