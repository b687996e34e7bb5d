"""Part 2.B's representation: a fixed window centred on each R peak plus rhythm features.

A split_by_beat segment ends at its own R peak, so it misses the beat's QRS complex, and its
length mixes the rhythm into the shape. Instead every beat gets
  * a WINDOW-sample window (1 s each side of the R peak) of its record's amplitude-scaled signal,
    gathered on the device from one padded signal tensor, and
  * eight RR features: previous and next RR, the local rhythm (median of 9 RR intervals) and
    the long-term sinus rhythm (80th percentile of 129 intervals, ~1.5 min) in seconds, and
    logs of their ratios. SVEB is above all a timing abnormality (a premature beat with normal
    QRS), which the ratios to the running rhythm capture whatever the patient's heart rate.
    The slow long-term percentile still sees runs of SVEBs (supraventricular tachycardia) as
    fast, even in records that spend most of their time in them, where medians adapt.
  * the record's template: the median window over all of the record's beats. Fed beside the
    beat as a second channel, it lets the network judge a beat against the patient's own
    dominant beat (a bundle-branch-block patient's normal beats are wide too). It uses no labels,
    so it is equally available for a new patient's record.
The zero-padded segment is kept as an ablation (`segment_windows`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from scipy.ndimage import median_filter, percentile_filter

from q2_ecg.data import SAMPLING_RATE, UNKNOWN, ECGRecords, inside_signal, keep_by_length, segment_lengths

HALF_WINDOW = 128                 # samples each side of the R peak (1 s at 128 Hz)
WINDOW = 2 * HALF_WINDOW
SEGMENT = 256                     # zero-padded length of the ablation's split_by_beat segment
LOCAL_RR_BEATS = 9                # running medians over this many RR intervals
LONG_RR_BEATS = 129
RR_NAMES = ("rr_prev_s", "rr_next_s", "rr_local_s", "rr_long_s", "log_prev_local",
            "log_next_local", "log_next_prev", "log_prev_long")


@dataclass
class BeatTable:
    """One row per annotation of every record (B rows), in record order."""
    record: np.ndarray      # (B,) int64 record index
    label: np.ndarray       # (B,) int64 0..3
    scored: np.ndarray      # (B,) bool: 32..256-sample segment, label 0-2, R peak inside signal
    rr: np.ndarray          # (B, 8) float32, see RR_NAMES
    centre: np.ndarray      # (B,) int64 index of the R peak in `signal`
    prev: np.ndarray        # (B,) int64 index of the previous annotation (segment start)
    seg_len: np.ndarray     # (B,) int64 split_by_beat segment length
    signal: np.ndarray      # (S',) float32 amplitude-scaled signals, zero gaps between records
    template: np.ndarray    # (R, WINDOW) float32 median beat window of each record


def amplitude_scale(signal: np.ndarray, locs: np.ndarray) -> float:
    """A record's typical R amplitude: median |x| at its beats after removing the median level.

    Dividing by it puts every record's QRS near 1 whatever the lead gain or electrode contact.
    """
    values = np.abs(signal[locs] - np.median(signal))
    return float(max(np.median(values), 1e-3))


def rr_features(locs: np.ndarray) -> np.ndarray:
    """(m,) R-peak sample indices of one record -> (m, 8) RR features (RR_NAMES).

    The first beat has no previous RR and the last no next one: they borrow their neighbour.
    Intervals are clipped to 0.1..3 s so annotation glitches cannot produce extreme values.
    """
    rr = np.diff(locs) / SAMPLING_RATE
    if len(rr) == 0:
        rr = np.array([1.0])
    prev = np.clip(np.concatenate([rr[:1], rr]), 0.1, 3.0)
    nxt = np.clip(np.concatenate([rr, rr[-1:]]), 0.1, 3.0)
    local = median_filter(prev, size=LOCAL_RR_BEATS, mode="nearest")
    long = percentile_filter(prev, 80, size=LONG_RR_BEATS, mode="nearest")
    return np.stack([prev, nxt, local, long, np.log(prev / local), np.log(nxt / local),
                     np.log(nxt / prev), np.log(prev / long)], axis=1).astype(np.float32)


def build_table(records: ECGRecords) -> BeatTable:
    """Scale every record, lay the signals out with HALF_WINDOW zeros around each, and compute
    every beat's window position, segment and RR features."""
    pieces, rr, centre, prev, templates = [np.zeros(HALF_WINDOW, np.float32)], [], [], [], []
    start = HALF_WINDOW
    for r in range(len(records)):
        signal, locs, _ = records.record(r)
        inside = locs[locs < len(signal)]
        scaled = (signal - np.median(signal)) / amplitude_scale(signal, inside)
        pieces += [scaled, np.zeros(HALF_WINDOW, np.float32)]
        templates.append(record_template(scaled, inside))
        rr.append(rr_features(locs))
        centre.append(start + np.minimum(locs, len(signal) - 1))
        prev.append(start + np.concatenate([[0], np.minimum(locs[:-1], len(signal) - 1)]))
        start += len(signal) + HALF_WINDOW
    seg_len = segment_lengths(records)
    scored = keep_by_length(seg_len) & (records.beat_labels != UNKNOWN) & inside_signal(records)
    return BeatTable(record=records.beat_record, label=records.beat_labels, scored=scored,
                     rr=np.concatenate(rr), centre=np.concatenate(centre),
                     prev=np.concatenate(prev), seg_len=seg_len, signal=np.concatenate(pieces),
                     template=np.stack(templates))


def record_template(scaled: np.ndarray, locs: np.ndarray, max_beats: int = 2000) -> np.ndarray:
    """(WINDOW,) median of the record's R-centred windows (at most `max_beats`, evenly spaced)."""
    padded = np.pad(scaled, HALF_WINDOW)
    windows = sliding_window_view(padded, WINDOW)[locs[:: max(1, len(locs) // max_beats)]]
    return np.median(windows, axis=0).astype(np.float32)


def table_to_device(table: BeatTable, device) -> dict[str, torch.Tensor]:
    """The beat table as device tensors (the whole set stays there during training)."""
    t = lambda a, dtype=None: torch.as_tensor(a, dtype=dtype).to(device)  # noqa: E731
    return {"signal": t(table.signal, torch.float32), "centre": t(table.centre),
            "prev": t(table.prev), "seg_len": t(table.seg_len), "rr": t(table.rr),
            "label": t(table.label), "scored": t(table.scored), "record": t(table.record),
            "template": t(table.template, torch.float32)}


def centred_windows(dev: dict, idx: torch.Tensor, shift: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """Windows around the R peaks of beats `idx` (any shape) -> (*idx.shape, WINDOW) float32.

    `shift` (same shape as idx) moves each window by a few samples (training augmentation).
    """
    offsets = torch.arange(-HALF_WINDOW, HALF_WINDOW, device=idx.device)
    centre = dev["centre"][idx] if shift is None else dev["centre"][idx] + shift
    return dev["signal"][centre[..., None] + offsets]


def segment_windows(dev: dict, idx: torch.Tensor, shift: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """The ablation: each beat's split_by_beat segment, zero-padded at the end to SEGMENT."""
    positions = torch.arange(SEGMENT, device=idx.device)
    values = dev["signal"][(dev["prev"][idx][..., None] + positions).clamp_max(
        len(dev["signal"]) - 1)]
    return values * (positions < dev["seg_len"][idx][..., None])
