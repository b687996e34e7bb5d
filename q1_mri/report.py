"""Q1 tables for the notebook, built from results/q1/<source>/metrics.json (q1_mri.eval).

Every number is a mean over patients of per-patient means, in metrics.SLICE_SCALE units.
"""
from __future__ import annotations

import numpy as np
import torch
from IPython.display import Markdown

from common.datasource import DataSource, require_hub
from common.report import table
from q1_mri.data import REPO_ID, SPLITS, VIEWS, MRISplit, parquet_files
from q1_mri.demo import make_demo_mri

LABELS = {"masked_ssim": "SSIM", "masked_psnr": "PSNR (dB)", "masked_mae": "MAE",
          "ssim": "SSIM", "psnr": "PSNR (dB)", "mae": "MAE"}


def counts_table(splits: dict[str, MRISplit]) -> Markdown:
    rows = [[s, len(np.unique(splits[s].patient_id)), len(splits[s])]
            + [int((splits[s].view == v).sum()) for v in VIEWS] for s in SPLITS if s in splits]
    return table(["split", "patients", "slices"] + list(VIEWS), rows)


def intensity_table(stats: dict) -> Markdown:
    """Raw brain-pixel statistics per split and contrast, from eda_stats.json."""
    rows = []
    for s in SPLITS:
        if s not in stats["splits"]:
            continue
        for c in ("t1", "t2"):
            st = stats["splits"][s][c]
            rows.append([s, c.upper(), st["brain_median"], st["brain_p99_5"], st["max"],
                         f"{100 * stats['splits'][s]['background_fraction']:.0f} %"])
    return table(["split", "contrast", "median (brain)", "p99.5 (brain)", "max", "background"],
                 rows)


def models_table(metrics: dict) -> Markdown:
    """What each method is, what it cost (training time summed over the folds), its best
    epochs and the inner-validation score that chose its flip and the deployed model."""
    rows = [[name, m.get("parameters"), " / ".join(str(e) for e in m["best_epoch"].values()),
             m.get("wall_time_s") or None, m.get("slices_per_s"), m["inner_validation"]["score"],
             "yes" if m["inner_validation"]["flip"] else "no", m["description"]]
            for name, m in metrics["methods"].items()]
    return table(["method", "parameters", "best epoch per fold", "training time, all folds (s)",
                  "slices/s", "inner-validation brain SSIM", "flip", "what it is"], rows)


def complete(metrics: dict) -> dict:
    """The methods whose every fold ran: the headline tables. An ablation run on some folds
    only (e.g. unet-wide) appears in the paired comparison, over the patients it predicted."""
    return {n: m for n, m in metrics["methods"].items() if not m.get("problems")}


def _stat(s: dict, digits: int) -> str:
    """'0.812 (0.790–0.830)' with a patient-bootstrap interval, else '0.812 ± 0.020' (sd over
    patients)."""
    if s.get("ci95"):
        low, high = s["ci95"]
        return f"{s['mean']:.{digits}f} ({low:.{digits}f}–{high:.{digits}f})"
    sd = s.get("sd")
    return f"{s['mean']:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd == sd and sd is not None else "")


def metrics_table(metrics: dict, masked: bool = True) -> Markdown:
    """Mean over patients of per-patient means, overall and per view, with a 95 % patient
    bootstrap interval (>= 5 patients) or ± sd over patients."""
    scale = metrics["scale"]
    keys = [f"{'masked_' if masked else ''}{k}" for k in ("ssim", "psnr")] + (
        ["masked_mae"] if masked else [])
    rows = []
    for name, m in complete(metrics).items():
        for view, agg in [("all", m["overall"]), *m["per_view"].items()]:
            rows.append([name, view] + [_stat(agg[k], 2 if "psnr" in k else 3) for k in keys])
    region = "brain" if masked else "whole image"
    return table(["method", "view"] + [f"{LABELS[k]} ({region}, {scale})" for k in keys], rows)


def patient_table(metrics: dict, key: str = "masked_ssim") -> Markdown:
    """One row per patient: its fold, slices and `key` under every method."""
    methods = complete(metrics)
    tables = [m["per_patient"] for m in methods.values()]
    patients = sorted(set().union(*tables))
    info = {p: next(t[p] for t in tables if p in t) for p in patients}
    rows = [[p, info[p].get("fold", "–"), info[p]["slices"]]
            + [t.get(p, {}).get(key) for t in tables] for p in patients]
    return table(["patient", "fold", "slices"] + [f"{m}" for m in methods], rows)


def paired_table(metrics: dict) -> Markdown:
    """Each method minus the reference, paired per patient: mean difference (interval or sd)
    and how many patients improve, for brain SSIM, PSNR and MAE."""
    scale = metrics["scale"]
    ref = metrics["paired"]["reference"]
    rows = []
    for name, by_key in metrics["paired"]["methods"].items():
        row = [f"{name} − {ref}"]
        for k in ("masked_ssim", "masked_psnr", "masked_mae"):
            p = by_key[k]
            digits = 2 if "psnr" in k else 3
            row.append(f"{_stat({'mean': p['mean_diff'], 'sd': p['sd_diff'], 'ci95': p['ci95']}, digits)}"
                       f"; {p['improved']}/{p['patients']} better")
        rows.append(row)
    return table(["comparison"] + [f"Δ {LABELS[k]} (brain, {scale})"
                                   for k in ("masked_ssim", "masked_psnr", "masked_mae")], rows)


def template_datasets(source: DataSource) -> dict:
    """The template's loading cells on any source, as `datasets.Dataset` per split.

    Hub: the provided `load_dataset(REPO_ID, split=...)`. A local folder in the Hub's schema:
    the same `load_dataset`, on its parquet files. Demo: the synthetic arrays as a Dataset.
    """
    from datasets import Dataset, load_dataset

    if source.kind == "hub":
        require_hub(REPO_ID)
        return {s: load_dataset(REPO_ID, split=s) for s in SPLITS}
    if source.kind == "folder":
        return dict(load_dataset("parquet", data_files=parquet_files(source.path)))
    demo = make_demo_mri()
    return {s: Dataset.from_dict({k: list(v) for k, v in demo[s].items()}) for s in SPLITS}


def to_tensors(batch: dict) -> dict:
    """The template's per-item transform: image fields as float32 tensors (1, 64, 64)."""
    return {k: [torch.as_tensor(np.asarray(x, dtype=np.float32)) for x in v]
            if k in ("t1", "t2") else v for k, v in batch.items()}
