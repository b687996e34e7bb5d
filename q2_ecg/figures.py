"""Q2 result figures: curves, confusion matrices, ROC/PR, example beats, scheme contrasts.

    python -m q2_ecg.figures --data ../shared/data/ecg

A stage of its own after evaluation: it reads metrics.json, the pooled out-of-fold rows
(oof/*.npz), the runs' history.csv and, for the example beats, the data; it runs no model and
scores nothing anew."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import auc, precision_recall_curve, roc_curve

from common import cli
from common.io import read_csv, read_json
from common.plotting import save_figure
from common.results import read_metrics, results_dir
from q2_ecg.beats import HALF_WINDOW, RR_NAMES, build_table
from q2_ecg.data import SAMPLING_RATE, load_records, resolve_source
from q2_ecg.eda import database_name
from q2_ecg.metrics import CLASSES

MIN_FPR = 1e-4       # left edge of the log false-positive-rate axis
SCHEMES = {"kfold": "k-fold (unseen persons)", "lodo": "held-out database",
           "beat": "leaky beat-level split"}


def plot_curves(histories: dict[str, dict[str, list[dict]]], databases: list[str]
                ) -> plt.Figure:
    """Inner-validation F1 (before bias tuning) per database against training beats seen: one
    panel per (class, database), one colour per method, the mean over folds with the range of
    the folds as a band.

    histories[method][fold]: history.csv rows with "beats_seen" and "val_<db>_<class>_f1"."""
    fig, axes = plt.subplots(2, len(databases), figsize=(3.6 * len(databases), 5.6),
                             sharex=True, sharey="row", squeeze=False)
    for row, cls in enumerate(("SVEB", "VEB")):
        for ax, db in zip(axes[row], databases):
            key = f"val_{db}_{cls}_f1"
            for c, (name, folds) in enumerate(histories.items()):
                runs = [rows for rows in folds.values() if rows and key in rows[0]]
                if not runs:
                    continue
                n = min(len(rows) for rows in runs)
                x = np.array([r["beats_seen"] for r in runs[0][:n]]) / 1e6
                y = np.array([[r[key] for r in rows[:n]] for rows in runs], dtype=np.float64)
                if np.isnan(y).all():          # no such beats in this database's validation
                    continue
                y = np.where(np.isnan(y), np.nanmean(y, 0, keepdims=True), y)
                ax.plot(x, np.nanmean(y, 0), color=f"C{c}", marker=".", label=name)
                ax.fill_between(x, np.nanmin(y, 0), np.nanmax(y, 0), color=f"C{c}", alpha=0.15,
                                lw=0)
            ax.set(title=f"{cls} F1, {database_name(db)}", ylim=(0, 1))
            if row == 1:
                ax.set_xlabel("training beats seen (millions)")
        axes[row, 0].set_ylabel("F1 on inner-validation persons")
    handles, labels = axes[1, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=max(1, len(labels)), fontsize=8)
    fig.suptitle("Inner validation per database during training (mean over folds, band: "
                 "range of the folds)")
    return fig


def plot_bias_grid(grid: list[list[float]], bias: list[float], method: str) -> plt.Figure:
    """The inner-validation selection score over the coarse grid of SVEB/VEB logit biases
    (metrics.BIAS_COARSE on both axes), with the chosen biases marked: how flat the optimum is."""
    from q2_ecg.metrics import BIAS_COARSE

    g = np.asarray(grid)
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    step = BIAS_COARSE[1] - BIAS_COARSE[0]
    extent = (BIAS_COARSE[0] - step / 2, BIAS_COARSE[-1] + step / 2) * 2
    im = ax.imshow(g, origin="lower", extent=extent, cmap="viridis", vmin=max(0, g.max() - 0.2),
                   vmax=g.max(), aspect="equal")
    ax.plot(bias[2], bias[1], marker="x", color="red", ms=9, mew=2, ls="",
            label=f"chosen ({bias[1]:+.2f}, {bias[2]:+.2f}): {g.max():.3f}")
    fig.colorbar(im, ax=ax, label="inner-validation selection score")
    ax.set(xlabel="VEB logit bias", ylabel="SVEB logit bias",
           title=f"{method}: score within 0.2 of its best")
    ax.legend(loc="upper left", fontsize=7)
    ax.grid(False)
    fig.suptitle("Decision biases: the inner-validation score around the chosen pair")
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
               xlabel="predicted class", ylabel="true class", title=name)
        ax.grid(False)
    fig.suptitle("Out-of-fold confusion matrices (beats; % of the true class)")
    return fig


def _roc_pr(roc: plt.Axes, pr: plt.Axes, y: np.ndarray, p_abnormal: np.ndarray, label: str,
            **style) -> None:
    """Add one normal-vs-abnormal ROC curve (to `roc`) and PR curve (to `pr`) of labels y (n,)
    0..2 and scores p_abnormal (n,)."""
    abnormal = y > 0
    fpr, tpr, _ = roc_curve(abnormal, p_abnormal)
    prec, rec, _ = precision_recall_curve(abnormal, p_abnormal)
    roc.plot(fpr.clip(MIN_FPR), tpr, label=f"{label} (AUROC {auc(fpr, tpr):.3f})", **style)
    pr.plot(rec, prec, label=label, **style)


def _finish_roc_pr(roc: plt.Axes, pr: plt.Axes, prevalence: float, where: str = "") -> None:
    """Log false-positive-rate axis with the chance curve; the prevalence line on the PR axes."""
    grid = np.logspace(np.log10(MIN_FPR), 0, 50)
    roc.plot(grid, grid, color="0.6", ls=":", lw=0.8, label="chance")
    roc.set(xscale="log", xlim=(MIN_FPR, 1), ylim=(0, 1.02),
            xlabel="false-positive rate (share of normal beats called abnormal, log)",
            ylabel="sensitivity (share of abnormal beats found)",
            title=f"ROC{where or ', abnormal = SVEB or VEB'}")
    pr.axhline(prevalence, color="k", ls="--", lw=0.8,
               label=f"abnormal prevalence {prevalence:.3f} (chance)")
    pr.annotate(f"abnormal prevalence {prevalence:.3f}", (0.5, prevalence),
                xycoords=("axes fraction", "data"), xytext=(0, 3), textcoords="offset points",
                ha="center", fontsize=7)
    pr.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall (share of abnormal beats found)",
           ylabel="precision (share of beats called abnormal that are)",
           title=f"Precision-recall{where or ', abnormal = SVEB or VEB'}")
    roc.legend(loc="lower right", fontsize=7)
    pr.legend(loc="center left", fontsize=7)


def plot_roc_pr(preds: dict, names: list[str]) -> plt.Figure:
    """Normal vs abnormal: ROC (false-positive rate on a log axis, where a screening tool
    operates) and precision-recall with the prevalence of abnormal beats as the chance line.

    preds[name]: rows with "y" (n,) 0..2 and "p_abnormal" (n,)."""
    fig, (roc, pr) = plt.subplots(1, 2, figsize=(11, 4.3))
    for c, name in enumerate(names):
        _roc_pr(roc, pr, preds[name]["y"], preds[name]["p_abnormal"], name, color=f"C{c}")
    _finish_roc_pr(roc, pr, float(np.mean(preds[names[0]]["y"] > 0)))
    fig.suptitle("Normal vs abnormal, out of fold")
    return fig


def plot_scheme_contrast(kfold: dict[str, dict], other: dict[str, dict], scheme: str
                         ) -> plt.Figure:
    """The same methods under k-fold (dashed) and under `scheme` ('lodo': one row per held-out
    database, k-fold restricted to that database's records; 'beat': the leaky split, one row):
    whole ROC (log false-positive rate) and PR curves, beyond the tables' point values.

    kfold[method], other[method]: pooled rows with "y", "p_abnormal" and "db" (n,)."""
    groups = sorted({str(d) for rows in other.values() for d in rows["db"]}) \
        if scheme == "lodo" else [None]
    fig, axes = plt.subplots(len(groups), 2, figsize=(11, 4.2 * len(groups)), squeeze=False)
    for (roc, pr), db in zip(axes, groups):
        prevalence = None
        for c, (method, rows) in enumerate(other.items()):
            if db is not None and not (rows["db"] == db).any():
                continue                       # this method's LODO runs left `db` out
            for how, r, ls in (("kfold", kfold.get(method), "--"), (scheme, rows, "-")):
                if r is None:
                    continue
                m = np.ones(len(r["y"]), bool) if db is None else r["db"] == db
                if len(np.unique(r["y"][m] > 0)) < 2:
                    continue
                _roc_pr(roc, pr, r["y"][m], r["p_abnormal"][m], f"{method}, {SCHEMES[how]}",
                        color=f"C{c}", ls=ls)
                prevalence = float(np.mean(r["y"][m] > 0)) if prevalence is None else prevalence
        _finish_roc_pr(roc, pr, np.nan if prevalence is None else prevalence,
                       "" if db is None else f" on the records of {database_name(db)}")
    fig.suptitle(f"Normal vs abnormal (SVEB or VEB): k-fold (dashed) against {SCHEMES[scheme]} "
                 "(solid)")
    return fig


def plot_examples(signal_of, pred: dict, n_per_cell: int = 3) -> plt.Figure:
    """Rows: true class; left columns correctly classified, right columns misclassified beats.
    Each panel shows what the model reads: the beat's window, its record's template (median
    beat, the second input channel) and the RR features (text; markers at the neighbouring R
    peaks and where they would sit at the record's sinus RR).

    pred: out-of-fold rows ("y", "pred", "p_abnormal", "record", "db", "beat_loc", (n,) each).
    signal_of(i) -> {"window": (WINDOW,), "template": (WINDOW,), "rr_prev_s", "rr_next_s",
    "rr_sinus_s": float} of row i, amplitudes scaled by the record's median R amplitude.
    """
    rng = np.random.default_rng(0)
    t_s = np.arange(-HALF_WINDOW, HALF_WINDOW) / SAMPLING_RATE
    fig, axes = plt.subplots(3, 2 * n_per_cell, figsize=(2.45 * 2 * n_per_cell, 7.6),
                             sharex=True, squeeze=False)
    for c in range(3):
        for side, correct in enumerate((True, False)):
            pool = np.flatnonzero((pred["y"] == c) & ((pred["pred"] == c) == correct))
            picks = rng.choice(pool, min(n_per_cell, len(pool)), replace=False) if len(pool) else []
            for k in range(n_per_cell):
                ax = axes[c, side * n_per_cell + k]
                ax.axvline(0, color="k", lw=0.5, ls=":")
                if k >= len(picks):
                    ax.set_title(f"no {'correct' if correct else 'misclassified'} "
                                 f"{CLASSES[c]} beat", fontsize=7)
                    continue
                i = picks[k]
                s = signal_of(i)
                ax.plot(t_s, s["template"], lw=0.9, color="0.6")
                ax.plot(t_s, s["window"], lw=0.8, color="C2" if correct else "C3")
                xaxis = ax.get_xaxis_transform()
                prev, nxt, sinus = s["rr_prev_s"], s["rr_next_s"], s["rr_sinus_s"]
                for xs, style in (([-prev, nxt], {"marker": "^", "ms": 5, "color": "k"}),
                                  ([-sinus, sinus], {"marker": "|", "ms": 9, "mew": 1.5,
                                                     "color": "C0"})):
                    xs = [x for x in xs if abs(x) <= t_s[-1]]     # neighbours inside the window
                    ax.plot(xs, [0.03] * len(xs), ls="", transform=xaxis, **style)
                ax.text(0.02, 0.98, f"RR prev/next {prev:.2f}/{nxt:.2f} s\nsinus {sinus:.2f} s",
                        transform=ax.transAxes, ha="left", va="top", fontsize=6,
                        bbox={"fc": "white", "ec": "none", "alpha": 0.8, "pad": 1})
                ax.set_title(f"{pred['record'][i]} ({str(pred['db'][i]).removesuffix('_npy')}) "
                             f"at {pred['beat_loc'][i] / SAMPLING_RATE:.1f} s\ntrue "
                             f"{CLASSES[c]}, predicted {CLASSES[pred['pred'][i]]}, "
                             f"P(abn.) {pred['p_abnormal'][i]:.2f}", fontsize=7,
                             color="k" if correct else "C3")
    for ax in axes[-1]:                       # the columns share their time axis
        ax.set(xlabel="time from R peak (s)", xlim=(t_s[0], t_s[-1]))
    fig.supylabel("amplitude (multiples of the record's median R amplitude)", fontsize=9)
    handles = [plt.Line2D([], [], color="C2", label="beat window, correctly classified"),
               plt.Line2D([], [], color="C3", label="beat window, misclassified"),
               plt.Line2D([], [], color="0.6", label="record's median beat (2nd input channel)"),
               plt.Line2D([], [], ls="", marker="^", color="k",
                          label="previous / next R peak (RR prev, next)"),
               plt.Line2D([], [], ls="", marker="|", ms=9, mew=1.5, color="C0",
                          label="where they would be at the sinus RR")]
    fig.legend(handles=handles, loc="outside lower center", ncol=5, fontsize=7)
    fig.suptitle(f"Out-of-fold beats: {n_per_cell} correct (left) and {n_per_cell} "
                 "misclassified (right) per true class")
    return fig


def write_all(folder: Path, result: dict, oof: dict, histories: dict, label: str,
              signal_of=None) -> None:
    """Every figure of evaluation's result. oof[(method, scheme)]: pooled held-out rows;
    histories[(method, scheme)][fold]: history.csv rows; signal_of(i): see plot_examples
    (rows of the chosen method's out-of-fold rows)."""
    kfold = {m: e for m, e in result["models"].get("kfold", {}).items()   # every fold ran,
             if not e["seeds"][min(e["seeds"])].get("problems") and not e.get("variant")}  # no variant
    databases = sorted({k.split("_")[1] for folds in histories.values() for rows in folds.values()
                        for k in (rows[0] if rows else {}) if k.endswith("_SVEB_f1")
                        and k.count("_") == 3})
    curves = {m: histories[m, "kfold"] for m in kfold if (m, "kfold") in histories}
    if curves and databases:
        save_figure(plot_curves(curves, databases), folder / "curves.png",
                    "Inner validation per database during training", label)
    long_runs = {m: h for (m, scheme), h in histories.items()
                 if scheme == "kfold" and m.split("-", 1)[-1].startswith("curve")}
    if long_runs and databases:
        save_figure(plot_curves(long_runs, databases), folder / "budget_curves.png",
                    "Longer training: inner validation per database against beats seen", label)
    chosen = result.get("chosen_model")
    if chosen:
        rule = result["models"]["kfold"][chosen]["seeds"][str(result["final_choice"]["seed"])]["rule"]
        how = "adapted" if rule["adapt"] else "raw"
        save_figure(plot_bias_grid(rule[how]["grid"], rule[how]["bias"], chosen),
                    folder / "bias_grid.png", "Decision biases on pooled inner validation", label)
    first = {m: e["seeds"][min(e["seeds"])]["pooled"] for m, e in kfold.items()}
    classifiers = [m for m, p in first.items() if "SVEB_f1" in p and m != "majority"]
    if classifiers:
        save_figure(plot_confusions({m: first[m]["confusion"] for m in classifiers}, classifiers),
                    folder / "confusion.png", "Out-of-fold confusion matrices (first seed)", label)
    ranked = [m for m in kfold if (m, "kfold") in oof and m != "majority"]
    if ranked:
        save_figure(plot_roc_pr({m: oof[m, "kfold"] for m in ranked}, ranked),
                    folder / "roc_pr.png", "Normal vs abnormal, out of fold (first seed)", label)
    if chosen and signal_of is not None and (chosen, "kfold") in oof:
        save_figure(plot_examples(signal_of, oof[chosen, "kfold"]),
                    folder / "examples.png",
                    f"Out-of-fold beats classified by {chosen}: correct (green, left columns) "
                    "and misclassified (red, right columns), per true class", label)
    for scheme, name in (("lodo", "lodo.png"), ("beat", "leaky.png")):
        other = {m: oof[m, scheme] for m in result["models"].get(scheme, {})
                 if (m, scheme) in oof and m != "majority"}
        if other:
            save_figure(plot_scheme_contrast({m: oof[m, "kfold"] for m in other if m in kfold
                                              and (m, "kfold") in oof}, other, scheme),
                        folder / name, f"Normal vs abnormal (SVEB or VEB): k-fold (dashed) "
                                       f"against {SCHEMES[scheme]} (solid), first seed", label)


def read_outputs(root: Path, result: dict) -> tuple[dict, dict]:
    """(oof[(method, scheme)]: the first seed's pooled held-out rows from oof/*.npz,
    histories[(method, scheme)][fold]: its runs' history.csv rows)."""
    oof, histories = {}, {}
    for scheme, methods in result["models"].items():
        for method, entry in methods.items():
            path = root / "oof" / f"{method}-{scheme}.npz"
            if path.exists():
                with np.load(path) as f:
                    oof[method, scheme] = {k: f[k] for k in f.files}
            first = entry["seeds"][min(entry["seeds"], key=int)]
            histories[method, scheme] = {
                read_json(root / run / "summary.json")["fold"]: read_csv(root / run / "history.csv")
                for run in first["runs"] if (root / run / "history.csv").exists()}
    return oof, {k: v for k, v in histories.items() if v}


def example_signals(records, table, rows: dict):
    """signal_of(i) -> what the model read for row i of out-of-fold `rows` (oof/*.npz):
    {"window": beat window (WINDOW,), "template": record template (WINDOW,), "rr_prev_s",
    "rr_next_s", "rr_sinus_s": RR features in s}; read from the data."""
    first = records.beat_offsets[:-1]
    row_of = {p: r for r, p in enumerate(records.patient_id)}
    rr_column = {name: RR_NAMES.index(name) for name in ("rr_prev_s", "rr_next_s", "rr_sinus_s")}

    def signal_of(i: int) -> dict:
        r = row_of[rows["record"][i]]
        locs = records.beat_locs[first[r]:records.beat_offsets[r + 1]]
        g = first[r] + int(np.searchsorted(locs, rows["beat_loc"][i]))
        c = table.centre[g]
        return {"window": table.signal[c - HALF_WINDOW:c + HALF_WINDOW],
                "template": table.template[r],
                **{name: float(table.rr[g, k]) for name, k in rr_column.items()}}
    return signal_of


def parse_args(argv=None):
    return cli.data_args(__doc__, argv)


def main(args) -> Path:
    source = resolve_source(args.data)
    root = results_dir("q2", source, args.results_root)
    result = read_metrics(root, "q2_ecg.eval")
    oof, histories = read_outputs(root, result)
    chosen = result.get("chosen_model")
    signal_of = None
    if chosen and (chosen, "kfold") in oof:
        records = load_records(source)
        signal_of = example_signals(records, build_table(records), oof[chosen, "kfold"])
    write_all(root / "figures", result, oof, histories, source.label, signal_of)
    print(f"Q2 figures written to {root / 'figures'}")
    return root / "figures"


if __name__ == "__main__":
    cli.run_main(lambda: main(parse_args()))
