"""Score the Q2 runs from their prediction files and choose the deployed configuration on inner
validation; write metrics.json and the pooled out-of-fold rows (oof/, which q2_ecg.figures
reads).

    python -m q2_ecg.eval --data ../shared/data/ecg                 # the cross-validation
    python -m q2_ecg.eval --data OTHER --predictions p.npz          # a file q2_ecg.infer wrote

Protocol: every record of the source is predicted once, by the fold model that never saw its
person (person-grouped k-fold). Every choice is made on inner-validation predictions only, by a
score in which each database counts equally (the mean over databases of the mean F1 of SVEB
and VEB; metrics.SelectionScore): each run's epoch (during training), and here, for each
(method, scheme, seed), one vector of SVEB/VEB decision biases and whether to apply the
label-free per-record adaptation, both chosen on the pooled inner-validation rows of all its
folds. The rule that decides a fold's held-out records is chosen on that pool without the rows
of those records' persons (which other folds' inner validation holds), so no held-out label
ever shapes its own decision; the deployed rule is chosen on the whole pool. The model
(ResNet, context model, their ensemble) is chosen by the same score. Statistics are gross
(every held-out beat pooled) with 95 % intervals from resampling persons, per database, per fold
(mean +- sd) and as AAMI record averages; seeds are summarised as median and range.
Leave-one-database-out and the leaky beat-level split are scored the same way. Evaluation reads
files only: it never runs a model or rebuilds a split.
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
from common.stats import bootstrap_additive
from q2_ecg.beats import RR_NAMES, build_table
from q2_ecg.data import load_records, resolve_source
from q2_ecg.metrics import (
    HEADLINE,
    SelectionScore,
    confusion,
    ranking_bootstrap,
    ranking_metrics,
    summary_from_confusion,
    tune_logit_bias,
)
from q2_ecg.prediction_file import Predictions, concat, load_predictions, read_external
from q2_ecg.rules import decide, log_prob

SOLUTIONS = ("resnet", "context", "ensemble")  # candidates for the deployed model
DESCRIPTIONS = {
    "resnet": "1-D ResNet on a 2 s R-centred window and its record's median beat, + RR features",
    "context": "the same beat encoder, then a transformer over 32 neighbouring beats",
    "ensemble": "geometric mean of the ResNet's and the context model's probabilities",
    "rr-logistic": "baseline: logistic regression on the RR features against the sinus rhythm",
    "rr-record-logistic": "baseline: logistic regression on RR intervals divided by the "
                          "record's average RR (de Chazal 2004)",
    "majority": "baseline: every beat called normal",
}
REPORTED = ([f"{c}_{m}" for c in ("NOR", "SVEB", "VEB") for m in ("se", "ppv", "f1", "sp")]
            + [f"{g}_{m}" for g in ("normal", "abnormal") for m in ("se", "ppv", "f1", "sp")]
            + ["macro_f1", "abnormal_macro_f1", "accuracy"])
DB_REPORTED = ("SVEB_f1", "VEB_f1", "abnormal_f1")        # per database, with intervals
ADAPTATIONS = ("raw", "adapted")


def db_name(db) -> str:
    return str(db).removesuffix("_npy")


# ---------------------------------------------------------------- one run

class Run:
    """A trained (or baseline, or ensemble) run folder: its summary, split and checked
    predictions."""

    def __init__(self, folder: Path, data_tag: str):
        self.folder = folder
        self.summary = read_json(folder / "summary.json")
        self.split = read_json(folder / "split.json")
        self.method = "-".join(filter(None, [self.summary["model"],
                                             self.summary["config"].get("name")]))
        self.scheme, self.fold = self.summary["split"], self.summary["fold"]
        self.seed = int(self.summary["seed"])
        path = folder / "predictions.npz"
        check_finished_files(folder, self.summary)
        self.preds = load_predictions(path, self.split["split_id"], data_tag)
        self.persons = self.split.get("persons") or {}
        if "roles" in self.split:     # record-level split: the file must match it exactly
            for role in ("val", "test"):
                expected = {p for p, r in self.split["roles"].items() if r == role}
                got = set(self.preds.patient_id[self.preds.role == role])
                if got - expected or (role == "test" and expected - got - self._no_beats()):
                    raise cli.DataError(f"{folder / 'predictions.npz'}: its {role} records do "
                                        f"not match {folder / 'split.json'}; rerun that run")

    def _no_beats(self) -> set:
        return set(self.split.get("records_without_scored_beats", []))

    @property
    def test_records(self) -> set:
        return set(self.preds.patient_id[self.preds.role == "test"])

    def person(self, records: np.ndarray) -> np.ndarray:
        """(n,) person of each record name (the record itself where the split names none)."""
        return np.array([self.persons.get(r, r) for r in records.tolist()], dtype=str)


# ---------------------------------------------------------------- decision rules

def probabilities(p: Predictions, how: str) -> np.ndarray | None:
    return p.prob_adapted if how == "adapted" else p.prob


def fit_rule(val: Predictions, databases, grid: bool = False) -> dict:
    """The decision rule chosen on inner-validation rows `val`: for the raw and the adapted
    probabilities, the SVEB/VEB biases maximising the selection score over `databases`, and
    whether adaptation wins. With `grid`, each bias search's coarse score grid too (the
    stability check)."""
    scorer = SelectionScore(val.label, [db_name(d) for d in val.source_db], databases)
    rule = {"selection": scorer.kind, "reason": scorer.reason, "databases": scorer.databases}
    for how in ADAPTATIONS:
        prob = probabilities(val, how)
        if prob is None:
            continue
        bias, coarse = tune_logit_bias(log_prob(prob), scorer)
        pred = decide(prob, bias)[0]
        rule[how] = {"bias": bias.tolist(), "score": scorer(pred),
                     "per_database": scorer.per_database(pred)}
        if grid:
            rule[how]["grid"] = np.round(coarse, 4).tolist()
    rule["adapt"] = bool("adapted" in rule and rule["adapted"]["score"] > rule["raw"]["score"])
    rule["score"] = rule["adapted" if rule["adapt"] else "raw"]["score"]
    rule["bias"] = rule["adapted" if rule["adapt"] else "raw"]["bias"]
    return rule


def choose_rules(runs: list[Run]) -> tuple[dict, dict[str, dict]]:
    """(the rule chosen on the pooled inner validation of every fold, {fold: the rule chosen on
    that pool without the fold's held-out records}). The leaky beat split shares records
    between roles, so its single fold uses its own inner validation."""
    val = concat([r.preds.select(r.preds.role == "val") for r in runs])
    every = concat([r.preds for r in runs])
    full = fit_rule(val, {db_name(d) for d in every.source_db}, grid=True)
    if runs[0].scheme == "beat":
        return full, {runs[0].fold: full}
    per_fold = {}
    for run in runs:
        held = run.test_records
        keep = ~np.isin(val.patient_id, list(held))
        others = ~np.isin(every.patient_id, list(held))
        rule = fit_rule(val.select(keep), {db_name(d) for d in every.source_db[others]})
        per_fold[run.fold] = {**{k: rule[k] for k in ("adapt", "bias", "score", "selection")},
                              **{how: {k: rule[how][k] for k in ("bias", "score")}
                                 for how in ADAPTATIONS if how in rule}}
    return full, per_fold


# ---------------------------------------------------------------- statistics

def score(y: np.ndarray, pred: np.ndarray, p_abnormal: np.ndarray | None, group: np.ndarray,
          n_boot: int = 1000) -> dict:
    """Every REPORTED metric (+ AUROC/AUPRC with a score) pooled over beats, with 95 % intervals
    from resampling `group`s (persons; records where persons are unknown)."""
    groups, inverse = np.unique(group, return_inverse=True)
    per_group = np.zeros((len(groups), 9))
    np.add.at(per_group, inverse, np.eye(9)[y * 3 + pred])
    out = {}
    for metric in REPORTED:
        value, low, high = bootstrap_additive(
            per_group, lambda t, m=metric: summary_from_confusion(t.reshape(*t.shape[:-1], 3, 3))[m],
            n_boot=n_boot)
        out[metric] = {"value": value, "ci95": [low, high]}
    if p_abnormal is not None and len(np.unique(p_abnormal)) > 1:
        points = ranking_metrics(y, p_abnormal)
        intervals = ranking_bootstrap(y, p_abnormal, group, n_boot)
        for name in ("auroc", "auprc"):
            out[name] = {"value": points[name], "ci95": intervals[name]}
    out["confusion"] = confusion(y, pred).tolist()
    out["beats"], out["persons"] = int(len(y)), int(len(groups))
    return out


def point(y, pred, p_abnormal) -> dict:
    """HEADLINE point values (no intervals)."""
    s = summary_from_confusion(confusion(y, pred))
    out = {k: float(s[k]) for k in HEADLINE if k in s}
    if p_abnormal is not None and len(np.unique(p_abnormal)) > 1:
        out.update(ranking_metrics(y, p_abnormal))
    return out


def database_rows(o: dict, n_boot: int = 1000) -> dict:
    """Per database: HEADLINE points, DB_REPORTED with person-bootstrap intervals, counts."""
    out = {}
    for db in np.unique(o["db"]):
        m = o["db"] == db
        groups, inverse = np.unique(o["person"][m], return_inverse=True)
        per_group = np.zeros((len(groups), 9))
        np.add.at(per_group, inverse, np.eye(9)[o["y"][m] * 3 + o["pred"][m]])
        entry = {**point(o["y"][m], o["pred"][m], o["p_abnormal"][m]), "beats": int(m.sum()),
                 "records": len(set(o["record"][m])), "persons": len(groups),
                 "SVEB_beats": int((o["y"][m] == 1).sum()), "VEB_beats": int((o["y"][m] == 2).sum())}
        for k in DB_REPORTED:
            _, low, high = bootstrap_additive(
                per_group, lambda t, k=k: summary_from_confusion(t.reshape(*t.shape[:-1], 3, 3))[k],
                n_boot=n_boot)
            entry[f"{k}_ci95"] = [low, high]
        out[db_name(db)] = entry
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


def pooled(runs: list[Run], rules: dict[str, dict], how: str = "chosen") -> dict:
    """Concatenated held-out rows of `runs` decided by each fold's rule: y, pred, p_abnormal,
    record, person, db, beat_loc, fold. how: "chosen" (each fold's own adaptation choice),
    "raw" or "adapted" (that probability for every fold, biases chosen for it)."""
    parts = defaultdict(list)
    for run in runs:
        p = run.preds.select(run.preds.role == "test")
        rule = rules[run.fold]
        use = ("adapted" if rule["adapt"] else "raw") if how == "chosen" else how
        pred, p_abn = decide(probabilities(p, use), rule[use]["bias"])
        for k, v in (("y", p.label), ("pred", pred), ("p_abnormal", p_abn),
                     ("record", p.patient_id), ("person", run.person(p.patient_id)),
                     ("db", p.source_db), ("beat_loc", p.beat_loc),
                     ("fold", np.full(len(pred), run.fold))):
            parts[k].append(v)
    return {k: np.concatenate(v) for k, v in parts.items()}


def assess(o: dict) -> dict:
    """Every statistic of one set of pooled held-out rows."""
    out = {"pooled": score(o["y"], o["pred"], o["p_abnormal"], o["person"]),
           "per_database": database_rows(o),
           "record_average": record_average(o["y"], o["pred"], o["record"])}
    folds = {str(f): point(o["y"][m], o["pred"][m], o["p_abnormal"][m])
             for f in np.unique(o["fold"]) for m in [o["fold"] == f]}
    out["per_fold"] = folds
    out["fold_mean_sd"] = {k: mean_sd([f[k] for f in folds.values() if k in f]) for k in HEADLINE}
    return out


def per_record(o: dict) -> dict:
    """{record: {db, person, confusion (3x3, rows true), SVEB/VEB Se and +P}}: where a model
    fails, record by record (the error analysis of ectopic-dominant, fibrillating and fusion
    records)."""
    out = {}
    for r in np.unique(o["record"]):
        m = o["record"] == r
        cm = confusion(o["y"][m], o["pred"][m])
        s = summary_from_confusion(cm)
        out[str(r)] = {"db": db_name(o["db"][m][0]), "person": str(o["person"][m][0]),
                       "confusion": cm.tolist(),
                       **{k: float(s[k]) for k in ("SVEB_se", "SVEB_ppv", "VEB_se", "VEB_ppv")}}
    return out


def brief(o: dict) -> dict:
    """Point values only, pooled and per database (the with/without-adaptation contrast)."""
    return {"pooled": point(o["y"], o["pred"], o["p_abnormal"]),
            "per_database": {db_name(db): point(o["y"][m], o["pred"][m], o["p_abnormal"][m])
                             for db in np.unique(o["db"]) for m in [o["db"] == db]}}


def mean_sd(values: list[float]) -> list[float]:
    """[mean, sd] of the finite values, NaNs where there are none."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return [float(v.mean()), float(v.std())] if len(v) else [float("nan")] * 2


def check_out_of_fold(runs: list[Run], expected_folds: int) -> list[str]:
    """What stops a k-fold group from being a headline (missing folds)."""
    return out_of_fold_problems({r.fold: r.test_records for r in runs}, expected_folds, None,
                                "records")


def seeds_summary(per_seed: dict[str, dict]) -> dict:
    """Median and range over seeds of every pooled value (REPORTED, AUROC, AUPRC) and of each
    database's SVEB / VEB F1 and AUROC (keys "<db>_SVEB_f1")."""
    values = defaultdict(list)
    for s in per_seed.values():
        for k in (*REPORTED, "auroc", "auprc"):
            if k in s["pooled"]:
                values[k].append(s["pooled"][k]["value"])
        for db, d in s["per_database"].items():
            for k in ("SVEB_f1", "VEB_f1", "auroc"):
                if k in d:
                    values[f"{db}_{k}"].append(d[k])
    return {k: {"median": float(np.median(v)), "min": float(min(v)), "max": float(max(v)),
                "seeds": len(v)} for k, v in values.items()}


# ---------------------------------------------------------------- all runs of a source

def collect(run_root: Path, data_tag: str) -> dict:
    """Run folders with predictions, grouped as groups[(method, scheme)][seed] = [Run, ...]."""
    groups: dict = defaultdict(lambda: defaultdict(list))
    for folder in sorted(run_root.iterdir()):
        if (folder / "predictions.npz").exists() and (folder / "summary.json").exists():
            run = Run(folder, data_tag)
            groups[run.method, run.scheme][run.seed].append(run)
    return groups


def evaluate_group(runs: list[Run]) -> tuple[dict, dict]:
    """(the metrics.json entry of one (method, scheme, seed), its pooled held-out rows)."""
    runs.sort(key=lambda r: r.fold)
    full, per_fold = choose_rules(runs)
    rows = pooled(runs, per_fold)
    entry = {"runs": [r.folder.name for r in runs], "rule": full, "fold_rules": per_fold,
             **assess(rows)}
    if runs[0].scheme == "kfold":
        entry["problems"] = check_out_of_fold(runs, int(runs[0].summary["config"]["folds"]))
    if all(r.preds.prob_adapted is not None for r in runs):
        entry["by_adaptation"] = {how: brief(pooled(runs, per_fold, how)) for how in ADAPTATIONS}
    if runs[0].method in SOLUTIONS and runs[0].scheme in ("kfold", "lodo"):
        entry["per_record"] = per_record(rows)
    entry["best_epoch"] = {r.fold: r.summary.get("best_epoch") for r in runs}
    entry["split_counts"] = {r.fold: r.summary.get("split_counts") for r in runs}
    entry["wall_time_s"] = float(sum(r.summary.get("wall_time_s") or 0 for r in runs))
    return entry, rows


def evaluate_source(run_root: Path, data_tag: str) -> tuple[dict, dict]:
    """metrics['models'] for every group; also the first seed's pooled held-out rows."""
    groups = collect(run_root, data_tag)
    if not groups:
        raise cli.DataError(f"no Q2 run with predictions in {run_root}: run `make q2` (or "
                            "python -m q2_ecg.train) first")
    results, oof = defaultdict(dict), {}
    for (method, scheme), per_seed in sorted(groups.items()):
        entry = {"description": DESCRIPTIONS.get(method) or DESCRIPTIONS.get(method.split("-")[0], method),
                 "seeds": {}}
        for seed, runs in sorted(per_seed.items()):
            entry["seeds"][str(seed)], rows = evaluate_group(runs)
            if seed == min(per_seed):
                oof[method, scheme] = rows
        for s in entry["seeds"].values():
            if s["rule"]["reason"]:
                print(f"notice: {method} {scheme}: {s['rule']['reason']}", file=sys.stderr)
        entry["seed_summary"] = seeds_summary(entry["seeds"])
        first = next(iter(per_seed.values()))[0].summary
        entry.update({k: first.get(k) for k in ("parameters", "precision", "device",
                                                 "model_args")},
                     variant=first["config"].get("name"))     # --name: an ablation of `model`
        results[scheme][method] = entry
    return dict(results), oof


def complete(entry: dict) -> bool:
    return not any(s.get("problems") for s in entry["seeds"].values())


def final_choice(kfold: dict, run_root: Path) -> dict | None:
    """The deployed configuration: the solution with the best pooled inner-validation score
    (mean over seeds), as the k fold models of its first seed, each validated on its own
    held-out fold, whose probabilities are averaged (no refit, no new schedule), decided by
    the rule chosen on that seed's pooled inner validation."""
    cands = {m: float(np.mean([s["rule"]["score"] for s in e["seeds"].values()]))
             for m, e in kfold.items() if m in SOLUTIONS and complete(e)}
    if not cands:
        return None
    method = max(cands, key=cands.get)
    seed = min(kfold[method]["seeds"], key=int)
    s = kfold[method]["seeds"][seed]
    folds = {}
    for name in s["runs"]:
        summary = read_json(run_root / name / "summary.json")
        folds[summary["fold"]] = list(summary.get("members", {}).values()) or [name]
    rule = s["rule"]
    digests = {name: file_digest(run_root / name / "predictions.npz")
               for names in folds.values() for name in names}
    return {"model": method, "seed": int(seed), "folds": folds, "prediction_digests": digests,
            "adapt": rule["adapt"],
            "logit_bias": rule["bias"], "selection": rule["selection"],
            "inner_val_score": cands[method], "inner_val_scores": cands,
            "inner_val_per_database": rule["adapted" if rule["adapt"] else "raw"]["per_database"]}


def headline(models: dict, chosen: str | None) -> dict:
    """The named headline numbers of every complete solution and baseline: pooled out of fold,
    each database out of fold (median and range over seeds), and each database left out
    (LODO, first seed)."""
    out = {}
    for method, e in models.get("kfold", {}).items():
        if not complete(e) or e.get("variant"):
            continue
        row = {"seeds": len(e["seeds"]), "out_of_fold": e["seed_summary"]}
        lodo = models.get("lodo", {}).get(method)
        if lodo:
            first = lodo["seeds"][min(lodo["seeds"], key=int)]["per_database"]
            row["left_out"] = {db: {k: v[k] for k in ("SVEB_f1", "VEB_f1", "auroc") if k in v}
                               for db, v in first.items()}
        out[method] = row
    return {"chosen": chosen, "methods": out}


def parse_args(argv=None):
    p = cli.parser(__doc__.splitlines()[0])
    cli.add_eval_args(p, "q2_ecg.infer")
    return p.parse_args(argv)


def main(args) -> dict:
    source = resolve_source(args.data)
    if args.predictions:
        return evaluate_file(Path(args.predictions), source, args.results_root)
    run_root = results_dir("q2", source, args.results_root)
    models, oof = evaluate_source(run_root, source.tag)
    choice = final_choice(models.get("kfold", {}), run_root)
    result = {**provenance(source, None, 0), **inputs_record(run_root),
              "protocol": __doc__.split("Protocol: ")[1].strip(),
              "headline_scheme": "kfold", "chosen_model": choice and choice["model"],
              "final_choice": choice, "headline": headline(models, choice and choice["model"]),
              "models": models}
    records = load_records(source)
    table = build_table(records)
    result["records"] = record_rhythms(records, table)
    write_json(run_root / "metrics.json", result)
    for (method, scheme), rows in oof.items():
        savez(run_root / "oof" / f"{method}-{scheme}.npz", **rows)
    print_table(result)
    return result


def record_rhythms(records, table) -> dict:
    """Per record, from the data (labels and R-peak times only): database, scored beats, the
    shares of SVEB and VEB beats (an ectopic-dominant record has many), the median RR (s) and
    the median beat-to-beat irregularity (beats.RR_NAMES irregularity_9: about 0.02 in sinus
    rhythm, 0.1-0.3 in atrial fibrillation). What the per-record error analysis is read against."""
    col = RR_NAMES.index("irregularity_9")
    out = {}
    for r, name in enumerate(records.patient_id):
        m = (table.record == r) & table.scored
        if not m.any():
            continue
        y = table.label[m]
        out[str(name)] = {"db": db_name(records.source_db[r]), "beats": int(m.sum()),
                          "SVEB_share": float(np.mean(y == 1)), "VEB_share": float(np.mean(y == 2)),
                          "median_rr_s": float(np.median(table.rr[m, 0])),
                          "irregularity": float(np.median(table.rr[m, col]))}
    return out


def evaluate_file(path: Path, source, results_root) -> dict:
    """Score a prediction file of q2_ecg.infer against the labels of `source`: pooled with
    record-bootstrap intervals (persons are unknown in a new dataset), per database, and the
    AAMI record averages. Writes results/q2/<source>/scored-<file name>.json."""
    p = read_external(path, load_records(source))
    scored = p["scored"]
    y, pred, p_abn, record = (p[k][scored] for k in ("label", "pred", "p_abnormal", "patient_id"))
    o = {"y": y, "pred": pred, "p_abnormal": p_abn, "record": record, "person": record,
         "db": p["source_db"][scored]}
    result = {**provenance(source, None, 0), "predictions": str(path),
              "final_model": p["final"], "test_set": f"every scored beat of {source.label}",
              "pooled": score(y, pred, p_abn, record), "per_database": database_rows(o),
              "record_average": record_average(y, pred, record)}
    out = results_dir("q2", source, results_root) / f"scored-{path.stem}.json"
    write_json(out, result)
    t = result["pooled"]
    print(f"Q2 {path.name} on {source.label}: " + ", ".join(
        f"{k} {t[k]['value']:.3f}" for k in HEADLINE if k in t) + f"\nwritten to {out}")
    return result


def print_table(result: dict) -> None:
    print(f"\nQ2 on {result['data_label']} (out of fold: seed median; LODO; leaky split)")
    print(f"{'method':<30}" + "".join(f"{k:>13}" for k in HEADLINE))
    for scheme, methods in result["models"].items():
        for method, entry in methods.items():
            s = entry["seed_summary"]
            print(f"{method + ' ' + scheme:<30}" + "".join(
                f"{s[k]['median']:>13.3f}" if k in s else f"{'-':>13}" for k in HEADLINE))
    choice = result["final_choice"]
    if choice:
        print(f"chosen on inner validation ({choice['selection']} score): {choice['model']} "
              f"(scores {', '.join(f'{m} {v:.3f}' for m, v in choice['inner_val_scores'].items())}"
              f"), adaptation {'on' if choice['adapt'] else 'off'}, biases "
              f"{[round(b, 3) for b in choice['logit_bias']]}")


if __name__ == "__main__":
    cli.run_main(lambda: main(parse_args()))
