"""Neighbouring slices for the 2.5-D model, found from the data and verified, never assumed.

A slice's neighbours are the rows next to it among the rows of the same patient, view and
source split, in row order; that order is used only where the images confirm it: in a stack
cut in slice order, a slice is closer (mean absolute T1 difference) to each of its row
neighbours than those are to each other two rows apart. On the local real data this holds for
every consecutive triple of every stack (a shuffled stack: about 1 in 3), so a stack counts as
ordered when it holds for at least ORDERED_FRACTION of its triples. Slices of a stack that fails
(or has fewer than 3 slices) get themselves as neighbours: the 2.5-D model then sees no
through-plane context there rather than a wrong one, and the counts are reported.
"""
from __future__ import annotations

import sys

import numpy as np

from common.cli import DataError
from q1_mri.data import Slices, normalise

ORDERED_FRACTION = 0.8


def order_is_verified(t1: np.ndarray) -> bool:
    """Whether the rows of one stack (n, ..., H, W) look like consecutive slices (see above)."""
    n = len(t1)
    if n < 3:
        return False
    x = t1.reshape(n, -1).astype(np.float32)
    d1 = np.abs(x[1:] - x[:-1]).mean(1)           # (n-1,) rows one apart
    d2 = np.abs(x[2:] - x[:-2]).mean(1)           # (n-2,) rows two apart
    return float(np.mean(np.maximum(d1[:-1], d1[1:]) < d2)) >= ORDERED_FRACTION


def stacks(split: np.ndarray, patient_id: np.ndarray, view: np.ndarray,
           row: np.ndarray) -> list[np.ndarray]:
    """Indices of each (source split, patient, view) stack, sorted by row."""
    keys = np.char.add(np.char.add(split.astype(str), "\0"),
                       np.char.add(np.char.add(patient_id.astype(str), "\0"), view.astype(str)))
    order = np.lexsort((row, keys))
    bounds = np.flatnonzero(keys[order][1:] != keys[order][:-1]) + 1
    return np.split(order, bounds)


def neighbour_rows(slices: Slices, n: int, require: bool = True) -> tuple[np.ndarray, dict]:
    """(N, 2n+1) int64 indices into `slices`: for each slice, its n row neighbours on each side
    in row order (the slice itself in the middle; stacks' ends repeat the end slice), and a
    report {stacks, verified, slices_without_context}. Raises DataError when no stack verifies
    and `require` (training); otherwise (predicting other data) every slice goes without context.
    A stack is the rows of one patient and view within one source split (`slices.split`).
    """
    t1, _, _ = normalise(slices)
    out = np.repeat(np.arange(len(slices))[:, None], 2 * n + 1, axis=1)
    groups = stacks(slices.split, slices.patient_id, slices.view, slices.row)
    verified = 0
    for g in groups:
        if not order_is_verified(t1[g]):
            continue
        verified += 1
        pos = np.arange(len(g))
        for k, d in enumerate(range(-n, n + 1)):
            out[g, k] = g[np.clip(pos + d, 0, len(g) - 1)]
    report = {"stacks": len(groups), "verified": verified,
              "slices_without_context": int((out == out[:, n:n + 1]).all(1).sum())}
    if n and not verified and require:
        raise DataError("no stack of slices of this data is in slice order (row neighbours are "
                        "not more alike than rows two apart): the 2.5-D model cannot find "
                        "neighbours; use --model unet")
    if verified < len(groups):
        print(f"notice: {len(groups) - verified} of {len(groups)} slice stacks are not in a "
              "verified slice order; their slices get no 2.5-D context", file=sys.stderr)
    return out, report
