"""Bootstrap confidence intervals that resample patients, not slices or beats.

Slices or beats of one patient are correlated; resampling them individually would give
intervals far too narrow. Resampling whole patients (with replacement) answers "how much would
this number move with another set of patients like these?".
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

N_BOOT = 1000
LEVEL = 0.95


def _interval(values: np.ndarray, n_boot: int, level: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if len(values) < n_boot // 2:   # undefined on most resamples: no honest interval
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return float(low), float(high)


def bootstrap_additive(per_patient: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray],
                       n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL
                       ) -> tuple[float, float, float]:
    """Patient bootstrap for statistics computed from per-patient sums (fast, vectorised).

    per_patient: (P, K) additive quantities per patient (e.g. confusion-matrix cells, or a sum
    of slice scores and a slice count). statistic: maps (..., K) totals to (...) values and must
    broadcast over a leading batch axis. Returns (point, low, high).
    """
    per_patient = np.asarray(per_patient, dtype=np.float64)
    n = len(per_patient)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n, size=(n_boot, n))
    weights = np.stack([np.bincount(p, minlength=n) for p in picks])        # (B, P)
    with np.errstate(divide="ignore", invalid="ignore"):
        point = float(statistic(per_patient.sum(0)))
        values = statistic(weights @ per_patient)                           # (B,)
    return (point, *_interval(np.asarray(values, dtype=np.float64), n_boot, level))


def patient_bootstrap(groups: np.ndarray, statistic: Callable[[np.ndarray], float],
                      n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL
                      ) -> tuple[float, float, float]:
    """Patient bootstrap for any statistic of the items (e.g. AUROC), slower than the above.

    groups: (N,) patient id of each item. statistic(idx) computes the number from the items at
    integer indices `idx` (which may repeat); resamples where it is undefined (NaN, e.g. one
    class absent) are skipped. Returns (point, low, high).
    """
    uniq, inverse = np.unique(np.asarray(groups), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    members = np.split(order, np.cumsum(np.bincount(inverse))[:-1])
    rng = np.random.default_rng(seed)
    point = float(statistic(np.arange(len(inverse))))
    values = np.array([statistic(np.concatenate([members[g] for g in
                                                 rng.integers(0, len(uniq), len(uniq))]))
                       for _ in range(n_boot)], dtype=np.float64)
    return (point, *_interval(values, n_boot, level))
