"""Q2 part 2.A: look at the records, build the beat-level dataset with split_by_beat, filter it
by length, and summarise it.

    python -m q2_ecg.eda --data ../shared/data/ecg

Writes figures/eda_*.png and eda_stats.json to results/q2/<source>/.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from common import cli
from common.io import write_json
from common.plotting import save_figure
from common.results import results_dir
from q2_ecg.data import (
    CLASS_MAPPING,
    MAX_BEAT,
    MIN_BEAT,
    SAMPLING_RATE,
    ECGRecords,
    beat_dataset,
    keep_by_length,
    load_records,
    resolve_source,
)

N_BEATS, N_PATIENTS = 50, 5


def pick_excerpts(records: ECGRecords) -> list[tuple[int, int]]:
    """(record, first beat) of N_BEATS-beat excerpts rich in abnormal beats, from records of
    different databases where possible."""
    candidates = []
    for r in range(len(records)):
        labels = records.record(r)[2]
        if len(labels) < N_BEATS:
            continue
        abnormal = np.convolve((labels == 1) | (labels == 2), np.ones(N_BEATS), "valid")
        kinds = np.convolve(labels == 1, np.ones(N_BEATS), "valid") > 0
        kinds = kinds.astype(int) + (np.convolve(labels == 2, np.ones(N_BEATS), "valid") > 0)
        start = int(np.argmax(kinds * 1000 + np.minimum(abnormal, 12)))
        candidates.append((kinds[start], min(abnormal[start], 12), r, start))
    candidates.sort(reverse=True)
    chosen, dbs = [], set()
    for _, _, r, start in candidates:                 # first pass: one per database
        if records.source_db[r] not in dbs:
            chosen.append((r, start))
            dbs.add(records.source_db[r])
    for _, _, r, start in candidates:
        if len(chosen) >= N_PATIENTS:
            break
        if (r, start) not in chosen:
            chosen.append((r, start))
    return chosen[:N_PATIENTS]


def annotation_offsets(records: ECGRecords, half_window_s: float = 0.1) -> np.ndarray:
    """(B,) float, one per annotation: the signed offset in samples from the annotation to the
    largest deflection (|x - window median|) within ±`half_window_s`; NaN where that window
    leaves the record. Zero when annotations sit on the QRS peak, as the template assumes."""
    w = int(round(half_window_s * SAMPLING_RATE))
    offsets = []
    for r in range(len(records)):
        signal, locs, _ = records.record(r)
        inside = (locs >= w) & (locs < len(signal) - w)
        windows = signal[locs[inside, None] + np.arange(-w, w + 1)]
        windows = np.abs(windows - np.median(windows, axis=1, keepdims=True))
        offset = np.full(len(locs), np.nan)
        offset[inside] = windows.argmax(axis=1) - w
        offsets.append(offset)
    return np.concatenate(offsets)


def alignment_stats(records: ECGRecords, tolerance: int = 2) -> dict[str, dict]:
    """Per database: how far annotations sit from the QRS peak (see `annotation_offsets`)."""
    offsets = np.abs(annotation_offsets(records))
    db = records.source_db[records.beat_record]
    stats = {}
    for d in np.unique(db):
        o = offsets[(db == d) & ~np.isnan(offsets)]
        stats[str(d)] = {"annotations": len(o),
                         "median_abs_offset_ms": float(np.median(o) * 1000 / SAMPLING_RATE),
                         f"within_{tolerance}_samples": float(np.mean(o <= tolerance))}
    return stats


def plot_excerpts(records: ECGRecords, excerpts: list[tuple[int, int]]) -> plt.Figure:
    """One row per patient: N_BEATS consecutive beats, every beat marked, non-normal ones named."""
    fig, axes = plt.subplots(len(excerpts), 1, figsize=(13, 2.1 * len(excerpts)))
    for ax, (r, start) in zip(np.atleast_1d(axes), excerpts):
        signal, locs, labels = records.record(r)
        locs, labels = locs[start:start + N_BEATS], labels[start:start + N_BEATS]
        a, b = max(locs[0] - SAMPLING_RATE // 2, 0), min(locs[-1] + SAMPLING_RATE // 2, len(signal))
        t = np.arange(a, b) / SAMPLING_RATE
        ax.plot(t, signal[a:b], lw=0.7, color="0.2")
        inside = locs < len(signal)
        ax.plot(locs[inside] / SAMPLING_RATE, signal[locs[inside]], "o", ms=3, color="C3")
        low, high = np.percentile(signal[a:b], [0.5, 99.9])
        pad = 0.15 * (high - low)
        for loc, label in zip(locs[inside], labels[inside]):
            if label != 0:
                ax.annotate(CLASS_MAPPING[label], (loc / SAMPLING_RATE, signal[loc]),
                            xytext=(0, 6), textcoords="offset points", ha="center", fontsize=7,
                            color={1: "C0", 2: "C3", 3: "C7"}[label], weight="bold")
        ax.set(ylim=(low - pad, high + 2 * pad), xlim=(t[0], t[-1]), ylabel="mV",
               title=f"record {records.patient_id[r]} ({records.source_db[r]}), beats "
                     f"{start}-{start + N_BEATS - 1}")
    axes[-1].set_xlabel("time (s)")
    return fig


def plot_summary(lengths: np.ndarray, labels: np.ndarray, keep: np.ndarray) -> plt.Figure:
    """Segment-length histogram with the filter bounds, and class counts after filtering."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.6), width_ratios=(2, 1))
    bins = np.arange(0, 2 * MAX_BEAT, 4)
    left.hist(np.clip(lengths, 0, bins[-1] - 1), bins=bins, color="0.85",
              label=f"all segments before filtering ({len(lengths):,})")
    for c, name in CLASS_MAPPING.items():
        m = (labels == c) & keep
        left.hist(lengths[m], bins=bins, histtype="step", lw=1.3, label=f"{name} ({m.sum():,})")
    for bound in (MIN_BEAT, MAX_BEAT):
        left.axvline(bound, color="k", ls="--", lw=0.8)
    left.set(yscale="log", xlabel="segment length (samples at 128 Hz)", ylabel="beats",
             title=f"Segment lengths; per class after the {MIN_BEAT}..{MAX_BEAT}-sample filter "
                   f"({(~keep).sum():,} dropped; longer ones piled at the right edge)")
    left.legend()
    counts = [int(((labels == c) & keep).sum()) for c in CLASS_MAPPING]
    bars = right.bar(list(CLASS_MAPPING.values()), counts, color=["C0", "C1", "C2", "C7"])
    right.bar_label(bars, [f"{c:,}" for c in counts], fontsize=7)
    right.set(yscale="log", ylabel="beats (log scale)", title="Beat classes after filtering")
    return fig


def main() -> None:
    p = cli.parser(__doc__.splitlines()[0])
    cli.add_data_args(p)
    args = p.parse_args()
    source = resolve_source(args.data)
    records = load_records(source)
    out = results_dir("q2", source, args.results_root)
    segments, labels = beat_dataset(records)              # 2.A step 2: two aligned lists
    lengths = np.array([len(s) for s in segments])
    labels = np.array(labels)
    keep = keep_by_length(lengths)                         # 2.A step 3
    save_figure(plot_excerpts(records, pick_excerpts(records)), out / "figures" / "eda_beats.png",
                f"{N_BEATS} consecutive beats of {N_PATIENTS} records (red dots: annotations)",
                source.label)
    save_figure(plot_summary(lengths, labels, keep), out / "figures" / "eda_summary.png",
                "Beat-level dataset from split_by_beat", source.label)
    count = lambda m: {name: int((labels[m] == c).sum()) for c, name in CLASS_MAPPING.items()}  # noqa: E731
    stats = {"data_source": source.tag, "data_label": source.label, "records": len(records),
             "records_per_database": {db: int((records.source_db == db).sum())
                                      for db in np.unique(records.source_db)},
             "skipped_records": records.skipped.tolist(),
             "beats": int(len(labels)), "beats_per_class": count(np.ones_like(keep)),
             "kept": int(keep.sum()), "kept_per_class": count(keep),
             "dropped_shorter": int((lengths < MIN_BEAT).sum()),
             "dropped_longer": int((lengths > MAX_BEAT).sum()),
             "kept_without_unk": int((keep & (labels != 3)).sum()),
             "mean_length": float(lengths.mean()), "first_segment_length": int(lengths[0]),
             "filter": f"{MIN_BEAT} <= length <= {MAX_BEAT} samples",
             "annotation_alignment": alignment_stats(records)}
    write_json(out / "eda_stats.json", stats)
    print(f"2.A: {stats['beats']:,} beats, {stats['kept']:,} kept by the length filter "
          f"({stats['kept_without_unk']:,} without UNK); figures in {out / 'figures'}")


if __name__ == "__main__":
    cli.run_main(main)
