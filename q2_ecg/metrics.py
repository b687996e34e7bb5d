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


MIN_CLASS_BEATS = 20     # a database's SVEB or VEB F1 counts when it has this many such beats


class SelectionScore:
    """The score every Q2 choice maximises on inner validation (epoch, model, decision biases,
    adaptation): the mean over databases of each database's mean F1 of SVEB and VEB.

    Each database counts once whatever its size, so the choice favours what transfers across
    populations instead of what suits the largest one. Within a database only the classes with
    at least MIN_CLASS_BEATS true beats count (a database whose inner validation holds 3 SVEB
    beats cannot judge SVEB). When one of `databases` has no rows or no such class, the score
    falls back to the pooled mean F1 of SVEB and VEB, and `kind` / `reason` say so.

    y: (n,) true class 0..2; db: (n,) database of each row; databases: those that must count.
    """

    def __init__(self, y: np.ndarray, db: np.ndarray, databases):
        self.databases = sorted(str(d) for d in databases)
        self.y = np.asarray(y)
        self.db_index = np.searchsorted(self.databases, np.asarray(db).astype(str))
        known = np.isin(np.asarray(db).astype(str), self.databases)
        self.db_index[~known] = len(self.databases)          # rows of other databases
        true = np.zeros((len(self.databases) + 1, 3), np.int64)
        np.add.at(true, (self.db_index, self.y), 1)
        self.covered = true[:-1, 1:] >= MIN_CLASS_BEATS       # (D, 2): SVEB, VEB
        lacking = [d for d, c in zip(self.databases, self.covered) if not c.any()]
        self.kind = "pooled" if lacking or not self.databases else "database-balanced"
        self.reason = (f"inner validation of {', '.join(lacking)} has fewer than "
                       f"{MIN_CLASS_BEATS} SVEB and VEB beats: the pooled score is used"
                       if lacking else None)

    def confusions(self, pred: np.ndarray) -> np.ndarray:
        """(D + 1, 3, 3) confusion matrix of each database (the last: rows of no database)."""
        codes = self.db_index * 9 + self.y * 3 + np.asarray(pred)
        return np.bincount(codes, minlength=(len(self.databases) + 1) * 9).reshape(-1, 3, 3)

    def __call__(self, pred: np.ndarray) -> float:
        return float(self.of_confusions(self.confusions(pred)[None])[0])

    def of_confusions(self, cm: np.ndarray) -> np.ndarray:
        """The score of each of J sets of confusion matrices (J, D + 1, 3, 3) -> (J,)."""
        if self.kind == "pooled":
            return np.nan_to_num(summary_from_confusion(cm.sum(1))["abnormal_macro_f1"])
        s = summary_from_confusion(cm[:, :-1])
        f1 = np.nan_to_num(np.stack([s["SVEB_f1"], s["VEB_f1"]], axis=-1))   # (J, D, 2)
        return ((f1 * self.covered).sum(-1) / self.covered.sum(-1)).mean(-1)

    def along_thresholds(self, k: np.ndarray, sveb: np.ndarray, n: int) -> np.ndarray:
        """(n, D + 1, 3, 3) confusion matrices of n decision rules that call row i VEB from
        rule k[i] on (k (rows,) in 0..n) and, where they do not, SVEB if sveb[i], else normal:
        every rule of a sweep at once, from counts (what makes the bias search fast)."""
        groups = (len(self.databases) + 1) * 3
        g = self.db_index * 3 + self.y
        def from_k(mask):    # (G, n): rows of each group that rule j calls VEB
            c = np.bincount(g[mask] * (n + 1) + k[mask], minlength=groups * (n + 1))
            return c.reshape(groups, n + 1).cumsum(1)[:, :n]
        veb, veb_and_sveb = from_k(np.ones(len(k), bool)), from_k(sveb)
        total = np.bincount(g, minlength=groups)[:, None]
        total_sveb = np.bincount(g[sveb], minlength=groups)[:, None]
        pred1 = total_sveb - veb_and_sveb
        cm = np.stack([total - veb - pred1, pred1, veb], axis=-1)           # (G, n, 3)
        return cm.reshape(len(self.databases) + 1, 3, n, 3).transpose(2, 0, 1, 3)

    def per_database(self, pred: np.ndarray) -> dict[str, dict[str, float]]:
        """{database: {SVEB_f1, VEB_f1, SVEB_beats, VEB_beats}} (F1 NaN where undefined)."""
        cm = self.confusions(pred)
        out = {}
        for k, d in enumerate(self.databases):
            s = summary_from_confusion(cm[k])
            out[d] = {"SVEB_f1": float(s["SVEB_f1"]), "VEB_f1": float(s["VEB_f1"]),
                      "SVEB_beats": int(cm[k, 1].sum()), "VEB_beats": int(cm[k, 2].sum())}
        return out


BIAS_COARSE = np.linspace(-4, 4, 17)         # the stability grid (step 0.5)
BIAS_FINE = np.linspace(-0.5, 0.5, 9)        # refined around the coarse optimum (step 0.125)


def tune_logit_bias(logits: np.ndarray, score) -> tuple[np.ndarray, np.ndarray]:
    """Additive biases (0, b1, b2) for the SVEB and VEB logits maximising a SelectionScore.

    logits: (n, 3) log-probabilities (or logits) of validation beats. Training re-weights
    classes, which shifts the decision boundary towards the rare classes; these two numbers
    move it back to where the score is best. A coarse grid (BIAS_COARSE, both axes) is searched,
    then a finer one around its optimum. For a fixed b1, a beat is called VEB exactly when b2
    exceeds its own threshold max(0, l1 + b1 - l0) - (l2 - l0), so a whole sweep over b2 is
    scored from sorted thresholds at once (SelectionScore.along_thresholds): the same argmax
    decisions as trying every pair, about 15x faster. Returns (the bias (3,), the coarse
    grid's scores (17, 17), rows b1, columns b2): how flat the optimum is.
    """
    d1 = (logits[:, 1] - logits[:, 0]).astype(np.float64)
    d2 = (logits[:, 2] - logits[:, 0]).astype(np.float64)

    def sweep(b1: float, b2s: np.ndarray) -> np.ndarray:
        threshold = np.maximum(0.0, d1 + b1) - d2              # VEB where b2 > threshold
        k = np.searchsorted(b2s, threshold, side="right")      # first rule calling it VEB
        return score.of_confusions(score.along_thresholds(k, d1 + b1 > 0, len(b2s)))

    coarse = np.array([sweep(b1, BIAS_COARSE) for b1 in BIAS_COARSE])
    i, j = np.unravel_index(np.argmax(coarse), coarse.shape)
    best, best_bias = coarse[i, j], np.array([0.0, BIAS_COARSE[i], BIAS_COARSE[j]])
    centre = best_bias.copy()
    for d1_step in BIAS_FINE:
        values = sweep(centre[1] + d1_step, centre[2] + BIAS_FINE)
        for d2_step, value in zip(BIAS_FINE, values):
            if value > best + 1e-9:
                best, best_bias = value, np.array([0.0, centre[1] + d1_step, centre[2] + d2_step])
    return best_bias, coarse


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
