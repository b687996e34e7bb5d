"""The deployed Q1 model: the chosen configuration's k fold models, exactly as the
cross-validation scored them.

    python -m q1_mri.final --data ../shared/data/mri        # make q1-final

Reads the final choice q1_mri.eval made on inner validation (metrics.json): the method (model
and width), the seed whose k fold models are deployed and whether to average with the
left-right flipped prediction. Checks that every fold's run is still the one evaluation scored
(its prediction file's SHA-256) and writes results/q1/<source>/final.json: each fold's best
weights with their SHA-256 and the flip. Trains nothing: the deployed model averages the
predictions of models each validated on its own held-out fold (no refit, no new schedule).
q1_mri.infer reads final.json.
"""
from __future__ import annotations

from common import cli
from common.io import file_digest, read_json, write_json
from common.results import provenance, results_dir
from common.splitfile import cv_choice
from q1_mri.data import resolve_source

FINAL = "final.json"


def parse_args(argv=None):
    p = cli.parser(__doc__.splitlines()[0])
    cli.add_data_args(p)
    return p.parse_args(argv)


def main(args) -> dict:
    source = resolve_source(args.data)
    root = results_dir("q1", source, args.results_root)
    choice = cv_choice(root, "q1")
    folds = {}
    for fold, name in choice["folds"].items():
        run = root / name
        if not (run / "predictions.npz").exists() or (
                file_digest(run / "predictions.npz") != choice["prediction_digests"][name]):
            raise cli.DataError(f"{run} is not the run the cross-validation scored (it was "
                                "retrained or removed since): rerun make q1")
        if not (run / "best.pt").exists():
            raise cli.DataError(f"{run / 'best.pt'} is missing: rerun make q1")
        folds[fold] = {"run": name, "weights": f"{name}/best.pt",
                       "sha256": file_digest(run / "best.pt")}
    final = {**provenance(source, None, choice["seed"]), "method": choice["method"],
             "seed": choice["seed"], "flip": choice["flip"], "folds": folds,
             "inner_val_score": choice["inner_val_score"],
             "how": "the fold models' predicted T2 averaged (each with the left-right flip "
                    "average when chosen), in the training units"}
    write_json(root / FINAL, final)
    print(f"deployed Q1 model: {choice['method']}, the {len(folds)} fold models of seed "
          f"{choice['seed']}{', with the flip' if choice['flip'] else ''}; written to "
          f"{root / FINAL}")
    return final


def read_final(root) -> dict:
    """final.json of a results folder, with every weights file checked against its SHA-256."""
    path = root / FINAL
    if not path.exists():
        raise cli.DataError(f"no deployed Q1 model in {root}: run `make q1-final` first")
    final = read_json(path)
    for e in final["folds"].values():
        if not (root / e["weights"]).exists() or file_digest(root / e["weights"]) != e["sha256"]:
            raise cli.DataError(f"{root / e['weights']} is missing or is not the model {path} "
                                "deployed: rerun make q1-final")
    return final


if __name__ == "__main__":
    cli.run_main(lambda: main(parse_args()))
