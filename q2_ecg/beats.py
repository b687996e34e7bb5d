"""Part 2.B's representation: a fixed window centred on each R peak plus rhythm features.

A split_by_beat segment ends at its own R peak, so it misses the beat's QRS complex, and its
length mixes the rhythm into the shape. Instead every beat gets
  * a WINDOW-sample window (1 s each side of the R peak) of its record's amplitude-scaled signal,
    gathered on the device from one padded signal tensor, and
  * RR features (RR_NAMES, `rr_features`). SVEB is above all a timing abnormality (a premature
    beat with normal QRS), so each beat's RR intervals are judged against the patient's SINUS
    rhythm, estimated as the 90th percentile of the surrounding 129 intervals (~1.5 min): sinus
    is the slowest regular rhythm, so a high percentile still finds it in a record whose
    dominant rhythm is atrial premature beats (runs of them between sinus pauses), where any
    running median adapts to the ectopic rate and makes the sinus beats look late. Beside the
    prematurity, the features give the pause after the beat (a compensatory pause), the two
    intervals either side (runs of ectopic beats), the local rate, the spread of the record's
    rhythm, the median of the REGULAR intervals (an ectopic run is regular too), and the local
    irregularity that marks atrial fibrillation, where a short interval is normal.
  * the record's template: the median window over all of the record's beats. Fed beside the
    beat as a second channel, it lets the network judge a beat against the patient's own
    dominant beat (a bundle-branch-block patient's normal beats are wide too). It uses no labels,
    so it is equally available for a new patient's record.
The RR features come in sets (RR_SETS), and a model's config names the set it reads: "sinus"
(intervals against the sinus estimate above), "record" (the inter-patient literature's features
that transfer across databases: the intervals before and after the beat and the local rhythm,
each divided by the record's own average RR; de Chazal et al. 2004, Lin & Yang 2014,
Mondejar-Guerra et al. 2019) and "all" (both).
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
LOCAL_RR_BEATS = 9                # running medians over this many RR intervals
LONG_RR_BEATS = 129               # ~1.5 min: the window of the sinus-rhythm estimates
SINUS_PERCENTILE = 90             # of the long window's intervals: the sinus RR
REGULAR_STEP = 0.1                # |log(rr_i / rr_(i-1))| below this: a regular interval
IRREGULAR_BEATS = (9, 15)         # running medians of |log(rr_i / rr_(i-1))|
MIN_RR_S, MAX_RR_S = 0.1, 3.0     # intervals are clipped to this range (annotation glitches)
RR_NAMES = ("rr_prev_s", "rr_next_s", "rr_sinus_s", "log_prev_sinus", "log_next_sinus",
            "log_prev2_sinus", "log_next2_sinus", "log_prev_local", "log_next_prev",
            "log_local_sinus", "log_median_sinus", "log_regular_sinus", "log_prev_regular",
            "irregularity_9", "irregularity_15", "rr_record_s", "log_prev_record",
            "log_next_record", "log_local_record")
RR_SETS = {
    "sinus": RR_NAMES[:15],
    "record": ("rr_prev_s", "rr_next_s", "rr_record_s", "log_prev_record", "log_next_record",
               "log_local_record", "log_prev_local", "log_next_prev", "irregularity_9"),
    "all": RR_NAMES,
}


@dataclass
class BeatTable:
    """One row per annotation of every record (B rows), in record order."""
    record: np.ndarray      # (B,) int64 record index
    label: np.ndarray       # (B,) int64 0..3
    scored: np.ndarray      # (B,) bool: 32..256-sample segment, label 0-2, R peak inside signal
    rr: np.ndarray          # (B, len(RR_NAMES)) float32, see RR_NAMES
    centre: np.ndarray      # (B,) int64 index of the R peak in `signal`
    rec_start: np.ndarray   # (B,) int64 first sample of the beat's record in `signal`
    rec_end: np.ndarray     # (B,) int64 one past its record's last sample in `signal`
    signal: np.ndarray      # (S',) float32 amplitude-scaled signals, zero gaps between records
    template: np.ndarray    # (R, WINDOW) float32 median beat window of each record


def amplitude_scale(signal: np.ndarray, locs: np.ndarray) -> float:
    """A record's typical R amplitude: median |x| at its beats after removing the median level.

    Dividing by it puts every record's QRS near 1 whatever the lead gain or electrode contact.
    """
    values = np.abs(signal[locs] - np.median(signal))
    return float(max(np.median(values), 1e-3))


def rr_features(locs: np.ndarray) -> np.ndarray:
    """(m,) R-peak sample indices of one record -> (m, len(RR_NAMES)) float32 RR features.

    prev/next: the intervals before and after the beat; prev2/next2 the ones before the previous
    and after the next; sinus: the SINUS_PERCENTILE of LONG_RR_BEATS intervals; local: the
    median of LOCAL_RR_BEATS; median: the median of LONG_RR_BEATS (log(median / sinus) < 0 when
    the record mixes a fast and a slow rhythm); regular: `regular_rr`; irregularity: running
    medians of |log(rr_i / rr_(i-1))| (atrial fibrillation ~0.1-0.3, sinus ~0.02); record: the
    mean of all the record's intervals (label-free, so a new record has it too).
    The first beat has no previous RR and the last no next one: they borrow their neighbour.
    Running windows are mirrored at the record's ends (repeating the last interval would let
    it dominate the end's estimates). Intervals are clipped to MIN_RR_S..MAX_RR_S, so every
    log-ratio lies within +-3.4 and a record of one or two beats still gets finite values.
    """
    m = len(locs)
    rr = np.diff(locs) / SAMPLING_RATE if m > 1 else np.ones(1)
    prev = np.clip(np.concatenate([rr[:1], rr])[-m:], MIN_RR_S, MAX_RR_S)
    nxt = np.clip(np.concatenate([rr, rr[-1:]])[:m], MIN_RR_S, MAX_RR_S)
    prev2 = np.concatenate([prev[:1], prev[:-1]])
    next2 = np.concatenate([nxt[1:], nxt[-1:]])
    local = median_filter(prev, size=LOCAL_RR_BEATS, mode="reflect")
    sinus = percentile_filter(prev, SINUS_PERCENTILE, size=LONG_RR_BEATS, mode="reflect")
    median = median_filter(prev, size=LONG_RR_BEATS, mode="reflect")
    step = np.abs(np.diff(np.log(prev), prepend=np.log(prev[0])))
    regular = regular_rr(prev, step, fallback=sinus)
    irregularity = [median_filter(step, size=n, mode="reflect") for n in IRREGULAR_BEATS]
    record = np.full(m, prev.mean())
    log = np.log
    return np.stack([prev, nxt, sinus, log(prev / sinus), log(nxt / sinus), log(prev2 / sinus),
                     log(next2 / sinus), log(prev / local), log(nxt / prev), log(local / sinus),
                     log(median / sinus), log(regular / sinus), log(prev / regular),
                     *irregularity, record, log(prev / record), log(nxt / record),
                     log(local / record)], axis=1).astype(np.float32)


def regular_rr(prev: np.ndarray, step: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """(m,) running median (LONG_RR_BEATS) of the regular intervals, in seconds.

    prev: (m,) intervals; step: (m,) |log(prev_i / prev_(i-1))|; a regular interval has step <
    REGULAR_STEP. Where the window holds no regular interval (atrial fibrillation) the result
    is `fallback` (m,). In sinus rhythm this is the sinus RR; in a run of ectopic beats it is
    the run's rate, so its ratio to the sinus estimate tells the two rhythms apart.
    """
    half = LONG_RR_BEATS // 2
    values = np.pad(np.where(step < REGULAR_STEP, prev, np.nan), half, constant_values=np.nan)
    windows = np.sort(sliding_window_view(values, LONG_RR_BEATS), axis=1)   # NaNs sort last
    count = np.isfinite(windows).sum(1)
    rows = np.arange(len(prev))
    middle = (windows[rows, np.maximum(count - 1, 0) // 2] + windows[rows, count // 2]) / 2
    return np.where(count > 0, middle, fallback)


def build_table(records: ECGRecords) -> BeatTable:
    """Scale every record, lay the signals out with HALF_WINDOW zeros around each, and compute
    every beat's window position, record bounds and RR features."""
    pieces, rr, centre, templates = [np.zeros(HALF_WINDOW, np.float32)], [], [], []
    rec_start, rec_end = [], []
    start = HALF_WINDOW
    for r in range(len(records)):
        signal, locs, _ = records.record(r)
        inside = locs[locs < len(signal)]
        scaled = (signal - np.median(signal)) / amplitude_scale(signal, inside)
        pieces += [scaled, np.zeros(HALF_WINDOW, np.float32)]
        templates.append(record_template(scaled, inside))
        rr.append(rr_features(locs))
        centre.append(start + np.minimum(locs, len(signal) - 1))
        rec_start.append(np.full(len(locs), start))
        rec_end.append(np.full(len(locs), start + len(signal)))
        start += len(signal) + HALF_WINDOW
    scored = (keep_by_length(segment_lengths(records)) & (records.beat_labels != UNKNOWN)
              & inside_signal(records))
    return BeatTable(record=records.beat_record, label=records.beat_labels, scored=scored,
                     rr=np.concatenate(rr), centre=np.concatenate(centre),
                     rec_start=np.concatenate(rec_start), rec_end=np.concatenate(rec_end),
                     signal=np.concatenate(pieces), template=np.stack(templates))


def record_template(scaled: np.ndarray, locs: np.ndarray, max_beats: int = 2000) -> np.ndarray:
    """(WINDOW,) median of the record's R-centred windows (at most `max_beats`, evenly spaced)."""
    padded = np.pad(scaled, HALF_WINDOW)
    windows = sliding_window_view(padded, WINDOW)[locs[:: max(1, len(locs) // max_beats)]]
    return np.median(windows, axis=0).astype(np.float32)


def table_to_device(table: BeatTable, device) -> dict[str, torch.Tensor]:
    """The beat table as device tensors (the whole set stays there during training)."""
    t = lambda a, dtype=None: torch.as_tensor(a, dtype=dtype).to(device)  # noqa: E731
    return {"signal": t(table.signal, torch.float32), "centre": t(table.centre), "rr": t(table.rr),
            "label": t(table.label), "scored": t(table.scored), "record": t(table.record),
            "rec_start": t(table.rec_start), "rec_end": t(table.rec_end),
            "template": t(table.template, torch.float32)}


def own_record_samples(dev: dict, idx: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Samples at positions `pos` (*idx.shape, n) of `signal`, zero outside beat idx's record.

    Records are laid out HALF_WINDOW zeros apart, so an unshifted window never leaves its
    record's padded span; a shifted one (augmentation) at a record's edge would read the
    neighbouring record, or wrap around the tensor at its ends. Masking keeps the R peak where
    it is, unlike clamping the centre.
    """
    inside = (pos >= dev["rec_start"][idx][..., None]) & (pos < dev["rec_end"][idx][..., None])
    return dev["signal"][pos.clamp(0, len(dev["signal"]) - 1)] * inside


def centred_windows(dev: dict, idx: torch.Tensor, shift: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """Windows around the R peaks of beats `idx` (any shape) -> (*idx.shape, WINDOW) float32.

    `shift` (same shape as idx) moves each window by a few samples (training augmentation).
    Samples outside the beat's own record read as 0.
    """
    offsets = torch.arange(-HALF_WINDOW, HALF_WINDOW, device=idx.device)
    centre = dev["centre"][idx] if shift is None else dev["centre"][idx] + shift
    return own_record_samples(dev, idx, centre[..., None] + offsets)
