"""The deployed model of a cross-validation: the k fold models it scored, nothing retrained.

`make q1-final` / `make q2-final` (q1_mri.final, q2_ecg.final) call `deploy`; q1_mri.infer and
q2_ecg.infer call `read_final`. The choice itself (which method, seed, rule) was made on inner
validation by the question's evaluation and stands in metrics.json as "final_choice", with
{fold: [run folder, ...]} (an ensemble: its members) and the SHA-256 of every run's prediction
file as it was scored.
"""
from __future__ import annotations

from pathlib import Path

from common.cli import DataError
from common.io import file_digest, read_json, write_json
from common.results import provenance, results_dir
from common.splitfile import cv_choice

FINAL = "final.json"


def deploy(root: Path, question: str, source, keys: tuple[str, ...]) -> dict:
    """Write root/final.json: the final choice's `keys` (e.g. its decision rule) and, per fold,
    each run's best weights with their SHA-256, after checking that every run is still the one
    evaluation scored (its prediction file's SHA-256). Returns what it wrote."""
    choice = cv_choice(root, question)
    folds = {}
    for fold, names in choice["folds"].items():
        folds[fold] = []
        for name in names:
            run = root / name
            if not (run / "predictions.npz").exists() or (
                    file_digest(run / "predictions.npz") != choice["prediction_digests"][name]):
                raise DataError(f"{run} is not the run the cross-validation scored (it was "
                                f"retrained or removed since): rerun make {question}")
            if not (run / "best.pt").exists():
                raise DataError(f"{run / 'best.pt'} is missing: rerun make {question}")
            folds[fold].append({"run": name, "weights": f"{name}/best.pt",
                                "sha256": file_digest(run / "best.pt")})
    final = {**provenance(source, None, choice["seed"]), **{k: choice[k] for k in keys},
             "seed": choice["seed"], "folds": folds}
    write_json(root / FINAL, final)
    return final


def read_final(root: Path, question: str) -> dict:
    """final.json of a results folder, with every weights file checked against its SHA-256."""
    path = root / FINAL
    if not path.exists():
        raise DataError(f"no deployed {question.upper()} model in {root}: run `make "
                        f"{question}-final` first")
    final = read_json(path)
    for entries in final["folds"].values():
        for e in entries:
            if not (root / e["weights"]).exists() or file_digest(root / e["weights"]) != e["sha256"]:
                raise DataError(f"{root / e['weights']} is missing or is not the model {path} "
                                f"deployed: rerun make {question}-final")
    return final


def open_deployed(question: str, trained_on, args) -> tuple:
    """(device, results folder, final.json) of the deployed model of source `trained_on`, for an
    infer stage run with `args` (its --device and --results-root)."""
    from common.runtime import configure_threads, select_device

    configure_threads()
    root = results_dir(question, trained_on, args.results_root)
    return select_device(args.device), root, read_final(root, question)


def inference_note(final: dict, what: str, source_label: str, path: Path) -> str:
    """The line an infer stage prints: which deployed model predicted how much of what."""
    method = final.get("method") or final.get("model")
    return (f"deployed {method} ({len(final['folds'])} fold models, trained on "
            f"{final['data_label']}) predicted {what} of {source_label}; written to {path}")
