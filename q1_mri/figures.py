"""Q1 result figures: training curves, test examples, worst slices, per-view paired differences,
per patient.

Drawn by q1_mri.eval from what it read (prediction files, the data's ground truth, history.csv);
every number is per patient first, in the oracle per-volume p99.5 units unless a title says
otherwise. Slices are shown rotated for display only (see `oriented`); the arrays and the models
never see that rotation.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from common.plotting import save_figure
from q1_mri.data import SCALE, VIEWS
from q1_mri.display import ORIENTATION_NOTE, image_panel, mark_orientation, oriented, wrap_id

CURVES = (("train_loss", "training loss (L1 + 1-SSIM, + GAN term)"), ("masked_ssim", "SSIM in brain"),
          ("masked_psnr", "PSNR in brain (dB)"), ("masked_mae", "MAE in brain"))
DIFFERENCES = (("masked_ssim", "SSIM in brain"), ("masked_psnr", "PSNR in brain (dB)"),
               ("masked_mae", "MAE in brain"))
MIN_WORST_FILL = 0.15   # worst slices are drawn among slices with at least this brain fraction
ERROR_MAX = 0.5         # |error| colour scale, normalised units

# ---------------------------------------------------------------- figures

def plot_curves(histories: dict[str, dict[str, list[dict]]]) -> plt.Figure:
    """Loss and brain metrics per epoch, mean over folds (band: min-max over folds); solid =
    the fold's held-out test patients (monitor only), dashed = a training subset."""
    fig, axes = plt.subplots(1, len(CURVES), figsize=(4 * len(CURVES), 3.6))
    for ax, (key, label) in zip(axes, CURVES):
        for i, (name, folds) in enumerate(histories.items()):
            n = min(len(h) for h in folds.values())
            epochs = np.arange(1, n + 1)
            for prefix, ls in (("heldout_", "-"), ("train_", "--")):
                column = key if key == "train_loss" else prefix + key
                if not all(column in h[0] for h in folds.values()):
                    continue
                values = np.array([[row[column] for row in h[:n]] for h in folds.values()])
                what = "" if key == "train_loss" else (" held out" if ls == "-" else " train")
                ax.plot(epochs, values.mean(0), color=f"C{i}", ls=ls, label=f"{name}{what}")
                if len(values) > 1:
                    ax.fill_between(epochs, values.min(0), values.max(0), color=f"C{i}",
                                    alpha=0.12, lw=0)
                if key == "train_loss":
                    break
        ax.set(xlabel="epoch", ylabel=label, title=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 6))
    fig.suptitle("Training curves: mean over folds (band: min-max over folds)")
    return fig


def plot_slices(rows: np.ndarray, truth, preds: dict[str, np.ndarray],
                scores: dict[str, np.ndarray], models: list[str],
                title: str = "Test slices") -> plt.Figure:
    """One row per slice (index into truth.slices): T1 | true T2 | then per model: its
    prediction | its |error|. Images in normalised units (0..1), errors on 0..ERROR_MAX.

    preds: {model: (N, 1, H, W) prediction at the same rows}; scores: {model: (N,) brain SSIM
    of each shown slice}, named on each row's label."""
    cols = ["T1 (input)", "true T2"]
    for m in models:
        cols += [m, f"|error| {m}"]
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(1.55 * len(cols) + 2.4,
                                                             1.75 * len(rows) + 0.8),
                             squeeze=False)
    s = truth.slices
    gray = err = None
    for r, i in enumerate(rows):
        view = str(s.view[i])
        images = [truth.t1[i, 0], truth.t2[i, 0]]
        for m in models:
            pred = preds[m][r, 0].astype(np.float32)
            images += [pred, np.abs(pred - truth.t2[i, 0])]
        for c, (ax, img) in enumerate(zip(axes[r], images)):
            is_err = c >= 2 and c % 2 == 1
            im = image_panel(ax, oriented(img, view), cols[c], vmin=0,
                             vmax=ERROR_MAX if is_err else 1.0,
                             cmap="magma" if is_err else "gray")
            err, gray = (im, gray) if is_err else (err, im)
        mark_orientation(axes[r, 0], view)
        label = [wrap_id(s.patient_id[i]), view] + [f"{m} SSIM {scores[m][r]:.3f}"
                                                    for m in models]
        axes[r, 0].set_ylabel("\n".join(label), fontsize=7)
    fig.colorbar(gray, ax=axes, shrink=0.45, pad=0.01,
                 label=f"intensity (normalised, {SCALE} units)")
    if err is not None:
        fig.colorbar(err, ax=axes, shrink=0.45, pad=0.01, extend="max",
                     label=f"|prediction - true T2| ({SCALE} units)")
    fig.supxlabel(f"SSIM: brain-masked, {SCALE} units, data range 1. " + ORIENTATION_NOTE,
                  fontsize=7, wrap=True)
    fig.suptitle(title)
    return fig


def pick_examples(slices, rows: np.ndarray, score: np.ndarray, per_view: int = 2) -> np.ndarray:
    """Positions in `rows` of slices near the median score of each view, among well-filled
    slices, from different patients where possible."""
    fill = slices.brain_mask[rows].reshape(len(rows), -1).mean(1)
    chosen = []
    for view in VIEWS:
        pos = np.flatnonzero((slices.view[rows] == view) & (fill >= np.median(fill)))
        if len(pos) == 0:
            continue
        order = pos[np.argsort(np.abs(score[pos] - np.median(score[pos])))]
        taken: list[int] = []
        patients = slices.patient_id[rows]
        for k in order:
            if patients[k] not in {patients[j] for j in taken} or len(taken) >= len(
                    np.unique(patients[pos])):
                taken.append(k)
            if len(taken) == per_view:
                break
        chosen += taken
    return np.array(chosen, dtype=np.int64)


def pick_worst(slices, rows: np.ndarray, score: np.ndarray, n: int = 6,
               min_fill: float = MIN_WORST_FILL) -> np.ndarray:
    """Positions in `rows` of the `n` lowest scores among slices with at least `min_fill` of
    the image inside the brain mask (near-empty edge slices are left out)."""
    fill = slices.brain_mask[rows].reshape(len(rows), -1).mean(1)
    candidates = np.flatnonzero(fill >= min_fill)
    return candidates[np.argsort(score[candidates], kind="stable")[:n]]


def per_view_patient(slices, idx: np.ndarray, values: np.ndarray, view: str) -> dict[str, float]:
    """{patient: mean of `values` over its slices of `view`}; idx (n,) into `slices`."""
    keep = slices.view[idx] == view
    pid = slices.patient_id[idx][keep]
    return {p: float(values[keep][pid == p].mean()) for p in np.unique(pid).tolist()}


def plot_view_differences(slices, oof: dict, reference: str, methods: list[str]) -> plt.Figure:
    """Each method minus `reference`, paired per patient, within each view (the tables give the
    paired difference over all views only): bar = mean over patients, dots = the patients,
    with how many patients improve under each bar."""
    views = [v for v in VIEWS if (slices.view[oof[reference]["idx"]] == v).any()]
    fig, axes = plt.subplots(1, len(DIFFERENCES), figsize=(4.4 * len(DIFFERENCES), 3.9))
    width = 0.8 / max(1, len(methods))
    for ax, (key, label) in zip(axes, DIFFERENCES):
        for k, name in enumerate(methods):
            for g, view in enumerate(views):
                ref = per_view_patient(slices, oof[reference]["idx"],
                                       oof[reference]["scores"][SCALE][key], view)
                other = per_view_patient(slices, oof[name]["idx"],
                                         oof[name]["scores"][SCALE][key], view)
                d = np.array([other[p] - ref[p] for p in sorted(set(ref) & set(other))])
                if not len(d):
                    continue
                x = g + k * width
                ax.bar(x, d.mean(), width, color=f"C{k}", alpha=0.7,
                       label=name if g == 0 else None)
                jitter = np.linspace(-0.25, 0.25, len(d)) * width if len(d) > 1 else 0
                ax.scatter(x + jitter, d, s=5, color="k", zorder=3)
                better = int(((d < 0) if key == "masked_mae" else (d > 0)).sum())
                ax.annotate(f"{better}/{len(d)}", (x, 0), xytext=(0, -9 if d.mean() > 0 else 3),
                            textcoords="offset points", ha="center", fontsize=6)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(np.arange(len(views)) + width * (len(methods) - 1) / 2, views)
        better = "lower" if key == "masked_mae" else "higher"
        ax.set(title=f"{label}: method - {reference} ({better} is better)",
               ylabel=f"difference in {label}", xlabel="view (dots: patients; n/m: improved)")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center",
               ncol=min(len(methods), 6))
    fig.suptitle(f"Paired per-patient differences from {reference}, per view")
    return fig


def plot_patients(methods: dict, key: str = "masked_ssim") -> plt.Figure:
    """Per-patient brain SSIM of every method, one line per patient: the paired comparison.
    With the identity baseline (far below the rest) a second panel leaves it out, so the
    differences among the others are visible."""
    names = list(methods)
    zoom = [n for n in names if n.split("+")[0] != "identity"]
    panels = [names] + ([zoom] if 1 < len(zoom) < len(names) else [])
    patients = sorted(set().union(*(m["scores"][SCALE]["per_patient"] for m in methods.values())))
    fig, axes = plt.subplots(1, len(panels), figsize=(sum(max(4, 1.1 * len(p)) for p in panels)
                                                      + 2.5, 4), squeeze=False)
    for ax, shown in zip(axes[0], panels):
        for j, p in enumerate(patients):
            y = [methods[n]["scores"][SCALE]["per_patient"].get(p, {}).get(key, np.nan)
                 for n in shown]
            ax.plot(range(len(shown)), y, marker="o", ms=3, lw=1, color=f"C{j % 10}", label=p)
        ax.set_xticks(range(len(shown)), shown, rotation=20, ha="right")
        ax.set(xlabel="method", ylabel="SSIM in brain (mean over the patient's slices)",
               title="each line joins one patient's values" if shown is names
               else "zoom: without the identity baseline")
    if len(patients) <= 12:
        axes[0, -1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle("Brain SSIM per patient and method")
    return fig


def write_all(folder: Path, truth, oof: dict, result: dict, source_label: str) -> None:
    """Every Q1 result figure from the pooled predictions `oof` of q1_mri.eval."""
    methods = result["methods"]
    histories = {m: o["history"] for m, o in oof.items() if o["history"]}
    if histories:
        save_figure(plot_curves(histories), folder / "curves.png",
                    "Training curves (EMA weights, scored each epoch; held out = the fold's test "
                    "patients, monitor only)", source_label)
    models = [m for m in oof if m in histories] or [m for m in ("linear",) if m in oof] \
        or list(oof)[:1]
    if result.get("final_model"):                  # external: the final model and the baselines
        models = list(oof)
    rows = oof[models[0]]["idx"]
    for m in models[1:]:
        rows = np.intersect1d(rows, oof[m]["idx"])
    at = {m: np.searchsorted(oof[m]["idx"], rows) for m in models}
    ssim = {m: oof[m]["scores"][SCALE]["masked_ssim"][at[m]] for m in models}
    best = max(models, key=lambda m: methods[m]["scores"][SCALE]["overall"]["masked_ssim"]["mean"])
    for name, picked, title in (
            ("examples.png", pick_examples(truth.slices, rows, ssim[best]),
             f"Test examples per view: slices near the view's median brain SSIM of {best}, "
             "out of fold"),
            ("worst_slices.png", pick_worst(truth.slices, rows, ssim[best]),
             f"Worst slices by brain SSIM of {best}, among slices with >= "
             f"{100 * MIN_WORST_FILL:.0f} % of the image in the brain mask")):
        preds = {m: oof[m]["pred"][at[m][picked]] for m in models}
        save_figure(plot_slices(rows[picked], truth, preds, {m: ssim[m][picked] for m in models},
                                models), folder / name, title, source_label)
    reference = result["paired"]["reference"]
    others = [m for m in methods if m != reference and m in oof]
    networks = [m for m in others if m.split("-")[0].split("+")[0] not in ("identity", "linear")]
    if others:
        save_figure(plot_view_differences(truth.slices, oof, reference, networks or others),
                    folder / "per_view_bars.png",
                    f"Per view, paired per patient: each {'network' if networks else 'method'} "
                    f"minus {reference} ({SCALE} units"
                    + ("; the baselines are in per_patient.png)" if networks else ")"),
                    source_label)
    save_figure(plot_patients(methods), folder / "per_patient.png",
                f"Brain SSIM per patient ({SCALE} units): the paired comparison", source_label)
