"""Score the Q1 runs from their prediction files; write metrics.json and figures.

    python -m q1_mri.eval --data ../shared/data/mri
    python -m q1_mri.eval --data OTHER --trained-on ../shared/data/mri --save-predictions p.npz

Protocol: every patient of the source is predicted once, by the fold model that never saw it
(patient-grouped k-fold over the train and validation splits pooled; on the Hub the official
validation split is the test set). Each run keeps its final EMA weights after a fixed schedule:
nothing is chosen on test patients. Metrics are computed per slice (data range 1.0), whole
image and inside the brain mask, averaged within each patient, then across patients (mean, sd
over patients, and a 95 % patient-bootstrap interval only with at least 5 patients; otherwise
read the per-patient table); per view the same within the view. Models are compared paired per
patient with the U-Net: mean difference and how many patients improve. Every number is given in
two scales: the oracle per-volume p99.5 (the target T2 divided by its own brain percentile)
and a T1-derived one that uses no target intensities. Evaluation reads prediction files and the
data (for the ground truth) only: it never re-runs a model or rebuilds a split (an external
dataset is first predicted by q1_mri.infer with the final model).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from common import cli
from common.io import read_csv, read_json, write_json
from common.results import evaluation_dirs, provenance
from q1_mri import patient_stats
from q1_mri.data import (
    DATA_RANGE,
    NORMALISATION,
    SCALE,
    SCALES,
    SPLITS,
    VIEWS,
    Slices,
    load_mri,
    normalise,
    pool,
    resolve_source,
    t1_derived_t2,
    t2_t1_ratio,
    volume_scales,
)
from q1_mri.metrics import all_metrics
from q1_mri.prediction_file import Predictions, load_predictions, save_predictions

METRICS = ("masked_ssim", "masked_psnr", "masked_mae", "ssim", "psnr", "mae")
LOWER_IS_BETTER = ("masked_mae", "mae")
T1_SCALE = "t1-derived"
SOLUTIONS = ("unet", "unet25d", "transunet")   # candidates for the final model
REFERENCE = "unet"                              # what the paired comparisons are against
DESCRIPTIONS = {
    "unet": "2-D residual U-Net, L1 + (1 - SSIM) loss",
    "unet25d": "2.5-D U-Net: the slice and its two verified neighbours as input",
    "transunet": "U-Net with a transformer bottleneck (+ PatchGAN unless --adv-weight 0)",
    "identity": "baseline: the normalised T1 as the prediction",
    "linear": "baseline: T2 = a * T1 + b on brain pixels, least squares on the training patients",
}
# the settings of a CV run that q1-final repeats (q1_mri.train --from-cv)
TRAINING_KEYS = ("model", "name", "epochs", "slices_per_epoch", "batch_size", "lr", "weight_decay",
                 "warmup_epochs", "ema_decay", "ssim_weight", "adv_weight", "base_channels",
                 "no_augment", "max_train_slices", "precision")
FLIP = "+flip"
FLIP_NOTE = (", test-time left-right flip averaged (axial and coronal; sagittal slices have no "
             "left-right axis)")


# ---------------------------------------------------------------- runs and their files

class Run:
    """A trained (or baseline) run folder: its summary, split and checked predictions."""

    def __init__(self, folder: Path, data_tag: str):
        self.folder = folder
        self.summary = read_json(folder / "summary.json")
        self.split = read_json(folder / "split.json")
        self.method = "-".join(filter(None, [self.summary["model"], self.summary.get("name")]))
        self.scheme, self.fold = self.summary["split"], self.summary["fold"]
        self.seed = int(self.summary["seed"])
        self.preds = load_predictions(folder / "predictions.npz", self.split["split_id"], data_tag)
        expected = {p for p, r in self.split["roles"].items() if r == "test"}
        got = set(self.preds.patient_id.tolist())
        if got != expected:
            raise cli.DataError(f"{folder / 'predictions.npz'}: its patients "
                                f"({len(got)}) are not the test patients of "
                                f"{folder / 'split.json'} ({len(expected)}); rerun that run")
        self.train_patients = sorted(p for p, r in self.split["roles"].items() if r == "train")


def run_folders(root: Path) -> list[Path]:
    """Folders under `root` holding a finished run (prediction file, split and summary)."""
    return sorted(f for f in root.iterdir() if all(
        (f / name).exists() for name in ("predictions.npz", "split.json", "summary.json")))


def locate(preds: Predictions, slices: Slices, path: Path) -> np.ndarray:
    """(n,) index into `slices` of each predicted slice, from its (split, row); refuses rows that
    are not in the data or whose patient or view differ (a file of other data), and slices
    predicted twice."""
    offsets, start = {}, 0
    for s in SPLITS:
        offsets[s] = start
        start += int((slices.split == s).sum())
    sizes = {s: int((slices.split == s).sum()) for s in SPLITS}
    bad = [i for i, (s, r) in enumerate(zip(preds.split.tolist(), preds.row.tolist()))
           if s not in sizes or not 0 <= r < sizes[s]]
    if bad:
        raise cli.DataError(f"{path}: row {preds.row[bad[0]]} of split {preds.split[bad[0]]} is "
                            "not in the data; the file was made from other data")
    idx = np.array([offsets[s] for s in preds.split.tolist()], np.int64) + preds.row
    wrong = np.flatnonzero((slices.patient_id[idx] != preds.patient_id)
                           | (slices.view[idx] != preds.view))
    if len(wrong):
        i = wrong[0]
        raise cli.DataError(f"{path}: {preds.split[i]} row {preds.row[i]} is patient "
                            f"{preds.patient_id[i]} {preds.view[i]} in the file but "
                            f"{slices.patient_id[idx[i]]} {slices.view[idx[i]]} in the data")
    if len(np.unique(idx)) != len(idx):
        raise cli.DataError(f"{path}: some slices are predicted twice")
    return idx


# ---------------------------------------------------------------- scoring

class Truth:
    """Ground truth of every slice of a source in each scale, and the brain mask."""

    def __init__(self, slices: Slices):
        self.slices = slices
        self.t1, self.t2, self.mask = normalise(slices)
        self.t1_scales = volume_scales(slices.t1, slices.patient_id)
        self.t2_scales = volume_scales(slices.t2, slices.patient_id)

    def target(self, scale: str, idx: np.ndarray, train_patients) -> np.ndarray:
        """(n, 1, H, W) true T2 of slices `idx` in `scale` (T1-derived: r from
        `train_patients`)."""
        if scale == SCALE:
            return self.t2[idx]
        ratio = t2_t1_ratio(self.t1_scales, self.t2_scales, train_patients)
        return t1_derived_t2(self.slices.t2[idx], self.slices.patient_id[idx], self.t1_scales,
                             ratio)


def per_slice_scores(gt: np.ndarray, pred: np.ndarray, mask: np.ndarray,
                     batch: int = 1024) -> dict[str, np.ndarray]:
    """Every metric per slice, (n,) float64 each; images (n, 1, H, W) in one scale."""
    parts = defaultdict(list)
    for s in range(0, len(gt), batch):
        scores = all_metrics(*(torch.from_numpy(np.ascontiguousarray(a[s:s + batch])).float()
                               for a in (gt, pred)),
                             torch.from_numpy(np.ascontiguousarray(mask[s:s + batch])), DATA_RANGE)
        for k in METRICS:
            parts[k].append(scores[k].numpy().astype(np.float64))
    return {k: np.concatenate(parts[k]) if parts[k] else np.zeros(0) for k in METRICS}


def summarise(scores: dict[str, np.ndarray], patient_id: np.ndarray, view: np.ndarray,
              fold: np.ndarray | None = None) -> dict:
    """Per patient, then across patients: overall, per view, and the per-patient table."""
    by_view = {v: {k: patient_stats.summary(s[view == v], patient_id[view == v])
                   for k, s in scores.items()} for v in VIEWS if (view == v).any()}
    table = {p: {"slices": int((patient_id == p).sum())} for p in np.unique(patient_id).tolist()}
    for k, s in scores.items():
        for p, value in patient_stats.per_patient(s, patient_id).items():
            table[p][k] = value
    if fold is not None:
        for p in table:
            table[p]["fold"] = str(fold[patient_id == p][0])
    return {"overall": {k: patient_stats.summary(s, patient_id) for k, s in scores.items()},
            "per_view": by_view, "per_patient": table}


def score_rows(truth: Truth, parts: list[tuple[np.ndarray, np.ndarray, list[str], str]]
               ) -> tuple[dict, dict]:
    """Scores of one method from its pieces (idx (n,), pred (n, 1, H, W), training patients,
    fold): {scale: per-slice scores (n_total,)} and the pooled idx / fold."""
    idx = np.concatenate([p[0] for p in parts])
    fold = np.concatenate([np.full(len(p[0]), p[3]) for p in parts])
    scores = {}
    for scale in (SCALE, T1_SCALE):
        chunks = [per_slice_scores(truth.target(scale, i, train), pred, truth.mask[i])
                  for i, pred, train, _ in parts]
        scores[scale] = {k: np.concatenate([c[k] for c in chunks]) for k in METRICS}
    return scores, {"idx": idx, "fold": fold}


# ---------------------------------------------------------------- one scheme

def method_entry(method: str, runs: list[Run]) -> dict:
    """Description, cost and monitor curves of a method's runs (from their summaries)."""
    base = method.removesuffix(FLIP)
    first = runs[0].summary
    entry = {"description": DESCRIPTIONS.get(base.split("-")[0], base)
             + (FLIP_NOTE if method.endswith(FLIP) else ""),
             "runs": [r.folder.name for r in runs], "folds": [r.fold for r in runs]}
    if "parameters" in first:      # a network, not a baseline
        entry.update({"parameters": first["parameters"], "epochs": first.get("epochs"),
                      "slices_per_epoch": first.get("slices_per_epoch"),
                      "model_args": first.get("model_args"), "precision": first.get("precision"),
                      "device": first.get("device"), "neighbours": first.get("neighbours"),
                      "wall_time_s": float(sum(r.summary.get("wall_time_s", 0) for r in runs)),
                      "slices_per_s": float(np.mean([r.summary.get("slices_per_s", np.nan)
                                                     for r in runs]))})
    return entry


def monitor_summary(histories: dict[str, list[dict]]) -> dict | None:
    """Last-epoch training and held-out brain SSIM (mean over folds) and the epoch where the
    fold-mean held-out curve peaks: reported to show over-fitting, never used to pick weights."""
    runs = [h for h in histories.values() if h and "heldout_masked_ssim" in h[-1]]
    if not runs:
        return None
    n = min(len(h) for h in runs)
    curve = np.mean([[row["heldout_masked_ssim"] for row in h[:n]] for h in runs], axis=0)
    return {"final_train_masked_ssim": float(np.mean([h[-1]["train_masked_ssim"] for h in runs])),
            "final_heldout_masked_ssim": float(np.mean([h[-1]["heldout_masked_ssim"]
                                                        for h in runs])),
            "peak_heldout_masked_ssim": float(curve.max()), "peak_epoch": int(curve.argmax()) + 1,
            "epochs": n}


def check_out_of_fold(runs: list[Run], patients: int) -> list[str]:
    """Problems that stop a k-fold group from being a headline (missing folds or patients)."""
    problems = []
    folds = runs[0].split.get("folds_k") or int(runs[0].summary.get("config", {}).get("folds", 1))
    if runs[0].scheme == "kfold" and len(runs) != folds:
        problems.append(f"{len(runs)} of {folds} folds trained")
    seen = defaultdict(list)
    for run in runs:
        for p in set(run.preds.patient_id.tolist()):
            seen[p].append(run.fold)
    twice = sorted(p for p, f in seen.items() if len(f) > 1)
    if twice:
        raise cli.DataError(f"patient(s) {twice[:5]} are tested by two folds "
                            f"({', '.join(seen[twice[0]])}): the runs come from different splits")
    if runs[0].scheme == "kfold" and len(seen) < patients:
        problems.append(f"{patients - len(seen)} of {patients} patients not predicted")
    return problems


def evaluate_scheme(groups: dict[str, list[Run]], truth: Truth) -> tuple[dict, dict]:
    """metrics['methods'] of one scheme, and per method its pooled rows (idx, pred, scores)."""
    methods, oof = {}, {}
    n_patients = len(np.unique(truth.slices.patient_id))
    for method, runs in groups.items():
        runs.sort(key=lambda r: r.fold)
        variants = {method: [r.preds.t2_pred for r in runs]}
        if all(r.preds.t2_pred_flip is not None for r in runs):
            variants[method + FLIP] = [r.preds.t2_pred_flip for r in runs]
        idx = [locate(r.preds, truth.slices, r.folder / "predictions.npz") for r in runs]
        problems = check_out_of_fold(runs, n_patients)
        histories = {r.fold: read_csv(r.folder / "history.csv") for r in runs
                     if (r.folder / "history.csv").exists()}
        for name, preds in variants.items():
            parts = [(i, p, r.train_patients, r.fold)
                     for i, p, r in zip(idx, preds, runs)]
            scores, rows = score_rows(truth, parts)
            pid, view = truth.slices.patient_id[rows["idx"]], truth.slices.view[rows["idx"]]
            entry = method_entry(name, runs)
            entry["problems"] = problems
            entry["monitor"] = monitor_summary(histories) if name == method else None
            entry["scores"] = {scale: summarise(s, pid, view, rows["fold"])
                               for scale, s in scores.items()}
            methods[name] = entry
            order = np.argsort(rows["idx"])
            oof[name] = {"idx": rows["idx"][order],
                         "pred": np.concatenate([p for _, p, _, _ in parts])[order],
                         "scores": {sc: {k: v[order] for k, v in s.items()}
                                    for sc, s in scores.items()},
                         "history": histories if name == method else {}}
    return methods, oof


def paired_comparisons(methods: dict, reference: str) -> dict:
    """Every method against `reference`, paired per patient, in both scales."""
    out = {}
    for name, entry in methods.items():
        if name == reference:
            continue
        out[name] = {scale: {k: patient_stats.paired(
            {p: v[k] for p, v in methods[reference]["scores"][scale]["per_patient"].items()},
            {p: v[k] for p, v in entry["scores"][scale]["per_patient"].items()},
            higher_is_better=k not in LOWER_IS_BETTER) for k in ("masked_ssim", "masked_psnr",
                                                                 "masked_mae", "ssim")}
            for scale in (SCALE, T1_SCALE)}
    return out


def final_choice(methods: dict, paired: dict, groups: dict[str, list[Run]]) -> dict | None:
    """The configuration q1-final trains: the U-Net unless another solution (or the flip)
    improves the per-patient brain SSIM (oracle scale) for more than half of the patients with
    a positive mean gain; among several, the largest mean gain. The schedule is the runs' own."""
    candidates = [m for m in methods if m.removesuffix(FLIP).split("-")[0] in SOLUTIONS
                  and not methods[m]["problems"]]
    if not candidates:
        return None
    reference = REFERENCE if REFERENCE in candidates else candidates[0]
    wins = {}
    for m in candidates:
        if m == reference or m not in paired:
            continue
        p = paired[m][SCALE]["masked_ssim"]
        if p["mean_diff"] > 0 and p["improved"] > p["patients"] / 2:
            wins[m] = p["mean_diff"]
    chosen = max(wins, key=wins.get) if wins else reference
    config = groups[chosen.removesuffix(FLIP)][0].summary["config"]
    out = {"method": chosen, "flip": chosen.endswith(FLIP),
           **{k: config.get(k) for k in TRAINING_KEYS},
           "rule": (f"{reference} unless a solution's paired per-patient brain SSIM gain "
                    f"({SCALE}) is positive on average and for most patients"),
           "reference": reference, "winners": wins}
    if chosen != reference:
        p = paired[chosen][SCALE]["masked_ssim"]
        out["gain"] = {"mean_diff": p["mean_diff"], "improved": p["improved"],
                       "patients": p["patients"]}
    return out


# ---------------------------------------------------------------- main

def parse_args(argv=None):
    p = cli.parser(__doc__.splitlines()[0])
    cli.add_eval_args(p, "slice")
    return p.parse_args(argv)


def collect(run_root: Path, data_tag: str) -> dict:
    """groups[scheme][method] = [Run, ...] of the lowest seed of each (scheme, method)."""
    found: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for folder in run_folders(run_root):
        run = Run(folder, data_tag)
        found[run.scheme][run.method][run.seed].append(run)
    return {scheme: {m: methods[m][min(methods[m])] for m in sorted(methods, key=_order)}
            for scheme, methods in found.items()}


def _order(method: str) -> tuple:
    """Networks first (SOLUTIONS order, then ablations), baselines last."""
    base = method.split("-")[0]
    return (base in ("identity", "linear"),
            SOLUTIONS.index(base) if base in SOLUTIONS else len(SOLUTIONS), method)


def common_fields(test_source, train_source, truth: Truth) -> dict:
    return {**provenance(test_source, None, 0), "trained_on": train_source.tag,
            "protocol": __doc__.split("Protocol: ")[1].strip(), "normalisation": NORMALISATION,
            "scale": SCALE, "scales": SCALES, "headline_scale": SCALE, "data_range": DATA_RANGE,
            "min_patients_for_interval": patient_stats.MIN_BOOTSTRAP,
            "patients": int(len(np.unique(truth.slices.patient_id))),
            "test_slices": len(truth.slices),
            "test_slices_skipped_empty": truth.slices.skipped_empty}


def best_method(methods: dict) -> str:
    return max(methods, key=lambda m: methods[m]["scores"][SCALE]["overall"]["masked_ssim"]["mean"])


def main(args) -> dict:
    from q1_mri import figures

    test_source = resolve_source(args.data)
    train_source = resolve_source(args.trained_on) if args.trained_on else test_source
    run_root, out_dir, external = evaluation_dirs("q1", train_source, test_source,
                                                  args.results_root)
    if external:
        return evaluate_external(args, run_root, out_dir, train_source, test_source)
    if not run_folders(run_root):
        raise cli.DataError(f"no trained Q1 run in {run_root}: run make q1 "
                            "(or python -m q1_mri.train) first")
    truth = Truth(pool(load_mri(test_source)))
    groups = collect(run_root, test_source.tag)
    headline = "kfold" if "kfold" in groups else next(iter(sorted(groups)))
    results, oofs = {}, {}
    for scheme, methods in sorted(groups.items()):
        results[scheme], oofs[scheme] = evaluate_scheme(methods, truth)
    methods = results[headline]
    reference = REFERENCE if REFERENCE in methods else next(
        (m for m in methods if m.split("-")[0] in SOLUTIONS), next(iter(methods)))
    paired = paired_comparisons(methods, reference)
    choice = final_choice(methods, paired, groups[headline])
    first = next(iter(groups[headline].values()))[0]
    result = {**common_fields(test_source, train_source, truth),
              "headline_scheme": headline, "split_file": first.split.get("split_file"),
              "test_set": (f"every patient of {test_source.label}, out of fold"
                           if headline == "kfold"
                           else f"the {headline} test patients of {test_source.label}"),
              "best_method": best_method(methods),
              "chosen_model": choice and choice["method"], "final_choice": choice,
              "methods": methods, "paired": {"reference": reference, "methods": paired},
              "other_schemes": {s: m for s, m in results.items() if s != headline}}
    write_json(out_dir / "metrics.json", result)
    figures.write_all(out_dir / "figures", truth, oofs[headline], result, test_source.label)
    print_table(result)
    return result


def evaluate_external(args, run_root, out_dir, train_source, test_source) -> dict:
    """Predict every slice of another dataset with the final model, then score those files."""
    from q1_mri import figures
    from q1_mri.infer import predict_external

    files, info, slices = predict_external(run_root, train_source, test_source, out_dir,
                                           args.device)
    truth = Truth(slices)
    train = pool(load_mri(train_source))
    train_patients = sorted(set(train.patient_id.tolist()))
    # the T1-derived ratio comes from the training source's patients, not from OTHER
    t1s, t2s = (volume_scales(a, train.patient_id) for a in (train.t1, train.t2))
    ratio = t2_t1_ratio(t1s, t2s, train_patients)
    methods, oof = {}, {}
    for name, path in files.items():
        preds = load_predictions(path, split_id="external", data_tag=test_source.tag)
        idx = locate(preds, slices, path)
        scores = {SCALE: per_slice_scores(truth.t2[idx], preds.t2_pred, truth.mask[idx]),
                  T1_SCALE: per_slice_scores(
                      t1_derived_t2(slices.t2[idx], slices.patient_id[idx], truth.t1_scales,
                                    ratio), preds.t2_pred, truth.mask[idx])}
        base = name.removesuffix(FLIP)
        methods[name] = {"description": DESCRIPTIONS.get(base, base)
                         + (FLIP_NOTE if name.endswith(FLIP) else ""), "problems": [],
                         "scores": {sc: summarise(s, slices.patient_id[idx], slices.view[idx])
                                    for sc, s in scores.items()}}
        oof[name] = {"idx": idx, "pred": preds.t2_pred, "scores": scores, "history": {}}
    final = info["method"]
    paired = paired_comparisons(methods, final)
    result = {**common_fields(test_source, train_source, truth),
              "test_set": f"every slice of {test_source.label}", "final_model": info,
              "t2_t1_ratio": ratio, "train_patients": info["train_patients"],
              "train_slices": info["train_slices"], "best_method": best_method(methods),
              "methods": methods, "paired": {"reference": final, "methods": paired}}
    write_json(out_dir / "metrics.json", result)
    figures.write_all(out_dir / "figures", truth, oof, result, test_source.label)
    if args.save_predictions:
        p = load_predictions(files[final])
        save_predictions(Path(args.save_predictions), p.row, p.split, p.patient_id, p.view,
                         p.t2_pred, scale=SCALE, model=final, split_id="external",
                         data_tag=test_source.tag, dtype=np.float32)
        print(f"predictions of {final} for {len(p)} slices written to {args.save_predictions}")
    print_table(result)
    return result


def print_table(result: dict) -> None:
    print(f"\nQ1 on {result['test_set']}: means over patients of per-patient means, brain mask, "
          f"{SCALE} units (oracle) | {T1_SCALE}")
    w = max(len("method"), *map(len, result["methods"]))
    print(f"{'method':<{w}} {'view':<9} {'patients':>8} {'SSIM':>7} {'PSNR':>6} {'MAE':>7}"
          f" | {'SSIM':>6} {'PSNR':>6}")
    for m, r in result["methods"].items():
        oracle, t1d = r["scores"][SCALE], r["scores"][T1_SCALE]
        for view in ["all", *oracle["per_view"]]:
            a = oracle["overall"] if view == "all" else oracle["per_view"][view]
            b = t1d["overall"] if view == "all" else t1d["per_view"][view]
            print(f"{m:<{w}} {view:<9} {a['masked_ssim']['patients']:>8} "
                  f"{a['masked_ssim']['mean']:>7.4f} {a['masked_psnr']['mean']:>6.2f} "
                  f"{a['masked_mae']['mean']:>7.4f} | {b['masked_ssim']['mean']:>6.4f} "
                  f"{b['masked_psnr']['mean']:>6.2f}")
        if r["problems"]:
            print(f"{'':<{w}} not a headline: {'; '.join(r['problems'])}")


if __name__ == "__main__":
    cli.run_main(lambda: main(parse_args()))
