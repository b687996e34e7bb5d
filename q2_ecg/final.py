"""The deployed Q2 model: the chosen configuration's k fold models, exactly as the
cross-validation scored them.

    python -m q2_ecg.final --data ../shared/data/ecg        # make q2-final

Reads the final choice that q2_ecg.eval made on inner validation (metrics.json): the model,
the seed whose k fold models are deployed, the decision biases and whether to adapt. Checks
that every fold model's run is still the one evaluation scored (its prediction file's SHA-256)
and writes results/q2/<source>/final.json: the weights of each fold (an ensemble: each
member's), their SHA-256, the biases and the adaptation. Trains nothing: the deployed model
averages the probabilities of models each validated on its own held-out fold, so there is no
refit and no schedule the cross-validation did not run. q2_ecg.infer reads final.json.
"""
from __future__ import annotations

from common import cli
from common.io import file_digest, read_json, write_json
from common.results import provenance, results_dir
from common.splitfile import cv_choice
from q2_ecg.data import resolve_source

FINAL = "final.json"


def parse_args(argv=None):
    p = cli.parser(__doc__.splitlines()[0])
    cli.add_data_args(p)
    return p.parse_args(argv)


def main(args) -> dict:
    source = resolve_source(args.data)
    root = results_dir("q2", source, args.results_root)
    choice = cv_choice(root, "q2")
    weights = {}
    for fold, folders in choice["folds"].items():
        weights[fold] = []
        for name in folders:
            run = root / name
            scored = choice["prediction_digests"][name]
            if not (run / "predictions.npz").exists() or file_digest(run / "predictions.npz") != scored:
                raise cli.DataError(f"{run} is not the run the cross-validation scored (it was "
                                    "retrained or removed since): rerun make q2")
            if not (run / "best.pt").exists():
                raise cli.DataError(f"{run / 'best.pt'} is missing: rerun make q2")
            weights[fold].append({"run": name, "weights": f"{name}/best.pt",
                                  "sha256": file_digest(run / "best.pt")})
    final = {**provenance(source, None, choice["seed"]), "model": choice["model"],
             "seed": choice["seed"], "folds": weights, "adapt": choice["adapt"],
             "logit_bias": choice["logit_bias"], "selection": choice["selection"],
             "inner_val_score": choice["inner_val_score"],
             "how": "the probabilities of the k fold models are averaged (an ensemble's members "
                    "by geometric mean within each fold), optionally adapted per record, then "
                    "decided with the logit biases"}
    write_json(root / FINAL, final)
    print(f"deployed Q2 model: {choice['model']}, the {len(weights)} fold models of seed "
          f"{choice['seed']} ({sum(len(w) for w in weights.values())} networks), biases "
          f"{[round(b, 3) for b in choice['logit_bias']]}, adaptation "
          f"{'on' if choice['adapt'] else 'off'}; written to {root / FINAL}")
    return final


def read_final(root) -> dict:
    """final.json of a results folder, with every weights file checked against its SHA-256."""
    path = root / FINAL
    if not path.exists():
        raise cli.DataError(f"no deployed Q2 model in {root}: run `make q2-final` first")
    final = read_json(path)
    for entries in final["folds"].values():
        for e in entries:
            if not (root / e["weights"]).exists() or file_digest(root / e["weights"]) != e["sha256"]:
                raise cli.DataError(f"{root / e['weights']} is missing or is not the model "
                                    f"{path} deployed: rerun make q2-final")
    return final


if __name__ == "__main__":
    cli.run_main(lambda: main(parse_args()))
