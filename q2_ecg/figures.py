"""Q2 result figures from evaluation's output: curves, confusion matrices, ROC/PR, example beats,
scheme comparisons. Nothing here runs a model or imports evaluation."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import precision_recall_curve, roc_curve

from common.plotting import save_figure
from q2_ecg.beats import HALF_WINDOW
from q2_ecg.data import SAMPLING_RATE
from q2_ecg.metrics import CLASSES, HEADLINE
from q2_ecg.metrics import label as metric_label

CURVES = (("train_loss", "training loss"), ("val_abnormal_macro_f1", "mean F1 of SVEB and VEB"),
          ("val_normal_f1", "F1 normal (class 0)"), ("val_abnormal_f1", "F1 abnormal (classes 1-2)"),
          ("val_SVEB_f1", "F1 SVEB"), ("val_VEB_f1", "F1 VEB"))


def plot_curves(histories: dict[str, dict[str, list[dict]]]) -> plt.Figure:
    """Per epoch: training loss and inner-validation F1s (before bias tuning), one thin line per
    fold, one colour per method."""
    fig, axes = plt.subplots(2, 3, figsize=(12, 6))
    for ax, (key, label) in zip(axes.flat, CURVES):
        for c, (name, folds) in enumerate(histories.items()):
            for k, rows in enumerate(folds.values()):
                if key in rows[0]:
                    ax.plot([r["epoch"] for r in rows], [r[key] for r in rows], color=f"C{c}",
                            lw=0.9, alpha=0.8, marker=".", label=name if k == 0 else None)
        ax.set(title=label, xlabel="epoch", ylabel=label if key == "train_loss" else "F1")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.flat[1].legend()
    return fig


def plot_confusions(confusions: dict[str, list], names: list[str]) -> plt.Figure:
    """Out-of-fold confusion matrices: colour = share of the true class, text = count."""
    fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 3.3), squeeze=False)
    for ax, name in zip(axes[0], names):
        cm = np.array(confusions[name])
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
    """Normal vs abnormal: ROC (false-positive rate on a log axis, where a screening tool
    operates) and precision-recall with the prevalence of abnormal beats as the chance line."""
    fig, (roc, pr) = plt.subplots(1, 2, figsize=(10, 4))
    for name in names:
        p = preds[name]
        abnormal = p["y"] > 0
        fpr, tpr, _ = roc_curve(abnormal, p["p_abnormal"])
        prec, rec, _ = precision_recall_curve(abnormal, p["p_abnormal"])
        roc.plot(fpr.clip(1e-4), tpr, label=name)
        pr.plot(rec, prec, label=name)
    prevalence = float(np.mean(preds[names[0]]["y"] > 0))
    pr.axhline(prevalence, color="k", ls=":", lw=0.8, label=f"prevalence {prevalence:.3f}")
    roc.set(xscale="log", xlim=(1e-4, 1), xlabel="1 - specificity (normal beats called abnormal)",
            ylabel="sensitivity (abnormal beats found)", title="ROC, abnormal = SVEB or VEB")
    pr.set(xlabel="recall (sensitivity)", ylabel="precision (+P)",
           title="Precision-recall, abnormal = SVEB or VEB")
    roc.legend(loc="lower right")
    pr.legend(loc="lower left")
    return fig


def plot_examples(signal_of, pred: dict, n_per_cell: int = 3) -> plt.Figure:
    """Rows: true class; left columns correctly classified, right columns misclassified beats.

    signal_of(i) -> (beat window (W,), record template (W,)) of row i of `pred`.
    """
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
                    beat, template = signal_of(i)
                    ax.plot(t_s, template, lw=0.8, color="0.6", label="record's median beat")
                    ax.plot(t_s, beat, lw=0.8, color="C2" if correct else "C3", label="beat")
                    ax.set_title(f"{pred['record'][i]}: true {CLASSES[c]}, pred "
                                 f"{CLASSES[pred['pred'][i]]}\nP(abnormal) "
                                 f"{pred['p_abnormal'][i]:.2f}", fontsize=7)
                ax.axvline(0, color="k", lw=0.5, ls=":")
                if k == 0 and side == 0:
                    ax.set_ylabel("scaled amplitude")
                if c == 2:
                    ax.set_xlabel("time from R peak (s)")
    axes[0, 0].legend(fontsize=6, loc="lower left")
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
        ax.set(ylim=(0, 1.05), ylabel="held-out value", title=f"{model}: {title}")
        ax.legend(fontsize=7)
    return fig


def write_all(folder: Path, result: dict, oof: dict, histories: dict, label: str,
              signal_of=None) -> None:
    """Every figure of evaluation's result. oof[(method, scheme)]: pooled held-out rows;
    histories[(method, scheme)][fold]: history.csv rows; signal_of(method, i): see plot_examples."""
    kfold = {m: e for m, e in result["models"].get("kfold", {}).items()
             if not e["seeds"][min(e["seeds"])].get("problems")}     # every fold ran
    curves = {m: histories[m, "kfold"] for m in kfold if (m, "kfold") in histories
              and any("val_SVEB_f1" in rows[0] for rows in histories[m, "kfold"].values())}
    if curves:
        save_figure(plot_curves(curves), folder / "curves.png",
                    "Training curves of every fold (inner-validation records)", label)
    first = {m: e["seeds"][min(e["seeds"])]["pooled"] for m, e in kfold.items()}
    classifiers = [m for m, p in first.items() if "SVEB_f1" in p and m != "majority"]
    if classifiers:
        save_figure(plot_confusions({m: first[m]["confusion"] for m in classifiers}, classifiers),
                    folder / "confusion.png", "Out-of-fold confusion matrices (first seed)", label)
    ranked = [m for m in kfold if (m, "kfold") in oof and m != "majority"]
    if ranked:
        save_figure(plot_roc_pr({m: oof[m, "kfold"] for m in ranked}, ranked),
                    folder / "roc_pr.png", "Normal vs abnormal, out of fold (seed 0)", label)
    chosen = result.get("chosen_model")
    if chosen and signal_of is not None and (chosen, "kfold") in oof:
        save_figure(plot_examples(lambda i: signal_of(chosen, i), oof[chosen, "kfold"]),
                    folder / "examples.png",
                    f"Out-of-fold beats classified by {chosen}: correct (green) and wrong (red)",
                    label)
    for scheme, title, name in (("lodo", "held-out database", "lodo.png"),
                                ("beat", "leaky beat-level split", "leaky.png")):
        table = {}
        for method, entry in result["models"].get(scheme, {}).items():
            first = entry["seeds"][min(entry["seeds"])]
            table[method] = (first["per_database"] if scheme == "lodo" else {"beat split": {
                k: v["value"] for k, v in first["pooled"].items() if k in HEADLINE}})
        if table:
            save_figure(plot_grouped(table, HEADLINE, title), folder / name, title, label)
