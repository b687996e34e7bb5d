"""How class probabilities become decisions: the ensemble's geometric mean, the average of the
fold models, and the SVEB/VEB logit biases of a decision rule. Pure functions of arrays, used
by the ensemble stage, evaluation and the deployed model alike, so all three decide the same
way."""
from __future__ import annotations

import numpy as np
from scipy.special import softmax


def log_prob(prob: np.ndarray) -> np.ndarray:
    """(n, c) probabilities -> (n, c) float64 log-probabilities, floored at log(1e-12)."""
    return np.log(np.clip(prob.astype(np.float64), 1e-12, 1))


def geometric_mean(probs: list[np.ndarray]) -> np.ndarray:
    """k arrays (n, c) of class probabilities -> (n, c) float32 normalised geometric mean.

    Averaging log-probabilities rewards classes both members find likely: one member's
    confident mistake is tempered by the other, unlike a plain mean where it can dominate.
    """
    return softmax(np.mean([log_prob(p) for p in probs], axis=0), axis=1).astype(np.float32)


def fold_average(probs: list[np.ndarray]) -> np.ndarray:
    """k arrays (n, c) of the k fold models' probabilities -> (n, c) float32 mean: the deployed
    model, each of whose members the cross-validation scored on its own held-out fold."""
    return np.mean([p.astype(np.float64) for p in probs], axis=0).astype(np.float32)


def decide(prob: np.ndarray, bias) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (n, 3) and logit biases (3,) -> (predicted class (n,) int64,
    P(SVEB or VEB) (n,) after the biases)."""
    p = softmax(log_prob(prob) + np.asarray(bias, dtype=np.float64), axis=1)
    return p.argmax(1), p[:, 1] + p[:, 2]
