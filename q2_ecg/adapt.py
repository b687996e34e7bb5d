"""Label-free test-time adaptation to one new record, from its own unlabelled beats only.

A patient's beats come in a few recurring kinds (sinus beats, one or two PVC shapes, premature
atrial beats), and a classifier trained on other patients can split one kind between classes:
some of a patient's fusion beats called VEB and others normal, some normal beats in atrial
fibrillation called SVEB. `reconcile_by_cluster` clusters each record's beats on morphology and
rhythm and pulls every beat's probabilities towards its cluster's mean, so consistent beats get
consistent labels. It needs no labels, so it applies to a new patient's record as well, and it
is a pure function of arrays: call it after predicting a set of records.
"""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning

MIN_CLUSTER_BEATS = 25            # k = n // this, within 1..MAX_CLUSTERS
MAX_CLUSTERS = 8
LLOYD_ITERATIONS = 20


def standardise_per_record(x: np.ndarray, record: np.ndarray) -> np.ndarray:
    """(n, f) features -> (n, f) float32 z-scored within each record (record (n,) int).

    Removes what is constant over a record (the patient's heart rate, the lead's gain) and
    keeps what sets one beat apart from the same patient's other beats.
    """
    out = np.empty(x.shape, np.float32)
    for r in np.unique(record):
        m = record == r
        out[m] = (x[m] - x[m].mean(0)) / np.maximum(x[m].std(0), 1e-6)
    return out


def n_clusters(n: int) -> int:
    """Clusters for a record of n beats: one per MIN_CLUSTER_BEATS, 1..MAX_CLUSTERS."""
    return int(np.clip(n // MIN_CLUSTER_BEATS, 1, MAX_CLUSTERS))


def reconcile_by_cluster(embedding: np.ndarray, rr: np.ndarray, prob: np.ndarray,
                         record: np.ndarray, alpha: float = 0.5, rr_weight: float = 1.0,
                         seed: int = 0) -> np.ndarray:
    """Blend each beat's class probabilities with those of its record's similar beats.

    embedding: (n, d) float32 beat embeddings (predict.predict_embedded); rr: (n, f) RR features
    (beats.RR_NAMES); prob: (n, c) class probabilities (softmax of the logits); record: (n,)
    record index. Within each record both feature blocks are z-scored and weighted to equal
    total variance (times rr_weight for the rhythm block: an SVEB's QRS looks like a normal
    beat's, only its timing differs), the beats are clustered with k-means (scikit-learn,
    k-means++ seeding, k = n_clusters(n)),
    and -> (n, c) (1 - alpha) * prob + alpha * mean prob of the beat's cluster; rows still sum
    to 1. alpha = 0 returns prob unchanged.
    """
    out = prob.astype(np.float64).copy()
    emb = standardise_per_record(embedding, record) / np.sqrt(embedding.shape[1])
    rhythm = standardise_per_record(rr, record) * (rr_weight / np.sqrt(rr.shape[1]))
    points = np.concatenate([emb, rhythm], axis=1)
    for r in np.unique(record):
        rows = np.flatnonzero(record == r)
        k = min(n_clusters(len(rows)), len(rows))
        with warnings.catch_warnings():     # a record of identical beats has fewer clusters
            warnings.simplefilter("ignore", ConvergenceWarning)
            assign = KMeans(k, n_init=1, max_iter=LLOYD_ITERATIONS,
                            random_state=seed).fit_predict(points[rows])
        sums = np.zeros((assign.max() + 1, prob.shape[1]))
        np.add.at(sums, assign, prob[rows])
        means = sums / np.bincount(assign)[:, None].clip(min=1)
        out[rows] = (1 - alpha) * prob[rows] + alpha * means[assign]
    return (out / out.sum(1, keepdims=True)).astype(prob.dtype)
