"""Q2 tables for the notebook, built from results/q2/<source>/metrics.json."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from IPython.display import Markdown

from common.datasource import DataSource, require_hub
from common.report import table, with_ci
from q2_ecg.data import CLASS_MAPPING, REPO_ID, keep_by_length, parquet_files
from q2_ecg.demo import make_demo_ecg
from q2_ecg.metrics import label

METRIC_NAMES = {"se": "Se (recall)", "ppv": "+P (precision)", "f1": "F1", "sp": "Sp"}


def filter_table(labels: np.ndarray, lengths: np.ndarray) -> Markdown:
    keep = keep_by_length(lengths)
    rows = [[name, int((labels == c).sum()), int(((labels == c) & keep).sum()),
             int(((labels == c) & ~keep).sum())] for c, name in CLASS_MAPPING.items()]
    rows.append(["all", len(labels), int(keep.sum()), int((~keep).sum())])
    return table(["class", "segments", "kept (32..256 samples)", "dropped"], rows)


def alignment_table(eda_stats: dict) -> Markdown:
    """Per database: distance from annotation to QRS peak, from eda_stats.json."""
    rows = [[db, v["annotations"], f"{v['median_abs_offset_ms']:.1f}",
             f"{100 * v['within_2_samples']:.0f} %"]
            for db, v in eda_stats["annotation_alignment"].items()]
    return table(["database", "annotations", "median distance to the peak (ms)",
                  "within 2 samples (16 ms)"], rows)


def _first_seed(entry: dict) -> dict:
    return entry["seeds"][min(entry["seeds"], key=int)]


def _headline(metrics: dict) -> list[tuple[str, dict]]:
    """k-fold methods whose every fold ran (incomplete ones appear only where said); named
    variants of a model (the ablations) have a table of their own."""
    return [(n, m) for n, m in metrics["models"]["kfold"].items()
            if not _first_seed(m).get("problems") and not m.get("variant")]


def split_table(metrics: dict) -> Markdown:
    """Records and beats per role in every fold of the chosen model's first seed."""
    seed = _first_seed(metrics["models"]["kfold"][metrics["chosen_model"]])
    rows = [[fold, role, c["records"], c["beats"], c["NOR"], c["SVEB"], c["VEB"]]
            for fold, counts in seed["split_counts"].items() for role, c in counts.items()]
    return table(["fold", "role", "records", "beats", "NOR", "SVEB", "VEB"], rows)


def models_table(metrics: dict) -> Markdown:
    """Size, cost, chosen epochs and the inner-validation score that chose the model."""
    rows = []
    for name, m in _headline(metrics):
        seed = _first_seed(m)
        epochs = [e for e in seed["best_epoch"].values() if e]
        rows.append([name, m.get("parameters"), " / ".join(str(e) for e in epochs) or None,
                     seed["wall_time_s"] or None, seed["rule"]["score"], m["description"]])
    return table(["method", "parameters", "best epoch per fold", "training time, all folds (s)",
                  "inner-validation selection score", "what it is"], rows)


def group_table(metrics: dict, group: str) -> Markdown:
    """Se, +P, F1, Sp of `group` ('normal' or 'abnormal'), out of fold (first seed), with 95 %
    intervals from resampling records."""
    rows = []
    for name, m in _headline(metrics):
        t = _first_seed(m)["pooled"]
        rows.append([name] + [with_ci(t[f"{group}_{k}"]) if f"{group}_{k}" in t else None
                              for k in METRIC_NAMES])
    return table(["method"] + [f"{group} {v}" for v in METRIC_NAMES.values()], rows)


def class_table(metrics: dict) -> Markdown:
    """Per-class Se / +P / F1 out of fold (first seed) and macro-F1."""
    rows = []
    for name, m in _headline(metrics):
        t = _first_seed(m)["pooled"]
        if "SVEB_f1" in t:
            rows.append([name] + [t[f"{c}_{k}"]["value"] for c in ("NOR", "SVEB", "VEB")
                                  for k in ("se", "ppv", "f1")] + [t["macro_f1"]["value"]])
    return table(["method"] + [f"{c} {k}" for c in ("NOR", "SVEB", "VEB")
                               for k in ("Se", "+P", "F1")] + ["macro-F1"], rows)


def ranking_table(metrics: dict) -> Markdown:
    rows = [[name, with_ci(t["auroc"]), with_ci(t["auprc"])]
            for name, m in _headline(metrics)
            for t in [_first_seed(m)["pooled"]] if "auroc" in t]
    return table(["method", "AUROC normal vs abnormal", "AUPRC"], rows)


HEAD = ("SVEB_f1", "VEB_f1", "abnormal_f1", "auroc")


def seeds_table(metrics: dict) -> Markdown:
    """Median and range over seeds of the out-of-fold headline values."""
    rows = []
    for name, m in _headline(metrics):
        s = m["seed_summary"]
        rows.append([name, max((v["seeds"] for v in s.values()), default=0)]
                    + [f"{s[k]['median']:.3f} ({s[k]['min']:.3f}–{s[k]['max']:.3f})"
                       if k in s else None for k in HEAD])
    return table(["method", "seeds"] + [f"{label(k)} median (range)" for k in HEAD], rows)


def database_table(metrics: dict, scheme: str = "kfold") -> Markdown:
    """Per database of the tested records: out of fold (kfold) or held out (lodo)."""
    rows = []
    methods = _headline(metrics) if scheme == "kfold" else metrics["models"].get(scheme, {}).items()
    for name, m in methods:
        for db, v in _first_seed(m)["per_database"].items():
            rows.append([name, db, v["records"], v["beats"], v.get("SVEB_f1"), v.get("VEB_f1"),
                         v["abnormal_f1"], v.get("auroc")])
    return table(["method", "database", "records", "beats", "SVEB F1", "VEB F1", "abnormal F1",
                  "AUROC"], rows)


def fold_table(metrics: dict) -> Markdown:
    """Mean ± sd over the folds, beside the pooled value and the AAMI record averages."""
    rows = []
    for name, m in _headline(metrics):
        seed = _first_seed(m)
        fm, ra = seed["fold_mean_sd"], seed["record_average"]
        if "SVEB_f1" not in seed["pooled"]:
            continue
        rows.append([name] + [f"{fm[k][0]:.3f} ± {fm[k][1]:.3f}" for k in ("SVEB_f1", "VEB_f1")]
                    + [ra[k] for k in ("SVEB_se", "SVEB_ppv", "VEB_se", "VEB_ppv")])
    return table(["method", "SVEB F1 per fold", "VEB F1 per fold", "SVEB Se (record avg)",
                  "SVEB +P (record avg)", "VEB Se (record avg)", "VEB +P (record avg)"], rows)


def adaptation_table(metrics: dict) -> Markdown:
    """Out of fold with and without the label-free per-record adaptation."""
    rows = []
    for name, m in _headline(metrics):
        seed = _first_seed(m)
        if "by_adaptation" in seed:
            for how, s in (("without", seed["by_adaptation"]["raw"]["pooled"]),
                           ("with", seed["by_adaptation"]["adapted"]["pooled"])):
                rows.append([name, how] + [s.get(k) for k in HEAD])
    return table(["method", "adaptation"] + [label(k) for k in HEAD], rows)


def contrast_table(metrics: dict, scheme: str) -> Markdown:
    """The same models under another scheme ('beat' leaky split, 'lodo') beside k-fold."""
    rows = []
    for name, m in metrics["models"].get(scheme, {}).items():
        kfold = metrics["models"]["kfold"].get(name)
        for what, entry in (("k-fold (unseen persons)", kfold), (scheme, m)):
            if entry:
                t = _first_seed(entry)["pooled"]
                rows.append([name, what] + [t[k]["value"] if k in t else None for k in HEAD])
    return table(["method", "scheme"] + [label(k) for k in HEAD], rows)


def template_dataset(source: DataSource):
    """The template's loading cell on any source: (records as a `datasets.Dataset`, the class
    mapping). Hub: the provided `load_dataset(REPO_ID)` and `hf_hub_download` of
    class_mapping.json; a local folder in the Hub's schema: the same calls' local equivalents;
    demo: the synthetic records as a Dataset."""
    from datasets import Dataset, load_dataset

    if source.kind == "hub":
        require_hub(REPO_ID)
        from huggingface_hub import hf_hub_download
        mapping = hf_hub_download(REPO_ID, "class_mapping.json", repo_type="dataset")
        return load_dataset(REPO_ID)["train"], json.loads(Path(mapping).read_text())
    if source.kind == "folder":
        mapping_file = source.path / "class_mapping.json"
        mapping = (json.loads(mapping_file.read_text()) if mapping_file.exists()
                   else {str(k): v for k, v in CLASS_MAPPING.items()})
        files = parquet_files(source.path)
        return load_dataset("parquet", data_files={"train": files})["train"], mapping
    rows = make_demo_ecg()
    return (Dataset.from_dict({k: [r[k] for r in rows] for k in rows[0]}),
            {str(k): v for k, v in CLASS_MAPPING.items()})

