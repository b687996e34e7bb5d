"""Score the Q2 runs from their prediction files; write metrics.json, out-of-fold predictions and
figures.

    python -m q2_ecg.eval --data ../shared/data/ecg
    python -m q2_ecg.eval --data OTHER --trained-on ../shared/data/ecg --save-predictions p.npz

Protocol: every record of the source is predicted once, by the fold model that never saw its
person (patient-grouped k-fold). Each run's decision biases for SVEB/VEB (the autoencoder's
threshold) are tuned on that run's inner-validation records, which also chose its epoch; the
models are compared on inner validation only. Statistics are gross (every out-of-fold beat
pooled) with 95 % intervals from resampling records, per database, per fold (mean +- sd) and as
AAMI record averages; seeds are summarised as median and range. Leave-one-database-out and the
leaky beat-level split are scored the same way. Evaluation reads files only: it never re-runs a
model or rebuilds a split (an external dataset is first predicted by q2_ecg.infer).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from common import cli
from common.io import read_csv, read_json, savez, write_json
from common.results import evaluation_dirs, provenance
from common.stats import bootstrap_additive
from q2_ecg.beats import HALF_WINDOW, RR_NAMES, build_table
from q2_ecg.data import load_records, resolve_source
from q2_ecg.ensemble import MEMBERS
from q2_ecg.ensemble import NAME as ENSEMBLE
from q2_ecg.metrics import (
    HEADLINE,
    confusion,
    ranking_bootstrap,
    ranking_metrics,
    summary_from_confusion,
    tune_logit_bias,
)
from q2_ecg.prediction_file import Predictions, load_predictions

SOLUTIONS = ("resnet", "context", "ensemble")  # candidates for the final model; the rest are ablations
DESCRIPTIONS = {
    "resnet": "1-D ResNet on a 2 s R-centred window and its record's median beat, + RR features",
    "context": "the same beat encoder, then a transformer over 32 neighbouring beats",
    "ensemble": "geometric mean of the ResNet's and the context model's probabilities",
    "segment": "ablation: the ResNet on the zero-padded split_by_beat segment instead of the "
               "R-centred window",
    "autoencoder": "unsupervised: reconstruction error of an autoencoder fitted to normal beats",
    "rr-logistic": "baseline: logistic regression on the RR features alone",
    "majority": "baseline: every beat called normal",
}
REPORTED = ([f"{c}_{m}" for c in ("NOR", "SVEB", "VEB") for m in ("se", "ppv", "f1", "sp")]
            + [f"{g}_{m}" for g in ("normal", "abnormal") for m in ("se", "ppv", "f1", "sp")]
            + ["macro_f1", "abnormal_macro_f1", "accuracy"])


# ---------------------------------------------------------------- one run

class Run:
    """A trained (or baseline) run folder: its summary, split and checked predictions."""

    def __init__(self, folder: Path, data_tag: str):
        self.folder = folder
        self.summary = read_json(folder / "summary.json")
        self.split = read_json(folder / "split.json")
        self.method = "-".join(filter(None, [self.summary["model"],
                                             self.summary["config"].get("name")]))
        self.scheme, self.fold = self.summary["split"], self.summary["fold"]
        self.seed = int(self.summary["seed"])
        self.preds = load_predictions(folder / "predictions.npz", self.split["split_id"], data_tag)
        if "roles" in self.split:     # record-level split: the file must match it exactly
            for role in ("val", "test"):
                expected = {p for p, r in self.split["roles"].items() if r == role}
                got = set(self.preds.patient_id[self.preds.role == role])
                if got - expected or (role == "test" and expected - got - self._no_beats()):
                    raise cli.DataError(f"{folder / 'predictions.npz'}: its {role} records do "
                                        f"not match {folder / 'split.json'}; rerun that run")
        self.tuned = tune(self.preds.select(self.preds.role == "val"))

    def _no_beats(self) -> set:
        return set(self.split.get("records_without_scored_beats", []))

    def test(self, adapted: bool = False) -> tuple[Predictions, np.ndarray, np.ndarray]:
        """Test rows, their predicted class (n,) and P(abnormal) (n,)."""
        p = self.preds.select(self.preds.role == "test")
        pred, p_abn = decide(p, self.tuned, adapted)
        return p, pred, p_abn


def _log_prob(p: Predictions, adapted: bool) -> np.ndarray:
    prob = p.prob_adapted if adapted and p.prob_adapted is not None else p.prob
    return np.log(np.clip(prob.astype(np.float64), 1e-12, 1))


def tune(val: Predictions) -> dict:
    """Decision rule fitted on inner-validation rows: SVEB/VEB logit biases, or a threshold."""
    if val.score is not None:
        return {"threshold": best_threshold(val.score, val.label)}
    out = {"logit_bias": tune_logit_bias(_log_prob(val, False), val.label).tolist()}
    s = summary_from_confusion(confusion(val.label, (_log_prob(val, False)
                                                     + out["logit_bias"]).argmax(1)))
    out["val_score"] = float(np.nan_to_num(s["abnormal_macro_f1"]))
    if val.prob_adapted is not None:
        bias = tune_logit_bias(_log_prob(val, True), val.label)
        s = summary_from_confusion(confusion(val.label, (_log_prob(val, True) + bias).argmax(1)))
        out.update(adapted_bias=bias.tolist(),
                   adapted_val_score=float(np.nan_to_num(s["abnormal_macro_f1"])))
    return out


def decide(p: Predictions, tuned: dict, adapted: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class (n,), P(abnormal) or anomaly score (n,)) under the tuned rule."""
    if p.score is not None:   # a detector: "abnormal" counted as VEB, only the binary view counts
        return np.where(p.score > tuned["threshold"], 2, 0), p.score
    bias = tuned["adapted_bias"] if adapted else tuned["logit_bias"]
    logp = _log_prob(p, adapted) + np.asarray(bias)
    prob = np.exp(logp - logp.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    return prob.argmax(1), prob[:, 1] + prob[:, 2]


def best_threshold(score: np.ndarray, y: np.ndarray) -> float:
    """Anomaly-score threshold with the best normal-vs-abnormal F1 on validation beats."""
    candidates = np.quantile(score, np.linspace(0.5, 0.995, 100))
    f1 = [summary_from_confusion(confusion(np.where(y > 0, 2, 0), np.where(score > t, 2, 0)))
          ["abnormal_f1"] for t in candidates]
    return float(candidates[int(np.nanargmax(f1))])


# ---------------------------------------------------------------- statistics

def score(y: np.ndarray, pred: np.ndarray, p_abnormal: np.ndarray | None, record: np.ndarray,
          n_boot: int = 1000) -> dict:
    """Every REPORTED metric (+ AUROC/AUPRC with a score) pooled over beats, with 95 % intervals
    from resampling records."""
    records, inverse = np.unique(record, return_inverse=True)
    per_record = np.zeros((len(records), 9))
    np.add.at(per_record, inverse, np.eye(9)[y * 3 + pred])
    out = {}
    for metric in REPORTED:
        value, low, high = bootstrap_additive(
            per_record, lambda t, m=metric: summary_from_confusion(t.reshape(*t.shape[:-1], 3, 3))[m],
            n_boot=n_boot)
        out[metric] = {"value": value, "ci95": [low, high]}
    if p_abnormal is not None and len(np.unique(p_abnormal)) > 1:
        points = ranking_metrics(y, p_abnormal)
        intervals = ranking_bootstrap(y, p_abnormal, record, n_boot)
        for name in ("auroc", "auprc"):
            out[name] = {"value": points[name], "ci95": intervals[name]}
    out["confusion"] = confusion(y, pred).tolist()
    out["beats"], out["records"] = int(len(y)), int(len(records))
    return out


def point(y, pred, p_abnormal) -> dict:
    """HEADLINE point values (no intervals)."""
    s = summary_from_confusion(confusion(y, pred))
    out = {k: float(s[k]) for k in HEADLINE if k in s}
    if p_abnormal is not None and len(np.unique(p_abnormal)) > 1:
        out.update(ranking_metrics(y, p_abnormal))
    return out


def record_average(y, pred, record) -> dict:
    """AAMI record-average Se and +P of SVEB and VEB: the mean over records where defined
    (Se: records with such beats; +P: records where the class was predicted)."""
    out = {}
    for k, name in ((1, "SVEB"), (2, "VEB")):
        se, ppv = [], []
        for r in np.unique(record):
            m = record == r
            tp = int(((y[m] == k) & (pred[m] == k)).sum())
            if (y[m] == k).any():
                se.append(tp / (y[m] == k).sum())
            if (pred[m] == k).any():
                ppv.append(tp / (pred[m] == k).sum())
        out[f"{name}_se"] = float(np.mean(se)) if se else float("nan")
        out[f"{name}_ppv"] = float(np.mean(ppv)) if ppv else float("nan")
    return out


def pooled(runs: list[Run], adapted: bool = False) -> dict:
    """Concatenated test rows of `runs`: y, pred, p_abnormal, record, db, fold."""
    parts = defaultdict(list)
    for run in runs:
        p, pred, p_abn = run.test(adapted)
        for k, v in (("y", p.label), ("pred", pred), ("p_abnormal", p_abn),
                     ("record", p.patient_id), ("db", p.source_db), ("beat_loc", p.beat_loc),
                     ("fold", np.full(len(pred), run.fold))):
            parts[k].append(v)
    return {k: np.concatenate(v) for k, v in parts.items()}


def assess(runs: list[Run], adapted: bool, binary: bool) -> dict:
    """Every statistic of one (method, scheme, seed) from its runs' test rows."""
    o = pooled(runs, adapted)
    p_abn = o["p_abnormal"]
    out = {"pooled": score(o["y"], o["pred"], p_abn, o["record"]),
           "per_database": {str(db).removesuffix("_npy"): {**point(o["y"][m], o["pred"][m], p_abn[m]),
                                      "beats": int(m.sum()), "records": len(set(o["record"][m]))}
                            for db in np.unique(o["db"]) for m in [o["db"] == db]},
           "record_average": record_average(o["y"], o["pred"], o["record"])}
    folds = {str(f): point(o["y"][m], o["pred"][m], p_abn[m])
             for f in np.unique(o["fold"]) for m in [o["fold"] == f]}
    out["per_fold"] = folds
    out["fold_mean_sd"] = {k: mean_sd([f[k] for f in folds.values() if k in f]) for k in HEADLINE}
    if binary:
        out["pooled"] = {k: v for k, v in out["pooled"].items() if not k.startswith(
            ("NOR", "SVEB", "VEB", "macro", "accuracy"))}
    return out


def mean_sd(values: list[float]) -> list[float]:
    """[mean, sd] of the finite values, NaNs where there are none."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return [float(v.mean()), float(v.std())] if len(v) else [float("nan")] * 2


def check_out_of_fold(runs: list[Run], expected_folds: int) -> list[str]:
    """Problems that stop a k-fold group from being a headline (missing folds, records twice)."""
    problems = []
    if len(runs) != expected_folds:
        problems.append(f"{len(runs)} of {expected_folds} folds trained")
    seen = defaultdict(list)
    for run in runs:
        for rec in set(run.preds.patient_id[run.preds.role == "test"]):
            seen[rec].append(run.fold)
    twice = sorted(r for r, f in seen.items() if len(f) > 1)
    if twice:
        problems.append(f"records tested by two folds: {twice[:5]}")
    return problems


def seeds_summary(per_seed: dict[int, dict]) -> dict:
    """Median and range over seeds of the pooled headline values."""
    out = {}
    for k in HEADLINE:
        v = [s["pooled"][k]["value"] for s in per_seed.values() if k in s["pooled"]]
        if v:
            out[k] = {"median": float(np.median(v)), "min": float(min(v)), "max": float(max(v)),
                      "seeds": len(v)}
    return out


# ---------------------------------------------------------------- all runs of a source

def collect(run_root: Path, data_tag: str) -> dict:
    """Run folders with predictions, grouped as groups[(method, scheme)][seed] = [Run, ...]."""
    groups: dict = defaultdict(lambda: defaultdict(list))
    for folder in sorted(run_root.iterdir()):
        if (folder / "predictions.npz").exists() and (folder / "summary.json").exists():
            run = Run(folder, data_tag)
            groups[run.method, run.scheme][run.seed].append(run)
    return groups


def evaluate_source(run_root: Path, data_tag: str) -> tuple[dict, dict, dict]:
    """metrics['models'] etc. for every group; also the pooled rows and training histories."""
    groups = collect(run_root, data_tag)
    if not groups:
        raise cli.DataError(f"no Q2 run with predictions in {run_root}: run `make q2` (or "
                            "python -m q2_ecg.train) first")
    results, oof, histories = defaultdict(dict), {}, {}
    for (method, scheme), per_seed in sorted(groups.items()):
        binary = next(iter(per_seed.values()))[0].preds.score is not None
        entry = {"description": DESCRIPTIONS.get(method) or DESCRIPTIONS.get(method.split("-")[0], method),
                 "seeds": {}}
        for seed, runs in sorted(per_seed.items()):
            runs.sort(key=lambda r: r.fold)
            s = {"runs": [r.folder.name for r in runs], **assess(runs, False, binary)}
            if scheme == "kfold":
                s["problems"] = check_out_of_fold(runs, int(runs[0].summary["config"]["folds"]))
            if all(r.preds.prob_adapted is not None for r in runs):
                s["adapted"] = assess(runs, True, binary)
            s["tuned"] = {r.fold: r.tuned for r in runs}
            s["best_epoch"] = {r.fold: r.summary.get("best_epoch") for r in runs}
            s["split_counts"] = {r.fold: r.summary.get("split_counts") for r in runs}
            s["wall_time_s"] = float(sum(r.summary.get("wall_time_s", 0) for r in runs))
            entry["seeds"][str(seed)] = s
            if seed == min(per_seed):
                oof[method, scheme] = pooled(runs)
                histories[method, scheme] = {r.fold: read_csv(r.folder / "history.csv")
                                             for r in runs if (r.folder / "history.csv").exists()}
        entry["seed_summary"] = seeds_summary(entry["seeds"])
        first = next(iter(per_seed.values()))[0].summary
        entry.update({k: first.get(k) for k in ("parameters", "precision", "device", "imbalance")},
                     variant=first["config"].get("name"))     # --name: an ablation of `model`
        results[scheme][method] = entry
    return dict(results), oof, histories


def final_choice(kfold: dict) -> dict | None:
    """The configuration q2-final trains: the solution with the best inner-validation score,
    its median best epoch (an ensemble: each member's) and median decision biases over folds and
    seeds."""
    cands = {}
    for method, entry in kfold.items():
        if method not in SOLUTIONS:
            continue
        tuned = [t for s in entry["seeds"].values() for t in s["tuned"].values()]
        cands[method] = (float(np.mean([t["val_score"] for t in tuned])), entry)
    if not cands:
        return None
    method, (val_score, entry) = max(cands.items(), key=lambda kv: kv[1][0])
    tuned = [t for s in entry["seeds"].values() for t in s["tuned"].values()]
    adapted = all("adapted_val_score" in t for t in tuned) and np.mean(
        [t["adapted_val_score"] for t in tuned]) > val_score

    def median_epoch(model: str) -> int | None:
        epochs = [e for s in kfold[model]["seeds"].values() for e in s["best_epoch"].values() if e]
        return int(np.median(epochs)) if epochs else None
    key = "adapted_bias" if adapted else "logit_bias"
    members = {m: median_epoch(m) for m in MEMBERS} if method == ENSEMBLE else None
    return {"model": method, "inner_val_score": val_score, "adapt": bool(adapted),
            "epochs": None if members else median_epoch(method), "members": members,
            "logit_bias": np.median([t[key] for t in tuned], axis=0).tolist(),
            "inner_val_scores": {m: v for m, (v, _) in cands.items()}}


def parse_args(argv=None):
    p = cli.parser(__doc__.splitlines()[0])
    cli.add_eval_args(p, "beat")
    return p.parse_args(argv)


def main(args) -> dict:
    from q2_ecg import figures

    test_source = resolve_source(args.data)
    train_source = resolve_source(args.trained_on) if args.trained_on else test_source
    run_root, out_dir, external = evaluation_dirs("q2", train_source, test_source,
                                                  args.results_root)
    if external:
        return evaluate_external(args, run_root, out_dir, train_source, test_source)
    models, oof, histories = evaluate_source(run_root, test_source.tag)
    choice = final_choice(models.get("kfold", {}))
    result = {**provenance(test_source, None, 0), "trained_on": train_source.tag,
              "protocol": __doc__.split("Protocol: ")[1].strip(),
              "headline_scheme": "kfold", "chosen_model": choice and choice["model"],
              "final_choice": choice, "models": models}
    write_json(out_dir / "metrics.json", result)
    for (method, scheme), rows in oof.items():
        savez(out_dir / "oof" / f"{method}-{scheme}.npz", **rows)
    figures.write_all(out_dir / "figures", result, oof, histories, test_source.label,
                      example_signals(test_source, oof))
    print_table(result)
    return result


def example_signals(source, oof: dict):
    """signal_of(method, i) -> what the model read for row i of the method's out-of-fold rows:
    {"window": beat window (WINDOW,), "template": record template (WINDOW,), "rr_prev_s",
    "rr_next_s", "rr_sinus_s": RR features in s}; read from the data, for the example-beat
    figure only."""
    records = load_records(source)
    table = build_table(records)
    first = records.beat_offsets[:-1]
    row_of = {p: r for r, p in enumerate(records.patient_id)}
    rr_column = {name: RR_NAMES.index(name) for name in ("rr_prev_s", "rr_next_s", "rr_sinus_s")}

    def signal_of(method: str, i: int) -> dict:
        rows = oof[method, "kfold"]
        r = row_of[rows["record"][i]]
        locs = records.beat_locs[first[r]:records.beat_offsets[r + 1]]
        g = first[r] + int(np.searchsorted(locs, rows["beat_loc"][i]))
        c = table.centre[g]
        return {"window": table.signal[c - HALF_WINDOW:c + HALF_WINDOW],
                "template": table.template[r],
                **{name: float(table.rr[g, k]) for name, k in rr_column.items()}}
    return signal_of


def evaluate_external(args, run_root, out_dir, train_source, test_source) -> dict:
    """Predict every beat of another dataset with the final model, then score that file."""
    from q2_ecg.infer import predict_external

    path, final = predict_external(run_root, test_source, out_dir, args.device)
    p = load_predictions(path, data_tag=test_source.tag)
    pred, p_abn = decide(p, {"logit_bias": final["logit_bias"],
                             "adapted_bias": final["logit_bias"]}, final["adapt"])
    scored = p.role == "test"
    result = {**provenance(test_source, None, 0), "trained_on": train_source.tag,
              "test_set": f"every scored beat of {test_source.label}", "final_choice": final,
              "external": {"pooled": score(p.label[scored], pred[scored], p_abn[scored],
                                           p.patient_id[scored]),
                           "record_average": record_average(p.label[scored], pred[scored],
                                                            p.patient_id[scored])}}
    write_json(out_dir / "metrics.json", result)
    if args.save_predictions:
        savez(args.save_predictions, patient_id=p.patient_id, beat_loc=p.beat_loc,
              pred=pred.astype(np.int64), p_abnormal=p_abn.astype(np.float32),
              scored=scored, model=np.array(final["model"]))
        print(f"predictions for {len(pred)} beats written to {args.save_predictions}")
    t = result["external"]["pooled"]
    print(f"Q2 final {final['model']} on {test_source.label}: " + ", ".join(
        f"{k} {t[k]['value']:.3f}" for k in HEADLINE if k in t))
    return result


def print_table(result: dict) -> None:
    print(f"\nQ2 on {result['data_label']} (out of fold: seed median; LODO; leaky split)")
    print(f"{'method':<26}" + "".join(f"{k:>13}" for k in HEADLINE))
    for scheme, methods in result["models"].items():
        for method, entry in methods.items():
            s = entry["seed_summary"]
            print(f"{method + ' ' + scheme:<26}" + "".join(
                f"{s[k]['median']:>13.3f}" if k in s else f"{'-':>13}" for k in HEADLINE))


if __name__ == "__main__":
    cli.run_main(lambda: main(parse_args()))
