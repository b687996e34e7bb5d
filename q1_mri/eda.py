"""Q1 part 1.A: representative T1/T2 pairs, intensity histograms, the normalisation, and after
(figures/eda_*.png and eda_stats.json in results/q1/<source>/).

    python -m q1_mri.eda --data ../shared/data/mri
"""
from __future__ import annotations

import sys

import matplotlib.pyplot as plt
import numpy as np

from common import cli
from common.io import write_json
from common.plotting import save_figure
from common.results import results_dir
from q1_mri import display
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
NORMALISED_LABEL = f"normalised (per-volume brain p{PERCENTILE:g})"


def pick_pairs(split: MRISplit, view: str, n: int = N_PAIRS, seed: int = 0) -> np.ndarray:
    """Indices of `n` slices of `view`, each from a different patient while the split has
    patients left (then a further slice of each patient in turn), drawn at random from the
    fuller half of that patient's slices of the view (then its fullest others); ordered by
    patient. Fewer than `n` only if the view has fewer slices."""
    rng = np.random.default_rng(seed)
    idx = np.flatnonzero(split.view == view)
    fill = split.brain_mask[idx].reshape(len(idx), -1).mean(1)
    pid = split.patient_id[idx]
    pools = {}
    for p in np.unique(pid).tolist():
        own = np.flatnonzero(pid == p)
        full = fill[own] >= np.median(fill[own])
        rest = own[~full][np.argsort(-fill[own[~full]], kind="stable")]
        pools[p] = list(idx[rng.permutation(own[full])]) + list(idx[rest])
    patients = [sorted(pools)[k] for k in rng.permutation(len(pools))]
    chosen: list[int] = []
    while len(chosen) < n and any(pools.values()):
        for p in patients:
            if pools[p] and len(chosen) < n:
                chosen.append(int(pools[p].pop(0)))
    return np.array(sorted(chosen, key=lambda i: (split.patient_id[i], i)), dtype=np.int64)


def plot_pairs(t1: np.ndarray, t2: np.ndarray, split: MRISplit, picks: dict[str, np.ndarray],
               unit: str = "raw scanner units", normalised: bool = False) -> plt.Figure:
    """Rows: T1 and T2 of each view in `picks`; columns: the picked slices (index into `split`).

    Raw (default): every T1 panel on one shared scale, 0 to the p99.5 of the brain pixels of all
    shown T1 slices, and every T2 panel on another, so differences in gain between patients
    stay visible; `unit` labels the colour bars. normalised=True: every panel on the fixed
    0..1 scale of the per-volume normalisation."""
    n = max(len(c) for c in picks.values())
    fig, axes = plt.subplots(2 * len(picks), n, figsize=(1.45 * n + 1.4, 3.0 * len(picks) + 0.9),
                             squeeze=False)
    contrasts = (("T1", t1), ("T2", t2))
    shown = np.concatenate(list(picks.values())).astype(np.int64)
    mask = split.brain_mask[shown]
    limits = {name: (0.0, 1.0) if normalised else
              (0.0, max(float(np.percentile(images[shown][mask].astype(np.float32), PERCENTILE)),
                        1e-6)) for name, images in contrasts}
    for v, (view, chosen) in enumerate(picks.items()):
        for r, (name, images) in enumerate(contrasts):
            row = axes[2 * v + r]
            for j, ax in enumerate(row):
                if j >= len(chosen):
                    ax.axis("off")
                    continue
                i = chosen[j]
                title = (f"{display.wrap_id(split.patient_id[i])}\n{view} {name}, row {i}"
                         if r == 0 else f"{view} {name}")
                im = display.image_panel(ax, display.oriented(images[i, 0].astype(np.float32),
                                                              view),
                                         title, vmin=limits[name][0], vmax=limits[name][1],
                                         cmap="gray")
                ax.title.set_fontsize(6)
            display.mark_orientation(row[0], view)
            row[0].set_ylabel(f"{view}\n{name}", fontsize=8)
            bar = fig.colorbar(im, ax=row, shrink=0.95, pad=0.01, extend="max")
            bar.set_label(f"{name} {NORMALISED_LABEL}".replace(" (", "\n(") if normalised
                          else f"{name}\n({unit})", fontsize=6)
            bar.ax.tick_params(labelsize=6)
    scale = (f"every panel on the fixed 0..1 scale: each patient's T1 and T2 divided by its own "
             f"brain p{PERCENTILE:g}" if normalised else
             f"one scale per contrast, 0 to the p{PERCENTILE:g} of the brain pixels of all shown "
             f"slices (T1 {limits['T1'][1]:,.0f}, T2 {limits['T2'][1]:,.0f} {unit})")
    fig.supxlabel(f"Intensity: {scale}. {display.ORIENTATION_NOTE}", fontsize=7, wrap=True)
    fig.suptitle(f"T1/T2 pairs per view, {'normalised' if normalised else 'raw'}")
    return fig


def brain_values(images: np.ndarray, mask: np.ndarray, max_n: int = 2_000_000) -> np.ndarray:
    """Brain-pixel intensities as float32, subsampled evenly to at most `max_n` (plus the
    minimum and maximum, so the full range survives the subsampling)."""
    values = images[mask].astype(np.float32)
    if len(values) <= max_n:
        return values
    return np.concatenate([values[:: max(1, len(values) // max_n)],
                           [values.min(), values.max()]])


def plot_histograms(values: dict[tuple[str, str], np.ndarray], background: dict[str, float],
                    xlabel: str, log_y: bool = True) -> plt.Figure:
    """One panel per contrast, the splits in `background` overlaid, densities of brain pixels
    over their full range (min to max); dashed line: each split's p99.5, dotted: its max.

    log_y (recommended): the rim of the mask piles up near 0 and clipped values at 1 after
    normalisation; on a log axis the tails stay readable. With log_y=False the exact zeros
    inside the mask are left out and the title says how many."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, contrast in zip(axes, ("T1", "T2")):
        data = {s: values[(s, contrast)] for s in background}
        zeros = {s: float((v == 0).mean()) for s, v in data.items()}
        if not log_y:
            data = {s: v[v != 0] for s, v in data.items()}
        low = min(float(v.min()) for v in data.values())
        high = max(float(v.max()) for v in data.values())
        bins = np.linspace(low, high if high > low else low + 1, 150)
        for k, (s, v) in enumerate(data.items()):
            p, top = np.percentile(v, PERCENTILE), float(v.max())
            ax.hist(v, bins=bins, density=True, histtype="step", lw=1.4, color=f"C{k}",
                    label=f"{s} ({100 * background[s]:.0f}% background, not shown)")
            ax.axvline(p, color=f"C{k}", ls="--", lw=0.9,
                       label=f"{s} p{PERCENTILE:g} = {_number(p)}")
            ax.axvline(top, color=f"C{k}", ls=":", lw=0.9, label=f"{s} max = {_number(top)}")
        title = f"{contrast}: brain-pixel intensities, full range"
        if log_y:
            ax.set_yscale("log")
            title += " (log y)"
        else:
            title += ("; exact zeros in the mask left out ("
                      + ", ".join(f"{s} {100 * z:.1f}%" for s, z in zeros.items()) + ")")
        ax.set(title=title, xlabel=xlabel, ylabel="density" + (" (log)" if log_y else ""))
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16),
                  ncol=len(data))   # one column per split: histogram, p99.5, max
    fig.suptitle("Brain-pixel intensity distributions")
    return fig


def _number(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


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

    which = "Training" if shown == "train" else "Validation"
    save_figure(plot_pairs(pairs.t1, pairs.t2, pairs, picks, "raw scanner units"),
                figs / "eda_pairs_raw.png",
                f"{which} T1/T2 pairs per view, raw: one shared intensity scale per contrast",
                source.label)
    background = {s: float(1 - splits[s].brain_mask.mean()) for s in names}
    raw = {(s, c): brain_values(getattr(splits[s], c.lower()), splits[s].brain_mask)
           for s in names for c in ("T1", "T2")}
    save_figure(plot_histograms(raw, background, "raw intensity (scanner units)", log_y=True),
                figs / "eda_histograms_raw.png", "Intensity distributions before normalisation",
                source.label)
    t1n, t2n, _ = normed[shown]
    save_figure(plot_pairs(t1n, t2n, pairs, picks, normalised=True),
                figs / "eda_pairs_normalised.png",
                f"The same pairs after normalisation: fixed 0..1 scale, {NORMALISED_LABEL}",
                source.label)
    norm_values = {(s, c): brain_values(normed[s][i], normed[s][2])
                   for s in names for i, c in enumerate(("T1", "T2"))}
    save_figure(plot_histograms(norm_values, background, "normalised intensity", log_y=True),
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
