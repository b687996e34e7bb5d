"""Beat-classification metrics from confusion matrices: pure functions, ground truth first.

Everything is derived from confusion-matrix counts, which add up over patients; that makes the
patient bootstrap a matrix product (common.stats.bootstrap_additive).
Se = sensitivity (recall), +P = positive predictive value (precision), Sp = specificity.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

CLASSES = ("NOR", "SVEB", "VEB")
GROUPS = {"normal": (0,), "abnormal": (1, 2)}     # the brief's two views of every metric
HEADLINE = ("SVEB_f1", "VEB_f1", "normal_f1", "abnormal_se", "abnormal_ppv", "abnormal_f1",
            "abnormal_sp", "auroc")
ABBREVIATIONS = {"se": "Se", "ppv": "+P", "f1": "F1", "sp": "Sp", "auroc": "AUROC",
                 "auprc": "AUPRC"}


def label(key: str) -> str:
    """'abnormal_ppv' -> 'abnormal +P', 'auroc' -> 'AUROC': metric keys as people write them."""
    return " ".join(ABBREVIATIONS.get(part, part) for part in key.split("_"))


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n: int = 3) -> np.ndarray:
    """(n, n) counts, rows = true class, columns = predicted class."""
    return np.bincount(y_true * n + y_pred, minlength=n * n).reshape(n, n)


def one_vs_rest(cm: np.ndarray, positive: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Se, +P, F1, Sp of the `positive` classes against the rest.

    cm: (..., n, n) counts (a leading batch axis is allowed). Values are NaN where undefined.
    """
    pos = np.zeros(cm.shape[-1], bool)
    pos[list(positive)] = True
    tp = cm[..., pos, :][..., :, pos].sum((-1, -2))
    fn = cm[..., pos, :][..., :, ~pos].sum((-1, -2))
    fp = cm[..., ~pos, :][..., :, pos].sum((-1, -2))
    tn = cm[..., ~pos, :][..., :, ~pos].sum((-1, -2))
    with np.errstate(divide="ignore", invalid="ignore"):
        se, ppv, sp = tp / (tp + fn), tp / (tp + fp), tn / (tn + fp)
        f1 = 2 * tp / (2 * tp + fp + fn)
    return {"se": se, "ppv": ppv, "f1": f1, "sp": sp}


def summary_from_confusion(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Flat dict of every count-based metric; works on (3, 3) or (batch, 3, 3)."""
    out = {}
    for k, name in enumerate(CLASSES):
        out.update({f"{name}_{m}": v for m, v in one_vs_rest(cm, (k,)).items()})
    for group, classes in GROUPS.items():
        out.update({f"{group}_{m}": v for m, v in one_vs_rest(cm, classes).items()})
    with np.errstate(divide="ignore", invalid="ignore"):
        out["macro_f1"] = np.mean([out[f"{c}_f1"] for c in CLASSES], axis=0)
        out["abnormal_macro_f1"] = (out["SVEB_f1"] + out["VEB_f1"]) / 2
        out["accuracy"] = np.trace(cm, axis1=-2, axis2=-1) / cm.sum((-1, -2))
    return out


def ranking_metrics(y_true: np.ndarray, p_abnormal: np.ndarray) -> dict[str, float]:
    """AUROC and AUPRC of a normal-vs-abnormal score (higher = more abnormal)."""
    abnormal = y_true > 0
    if abnormal.all() or not abnormal.any():
        return {"auroc": float("nan"), "auprc": float("nan")}
    return {"auroc": float(roc_auc_score(abnormal, p_abnormal)),
            "auprc": float(average_precision_score(abnormal, p_abnormal))}


BIAS_GRID = np.linspace(-4, 4, 33)


def tune_logit_bias(logits: np.ndarray, y_true: np.ndarray, grid: np.ndarray = BIAS_GRID
                    ) -> np.ndarray:
    """Additive biases (0, b1, b2) for the SVEB and VEB logits maximising the mean of their F1.

    Fitted on validation beats only. Training re-weights classes, which shifts the decision
    boundary towards the rare classes; these two numbers move it back to where F1 is best.
    """
    best, best_bias = -1.0, np.zeros(3)
    for b1 in grid:
        for b2 in grid:
            bias = np.array([0.0, b1, b2])
            s = summary_from_confusion(confusion(y_true, (logits + bias).argmax(1)))
            score = np.nan_to_num(s["abnormal_macro_f1"])
            if score > best + 1e-9:
                best, best_bias = score, bias
    return best_bias


def ranking_bootstrap(y_true: np.ndarray, p_abnormal: np.ndarray, record: np.ndarray,
                      n_boot: int = 1000, bins: int = 2000, seed: int = 0, level: float = 0.95
                      ) -> dict[str, list[float]]:
    """Record-bootstrap 95 % intervals of AUROC and AUPRC, from per-record score histograms.

    Re-running scikit-learn on 400k beats for every resample takes minutes; instead the scores
    are cut into `bins` quantile bins, each record contributes its (bins, 2) counts of normal and
    abnormal beats, and a resample is a weighted sum of those histograms. Ties inside a bin
    count half, as scikit-learn does for equal scores; with 2,000 bins the point values agree
    with scikit-learn to about 1e-3 (the points themselves come from `ranking_metrics`).
    """
    edges = np.unique(np.quantile(p_abnormal, np.linspace(0, 1, bins + 1)[1:-1]))
    b = np.searchsorted(edges, p_abnormal, side="right")
    records, inverse = np.unique(record, return_inverse=True)
    hist = np.zeros((len(records), len(edges) + 1, 2))
    np.add.at(hist, (inverse, b, (y_true > 0).astype(int)), 1)
    picks = np.random.default_rng(seed).integers(0, len(records), (n_boot, len(records)))
    weights = np.stack([np.bincount(p, minlength=len(records)) for p in picks])
    counts = np.einsum("br,rkc->bkc", weights.astype(np.float64), hist)    # (B, bins, 2)
    neg, pos = counts[..., 0], counts[..., 1]
    n_neg, n_pos = neg.sum(1), pos.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        below = np.cumsum(neg, 1) - neg                                   # negatives under a bin
        auroc = (pos * (below + 0.5 * neg)).sum(1) / (n_pos * n_neg)
        tp, fp = np.cumsum(pos[:, ::-1], 1), np.cumsum(neg[:, ::-1], 1)   # from the top bin down
        auprc = (tp / (tp + fp) * pos[:, ::-1]).sum(1) / n_pos
    alpha = (1 - level) / 2
    out = {}
    for name, values in (("auroc", auroc), ("auprc", auprc)):
        v = values[np.isfinite(values)]
        out[name] = ([float(x) for x in np.quantile(v, [alpha, 1 - alpha])]
                     if len(v) >= n_boot // 2 else [float("nan")] * 2)
    return out
