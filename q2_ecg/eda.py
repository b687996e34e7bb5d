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


DATABASES = {"mitdb": "MIT-BIH Arrhythmia", "svdb": "MIT-BIH Supraventricular Arrhythmia",
             "incartdb": "St Petersburg INCART"}
LETTERS = {1: "S", 2: "V", 3: "Q"}          # AAMI letters; normal beats (N) are not written
LETTER_COLOURS = {0: "0.55", 1: "C0", 2: "C3", 3: "C7"}
CODES = {name: code for code, name in CLASS_MAPPING.items()}
EXCERPTS_TITLE = (f"{N_BEATS} consecutive beats of {N_PATIENTS} records; dots: annotated beats, "
                  "letters: abnormal labels")


def database_name(source_db: str) -> str:
    """'svdb_npy' -> 'svdb, MIT-BIH Supraventricular Arrhythmia' (unknown names unchanged)."""
    short = str(source_db).removesuffix("_npy")
    return f"{short}, {DATABASES[short]}" if short in DATABASES else short


def label_levels(x: np.ndarray, min_gap: float, n_levels: int = 3) -> np.ndarray:
    """(n,) int row of each label at sorted positions `x` (n,): the lowest row whose previous
    label lies at least `min_gap` to the left, so that neighbouring labels never collide
    (when every row is taken, the row whose last label lies furthest left)."""
    last = np.full(n_levels, -np.inf)
    levels = np.zeros(len(x), dtype=int)
    for i, xi in enumerate(x):
        free = np.flatnonzero(xi - last >= min_gap)
        levels[i] = free[0] if len(free) else int(np.argmin(last))
        last[levels[i]] = xi
    return levels


def plot_signal(signal: np.ndarray, title: str, sampling_rate: int = SAMPLING_RATE,
                beat_locations: np.ndarray | None = None, beat_annotations=None, ax=None,
                start_s: float = 0.0) -> plt.Axes:
    """The template's helper, in our code: an ECG trace against time, a dot on every annotated
    beat (coloured by class) and the letter of every abnormal one (S, V, Q) in a band above the
    trace, staggered in rows where neighbours would collide.

    Differences from the template, on purpose: time in seconds from `start_s` (the excerpt's
    place in its record) instead of minutes from 0; a y range that follows the trace instead of
    a fixed [-0.5, 1], which clips most R peaks (1-2.5 mV); letters instead of full label names,
    which overlap at 50 beats per row. `beat_annotations`: class names ('NOR', 'SVEB', ...)."""
    ax = ax or plt.subplots(figsize=(13, 2.3))[1]
    t = start_s + np.arange(len(signal)) / sampling_rate
    ax.plot(t, signal, lw=0.7, color="0.2")
    low, high = np.percentile(signal, [0.5, 99.9])
    pad = 0.1 * (high - low)
    ax.set(ylim=(low - pad, high + 5 * pad), xlim=(t[0], t[-1]))  # top band: the letters
    if beat_locations is not None:
        locs = np.asarray(beat_locations)
        codes = np.array([CODES[name] for name in beat_annotations])
        inside = locs < len(signal)
        locs, codes = locs[inside], codes[inside]
        for c, colour in LETTER_COLOURS.items():
            m = codes == c
            ax.plot(t[locs[m]], signal[locs[m]], "o", ms=3 if c else 2, color=colour, zorder=3)
        marked = codes != 0
        x = t[locs[marked]]
        for xi, level, c in zip(x, label_levels(x, min_gap=0.012 * (t[-1] - t[0])), codes[marked]):
            ax.text(xi, 0.97 - 0.1 * level, LETTERS[int(c)], transform=ax.get_xaxis_transform(),
                    ha="center", va="top", fontsize=8, weight="bold", color=LETTER_COLOURS[c])
    ax.set(xlabel="time in record (s)", ylabel="amplitude (mV)", title=title)
    return ax


def plot_excerpts(records: ECGRecords, excerpts: list[tuple[int, int]]) -> plt.Figure:
    """One row per (record, first beat) in `excerpts`: N_BEATS consecutive beats drawn with
    `plot_signal`, half a second either side, and one legend for the letters."""
    fig, axes = plt.subplots(len(excerpts), 1, figsize=(13, 2.3 * len(excerpts)), squeeze=False)
    for ax, (r, start) in zip(axes[:, 0], excerpts):
        signal, locs, labels = records.record(r)
        locs, labels = locs[start:start + N_BEATS], labels[start:start + N_BEATS]
        a, b = max(locs[0] - SAMPLING_RATE // 2, 0), min(locs[-1] + SAMPLING_RATE // 2, len(signal))
        plot_signal(signal[a:b], f"record {records.patient_id[r]} "
                    f"({database_name(records.source_db[r])}): beats {start}-{start + N_BEATS - 1}",
                    beat_locations=locs - a, beat_annotations=[CLASS_MAPPING[int(c)] for c in labels],
                    ax=ax, start_s=a / SAMPLING_RATE)
    handles = [plt.Line2D([], [], ls="", marker="o", ms=4, color=LETTER_COLOURS[0],
                          label="N: normal beat (dot only, no letter)")]
    handles += [plt.Line2D([], [], ls="", marker=f"${LETTERS[c]}$", ms=7, color=LETTER_COLOURS[c],
                           label=f"{LETTERS[c]}: {name}") for c, name in (
                               (1, "SVEB, supraventricular ectopic"),
                               (2, "VEB, ventricular ectopic"), (3, "UNK, unclassifiable"))]
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=8)
    fig.suptitle(EXCERPTS_TITLE)
    return fig


SUMMARY_TITLE = "Beat-level dataset from split_by_beat"
CLASS_COLOURS = {0: "C0", 1: "C1", 2: "C2", 3: "C7"}


def plot_summary(lengths: np.ndarray, labels: np.ndarray, keep: np.ndarray) -> plt.Figure:
    """Segment-length histogram with the filter bounds, and class counts after filtering."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.6), width_ratios=(2, 1))
    bins = np.arange(0, 2 * MAX_BEAT, 4)
    left.hist(np.clip(lengths, 0, bins[-1] - 1), bins=bins, color="0.85",
              label=f"all segments before filtering ({len(lengths):,})")
    for c, name in CLASS_MAPPING.items():
        m = (labels == c) & keep
        left.hist(lengths[m], bins=bins, histtype="step", lw=1.3, color=CLASS_COLOURS[c],
                  label=f"{name} ({m.sum():,})")
    for bound in (MIN_BEAT, MAX_BEAT):
        left.axvline(bound, color="k", ls="--", lw=0.8)
    left.set(yscale="log", xlabel="segment length (samples at 128 Hz)", ylabel="beats (log scale)",
             title=f"Segment lengths; per class after the {MIN_BEAT}..{MAX_BEAT}-sample filter "
                   f"({(~keep).sum():,} dropped; longer ones piled at the right edge)")
    left.secondary_xaxis("top", functions=(lambda n: n / SAMPLING_RATE,
                                           lambda s: s * SAMPLING_RATE)
                         ).set_xlabel("segment length = preceding RR interval (s)")
    left.legend()
    counts = [int(((labels == c) & keep).sum()) for c in CLASS_MAPPING]
    bars = right.bar(list(CLASS_MAPPING.values()), counts, color=list(CLASS_COLOURS.values()))
    right.bar_label(bars, [f"{c:,}" for c in counts], fontsize=7)
    right.set(yscale="log", xlabel="beat class", ylabel="beats (log scale)",
              title="Beat classes after filtering")
    fig.suptitle(SUMMARY_TITLE)
    return fig


def main(argv: list[str] | None = None) -> None:
    p = cli.parser(__doc__.splitlines()[0])
    cli.add_data_args(p)
    args = p.parse_args(argv)
    source = resolve_source(args.data)
    records = load_records(source)
    out = results_dir("q2", source, args.results_root)
    segments, labels = beat_dataset(records)              # 2.A step 2: two aligned lists
    lengths = np.array([len(s) for s in segments])
    labels = np.array(labels)
    keep = keep_by_length(lengths)                         # 2.A step 3
    save_figure(plot_excerpts(records, pick_excerpts(records)), out / "figures" / "eda_beats.png",
                EXCERPTS_TITLE, source.label)
    save_figure(plot_summary(lengths, labels, keep), out / "figures" / "eda_summary.png",
                SUMMARY_TITLE, source.label)
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
