"""Q1 result figures: training curves, test examples, worst slices, per patient.

    python -m q1_mri.figures --data ../shared/data/mri

A stage of its own after evaluation: it reads metrics.json, the pooled out-of-fold rows
(oof/<method>.npz), the runs' history.csv and prediction files, and the data for the images
shown; it runs no model and scores nothing anew. Every number is per patient first, in
metrics.SLICE_SCALE units. Slices are shown rotated for display only (see `oriented`); the
arrays and the models never see that rotation.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from common import cli
from common.io import read_csv, read_json
from common.plotting import save_figure
from common.results import read_metrics, results_dir
from q1_mri.data import VIEWS, load_mri, pool, resolve_source
from q1_mri.display import ORIENTATION_NOTE, image_panel, mark_orientation, oriented, wrap_id
from q1_mri.metrics import SLICE_SCALE, slice_scaled
from q1_mri.prediction_file import load_predictions
from q1_mri.truth import Truth

SCALE = SLICE_SCALE
CURVES = (("train_loss", "training loss"), ("masked_ssim", "SSIM in brain"),
          ("masked_psnr", "PSNR in brain (dB)"))
MIN_WORST_FILL = 0.15   # worst slices are drawn among slices with at least this brain fraction
ERROR_MAX = 0.5         # |error| colour scale, normalised units

# ---------------------------------------------------------------- figures

def plot_curves(histories: dict[str, dict[str, list[dict]]]) -> plt.Figure:
    """Loss and brain metrics against training slices seen, mean over folds (band: min-max over
    folds); solid = the fold's inner-validation patients (what picks the epoch), dashed = a
    fixed subset of its training slices (the gap is over-fitting)."""
    fig, axes = plt.subplots(1, len(CURVES), figsize=(4.2 * len(CURVES), 3.8))
    for ax, (key, label) in zip(axes, CURVES):
        for i, (name, folds) in enumerate(histories.items()):
            n = min(len(h) for h in folds.values())
            first = next(iter(folds.values()))
            x = np.array([row["slices_seen"] for row in first[:n]]) / 1e3
            for prefix, ls in (("val_", "-"), ("train_", "--")):
                column = key if key == "train_loss" else prefix + key
                if not all(column in h[0] for h in folds.values()):
                    continue
                values = np.array([[row[column] for row in h[:n]] for h in folds.values()])
                what = "" if key == "train_loss" else (" inner val." if ls == "-" else " train")
                ax.plot(x, values.mean(0), color=f"C{i}", ls=ls, marker=".", label=f"{name}{what}")
                if len(values) > 1:
                    ax.fill_between(x, values.min(0), values.max(0), color=f"C{i}", alpha=0.12,
                                    lw=0)
                if key == "train_loss":
                    break
        ax.set(xlabel="training slices seen (thousands)", ylabel=label, title=label)
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 6))
    fig.suptitle("Training curves: mean over folds (band: min-max over folds)")
    return fig


def plot_slices(slices, rows: np.ndarray, t1: np.ndarray, t2: np.ndarray,
                preds: dict[str, np.ndarray], scores: dict[str, np.ndarray]) -> plt.Figure:
    """One row per slice (`rows` index into `slices`): T1 | true T2 | then per model: its
    prediction | its |error|. t1, t2 (n, 1, H, W) and preds {model: (n, 1, H, W)} in
    SLICE_SCALE units (0..1); errors on 0..ERROR_MAX; scores {model: (n,) brain SSIM}."""
    models = list(preds)
    cols = ["T1 (input)", "true T2"]
    for m in models:
        cols += [m, f"|error| {m}"]
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(1.55 * len(cols) + 2.4,
                                                             1.75 * len(rows) + 0.8),
                             squeeze=False)
    gray = err = None
    for r, i in enumerate(rows):
        view = str(slices.view[i])
        images = [t1[r, 0], t2[r, 0]]
        for m in models:
            images += [preds[m][r, 0], np.abs(preds[m][r, 0] - t2[r, 0])]
        for c, (ax, img) in enumerate(zip(axes[r], images)):
            is_err = c >= 2 and c % 2 == 1
            im = image_panel(ax, oriented(img, view), cols[c], vmin=0,
                             vmax=ERROR_MAX if is_err else 1.0,
                             cmap="magma" if is_err else "gray")
            err, gray = (im, gray) if is_err else (err, im)
        mark_orientation(axes[r, 0], view)
        label = [wrap_id(slices.patient_id[i]), view] + [f"{m} SSIM {scores[m][r]:.3f}"
                                                         for m in models]
        axes[r, 0].set_ylabel("\n".join(label), fontsize=7)
    fig.colorbar(gray, ax=axes, shrink=0.45, pad=0.01, label=f"intensity ({SCALE} units)")
    if err is not None:
        fig.colorbar(err, ax=axes, shrink=0.45, pad=0.01, extend="max",
                     label=f"|prediction - true T2| ({SCALE} units)")
    fig.supxlabel(f"SSIM: brain-masked, {SCALE} units, data range 1. " + ORIENTATION_NOTE,
                  fontsize=7, wrap=True)
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


def plot_patients(methods: dict, reference: str, key: str = "masked_ssim") -> plt.Figure:
    """Per patient, each method's brain SSIM against the reference's: a dot above the diagonal
    is a patient the method serves better (the paired comparison behind the tables)."""
    ref = {p: v[key] for p, v in methods[reference]["per_patient"].items()}
    others = [m for m in methods if m != reference]
    fig, ax = plt.subplots(figsize=(5.8, 5.2))
    lo, hi = min(ref.values()), max(ref.values())
    for c, m in enumerate(others):
        mine = {p: v[key] for p, v in methods[m]["per_patient"].items() if p in ref}
        x, y = [ref[p] for p in mine], list(mine.values())
        better = sum(b > a for a, b in zip(x, y))
        ax.scatter(x, y, s=14, color=f"C{c}", label=f"{m}: better for {better} of {len(x)}")
        lo, hi = min(lo, *y), max(hi, *y)
    pad = 0.02 * (hi - lo)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.5", lw=0.8, ls=":")
    ax.set(xlabel=f"{reference}: brain SSIM per patient", ylabel="method: brain SSIM per patient",
           title=f"Per patient ({SCALE} units), above the diagonal = better than {reference}")
    ax.legend(fontsize=7, loc="upper left")
    fig.suptitle("The paired comparison, patient by patient (out of fold)")
    return fig


def scaled(images: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(n, 1, H, W) images in SLICE_SCALE units (numpy in and out)."""
    import torch
    return slice_scaled(torch.from_numpy(np.asarray(images, np.float32)),
                        torch.from_numpy(mask)).numpy()


def histories(root: Path, entry: dict) -> dict[str, list[dict]]:
    """{fold: history.csv rows} of a method's runs (metrics.json's "runs", its median seed)."""
    return {read_json(root / run / "summary.json")["fold"]: read_csv(root / run / "history.csv")
            for run in entry["runs"] if (root / run / "history.csv").exists()}


def predicted(root: Path, entry: dict, rows: dict, picked: np.ndarray) -> np.ndarray:
    """(n, 1, H, W) predicted T2 of the pooled out-of-fold rows `picked` (positions in `rows`,
    an oof/<method>.npz), read back from the runs' prediction files."""
    out = []
    for k in picked:
        p = load_predictions(root / entry["runs"][rows["run"][k]] / "predictions.npz")
        images = p.t2_pred_flip if rows["flip"][k] else p.t2_pred
        out.append(images[rows["pos"][k]].astype(np.float32))
    return np.stack(out)


def build_all(root: Path, truth: Truth, result: dict) -> dict[str, tuple[plt.Figure, str]]:
    """{file name: (figure, title)} of every Q1 result figure of the results folder `root`
    (metrics.json written): what write_all saves and the notebook shows."""
    out = {}
    methods = {m: e for m, e in result["methods"].items() if not e["problems"]} or result["methods"]
    curves = {m: histories(root, e) for m, e in methods.items()
              if m.split("-")[0] not in ("identity", "linear", "lut")}
    curves = {m: h for m, h in curves.items() if h}
    if curves:
        out["curves.png"] = (plot_curves(curves),
                             "Training curves (EMA weights scored after each epoch)")
    shown = [m for m in (result.get("chosen_model"), result["paired"]["reference"])
             if m in methods and (root / "oof" / f"{m}.npz").exists()]
    shown = list(dict.fromkeys(shown))
    if not shown:
        return out
    oof = {m: dict(np.load(root / "oof" / f"{m}.npz")) for m in shown}
    rows = oof[shown[0]]["idx"]
    for m in shown[1:]:
        rows = np.intersect1d(rows, oof[m]["idx"])
    at = {m: np.searchsorted(oof[m]["idx"], rows) for m in shown}
    ssim = {m: oof[m]["masked_ssim"][at[m]] for m in shown}
    s, best = truth.slices, shown[0]
    for name, picked, title in (
            ("examples.png", pick_examples(s, rows, ssim[best]),
             f"Test slices per view near the view's median brain SSIM of {best}, out of fold"),
            ("worst_slices.png", pick_worst(s, rows, ssim[best]),
             f"Worst test slices by brain SSIM of {best}, among slices with >= "
             f"{100 * MIN_WORST_FILL:.0f} % of the image in the brain")):
        i = rows[picked]
        mask = truth.mask[i]
        preds = {m: scaled(predicted(root, methods[m], oof[m], at[m][picked]), mask)
                 for m in shown}
        fig = plot_slices(s, i, scaled(s.t1[i], mask), scaled(s.t2[i], mask), preds,
                          {m: ssim[m][picked] for m in shown})
        fig.suptitle(title)
        out[name] = (fig, title)
    reference = result["paired"]["reference"]
    if reference in methods and len(methods) > 1:
        out["per_patient.png"] = (plot_patients(methods, reference),
                                  f"Brain SSIM per patient against {reference} ({SCALE} units)")
    return out


def write_all(root: Path, truth: Truth, result: dict, source_label: str) -> None:
    """Save every figure of build_all under root/figures/."""
    for name, (fig, title) in build_all(root, truth, result).items():
        save_figure(fig, root / "figures" / name, title, source_label)


def parse_args(argv=None):
    return cli.data_args(__doc__, argv)


def main(args) -> Path:
    source = resolve_source(args.data)
    root = results_dir("q1", source, args.results_root)
    write_all(root, Truth(pool(load_mri(source))), read_metrics(root, "q1_mri.eval"), source.label)
    print(f"Q1 figures written to {root / 'figures'}")
    return root / "figures"


if __name__ == "__main__":
    cli.run_main(lambda: main(parse_args()))
