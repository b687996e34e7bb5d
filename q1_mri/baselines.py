"""Baselines as runs: identity and a linear intensity map, for every fold of a scheme.

    python -m q1_mri.baselines --data ../shared/data/mri --split kfold --folds 4 --seed 0

Each fold gets a run folder like a network's (split.json, summary.json, predictions.npz), so
evaluation scores baselines and models with the same code.
  identity  the normalised T1 as the predicted T2 (the scale matched by the normalisation)
  linear    T2 = a * T1 + b inside the brain, least squares over the brain pixels of the fold's
            training patients (background stays 0)
"""
from __future__ import annotations

import numpy as np

from common import cli
from common.io import write_json
from common.results import provenance, results_dir
from common.runs import locked, run_name
from q1_mri import splits
from q1_mri.data import SCALE, Slices, load_mri, normalise, pool, resolve_source
from q1_mri.prediction_file import save_predictions

METHODS = ("identity", "linear")
DESCRIPTIONS = {"identity": "baseline: the normalised T1 as the prediction",
                "linear": "baseline: T2 = a * T1 + b on brain pixels, least squares on the "
                          "fold's training patients"}


def parse_args(argv=None):
    p = cli.parser(__doc__.splitlines()[0])
    cli.add_data_args(p)
    p.add_argument("--split", choices=("kfold", "official"), default="kfold")
    p.add_argument("--folds", type=cli.count, default=4)
    p.add_argument("--seed", type=cli.natural, default=0)
    return p.parse_args(argv)


def fit_linear(t1: np.ndarray, t2: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Least-squares a, b of T2 ~ a * T1 + b over the pixels where `mask` is true."""
    x, y = t1[mask].astype(np.float64), t2[mask].astype(np.float64)
    a = ((x - x.mean()) * (y - y.mean())).mean() / x.var()
    return float(a), float(y.mean() - a * x.mean())


def linear_map(t1: np.ndarray, coef: tuple[float, float]) -> np.ndarray:
    """Apply the fitted map inside the brain (T1 > 0), clipped to [0, 1]; background stays 0."""
    return np.where(t1 > 0, np.clip(coef[0] * t1 + coef[1], 0, 1), 0).astype(np.float32)


def predict_baselines(t1: np.ndarray, coef: tuple[float, float]) -> dict[str, np.ndarray]:
    """{method: (n, 1, H, W) float32 predicted T2} from normalised T1 (n, 1, H, W)."""
    return {"identity": t1.astype(np.float32), "linear": linear_map(t1, coef)}


def write_run(folder, slices: Slices, rows: np.ndarray, pred: np.ndarray, method: str,
              entry: dict, source, summary: dict) -> None:
    """A baseline's run folder: split.json, predictions.npz, summary.json."""
    s = slices.select(rows)
    with locked(folder):
        write_json(folder / "split.json", entry)
        save_predictions(folder / "predictions.npz", s.row, s.split, s.patient_id, s.view, pred,
                         scale=SCALE, model=method, split_id=entry["split_id"],
                         data_tag=source.tag)
        write_json(folder / "summary.json", {**provenance(source, None, summary["seed"]),
                                             **summary, "model": method, "name": None,
                                             "description": DESCRIPTIONS[method]})


def main(args) -> None:
    source = resolve_source(args.data)
    root = results_dir("q1", source, args.results_root)
    slices = pool(load_mri(source))
    split, path = splits.open_split(root, source.tag, slices, args.split, args.folds, args.seed)
    t1, t2, mask = normalise(slices)
    scheme = f"kfold{args.folds}" if args.split == "kfold" else args.split
    for fold in split["folds"]:
        roles = splits.slice_roles(split["folds"][fold], slices)
        train, test = np.flatnonzero(roles == "train"), np.flatnonzero(roles == "test")
        coef = fit_linear(t1[train], t2[train], mask[train])
        entry = splits.run_entry(split, path, fold)
        for method, pred in predict_baselines(t1[test], coef).items():
            write_run(root / run_name(method, scheme, fold if args.split == "kfold" else None,
                                      f"seed{args.seed}"),
                      slices, test, pred, method, entry, source,
                      {"seed": args.seed, "split": args.split, "fold": fold,
                       "split_id": entry["split_id"],
                       "config": {"folds": args.folds, "seed": args.seed},
                       "split_counts": splits.describe(slices, roles),
                       **({"coef": list(coef)} if method == "linear" else {})})
        print(f"baselines {scheme} {fold}: linear T2 = {coef[0]:.3f} T1 + {coef[1]:.3f} "
              f"(fitted on {len(np.unique(slices.patient_id[train]))} training patients), "
              f"{len(test)} test slices")


if __name__ == "__main__":
    cli.run_main(lambda: main(parse_args()))
