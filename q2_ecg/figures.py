"""Q2 result figures: curves, confusion matrices, ROC/PR, example beats, split comparisons."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from common.plotting import save_figure
from q2_ecg.beats import HALF_WINDOW
from q2_ecg.data import SAMPLING_RATE
from q2_ecg.metrics import CLASSES
from q2_ecg.metrics import label as metric_label

CURVES = (("train_loss", "training loss"), ("val_abnormal_macro_f1", "mean F1 of SVEB and VEB"),
          ("val_normal_f1", "F1 normal (class 0)"), ("val_abnormal_f1", "F1 abnormal (classes 1-2)"),
          ("val_SVEB_f1", "F1 SVEB"), ("val_VEB_f1", "F1 VEB"))


def plot_curves(histories: dict[str, list[dict]]) -> plt.Figure:
    """Per epoch: training loss and validation F1s (validation patients, before bias tuning)."""
    fig, axes = plt.subplots(2, 3, figsize=(12, 6))
    for ax, (key, label) in zip(axes.flat, CURVES):
        for name, rows in histories.items():
            if key in rows[0]:
                ax.plot([r["epoch"] for r in rows], [r[key] for r in rows], marker=".", label=name)
        ax.set(title=label, xlabel="epoch", ylabel=label if key == "train_loss" else "F1")
    axes.flat[1].legend()
    return fig


def plot_confusions(models: dict, names: list[str]) -> plt.Figure:
    """Test confusion matrices: colour = share of the true class, text = count."""
    fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 3.3), squeeze=False)
    for ax, name in zip(axes[0], names):
        cm = np.array(models[name]["test"]["confusion"])
        share = cm / cm.sum(1, keepdims=True).clip(1)
        ax.imshow(share, vmin=0, vmax=1, cmap="Blues")
        for i in range(3):
            for j in range(3):
                ax.text(j, i, f"{cm[i, j]}\n{100 * share[i, j]:.1f}%", ha="center", va="center",
                        fontsize=7, color="white" if share[i, j] > 0.5 else "black")
        ax.set(xticks=range(3), yticks=range(3), xticklabels=CLASSES, yticklabels=CLASSES,
               xlabel="predicted", ylabel="true", title=name)
        ax.grid(False)
    return fig


def plot_roc_pr(preds: dict, names: list[str]) -> plt.Figure:
    """Normal vs abnormal: ROC and precision-recall curves of every score."""
    fig, (roc, pr) = plt.subplots(1, 2, figsize=(10, 4))
    for name in names:
        p = preds[name]
        abnormal = p["y"] > 0
        fpr, tpr, _ = roc_curve(abnormal, p["p_abnormal"])
        prec, rec, _ = precision_recall_curve(abnormal, p["p_abnormal"])
        roc.plot(fpr, tpr, label=name)
        pr.plot(rec, prec, label=name)
    roc.plot([0, 1], [0, 1], "k:", lw=0.8)
    roc.set(xlabel="1 - specificity (normal beats called abnormal)",
            ylabel="sensitivity (abnormal beats found)", title="ROC, abnormal = SVEB or VEB")
    pr.set(xlabel="recall (sensitivity)", ylabel="precision (+P)",
           title="Precision-recall, abnormal = SVEB or VEB")
    roc.legend(loc="lower right")
    return fig


def plot_examples(signal_of, pred: dict, n_per_cell: int = 3) -> plt.Figure:
    """Rows: true class; left columns correctly classified, right columns misclassified beats."""
    rng = np.random.default_rng(0)
    t_s = np.arange(-HALF_WINDOW, HALF_WINDOW) / SAMPLING_RATE
    fig, axes = plt.subplots(3, 2 * n_per_cell, figsize=(2.1 * 2 * n_per_cell, 5.5), sharex=True)
    for c in range(3):
        for side, correct in enumerate((True, False)):
            pool = np.flatnonzero((pred["y"] == c) & ((pred["pred"] == c) == correct))
            picks = rng.choice(pool, min(n_per_cell, len(pool)), replace=False) if len(pool) else []
            for k in range(n_per_cell):
                ax = axes[c, side * n_per_cell + k]
                if k < len(picks):
                    i = picks[k]
                    ax.plot(t_s, signal_of(pred["beats"][i]), lw=0.8,
                            color="C2" if correct else "C3")
                    ax.set_title(f"true {CLASSES[c]}, pred {CLASSES[pred['pred'][i]]}\n"
                                 f"P(abnormal) {pred['p_abnormal'][i]:.2f}", fontsize=7)
                ax.axvline(0, color="k", lw=0.5, ls=":")
                if k == 0 and side == 0:
                    ax.set_ylabel("scaled amplitude")
                if c == 2:
                    ax.set_xlabel("time from R peak (s)")
    return fig


def plot_grouped(table: dict[str, dict[str, dict]], keys: tuple[str, ...], title: str
                 ) -> plt.Figure:
    """Bars of `keys` for each (model, setting) in table[model][setting]."""
    settings = sorted({s for per in table.values() for s in per})
    fig, axes = plt.subplots(1, len(table), figsize=(5.5 * len(table), 3.6), squeeze=False)
    width = 0.8 / len(settings)
    for ax, (model, per) in zip(axes[0], table.items()):
        for k, setting in enumerate(settings):
            if setting in per:
                ax.bar(np.arange(len(keys)) + k * width, [per[setting].get(key, np.nan)
                                                          for key in keys], width, label=setting)
        ax.set_xticks(np.arange(len(keys)) + width * (len(settings) - 1) / 2,
                      [metric_label(k) for k in keys], rotation=30, ha="right")
        ax.set(ylim=(0, 1.05), ylabel="test value", title=f"{model}: {title}")
        ax.legend(fontsize=7)
    return fig


def write_all(folder: Path, ctx, models: dict, preds: dict, histories: dict, label: str) -> None:
    patient = [n for n in models if n.endswith("-patient")]
    curves = {n: h for n, h in histories.items() if n in patient and "val_SVEB_f1" in h[0]}
    if curves:
        save_figure(plot_curves(curves), folder / "curves.png",
                    "Training curves (validation patients)", label)
    classifiers = [n for n in patient if "confusion" in models[n]["test"]
                   and not n.startswith(("majority", "autoencoder"))]
    if classifiers:
        save_figure(plot_confusions(models, classifiers), folder / "confusion.png",
                    "Confusion matrices on the test patients", label)
    scored = [n for n in patient if n in preds]
    if scored:
        save_figure(plot_roc_pr(preds, scored), folder / "roc_pr.png",
                    "Normal vs abnormal on the test patients", label)
    best = max(classifiers, key=lambda n: models[n]["test"]["abnormal_macro_f1"]["value"],
               default=None)
    if best:
        import torch

        from q2_ecg.beats import centred_windows
        signal = lambda i: centred_windows(ctx.dev, torch.tensor([i], device=ctx.device)).cpu().numpy()[0]  # noqa: E731
        save_figure(plot_examples(signal, preds[best]), folder / "examples.png",
                    f"Test beats classified by {best}: correct (green) and wrong (red)", label)
    from q2_ecg.eval import HEADLINE, compare_splits, lodo_table
    leaky = compare_splits(models)
    if leaky:
        save_figure(plot_grouped(leaky, HEADLINE, "beat-level vs patient-level split"),
                    folder / "leaky_vs_patient.png",
                    "The same model tested on random beats vs on unseen patients", label)
    lodo = lodo_table(models)
    if lodo:
        save_figure(plot_grouped(lodo, HEADLINE, "held-out database"), folder / "lodo.png",
                    "Leave-one-database-out: trained on two databases, tested on the third",
                    label)
