"""Q2 tables for the notebook, built from results/q2/<source>/metrics.json."""
from __future__ import annotations

import numpy as np
from IPython.display import Markdown

from common.report import table, with_ci
from q2_ecg.data import CLASS_MAPPING, keep_by_length
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


def split_table(split_counts: dict) -> Markdown:
    return table(["split", "patients", "beats", "NOR", "SVEB", "VEB"],
                 [[s, *c.values()] for s, c in split_counts.items()])


def models_table(metrics: dict) -> Markdown:
    rows = [[name, m.get("parameters"), m.get("best_epoch"), m.get("wall_time_s"),
             m.get("beats_per_s"), m["description"]]
            for name, m in metrics["models"].items() if name.endswith("-patient")]
    return table(["run", "parameters", "best epoch", "training time (s)", "beats/s",
                  "what it is"], rows)


def group_table(metrics: dict, group: str) -> Markdown:
    """Se, +P, F1, Sp of `group` ('normal' or 'abnormal') for every patient-split method."""
    rows = []
    for name, m in metrics["models"].items():
        if name.endswith("-patient"):
            t = m["test"]
            rows.append([name] + [with_ci(t[f"{group}_{k}"]) if f"{group}_{k}" in t else None
                                  for k in METRIC_NAMES])
    return table(["method"] + [f"{group} {v}" for v in METRIC_NAMES.values()], rows)


def class_table(metrics: dict) -> Markdown:
    """Per-class Se / +P / F1 of the classifiers (point values) and macro-F1."""
    rows = []
    for name, m in metrics["models"].items():
        t = m["test"]
        if name.endswith("-patient") and "SVEB_f1" in t:
            rows.append([name] + [t[f"{c}_{k}"]["value"] for c in ("NOR", "SVEB", "VEB")
                                  for k in ("se", "ppv", "f1")] + [t["macro_f1"]["value"]])
    return table(["method"] + [f"{c} {k}" for c in ("NOR", "SVEB", "VEB")
                               for k in ("Se", "+P", "F1")] + ["macro-F1"], rows)


def ranking_table(metrics: dict) -> Markdown:
    rows = [[name, with_ci(m["test"]["auroc"]), with_ci(m["test"]["auprc"])]
            for name, m in metrics["models"].items()
            if name.endswith("-patient") and "auroc" in m["test"]]
    return table(["method", "AUROC normal vs abnormal", "AUPRC"], rows)


def database_table(metrics: dict) -> Markdown:
    rows = []
    for name, m in metrics["models"].items():
        if name.endswith("-patient") and "per_database" in m:
            for db, v in m["per_database"].items():
                rows.append([name, db, v["beats"], v.get("SVEB_f1"), v.get("VEB_f1"),
                             v["abnormal_f1"], v.get("auroc")])
    return table(["method", "database", "beats", "SVEB F1", "VEB F1", "abnormal F1", "AUROC"],
                 rows)


def comparison_table(per_model: dict, settings_name: str) -> Markdown:
    """Rows: model x setting (e.g. split or held-out database); columns: headline metrics."""
    keys = ("SVEB_f1", "VEB_f1", "abnormal_f1", "abnormal_se", "abnormal_ppv", "auroc")
    rows = [[model, setting] + [v.get(k) for k in keys]
            for model, per in per_model.items() for setting, v in per.items()]
    return table(["model", settings_name] + [label(k) for k in keys], rows)
