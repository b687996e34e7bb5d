"""Predict every beat of another dataset with the deployed Q2 model (make q2-final).

    python -m q2_ecg.infer --data OTHER --trained-on ../shared/data/ecg --out p.npz
    python -m q2_ecg.eval --data OTHER --predictions p.npz       # then score it

The deployed model is the k fold models of final.json (q2_ecg.final): each predicts the beats,
an ensemble's members are combined by geometric mean within each fold, the folds' probabilities
are averaged, the label-free per-record adaptation is applied if the cross-validation chose
it, and the decision biases decide. Beats the brief does not score (UNK, segments outside
32..256 samples) get pred -1. The file's rows are the data's annotated beats in order
(prediction_file.save_external).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.special import softmax

from common import cli
from common.checkpoint import load_weights
from common.deploy import inference_note, open_deployed
from q2_ecg.beats import build_table, table_to_device
from q2_ecg.classify import predict_and_adapt
from q2_ecg.data import load_records, resolve_source
from q2_ecg.model import build_model
from q2_ecg.prediction_file import save_external
from q2_ecg.rules import decide, fold_average, geometric_mean


def parse_args(argv=None):
    p = cli.parser(__doc__.splitlines()[0])
    cli.add_infer_args(p)
    return p.parse_args(argv)


def deployed_probabilities(root: Path, final: dict, dev: dict, beats: np.ndarray, table,
                           device) -> tuple[np.ndarray, np.ndarray]:
    """(raw, adapted) class probabilities (n, 3) of the deployed fold models for `beats`."""
    raw, adapted = [], []
    for entries in final["folds"].values():
        fold_raw, fold_adapted = [], []
        for e in entries:
            weights = load_weights(root / e["weights"], device)
            model = build_model(**weights["model_args"]).to(device)
            model.load_state_dict(weights["ema"]["shadow"])
            logits, prob_adapted = predict_and_adapt(model, dev, beats, table, device)
            fold_raw.append(softmax(logits.astype(np.float64), axis=1))
            fold_adapted.append(prob_adapted)
        raw.append(geometric_mean(fold_raw))
        adapted.append(geometric_mean(fold_adapted))
    return fold_average(raw), fold_average(adapted)


def main(args) -> Path:
    device, root, final = open_deployed("q2", resolve_source(args.trained_on), args)
    source = resolve_source(args.data)
    records = load_records(source)
    table = build_table(records)
    beats = np.flatnonzero(table.scored)
    raw, adapted = deployed_probabilities(root, final, table_to_device(table, device), beats,
                                          table, device)
    prob = np.full((len(table.label), 3), np.nan, np.float32)
    prob[beats] = adapted if final["adapt"] else raw
    pred, p_abnormal = np.full(len(prob), -1), np.full(len(prob), np.nan)
    pred[beats], p_abnormal[beats] = decide(prob[beats], final["logit_bias"])
    path = save_external(Path(args.out), records, table, pred, p_abnormal, prob,
                         {k: final[k] for k in ("data_source", "git_commit", "model", "seed",
                                                "adapt", "logit_bias")}, source.tag)
    print(inference_note(final, f"{len(beats)} scored beats", source.label, path))
    return path


if __name__ == "__main__":
    cli.run_main(lambda: main(parse_args()))
