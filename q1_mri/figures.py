"""Q1 result figures: training curves, test examples, worst slices, per-view bars, per patient.

Drawn by q1_mri.eval from what it read (prediction files, the data's ground truth, history.csv);
every number is per patient first, in the oracle per-volume p99.5 units unless a title says
otherwise.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from common.plotting import save_figure
from q1_mri.data import SCALE, VIEWS

CURVES = (("train_loss", "training loss (L1 + 1-SSIM, + GAN term)"), ("masked_ssim", "SSIM in brain"),
          ("masked_psnr", "PSNR in brain (dB)"), ("masked_mae", "MAE in brain"))
BARS = (("masked_ssim", "SSIM in brain"), ("masked_psnr", "PSNR in brain (dB)"),
        ("masked_mae", "MAE in brain"))


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
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 6))
    return fig


def plot_slices(rows: np.ndarray, truth, preds: dict[str, np.ndarray], score: np.ndarray,
                models: list[str]) -> plt.Figure:
    """One row per slice (index into truth.slices): T1 | true T2 | each model | each |error|.

    preds: {model: (N, 1, H, W) prediction at the same rows}; score: (N,) brain SSIM shown."""
    cols = ["T1 (input)", "T2 (true)"] + list(models) + [f"|error| {m}" for m in models]
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(1.7 * len(cols), 1.8 * len(rows)),
                             squeeze=False)
    s = truth.slices
    for r, i in enumerate(rows):
        images = [truth.t1[i, 0], truth.t2[i, 0]] + [preds[m][r, 0] for m in models]
        images += [np.abs(preds[m][r, 0].astype(np.float32) - truth.t2[i, 0]) for m in models]
        for c, (ax, img) in enumerate(zip(axes[r], images)):
            is_err = c >= 2 + len(models)
            im = ax.imshow(img, vmin=0, vmax=0.5 if is_err else 1.0,
                           cmap="magma" if is_err else "gray")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c])
        axes[r, 0].set_ylabel(f"{s.view[i]}\n{s.patient_id[i][:14]}\nSSIM {score[r]:.3f}",
                              fontsize=7)
    fig.colorbar(im, ax=axes[:, -1], shrink=0.6, label=f"|error| ({SCALE} units)")
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


def plot_view_bars(methods: dict) -> plt.Figure:
    """Per-view brain metrics of every method: bars = mean over patients of per-patient means,
    dots = the patients, whiskers = 95 % patient bootstrap (only with >= 5 patients)."""
    groups = ["all"] + [v for v in VIEWS if v in next(iter(methods.values()))["scores"][SCALE]
                        ["per_view"]]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    width = 0.8 / len(methods)
    for ax, (key, label) in zip(axes, BARS):
        for k, (name, m) in enumerate(methods.items()):
            sc = m["scores"][SCALE]
            aggs = [sc["overall"] if g == "all" else sc["per_view"].get(g) for g in groups]
            x = np.arange(len(groups)) + k * width
            means = np.array([a[key]["mean"] if a else np.nan for a in aggs])
            err = np.array([[a[key]["mean"] - a[key]["ci95"][0], a[key]["ci95"][1] - a[key]["mean"]]
                            if a and a[key]["ci95"] else [0, 0] for a in aggs]).T
            ax.bar(x, means, width, yerr=err, capsize=2, label=name)
            values = [p[key] for p in sc["per_patient"].values()]
            ax.scatter(np.full(len(values), x[0]), values, s=6, color="k", zorder=3)
        ax.set_xticks(np.arange(len(groups)) + width * (len(methods) - 1) / 2, groups)
        ax.set(title=label, ylabel=label, xlabel="view (dots: patients, all views)")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center",
               ncol=min(len(methods), 6))
    return fig


def plot_patients(methods: dict, key: str = "masked_ssim") -> plt.Figure:
    """Per-patient brain SSIM of every method, one line per patient: the paired comparison."""
    names = list(methods)
    patients = sorted(set().union(*(m["scores"][SCALE]["per_patient"] for m in methods.values())))
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(names)), 4))
    for j, p in enumerate(patients):
        y = [methods[n]["scores"][SCALE]["per_patient"].get(p, {}).get(key, np.nan) for n in names]
        ax.plot(range(len(names)), y, marker="o", ms=3, lw=1, color=f"C{j % 10}",
                label=p[:22])
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set(ylabel="SSIM in brain (mean over the patient's slices)", title="per patient")
    if len(patients) <= 12:
        ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
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
    best = max(models, key=lambda m: methods[m]["scores"][SCALE]["overall"]["masked_ssim"]["mean"])
    score = oof[best]["scores"][SCALE]["masked_ssim"][at[best]]
    examples = pick_examples(truth.slices, rows, score)
    preds = {m: oof[m]["pred"][at[m][examples]] for m in models}
    save_figure(plot_slices(rows[examples], truth, preds, score[examples], models),
                folder / "examples.png",
                "Test examples per view (typical slices, out of fold)", source_label)
    fill = truth.slices.brain_mask[rows].reshape(len(rows), -1).mean(1)
    candidates = np.flatnonzero(fill >= 0.05)
    worst = candidates[np.argsort(score[candidates])[:6]]
    preds = {m: oof[m]["pred"][at[m][worst]] for m in models}
    save_figure(plot_slices(rows[worst], truth, preds, score[worst], models),
                folder / "worst_slices.png",
                f"Worst slices by brain SSIM of {best} (slices with >= 5% brain)", source_label)
    save_figure(plot_view_bars(methods), folder / "per_view_bars.png",
                f"Brain metrics per view, per-patient means ({SCALE} units)", source_label)
    save_figure(plot_patients(methods), folder / "per_patient.png",
                f"Brain SSIM per patient ({SCALE} units): the paired comparison", source_label)
