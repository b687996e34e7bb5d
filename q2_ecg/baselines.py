"""Baselines as runs: majority class and two RR-only logistic regressions (on the intervals
against the sinus rhythm, and on the intervals divided by the record's average RR, the
inter-patient literature's features), for every fold of a scheme.

    python -m q2_ecg.baselines --data ../shared/data/ecg --split kfold --folds 5 --seed 0

Each fold gets a run folder like a network's (split.json, summary.json, predictions.npz), so
evaluation scores baselines and models with the same code.
"""
from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from common import cli
from common.io import write_json
from common.results import provenance, results_dir
from common.runs import locked, run_name
from common.splitfile import written_from
from q2_ecg import splits
from q2_ecg.beats import RR_NAMES, RR_SETS, build_table
from q2_ecg.data import load_records, resolve_source
from q2_ecg.prediction_file import save_predictions


def parse_args(argv=None):
    p = cli.parser(__doc__.splitlines()[0])
    cli.add_data_args(p)
    cli.add_split_args(p, ("kfold", "lodo"), 5)
    return p.parse_args(argv)


BASELINE_FEATURES = {"rr-logistic": "sinus", "rr-record-logistic": "record"}
METHODS = (*BASELINE_FEATURES, "majority")


def rr_logistic(rr: np.ndarray, y: np.ndarray, train: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(n, 3) log-odds of a logistic regression on RR features (B, F), fitted on `train` beats."""
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    clf.fit(rr[train], y[train])
    return clf.decision_function(rr[rows])


def main(args) -> None:
    source = resolve_source(args.data)
    root = results_dir("q2", source, args.results_root)
    scheme = f"kfold{args.folds}" if args.split == "kfold" else args.split
    split_file = splits.split_path(root / "splits", args.split, args.folds, args.seed)
    if args.resume and written_from(split_file, lambda fold: [
            root / run_name(m, scheme, fold, f"seed{args.seed}") for m in METHODS]):
        print(f"baselines {scheme} seed {args.seed}: every fold written earlier, kept")
        return
    records = load_records(source)
    table = build_table(records)
    split, path, _ = splits.open_split(root, source.tag, records, table, args.split, args.folds,
                                       args.seed)
    for fold in split["folds"]:
        roles = splits.beat_role_array(split, fold, records, table)
        train = np.flatnonzero(table.scored & (roles == "train"))
        rows = np.flatnonzero(table.scored & np.isin(roles, ("val", "test")))
        entry = splits.run_entry(split, path, fold, records, table)
        outputs = {name: rr_logistic(table.rr[:, [RR_NAMES.index(n) for n in RR_SETS[rr_set]]],
                                     table.label, train, rows)
                   for name, rr_set in BASELINE_FEATURES.items()}
        outputs["majority"] = np.tile(np.log([0.98, 0.01, 0.01]), (len(rows), 1))
        for method, out in outputs.items():
            with locked(root / run_name(method, scheme, fold, f"seed{args.seed}")) as folder:
                write_json(folder / "split.json", entry)
                save_predictions(folder / "predictions.npz", records, table, rows, roles[rows],
                                 out, model=method, split_id=entry["split_id"],
                                 data_tag=source.tag)
                write_json(folder / "summary.json", {
                    **provenance(source, None, args.seed), "model": method, "split": args.split,
                    "fold": fold, "split_id": entry["split_id"],
                    "config": {"name": None, "folds": args.folds,
                               "features": list(RR_SETS[BASELINE_FEATURES.get(method, "sinus")])},
                    "split_counts": splits.describe(records, table, roles)})
        print(f"baselines {scheme} {fold}: {len(train)} training beats, {len(rows)} scored")


if __name__ == "__main__":
    cli.run_main(lambda: main(parse_args()))
