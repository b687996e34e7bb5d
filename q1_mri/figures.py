"""Q1 result figures: training curves, validation examples, worst slices, per-view bars."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from common.plotting import save_figure
from q1_mri.data import VIEWS, MRISplit

CURVES = (("train_loss", "training loss (L1 + 1-SSIM, + GAN term)"), ("masked_ssim", "SSIM in brain"),
          ("masked_psnr", "PSNR in brain (dB)"), ("masked_mae", "MAE in brain"))


def plot_curves(histories: dict[str, list[dict]]) -> plt.Figure:
    """Loss and brain-masked metrics per epoch; solid = validation, dashed = training subset."""
    fig, axes = plt.subplots(1, len(CURVES), figsize=(4 * len(CURVES), 3.6))
    for ax, (key, label) in zip(axes, CURVES):
        for i, (name, rows) in enumerate(histories.items()):
            epochs = [r["epoch"] for r in rows]
            color = f"C{i}"
            if key == "train_loss":
                ax.plot(epochs, [r[key] for r in rows], color=color, label=name)
            else:
                ax.plot(epochs, [r[f"validation_{key}"] for r in rows], color=color,
                        label=f"{name} validation")
                ax.plot(epochs, [r[f"train_{key}"] for r in rows], color=color, ls="--",
                        label=f"{name} train")
        ax.set(xlabel="epoch", ylabel=label, title=label)
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 6))
    return fig


def plot_slices(rows: np.ndarray, split: MRISplit, t1, t2, preds: dict, scores: dict,
                best: str, models: list[str]) -> plt.Figure:
    """One row per slice: T1 | true T2 | each model's T2 | each model's |error|."""
    cols = ["T1 (input)", "T2 (true)"] + [f"{m}" for m in models] + [f"|error| {m}" for m in models]
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(1.7 * len(cols), 1.8 * len(rows)),
                             squeeze=False)
    for r, i in enumerate(rows):
        images = [t1[i, 0], t2[i, 0]] + [preds[m][i, 0] for m in models]
        images += [np.abs(preds[m][i, 0] - t2[i, 0]) for m in models]
        for c, (ax, img) in enumerate(zip(axes[r], images)):
            is_err = c >= 2 + len(models)
            im = ax.imshow(img, vmin=0, vmax=0.5 if is_err else 1.0,
                           cmap="magma" if is_err else "gray")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c])
        axes[r, 0].set_ylabel(f"{split.view[i]}\n{split.patient_id[i][:14]}\n"
                              f"SSIM {scores[best]['masked_ssim'][i]:.3f}", fontsize=7)
    fig.colorbar(im, ax=axes[:, -1], shrink=0.6, label="|error| (normalised units)")
    return fig


def pick_examples(split: MRISplit, score: np.ndarray, per_view: int = 2) -> np.ndarray:
    """Slices near the median score of each view, among well-filled slices, various patients."""
    fill = split.brain_mask.reshape(len(split), -1).mean(1)
    chosen = []
    for view in VIEWS:
        idx = np.flatnonzero((split.view == view) & (fill >= np.median(fill)))
        if len(idx) == 0:
            continue
        order = idx[np.argsort(np.abs(score[idx] - np.median(score[idx])))]
        taken = []
        for i in order:
            if split.patient_id[i] not in {split.patient_id[j] for j in taken} or len(taken) >= \
                    len(np.unique(split.patient_id[idx])):
                taken.append(i)
            if len(taken) == per_view:
                break
        chosen += taken
    return np.array(chosen)


def plot_view_bars(methods: dict) -> plt.Figure:
    """Per-view brain-masked SSIM, PSNR and MAE of every method, with patient-bootstrap CIs."""
    metrics = (("masked_ssim", "SSIM in brain"), ("masked_psnr", "PSNR in brain (dB)"),
               ("masked_mae", "MAE in brain"))
    groups = ["all"] + [v for v in VIEWS if v in next(iter(methods.values()))["per_view"]]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    width = 0.8 / len(methods)
    for ax, (key, label) in zip(axes, metrics):
        for k, (name, m) in enumerate(methods.items()):
            aggs = [m["overall"] if g == "all" else m["per_view"][g] for g in groups]
            means = np.array([a[key]["mean"] for a in aggs])
            lows = np.array([a[key]["ci95"][0] for a in aggs])
            highs = np.array([a[key]["ci95"][1] for a in aggs])
            err = np.nan_to_num(np.stack([means - lows, highs - means]))
            ax.bar(np.arange(len(groups)) + k * width, means, width, yerr=err, capsize=2,
                   label=name)
        ax.set_xticks(np.arange(len(groups)) + width * (len(methods) - 1) / 2, groups)
        ax.set(title=label, ylabel=label, xlabel="view")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=len(methods))
    return fig


def write_all(folder: Path, split: MRISplit, data: dict, preds: dict, scores: dict,
              methods: dict, histories: dict, source_label: str) -> None:
    t1 = data["t1"].float().cpu().numpy()
    t2 = data["t2"].float().cpu().numpy()
    preds = {m: p.cpu().numpy() for m, p in preds.items()}
    models = list(histories) or ["linear"]
    best = max(models, key=lambda m: methods[m]["overall"]["masked_ssim"]["mean"])
    if histories:
        save_figure(plot_curves(histories), folder / "curves.png",
                    "Training curves (EMA weights, scored each epoch)", source_label)
    examples = pick_examples(split, scores[best]["masked_ssim"])
    save_figure(plot_slices(examples, split, t1, t2, preds, scores, best, models),
                folder / "examples.png", "Validation examples per view (typical slices)",
                source_label)
    fill = split.brain_mask.reshape(len(split), -1).mean(1)
    candidates = np.flatnonzero(fill >= 0.05)
    worst = candidates[np.argsort(scores[best]["masked_ssim"][candidates])[:6]]
    save_figure(plot_slices(worst, split, t1, t2, preds, scores, best, models),
                folder / "worst_slices.png",
                f"Worst slices by brain SSIM of {best} (slices with >= 5% brain)", source_label)
    save_figure(plot_view_bars(methods), folder / "per_view_bars.png",
                "Brain-masked metrics per view (bars: mean of slices, whiskers: 95% patient "
                "bootstrap)", source_label)
