"""Statistics per patient, then across patients (fastMRI's volume averaging), and paired
comparisons of two methods on the same patients.

A patient's slices are correlated and patients contribute different numbers of slices, so every
number is first averaged within each patient; the headline is the mean over patients, with the
standard deviation over patients and a 95 % patient-bootstrap interval only when at least
MIN_BOOTSTRAP patients are resampled (with fewer, the resamples take a handful of distinct
values and the "interval" is the patients' own range: the per-patient values are shown instead).
Nothing here knows about MRI; it could move to common/stats.py.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import binomtest

from common.stats import bootstrap_additive

MIN_BOOTSTRAP = 5


def per_patient(values: np.ndarray, patient_id: np.ndarray) -> dict[str, float]:
    """{patient: mean of its items' values} for (N,) values, patients in sorted order."""
    ids, inverse = np.unique(patient_id, return_inverse=True)
    sums = np.bincount(inverse, weights=np.asarray(values, np.float64), minlength=len(ids))
    return dict(zip(ids.tolist(), (sums / np.bincount(inverse, minlength=len(ids))).tolist()))


def across(per: dict[str, float], seed: int = 0) -> dict:
    """Mean over patients of per-patient values, sd over patients, bootstrap CI if >= 5."""
    v = np.array(list(per.values()), np.float64)
    out = {"mean": float(v.mean()) if len(v) else float("nan"),
           "sd": float(v.std(ddof=1)) if len(v) > 1 else float("nan"),
           "patients": len(v), "ci95": None}
    if len(v) >= MIN_BOOTSTRAP:
        _, low, high = bootstrap_additive(np.stack([v, np.ones_like(v)], 1),
                                          lambda t: t[..., 0] / t[..., 1], seed=seed)
        out["ci95"] = [low, high]
    return out


def summary(values: np.ndarray, patient_id: np.ndarray, seed: int = 0) -> dict:
    """across(per_patient(...)) plus the slice-weighted mean, for contrast."""
    return {**across(per_patient(values, patient_id), seed),
            "slice_mean": float(np.mean(values)) if len(values) else float("nan")}


def paired(reference: dict[str, float], other: dict[str, float], higher_is_better: bool,
           seed: int = 0) -> dict:
    """`other` minus `reference` per shared patient: mean difference, sd, how many patients
    improve (in the metric's good direction), a two-sided sign test, and a bootstrap CI of
    the mean difference when at least MIN_BOOTSTRAP patients are paired."""
    shared = sorted(set(reference) & set(other))
    diff = {p: other[p] - reference[p] for p in shared}
    d = np.array(list(diff.values()), np.float64)
    better = int(((d > 0) if higher_is_better else (d < 0)).sum())
    ties = int((d == 0).sum())
    stats = across(diff, seed)
    return {"mean_diff": stats["mean"], "sd_diff": stats["sd"], "ci95": stats["ci95"],
            "patients": len(shared), "improved": better, "ties": ties,
            "sign_test_p": (float(binomtest(better, len(shared) - ties).pvalue)
                            if len(shared) > ties else float("nan")),
            "per_patient": diff}
