"""The ground truth of a Q1 source for scoring: raw T2, the brain mask, where each row of a
prediction file sits among the source's slices, and per-slice scores in metrics.SLICE_SCALE
units. Shared by evaluation and the figures (which read prediction files back)."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from common.cli import DataError
from q1_mri.data import Slices
from q1_mri.metrics import slice_scores
from q1_mri.prediction_file import Predictions

METRICS = ("masked_ssim", "masked_psnr", "masked_mae", "ssim", "psnr")


class Truth:
    """The ground truth of every slice of a source: raw T2, the brain mask, and where each
    (split, row) of a prediction file sits."""

    def __init__(self, slices: Slices):
        self.slices = slices
        self.mask = slices.brain_mask
        self._where = {}
        for s in np.unique(slices.split):
            rows = np.flatnonzero(slices.split == s)
            lookup = np.full(int(slices.row[rows].max()) + 1, -1, np.int64)
            lookup[slices.row[rows]] = rows
            self._where[str(s)] = lookup

    def locate(self, p: Predictions, path: Path) -> np.ndarray:
        """(n,) index into the slices of each predicted (split, row); refuses rows that are not
        in the data or whose patient or view differ (a file of other data), and repeats."""
        idx = np.full(len(p), -1, np.int64)
        for s, lookup in self._where.items():
            m = (p.split == s) & (p.row >= 0) & (p.row < len(lookup))
            idx[m] = lookup[p.row[m]]
        bad = np.flatnonzero(idx < 0)
        if len(bad):
            raise DataError(f"{path}: row {p.row[bad[0]]} of split {p.split[bad[0]]} is not "
                                "a slice of the data; the file was made from other data")
        wrong = np.flatnonzero((self.slices.patient_id[idx] != p.patient_id)
                               | (self.slices.view[idx] != p.view))
        if len(wrong):
            i = wrong[0]
            raise DataError(f"{path}: {p.split[i]} row {p.row[i]} is patient "
                                f"{p.patient_id[i]} {p.view[i]} in the file but "
                                f"{self.slices.patient_id[idx[i]]} {self.slices.view[idx[i]]} "
                                "in the data")
        if len(np.unique(idx)) != len(idx):
            raise DataError(f"{path}: some slices are predicted twice")
        return idx

    def score(self, idx: np.ndarray, pred: np.ndarray, batch: int = 1024) -> dict[str, np.ndarray]:
        """Every METRIC per slice (n,) of predictions (n, 1, H, W) for slices `idx`."""
        parts = defaultdict(list)
        for s in range(0, len(idx), batch):
            i = idx[s:s + batch]
            t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
            scores = slice_scores(t(self.slices.t2[i]).float(), t(pred[s:s + batch]).float(),
                                  t(self.mask[i]))
            for k in METRICS:
                parts[k].append(scores[k].numpy().astype(np.float64))
        return {k: np.concatenate(parts[k]) if parts[k] else np.zeros(0) for k in METRICS}
