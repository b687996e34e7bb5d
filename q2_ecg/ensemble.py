"""The two solutions combined: the geometric mean of the ResNet's and the context model's class
probabilities, fold by fold, written as runs of their own.

    python -m q2_ecg.ensemble --data ../shared/data/ecg

For every split, fold and seed on which every member has a prediction file, this writes
`ensemble-<scheme>-<fold>-seed<s>/` with the members' split.json, a predictions.npz whose
probabilities (and adapted probabilities) are the members' normalised geometric mean, and a
summary naming the members, their prediction files (SHA-256) and best epochs; a fold whose
file already holds exactly these probabilities is kept. Evaluation scores it like any run: its
decision biases are tuned on its own inner-validation rows, so it competes for the final model
on the same footing. It trains nothing and reads prediction files only.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from common import cli
from common.io import file_digest, read_json, write_json
from common.results import provenance, results_dir
from common.runs import locked, run_name
from q2_ecg.data import resolve_source
from q2_ecg.prediction_file import Predictions, load_predictions, save_rows
from q2_ecg.rules import geometric_mean

MEMBERS = ("resnet", "context")
NAME = "ensemble"


def combine(members: list[Predictions]) -> Predictions:
    """One Predictions whose probabilities are the members' geometric mean; the members must
    hold the same rows (records, beats, roles) of the same split."""
    first = members[0]
    for p in members[1:]:
        if p.split_id != first.split_id or not all(
                np.array_equal(getattr(p, f), getattr(first, f))
                for f in ("patient_id", "beat_loc", "role")):
            raise cli.DataError(f"the {p.model} and {first.model} prediction files do not hold "
                                "the same beats of the same split: rerun those runs")
    adapted = [p.prob_adapted for p in members]
    return Predictions(first.patient_id, first.source_db, first.beat_loc, first.label,
                       first.role, geometric_mean([p.prob for p in members]),
                       None if any(a is None for a in adapted) else geometric_mean(adapted),
                       NAME, first.split_id, first.data_tag)


def member_runs(root) -> dict[tuple, dict[str, object]]:
    """{(split, folds, fold, seed): {member: run folder}} of the members' finished runs."""
    found: dict = defaultdict(dict)
    for folder in sorted(root.iterdir()):
        if not (folder / "predictions.npz").exists() or not (folder / "summary.json").exists():
            continue
        s = read_json(folder / "summary.json")
        if s.get("model") in MEMBERS and not s["config"].get("name"):
            key = (s["split"], s["config"].get("folds"), s["fold"], int(s["seed"]))
            found[key][s["model"]] = folder
    return {k: v for k, v in found.items() if len(v) == len(MEMBERS)}


def parse_args(argv=None):
    return cli.data_args(__doc__, argv)


def holds(out: Path, p: Predictions) -> bool:
    """Whether `out` holds a finished ensemble whose prediction file has exactly `p`'s rows and
    probabilities: such a fold is kept, so the folder keeps the commit that first wrote it."""
    if not ((out / "summary.json").exists() and (out / "predictions.npz").exists()):
        return False
    old = load_predictions(out / "predictions.npz", p.split_id, p.data_tag)
    return all((a is None and b is None) or (a is not None and b is not None
                                             and np.array_equal(a, b))
               for a, b in ((getattr(old, f), getattr(p, f)) for f in Predictions.ROWS))


def main(args) -> int:
    source = resolve_source(args.data)
    root = results_dir("q2", source, args.results_root)
    groups = member_runs(root)
    if not groups:
        raise cli.DataError(f"no fold in {root} has prediction files of all of {list(MEMBERS)}: "
                            "train them first (make q2)")
    kept = 0
    for (split, folds, fold, seed), folders in sorted(groups.items()):
        summaries = {m: read_json(f / "summary.json") for m, f in folders.items()}
        member_files = {m: file_digest(f / "predictions.npz") for m, f in folders.items()}
        scheme = f"kfold{folds}" if split == "kfold" else split
        out = root / run_name(NAME, scheme, None if split == "beat" else fold, f"seed{seed}")
        split_file = read_json(folders[MEMBERS[0]] / "split.json")
        preds = combine([load_predictions(folders[m] / "predictions.npz", split_file["split_id"],
                                          source.tag) for m in MEMBERS])
        if holds(out, preds):
            kept += 1            # written earlier, by whichever commit, with these very rows
            continue
        first = summaries[MEMBERS[0]]
        with locked(out) as folder:
            write_json(folder / "split.json", split_file)
            save_rows(folder / "predictions.npz", preds)
            write_json(folder / "summary.json", {
                **provenance(source, None, seed), "model": NAME, "split": split, "fold": fold,
                "split_id": split_file["split_id"], "config": {"name": None, "folds": folds},
                "members": {m: f.name for m, f in folders.items()}, "member_files": member_files,
                "member_epochs": {m: s.get("best_epoch") for m, s in summaries.items()},
                "best_epoch": None, "split_counts": first.get("split_counts"),
                "parameters": sum(s.get("parameters", 0) for s in summaries.values()),
                "precision": first.get("precision"), "device": first.get("device"),
                "wall_time_s": float(sum(s.get("wall_time_s", 0) for s in summaries.values()))})
    print(f"ensemble of {' and '.join(MEMBERS)}: {len(groups) - kept} folds written, {kept} "
          f"kept (written earlier with the same probabilities) under {root}")
    return len(groups)


if __name__ == "__main__":
    cli.run_main(lambda: main(parse_args()))
