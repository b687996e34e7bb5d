"""Baselines as runs: identity, a linear and a lookup-table intensity map, for every fold.

    python -m q1_mri.baselines --data ../shared/data/mri --split kfold --folds 5 --seed 0

Each fold gets a run folder like a network's (split.json, summary.json, predictions.npz with
the inner-validation and test slices), so evaluation scores baselines and models with the same
code. Fitted on the brain pixels of the fold's training patients (background stays 0):
  identity  the normalised T1 as the predicted T2
  linear    T2 = a * T1 + b, least squares
  lut       T2 = the mean training T2 of the pixels in the same one of LUT_BINS bins of T1: the
            best any pixel-wise intensity map can do on average (T1 -> T2 per tissue)
"""
from __future__ import annotations

import numpy as np

from common import cli
from common.io import write_json
from common.results import provenance, results_dir
from common.runs import locked, run_name
from common.splitfile import written_from
from q1_mri import splits
from q1_mri.data import UNITS, Slices, load_mri, normalise, pool, resolve_source
from q1_mri.prediction_file import save_predictions

LUT_BINS = 64
DESCRIPTIONS = {"identity": "baseline: the normalised T1 as the prediction",
                "linear": "baseline: T2 = a * T1 + b on brain pixels, least squares on the "
                          "fold's training patients",
                "lut": f"baseline: T2 = the mean training T2 of its T1 intensity bin "
                       f"({LUT_BINS} bins; fold's training patients)"}


def parse_args(argv=None):
    p = cli.parser(__doc__.splitlines()[0])
    cli.add_data_args(p)
    cli.add_split_args(p, ("kfold", "official"), 5)
    return p.parse_args(argv)


def fit_linear(t1: np.ndarray, t2: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Least-squares a, b of T2 ~ a * T1 + b over the pixels where `mask` is true."""
    x, y = t1[mask].astype(np.float64), t2[mask].astype(np.float64)
    a = ((x - x.mean()) * (y - y.mean())).mean() / x.var()
    return float(a), float(y.mean() - a * x.mean())


def linear_map(t1: np.ndarray, coef: tuple[float, float]) -> np.ndarray:
    """Apply the fitted map inside the brain (T1 > 0), clipped to [0, 1]; background stays 0."""
    return np.where(t1 > 0, np.clip(coef[0] * t1 + coef[1], 0, 1), 0).astype(np.float32)


def fit_lut(t1: np.ndarray, t2: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(LUT_BINS,) mean T2 of the brain pixels in each of LUT_BINS equal bins of T1 on [0, 1]
    (an empty bin takes its nearest filled neighbour's value)."""
    b = np.minimum((t1[mask] * LUT_BINS).astype(np.int64), LUT_BINS - 1)
    sums = np.bincount(b, weights=t2[mask].astype(np.float64), minlength=LUT_BINS)
    counts = np.bincount(b, minlength=LUT_BINS)
    filled = np.flatnonzero(counts)
    nearest = filled[np.abs(np.arange(LUT_BINS)[:, None] - filled[None]).argmin(1)]
    return (sums[nearest] / counts[nearest]).astype(np.float32)


def predict_baselines(t1: np.ndarray, coef: tuple[float, float], lut: np.ndarray
                      ) -> dict[str, np.ndarray]:
    """{method: (n, 1, H, W) float32 predicted T2} from normalised T1 (n, 1, H, W)."""
    t1 = t1.astype(np.float32)
    b = np.minimum((t1 * LUT_BINS).astype(np.int64), LUT_BINS - 1)
    return {"identity": t1, "linear": linear_map(t1, coef),
            "lut": np.where(t1 > 0, lut[b], 0).astype(np.float32)}


def write_run(folder, slices: Slices, rows: np.ndarray, roles: np.ndarray, pred: np.ndarray,
              method: str, entry: dict, source, summary: dict) -> None:
    """A baseline's run folder: split.json, predictions.npz, summary.json."""
    s = slices.select(rows)
    with locked(folder):
        for name in ("summary.json", "predictions.npz"):     # never a mix of two runs
            (folder / name).unlink(missing_ok=True)
        write_json(folder / "split.json", entry)
        save_predictions(folder / "predictions.npz", s.row, s.split, s.patient_id, s.view,
                         roles, pred, units=UNITS, model=method, split_id=entry["split_id"],
                         data_tag=source.tag)
        write_json(folder / "summary.json", {**provenance(source, None, summary["seed"]),
                                             **summary, "model": method, "name": None,
                                             "description": DESCRIPTIONS[method]})


def main(args) -> None:
    source = resolve_source(args.data)
    root = results_dir("q1", source, args.results_root)
    scheme = f"kfold{args.folds}" if args.split == "kfold" else args.split
    name = lambda method, fold: run_name(method, scheme, fold if args.split == "kfold" else None,  # noqa: E731
                                         f"seed{args.seed}")
    split_file = splits.split_path(root / "splits", args.split, args.folds, args.seed)
    if args.resume and written_from(split_file, lambda fold: [root / name(m, fold)
                                                              for m in DESCRIPTIONS]):
        print(f"baselines {scheme} seed {args.seed}: every fold written earlier, kept")
        return
    slices = pool(load_mri(source))
    split, path = splits.open_split(root, source.tag, slices, args.split, args.folds, args.seed)
    t1, t2, mask = normalise(slices)
    for fold in split["folds"]:
        roles = splits.slice_roles(split["folds"][fold], slices)
        train = np.flatnonzero(roles == "train")
        rows = np.flatnonzero(np.isin(roles, ("val", "test")))
        coef = fit_linear(t1[train], t2[train], mask[train])
        lut = fit_lut(t1[train], t2[train], mask[train])
        entry = splits.run_entry(split, path, fold)
        for method, pred in predict_baselines(t1[rows], coef, lut).items():
            write_run(root / name(method, fold), slices, rows, roles[rows], pred, method, entry, source,
                      {"seed": args.seed, "split": args.split, "fold": fold,
                       "split_id": entry["split_id"],
                       "config": {"folds": args.folds, "seed": args.seed},
                       "split_counts": splits.describe(slices, roles),
                       **({"coef": list(coef)} if method == "linear" else {})})
        print(f"baselines {scheme} {fold}: linear T2 = {coef[0]:.3f} T1 + {coef[1]:.3f} "
              f"(fitted on {len(np.unique(slices.patient_id[train]))} training patients), "
              f"{int((roles == 'test').sum())} test slices")


if __name__ == "__main__":
    cli.run_main(lambda: main(parse_args()))
