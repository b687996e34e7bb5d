"""Q1 part 1.A: representative T1/T2 pairs, intensity histograms, the normalisation, and after.

    python -m q1_mri.eda --data ../shared/data/mri

Writes figures/eda_*.png and eda_stats.json to results/q1/<source>/.
"""
from __future__ import annotations

import sys
import textwrap

import matplotlib.pyplot as plt
import numpy as np

from common import cli
from common.io import write_json
from common.plotting import save_figure
from common.results import results_dir
from q1_mri.data import (
    NORMALISATION,
    PERCENTILE,
    SPLITS,
    VIEWS,
    MRISplit,
    load_mri,
    normalise,
    resolve_source,
)

N_PAIRS = 8


def pick_pairs(split: MRISplit, view: str, n: int = N_PAIRS) -> np.ndarray:
    """Indices of `n` representative slices of `view`: well-filled slices, different patients."""
    idx = np.flatnonzero(split.view == view)
    fill = split.brain_mask[idx].reshape(len(idx), -1).mean(1)
    idx = idx[fill >= np.quantile(fill, 0.5)]                   # the fuller half of the slices
    chosen, seen = [], set()
    for i in idx[np.random.default_rng(0).permutation(len(idx))]:
        if split.patient_id[i] not in seen or len(seen) == len(np.unique(split.patient_id[idx])):
            chosen.append(i)
            seen.add(split.patient_id[i])
        if len(chosen) == n:
            break
    return np.array(sorted(chosen, key=lambda i: (split.patient_id[i], i)))


def plot_pairs(t1: np.ndarray, t2: np.ndarray, split: MRISplit, picks: dict[str, np.ndarray],
               unit: str) -> plt.Figure:
    """Rows: T1 and T2 of each view in `picks`; columns: slices. Each image scaled to its own
    0..p99.5."""
    fig, axes = plt.subplots(2 * len(picks), N_PAIRS, figsize=(1.45 * N_PAIRS, 3.2 * len(picks)),
                             squeeze=False)
    for v, (view, chosen) in enumerate(picks.items()):
        for j, i in enumerate(chosen):
            for r, (name, images) in enumerate((("T1", t1), ("T2", t2))):
                ax = axes[2 * v + r, j]
                img = images[i, 0].astype(np.float32)
                ax.imshow(img, vmin=0, vmax=max(np.percentile(img, PERCENTILE), 1e-6))
                ax.set_xticks([]), ax.set_yticks([])
                if r == 0:
                    ax.set_title("\n".join(textwrap.wrap(str(split.patient_id[i]), 16))
                                 + f"\nrow {i}", fontsize=6)
                if j == 0:
                    ax.set_ylabel(f"{view}\n{name}", fontsize=8)
    fig.supxlabel(f"each image displayed from 0 to its own {PERCENTILE}th percentile ({unit})",
                  fontsize=8)
    return fig


def brain_values(images: np.ndarray, mask: np.ndarray, max_n: int = 2_000_000) -> np.ndarray:
    """Brain-pixel intensities as float32, subsampled evenly to at most `max_n`."""
    values = images[mask].astype(np.float32)
    return values[:: max(1, len(values) // max_n)]


def plot_histograms(values: dict[tuple[str, str], np.ndarray], background: dict[str, float],
                    xlabel: str, log_y: bool) -> plt.Figure:
    """One panel per contrast, the splits in `background` overlaid, densities of brain pixels."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for ax, contrast in zip(axes, ("T1", "T2")):
        top = max(np.percentile(values[(s, contrast)], 99.9) for s in background)
        bins = np.linspace(0, top, 120)
        for s in background:
            ax.hist(values[(s, contrast)], bins=bins, density=True, histtype="step", lw=1.4,
                    label=f"{s} (background: {100 * background[s]:.0f}% of pixels, not shown)")
        ax.set(title=f"{contrast}: brain-pixel intensities", xlabel=xlabel, ylabel="density")
        if log_y:
            ax.set_yscale("log")
        ax.legend(loc="upper right")
    return fig


def intensity_stats(split: MRISplit) -> dict:
    mask = split.brain_mask
    out = {"slices": len(split), "patients": int(len(np.unique(split.patient_id))),
           "slices_per_view": {v: int((split.view == v).sum()) for v in VIEWS},
           "background_fraction": float(1 - mask.mean())}
    for name, images in (("t1", split.t1), ("t2", split.t2)):
        v = brain_values(images, mask)
        q = np.percentile(v, [1, 50, 99, 99.5])
        out[name] = {"min": float(images.min()), "max": float(images.max()),
                     "brain_p1": q[0], "brain_median": q[1], "brain_p99": q[2], "brain_p99_5": q[3]}
    return out


def views_present(split: MRISplit, name: str) -> list[str]:
    """The VIEWS that `split` has slices of; a notice names each missing one (its panels are
    left out)."""
    views = [v for v in VIEWS if (split.view == v).any()]
    missing = [v for v in VIEWS if v not in views]
    if missing:
        print(f"notice: the {name} split has no {', '.join(missing)} slices; "
              "leaving out their panels", file=sys.stderr)
    return views


def main(argv: list[str] | None = None) -> None:
    p = cli.parser(__doc__)
    cli.add_data_args(p)
    args = p.parse_args(argv)
    splits = load_mri(source := resolve_source(args.data))
    out = results_dir("q1", source, args.results_root)
    figs = out / "figures"
    names = list(splits)             # train and/or validation, in SPLITS order
    shown = names[0]                 # pairs come from the training split when there is one
    pairs = splits[shown]
    picks = {v: pick_pairs(pairs, v) for v in views_present(pairs, shown)}
    normed = {s: normalise(splits[s]) for s in names}

    save_figure(plot_pairs(pairs.t1, pairs.t2, pairs, picks, "raw scanner units"),
                figs / "eda_pairs_raw.png",
                f"{'Training' if shown == 'train' else 'Validation'} T1/T2 pairs per view, raw",
                source.label)
    background = {s: float(1 - splits[s].brain_mask.mean()) for s in names}
    raw = {(s, c): brain_values(getattr(splits[s], c.lower()), splits[s].brain_mask)
           for s in names for c in ("T1", "T2")}
    save_figure(plot_histograms(raw, background, "raw intensity (scanner units)", log_y=True),
                figs / "eda_histograms_raw.png", "Intensity distributions before normalisation",
                source.label)
    t1n, t2n, _ = normed[shown]
    save_figure(plot_pairs(t1n, t2n, pairs, picks, "normalised units"),
                figs / "eda_pairs_normalised.png", "The same pairs after normalisation",
                source.label)
    norm_values = {(s, c): brain_values(normed[s][i], normed[s][2])
                   for s in names for i, c in enumerate(("T1", "T2"))}
    save_figure(plot_histograms(norm_values, background, "normalised intensity", log_y=False),
                figs / "eda_histograms_normalised.png",
                "Intensity distributions after normalisation", source.label)

    stats = {s: intensity_stats(splits[s]) for s in names}
    ratio = ({c: stats["validation"][c]["brain_median"] / stats["train"][c]["brain_median"]
              for c in ("t1", "t2")} if len(names) == len(SPLITS) else None)
    write_json(out / "eda_stats.json", {
        "data_source": source.tag, "data_label": source.label, "normalisation": NORMALISATION,
        "splits": stats, "validation_to_train_median_ratio": ratio,
        "normalised_brain_median": {f"{s}/{c}": float(np.median(norm_values[(s, c)]))
                                    for s in names for c in ("T1", "T2")}})
    print(f"1.A figures and eda_stats.json written to {out}")


if __name__ == "__main__":
    cli.run_main(main)
