"""Q2 tables for the notebook, built from results/q2/<source>/metrics.json (q2_ecg.eval) and the
runs' own files; the notebook's offline twin of the template's loading cell."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from IPython.display import Markdown

from common.datasource import cache_dir
from common.io import read_csv, write_json
from common.report import demo_parquet, table, with_ci
from q2_ecg.data import CLASS_MAPPING, keep_by_length, parquet_files, resolve_source
from q2_ecg.demo import make_demo_ecg
from q2_ecg.eval import SOLUTIONS

GROUPS = [(g, k) for g in ("normal", "abnormal") for k in ("se", "ppv", "f1")]
NAMES = {"se": "Se", "ppv": "+P", "f1": "F1", "sp": "Sp"}


def local_files(spec: str) -> tuple[list[str], Path]:
    """(parquet files in the Hub's schema, class_mapping.json) of an offline source: a local
    folder (its mapping file, or the standard mapping written beside the cache when it has
    none), or the demo records, written once to the cache as parquet. What the notebook's
    loading cell hands to the same `load_dataset("parquet", ...)` call the Hub copy answers."""
    source = resolve_source(spec)
    if source.kind == "hub":
        raise ValueError("the Hub is loaded by the template's own call, not from local files")
    if source.kind == "folder":
        files, mapping = parquet_files(source.path), source.path / "class_mapping.json"
    else:
        def splits():
            from datasets import Dataset
            return {"train": Dataset.from_list(make_demo_ecg())}
        files, mapping = demo_parquet("demo-ecg-parquet", splits)["train"], None
    if mapping is None or not mapping.exists():
        mapping = cache_dir() / "class_mapping.json"
        write_json(mapping, {str(k): v for k, v in CLASS_MAPPING.items()})
    return files, mapping


def read_mapping(path: str | Path) -> dict[int, str]:
    """{0: 'NOR', ...} from the data's class_mapping.json."""
    return {int(k): v for k, v in json.loads(Path(path).read_text()).items()}


def filter_table(labels: np.ndarray, lengths: np.ndarray) -> Markdown:
    keep = keep_by_length(lengths)
    rows = [[name, int((labels == c).sum()), int(((labels == c) & keep).sum()),
             int(((labels == c) & ~keep).sum())] for c, name in CLASS_MAPPING.items()]
    rows.append(["all", len(labels), int(keep.sum()), int((~keep).sum())])
    return table(["class", "segments", "kept (32..256 samples)", "dropped"], rows)


def _first(entry: dict) -> dict:
    return entry["seeds"][min(entry["seeds"], key=int)]


def _spread(s: dict | None) -> str | None:
    """'0.577 (0.547–0.583)': median and range over seeds (the median alone for one seed)."""
    if not s:
        return None
    if s["seeds"] == 1:
        return f"{s['median']:.3f}"
    return f"{s['median']:.3f} ({s['min']:.3f}–{s['max']:.3f})"


def headline_methods(metrics: dict) -> list[str]:
    """The k-fold methods of the headline, baselines first: every fold ran, no named variant,
    and not the majority baseline (it calls every beat normal: abnormal F1 0 by design)."""
    kfold = metrics["models"]["kfold"]
    names = [n for n, e in kfold.items() if not e.get("variant") and n != "majority"
             and not any(s.get("problems") for s in e["seeds"].values())]
    return sorted(names, key=lambda n: (n in SOLUTIONS, SOLUTIONS.index(n) if n in SOLUTIONS else 0))


def headline_table(metrics: dict) -> Markdown:
    """Out of fold over every record, normal (class 0) and abnormal (1-2) beats reported
    separately, then per class and the ranking: median (range) over seeds."""
    rows = []
    chosen = metrics["chosen_model"]
    for name in headline_methods(metrics):
        e = metrics["models"]["kfold"][name]
        s = e["seed_summary"]
        rows.append([name + (" (chosen)" if name == chosen else ""), len(e["seeds"])]
                    + [_spread(s.get(f"{g}_{k}")) for g, k in GROUPS]
                    + [_spread(s.get(k)) for k in ("SVEB_f1", "VEB_f1", "auroc")])
    return table(["method", "seeds"] + [f"{g} {NAMES[k]}" for g, k in GROUPS]
                 + ["SVEB F1", "VEB F1", "AUROC normal vs abnormal"], rows)


def intervals(metrics: dict, method: str) -> str:
    """One line: `method`'s first seed, pooled out of fold, with 95 % intervals from resampling
    persons (a person's beats are not independent draws)."""
    pooled = _first(metrics["models"]["kfold"][method])["pooled"]
    keys = ["normal_f1", "abnormal_f1", "SVEB_f1", "VEB_f1", "auroc"]
    return (f"{method}, seed {min(metrics['models']['kfold'][method]['seeds'], key=int)}, 95 % "
            f"intervals from resampling {pooled['persons']} persons: "
            + "; ".join(f"{k.replace('_', ' ')} {with_ci(pooled[k])}" for k in keys))


def scheme_table(metrics: dict) -> Markdown:
    """The validation schemes side by side on the same records: out of fold (k-fold over
    persons) against a held-out database (LODO: trained on the two others) and against the
    leaky beat-level split (every person's beats on both sides)."""
    models, rows = metrics["models"], []
    for name, lodo in models.get("lodo", {}).items():
        if name not in models["kfold"] or name not in SOLUTIONS:
            continue
        kfold = _first(models["kfold"][name])["per_database"]
        for db, v in _first(lodo)["per_database"].items():
            k = kfold.get(db, {})
            rows.append([name, f"{db} ({v['records']} records)", "held-out database",
                         k.get("SVEB_f1"), v.get("SVEB_f1"), k.get("VEB_f1"), v.get("VEB_f1"),
                         k.get("auroc"), v.get("auroc")])
    for name, beat in models.get("beat", {}).items():
        if name not in models["kfold"]:
            continue
        k, v = _first(models["kfold"][name])["pooled"], _first(beat)["pooled"]
        rows.append([name, "all databases", "leaky beat split"]
                    + [x[key]["value"] if key in x else None
                       for key in ("SVEB_f1", "VEB_f1", "auroc") for x in (k, v)])
    return table(["method", "tested on", "other scheme", "SVEB F1 k-fold", "SVEB F1 other",
                  "VEB F1 k-fold", "VEB F1 other", "AUROC k-fold", "AUROC other"], rows)


def best_inner_score(folder: Path) -> float:
    """A run's best inner-validation selection score over its epochs (history.csv; before
    the decision biases are tuned)."""
    return max(float(r["score"]) for r in read_csv(folder / "history.csv"))


def choices_table(metrics: dict, results: Path) -> Markdown:
    """Every choice with its candidates: the inner-validation score that decided it and,
    beside it, what the held-out records said afterwards (never used to choose).

    - solution: the pooled inner-validation score after bias tuning, mean over seeds;
    - RR features: the same, seed 0 (the ablation runs every fold of seed 0); the set was fixed
      before this study (the literature's record-normalised features), so the row says so;
    - adaptation: the chosen solution's score with and without it;
    - training budget: best-epoch inner-validation score before bias tuning, mean over the
      folds where the longer runs exist (make q2-curves), against the default runs there; the
      CPU budget is what 2 cores afford, the longer one the default on CUDA."""
    kfold, chosen = metrics["models"]["kfold"], metrics["chosen_model"]
    rows = []

    def held_out(entry):
        s = entry["seed_summary"]
        return [_spread(s.get("SVEB_f1")), _spread(s.get("VEB_f1"))]

    scores = metrics["final_choice"]["inner_val_scores"]
    for name, score in scores.items():
        rows.append(["solution", name, score, *held_out(kfold[name]), name == chosen])
    base = kfold.get("resnet")
    if base:
        default_set = (base.get("model_args") or {}).get("rr_set")
        for e in [base] + [e for n, e in kfold.items() if n.startswith("resnet-rr-")]:
            if any(s.get("problems") for s in e["seeds"].values()):
                continue
            rr = (e.get("model_args") or {}).get("rr_set")
            first = _first(e)
            rows.append(["RR features (resnet, seed 0; fixed beforehand)", rr, first["rule"]["score"],
                         f"{first['pooled']['SVEB_f1']['value']:.3f}",
                         f"{first['pooled']['VEB_f1']['value']:.3f}", rr == default_set])
    rule = _first(kfold[chosen])["rule"]
    for how in ("raw", "adapted"):
        if how in rule:
            ad = _first(kfold[chosen]).get("by_adaptation", {}).get(how, {}).get("pooled", {})
            rows.append([f"per-record adaptation ({chosen})", "on" if how == "adapted" else "off",
                         rule[how]["score"], _fmt(ad.get("SVEB_f1")), _fmt(ad.get("VEB_f1")),
                         rule["adapt"] == (how == "adapted")])
    for model in SOLUTIONS:
        long = kfold.get(f"{model}-curve")
        if not long or model not in kfold:
            continue
        folds = sorted(r.removeprefix(f"{model}-curve-").split("-")[1] for r in _first(long)["runs"])
        default = [results / r for r in _first(kfold[model])["runs"]
                   if r.split("-")[-2] in folds]
        for label, runs, is_default in (("cpu: 30,000 beats per epoch", default, True),
                                        ("full (CUDA default): a pass per epoch",
                                         [results / r for r in _first(long)["runs"]], False)):
            rows.append([f"training budget ({model}, folds {', '.join(f[-1] for f in folds)})",
                         label, float(np.mean([best_inner_score(r) for r in runs])), None, None,
                         is_default])
    return table(["choice", "candidate", "inner-validation score", "out-of-fold SVEB F1",
                  "out-of-fold VEB F1", "used"], [r[:-1] + ["✔" if r[-1] else ""] for r in rows])


def _fmt(v) -> str | None:
    return None if v is None else f"{v:.3f}"


def records_table(metrics: dict, n: int = 8) -> Markdown:
    """The chosen solution's worst records (first seed, out of fold): most SVEB and VEB beats
    missed or wrongly called, against what the data says of their rhythm."""
    seed = _first(metrics["models"]["kfold"][metrics["chosen_model"]])
    info = metrics["records"]
    rows = []
    for rec, r in seed["per_record"].items():
        cm = np.array(r["confusion"])
        errors = int(cm.sum() - np.trace(cm))
        rows.append([rec, r["db"], info[rec]["beats"], info[rec]["SVEB_share"],
                     info[rec]["VEB_share"], info[rec]["irregularity"], int(cm[0, 1:].sum()),
                     int(cm[1, [0, 2]].sum()), int(cm[2, :2].sum()), errors])
    rows.sort(key=lambda r: -r[-1])
    shown = [[*r[:3], f"{100 * r[3]:.1f} %", f"{100 * r[4]:.1f} %", f"{r[5]:.3f}", *r[6:]]
             for r in rows[:n]]
    total = sum(r[-1] for r in rows)
    shown.append([f"all {len(rows)} records", "", sum(r[2] for r in rows), "", "", "",
                  *[sum(r[k] for r in rows) for k in (6, 7, 8)], total])
    return table(["record", "database", "beats", "SVEB share", "VEB share",
                  "RR irregularity (median)", "normal called abnormal", "SVEB missed or VEB",
                  "VEB missed or SVEB", "errors"], shown)
