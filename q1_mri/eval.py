"""Score the Q1 runs from their prediction files and choose on inner validation; write
metrics.json and the pooled out-of-fold rows (oof/<method>.npz, which q1_mri.figures reads).

    python -m q1_mri.eval --data ../shared/data/mri                 # the cross-validation
    python -m q1_mri.eval --data OTHER --predictions p.npz          # a file q1_mri.infer wrote

Protocol: every patient of the source is predicted once, by the fold model that never saw it
(patient-grouped k-fold over the train and validation splits pooled; on the Hub the official
validation split is the test set). Every choice is made on inner-validation patients (a sixth
of each fold's training patients): each run's epoch (during training) and here, per method,
whether to average with the left-right flipped prediction, and which configuration is deployed
(model and width, by the mean inner-validation brain SSIM; ablations run on a few folds
are compared with the chosen model on those folds only). The flip decision for a fold's
test patients is made on the pooled inner validation of every fold without those patients (who
sit in other folds' inner validation), so no test patient shapes its own prediction. Metrics
are computed per slice inside the brain in metrics.SLICE_SCALE units (data range 1), averaged
within each patient, then across patients (mean, sd, 95 % patient-bootstrap interval); per
view the same. Methods are compared paired per patient with the plain U-Net reference. Seeds:
median and range over seeds; per-patient tables and pairs use the median seed. Evaluation reads
prediction files and the data (for the ground truth) only: it never runs a model.
"""
from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from common import cli
from common.io import file_digest, read_json, savez, write_json
from common.results import inputs_record, provenance, results_dir
from common.runs import check_finished_files
from common.splitfile import out_of_fold_problems
from q1_mri import patient_stats
from q1_mri.data import UNITS, UNITS_TEXT, VIEWS, load_mri, pool, resolve_source
from q1_mri.metrics import SLICE_SCALE, SLICE_SCALE_TEXT
from q1_mri.prediction_file import load_predictions
from q1_mri.truth import METRICS, Truth

HIGHER_IS_BETTER = {"masked_ssim": True, "masked_psnr": True, "masked_mae": False,
                    "ssim": True, "psnr": True}
SELECTION = "masked_ssim"                       # what inner validation maximises
SOLUTIONS = ("unet", "unet25d")                 # candidates for the deployed model
REFERENCE = "plain"                             # what every method is paired against
BASELINES = ("identity", "linear", "lut")
DESCRIPTIONS = {
    "unet": "2-D residual U-Net, L1 + (1 - SSIM), augmentation, weight EMA",
    "unet25d": "2.5-D residual U-Net: the slice and two neighbours on each side as input",
    "plain": "reference: plain U-Net (BatchNorm, transposed convs), L1, Adam, no augmentation",
    "identity": "baseline: the normalised T1 as the prediction",
    "linear": "baseline: T2 = a * T1 + b on brain pixels, fitted on the training patients",
    "lut": "baseline: T2 = the mean training T2 of its T1 intensity bin",
}
VARIANTS = ("plain", "flip")                    # without / with the test-time flip


# ---------------------------------------------------------------- runs and their files

class Run:
    """A finished run folder (summary.json, split.json, the prediction file it names)."""

    def __init__(self, folder: Path, data_tag: str):
        self.folder = folder
        self.summary = read_json(folder / "summary.json")
        self.split = read_json(folder / "split.json")
        self.method = "-".join(filter(None, [self.summary["model"], self.summary.get("name")]))
        self.scheme, self.fold = self.summary["split"], self.summary["fold"]
        self.seed = int(self.summary["seed"])
        path = folder / "predictions.npz"
        check_finished_files(folder, self.summary)
        self.preds = load_predictions(path, self.split["split_id"], data_tag)
        for role in ("val", "test"):
            expected = {p for p, r in self.split["roles"].items() if r == role}
            got = set(self.preds.patient_id[self.preds.role == role].tolist())
            if got != expected:
                raise cli.DataError(f"{path}: its {role} patients ({len(got)}) are not those of "
                                    f"{folder / 'split.json'} ({len(expected)}); rerun that run")

    @property
    def test_patients(self) -> set[str]:
        return {p for p, r in self.split["roles"].items() if r == "test"}


def run_folders(root: Path) -> list[Path]:
    """Folders under `root` holding a finished run (summary.json is written last)."""
    return sorted(f for f in root.iterdir() if (f / "summary.json").exists()
                  and (f / "predictions.npz").exists() and (f / "split.json").exists())


# ---------------------------------------------------------------- one method's runs

def scored_rows(run: Run, truth: Truth) -> dict:
    """Every inner-validation and test slice of a run: idx, role, fold, and per-slice scores
    of each VARIANT (the flip only where the file has it)."""
    p = run.preds
    idx = truth.locate(p, run.folder / "predictions.npz")
    out = {"idx": idx, "role": p.role, "fold": np.full(len(p), run.fold),
           "patient": p.patient_id, "view": p.view, "pos": np.arange(len(p)),
           "scores": {"plain": truth.score(idx, p.t2_pred)}}
    if p.t2_pred_flip is not None:
        out["scores"]["flip"] = truth.score(idx, p.t2_pred_flip)
    return out


def patient_mean(values: np.ndarray, patient: np.ndarray) -> float:
    """Mean over patients of each patient's mean of `values` (NaN without rows)."""
    per = patient_stats.per_patient(values, patient)
    return float(np.mean(list(per.values()))) if per else float("nan")


def choose_flip(rows: list[dict], exclude: set[str] = frozenset()) -> dict:
    """Inner-validation SELECTION score without ("plain") and with the flip ("with_flip"),
    over the "val" rows of `rows` whose patients are not in `exclude`; "flip": whether the
    flip scores higher; "score": the score of that decision."""
    scores = {}
    for variant in VARIANTS:
        values, patients = [], []
        for r in rows:
            if variant not in r["scores"]:
                continue
            m = (r["role"] == "val") & ~np.isin(r["patient"], list(exclude))
            values.append(r["scores"][variant][SELECTION][m])
            patients.append(r["patient"][m])
        if values:
            scores[variant] = patient_mean(np.concatenate(values), np.concatenate(patients))
    flip = bool("flip" in scores and scores["flip"] > scores["plain"])
    return {"plain": scores["plain"], "with_flip": scores.get("flip"), "flip": flip,
            "score": scores["flip" if flip else "plain"]}


def evaluate_seed(runs: list[Run], truth: Truth) -> tuple[dict, dict]:
    """(the metrics.json entry of one method's runs of one seed, its pooled test rows)."""
    runs.sort(key=lambda r: r.fold)
    rows = [scored_rows(r, truth) for r in runs]
    inner = choose_flip(rows)
    fold_flip = {r.fold: choose_flip(rows, r.test_patients)["flip"] for r in runs}
    test = defaultdict(list)
    for k, (run, r) in enumerate(zip(runs, rows)):
        m = r["role"] == "test"
        variant = "flip" if fold_flip[run.fold] else "plain"
        for key in ("idx", "fold", "patient", "view", "pos"):
            test[key].append(r[key][m])
        test["run"].append(np.full(m.sum(), k))
        test["flip"].append(np.full(m.sum(), variant == "flip"))
        for metric, v in r["scores"][variant].items():
            test[metric].append(v[m])
    test = {k: np.concatenate(v) for k, v in test.items()}
    scores = {k: test[k] for k in METRICS}
    entry = {"runs": [r.folder.name for r in runs], "inner_validation": inner,
             "inner_by_fold": {run.fold: choose_flip([r])["plain"] for run, r in zip(runs, rows)},
             "fold_flip": fold_flip, **summarise(scores, test["patient"], test["view"], test["fold"]),
             "best_epoch": {r.fold: r.summary.get("best_epoch") for r in runs},
             "wall_time_s": float(sum(r.summary.get("wall_time_s") or 0 for r in runs))}
    order = np.argsort(test["idx"])
    return entry, {k: test[k][order] for k in ("idx", "fold", "run", "pos", "flip", *METRICS)}


def summarise(scores: dict[str, np.ndarray], patient: np.ndarray, view: np.ndarray,
              fold: np.ndarray | None = None) -> dict:
    """Per patient, then across patients: overall, per view, and the per-patient table."""
    table = {p: {"slices": int((patient == p).sum())} for p in np.unique(patient).tolist()}
    for k, s in scores.items():
        for p, value in patient_stats.per_patient(s, patient).items():
            table[p][k] = value
    if fold is not None:
        for p in table:
            table[p]["fold"] = str(fold[patient == p][0])
    return {"overall": {k: patient_stats.summary(s, patient) for k, s in scores.items()},
            "per_view": {v: {k: patient_stats.summary(s[view == v], patient[view == v])
                             for k, s in scores.items()} for v in VIEWS if (view == v).any()},
            "per_patient": table}


def median_seed(seeds: dict[str, dict]) -> str:
    """The seed whose mean brain SSIM over patients is the median of the seeds' (the lower
    middle one for an even count): reported instead of the best seed."""
    order = sorted(seeds, key=lambda s: seeds[s]["overall"]["masked_ssim"]["mean"])
    return order[(len(order) - 1) // 2]


def method_entry(method: str, per_seed: dict[int, list[Run]], truth: Truth,
                 n_patients: int) -> tuple[dict, dict]:
    """(metrics.json entry of a method: seeds, their median and range, the median seed's
    tables; the median seed's pooled test rows: slice index, fold, run (index into the entry's
    "runs"), row in that run's prediction file, whether the flip decided it, per-slice scores)."""
    seeds, oof = {}, {}
    for seed, runs in sorted(per_seed.items()):
        seeds[str(seed)], oof[str(seed)] = evaluate_seed(runs, truth)
        seeds[str(seed)]["problems"] = problems(runs, n_patients)
    mid = median_seed(seeds)
    first = per_seed[int(mid)][0].summary
    base = method.split("-")[0]
    entry = {"description": DESCRIPTIONS.get(base, base) + (f" ({method})" if method != base else ""),
             "median_seed": mid, **seeds[mid],
             "seed_summary": {k: {"median": float(np.median(v)), "min": float(min(v)),
                                  "max": float(max(v)), "seeds": len(v)}
                              for k in METRICS for v in [[s["overall"][k]["mean"]
                                                          for s in seeds.values()]]},
             "inner_score_mean_over_seeds": float(np.mean([s["inner_validation"]["score"]
                                                           for s in seeds.values()])),
             "seeds": {s: {k: e[k] for k in ("overall", "inner_validation", "problems", "runs")}
                       for s, e in seeds.items()},
             **{k: first.get(k) for k in ("parameters", "model_args", "precision", "device",
                                          "slices_per_s", "neighbours")},
             "config": {k: first.get("config", {}).get(k) for k in (
                 "epochs", "budget", "slices_per_epoch", "batch_size", "lr", "weight_decay",
                 "ema_decay", "ssim_weight", "grad_weight", "augment", "patience")}}
    return entry, oof[mid]


def problems(runs: list[Run], n_patients: int) -> list[str]:
    """What stops a k-fold method from being a headline (missing folds or patients)."""
    if runs[0].scheme != "kfold":
        return []
    folds = runs[0].split.get("folds_k") or int(runs[0].summary.get("config", {}).get("folds", 1))
    return out_of_fold_problems({r.fold: r.test_patients for r in runs}, folds, n_patients,
                                "patients")


def paired_comparisons(methods: dict, reference: str) -> dict:
    """Every method against `reference`, paired per patient (median seeds)."""
    ref = methods[reference]["per_patient"]
    return {name: {k: patient_stats.paired({p: v[k] for p, v in ref.items()},
                                           {p: v[k] for p, v in e["per_patient"].items()},
                                           higher_is_better=HIGHER_IS_BETTER[k])
                   for k in ("masked_ssim", "masked_psnr", "masked_mae")}
            for name, e in methods.items() if name != reference}


def against_chosen(methods: dict, chosen: str | None) -> dict:
    """Every other solution variant (the 2.5-D model, other widths; some run on a few folds
    only) against the chosen method on the folds it ran: the mean over those folds of the
    inner-validation brain SSIM of both (without the flip), and the paired per-patient
    differences on those folds' test patients (median seeds)."""
    if chosen is None:
        return {}
    base, out = methods[chosen], {}
    for name, e in methods.items():
        if name == chosen or name.split("-")[0] not in SOLUTIONS:
            continue
        folds = sorted(e["inner_by_fold"])
        out[name] = {
            "folds": folds,
            "inner_validation": {m: float(np.mean([methods[m]["inner_by_fold"][f] for f in folds]))
                                 for m in (name, chosen)},
            "paired": {k: patient_stats.paired({p: v[k] for p, v in base["per_patient"].items()},
                                               {p: v[k] for p, v in e["per_patient"].items()},
                                               higher_is_better=HIGHER_IS_BETTER[k])
                       for k in ("masked_ssim", "masked_psnr", "masked_mae")}}
    return out


def final_choice(methods: dict, run_root: Path) -> dict | None:
    """The deployed configuration: the complete method of SOLUTIONS (with any width variant)
    with the best mean inner-validation score over seeds, as the k fold models of its median
    seed, each validated on its own held-out fold, their predictions averaged (no refit), with
    the flip if its inner validation chose it."""
    cands = {m: e["inner_score_mean_over_seeds"] for m, e in methods.items()
             if m.split("-")[0] in SOLUTIONS and not e["problems"]}
    if not cands:
        return None
    method = max(cands, key=cands.get)
    e = methods[method]
    folds = {read_json(run_root / name / "summary.json")["fold"]: [name] for name in e["runs"]}
    return {"method": method, "seed": int(e["median_seed"]), "flip": e["inner_validation"]["flip"],
            "folds": folds, "inner_val_score": cands[method], "inner_val_scores": cands,
            "selection": f"mean over inner-validation patients of brain SSIM ({SLICE_SCALE})",
            "prediction_digests": {name: file_digest(run_root / name / "predictions.npz")
                                   for names in folds.values() for name in names}}


# ---------------------------------------------------------------- main

def parse_args(argv=None):
    p = cli.parser(__doc__.splitlines()[0])
    cli.add_eval_args(p, "q1_mri.infer")
    return p.parse_args(argv)


def collect(run_root: Path, data_tag: str) -> dict:
    """groups[scheme][method][seed] = [Run, ...]."""
    found: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for folder in run_folders(run_root):
        run = Run(folder, data_tag)
        found[run.scheme][run.method][run.seed].append(run)
    return found


def _order(method: str) -> tuple:
    """Solutions first, then the reference, ablations, baselines last."""
    base = method.split("-")[0]
    rank = ([*SOLUTIONS, REFERENCE].index(base) if base in (*SOLUTIONS, REFERENCE)
            else len(SOLUTIONS) + 1 + (base in BASELINES))
    return rank, method != base, method


def common_fields(source, truth: Truth) -> dict:
    return {**provenance(source, None, 0), "protocol": __doc__.split("Protocol: ")[1].strip(),
            "units": UNITS, "units_text": UNITS_TEXT, "scale": SLICE_SCALE,
            "scale_text": SLICE_SCALE_TEXT, "data_range": 1.0,
            "min_patients_for_interval": patient_stats.MIN_BOOTSTRAP,
            "patients": int(len(np.unique(truth.slices.patient_id))),
            "slices": len(truth.slices), "slices_skipped_empty": truth.slices.skipped_empty}


def main(args) -> dict:
    source = resolve_source(args.data)
    if args.predictions:
        return evaluate_file(Path(args.predictions), source, args.results_root)
    run_root = results_dir("q1", source, args.results_root)
    if not run_folders(run_root):
        raise cli.DataError(f"no finished Q1 run in {run_root}: run make q1 "
                            "(or python -m q1_mri.train) first")
    truth = Truth(pool(load_mri(source)))
    groups = collect(run_root, source.tag)
    headline = "kfold" if "kfold" in groups else sorted(groups)[0]
    n_patients = len(np.unique(truth.slices.patient_id))
    methods, oof = {}, {}
    for method in sorted(groups[headline], key=_order):
        methods[method], oof[method] = method_entry(method, groups[headline][method], truth,
                                                    n_patients)
    reference = REFERENCE if REFERENCE in methods else next(iter(methods))
    choice = final_choice(methods, run_root)
    result = {**common_fields(source, truth), **inputs_record(run_root),
              "headline_scheme": headline,
              "test_set": (f"every patient of {source.label}, out of fold" if headline == "kfold"
                           else f"the {headline} test patients of {source.label}"),
              "chosen_model": choice and choice["method"], "final_choice": choice,
              "methods": methods,
              "paired": {"reference": reference, "methods": paired_comparisons(methods, reference)},
              "against_chosen": against_chosen(methods, choice and choice["method"])}
    for m, e in methods.items():
        if e["problems"]:
            print(f"notice: {m} is not a headline: {'; '.join(e['problems'])}", file=sys.stderr)
    write_json(run_root / "metrics.json", result)
    for method, rows in oof.items():
        savez(run_root / "oof" / f"{method}.npz", **rows)
    print_table(result)
    return result


def evaluate_file(path: Path, source, results_root) -> dict:
    """Score a prediction file of q1_mri.infer against every slice of `source` it predicts;
    writes results/q1/<source>/scored-<file name>.json."""
    truth = Truth(pool(load_mri(source)))
    p = load_predictions(path, data_tag=source.tag)
    p = p.select(p.role == "test")
    idx = truth.locate(p, path)
    scores = truth.score(idx, p.t2_pred)
    result = {**common_fields(source, truth), "predictions": str(path), "model": p.model,
              "test_set": f"the {len(idx)} slices of {source.label} in {path.name}",
              **summarise(scores, p.patient_id, p.view)}
    out = results_dir("q1", source, results_root) / f"scored-{path.stem}.json"
    write_json(out, result)
    o = result["overall"]
    print(f"Q1 {path.name} on {source.label}, brain, {SLICE_SCALE}: SSIM "
          f"{o['masked_ssim']['mean']:.4f}, PSNR {o['masked_psnr']['mean']:.2f} dB, MAE "
          f"{o['masked_mae']['mean']:.4f} over {o['masked_ssim']['patients']} patients\n"
          f"written to {out}")
    return result


def print_table(result: dict) -> None:
    print(f"\nQ1 on {result['test_set']}: means over patients of per-patient means, brain mask, "
          f"{SLICE_SCALE} units (median seed; inner-validation SSIM that chose)")
    w = max(len("method"), *map(len, result["methods"]))
    print(f"{'method':<{w}} {'patients':>8} {'SSIM':>7} {'PSNR':>6} {'MAE':>7} {'seeds':>5} "
          f"{'flip':>5} {'inner':>7}")
    for m, r in result["methods"].items():
        o = r["overall"]
        print(f"{m:<{w}} {o['masked_ssim']['patients']:>8} {o['masked_ssim']['mean']:>7.4f} "
              f"{o['masked_psnr']['mean']:>6.2f} {o['masked_mae']['mean']:>7.4f} "
              f"{len(r['seeds']):>5} {str(r['inner_validation']['flip']):>5} "
              f"{r['inner_validation']['score']:>7.4f}"
              + (f"  (not a headline: {'; '.join(r['problems'])})" if r["problems"] else ""))
    chosen = result["chosen_model"]
    for name, a in result["against_chosen"].items():
        d, iv = a["paired"]["masked_ssim"], a["inner_validation"]
        print(f"{name} - {chosen} on {len(a['folds'])} fold(s): inner-validation "
              f"SSIM {iv[name]:.4f} vs {iv[chosen]:.4f}; "
              f"test SSIM {d['mean_diff']:+.4f}, better on {d['improved']}/{d['patients']} patients")
    if result["final_choice"]:
        c = result["final_choice"]
        print(f"deployed (chosen on inner validation): {c['method']}, the fold models of seed "
              f"{c['seed']}{', with the flip' if c['flip'] else ''}")


if __name__ == "__main__":
    cli.run_main(lambda: main(parse_args()))
