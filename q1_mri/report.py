"""Q1 tables for the notebook, built from results/q1/<source>/metrics.json."""
from __future__ import annotations

import numpy as np
from IPython.display import Markdown

from common.report import table, with_ci
from q1_mri.data import SPLITS, VIEWS, MRISplit

LABELS = {"masked_ssim": "SSIM", "masked_psnr": "PSNR (dB)", "masked_mae": "MAE",
          "ssim": "SSIM", "psnr": "PSNR (dB)", "mae": "MAE"}


def counts_table(splits: dict[str, MRISplit]) -> Markdown:
    rows = [[s, len(np.unique(splits[s].patient_id)), len(splits[s])]
            + [int((splits[s].view == v).sum()) for v in VIEWS] for s in SPLITS]
    return table(["split", "patients", "slices"] + list(VIEWS), rows)


def intensity_table(stats: dict) -> Markdown:
    """Raw brain-pixel statistics per split and contrast, from eda_stats.json."""
    rows = []
    for s in SPLITS:
        for c in ("t1", "t2"):
            st = stats["splits"][s][c]
            rows.append([s, c.upper(), st["brain_median"], st["brain_p99_5"], st["max"],
                         f"{100 * stats['splits'][s]['background_fraction']:.0f} %"])
    return table(["split", "contrast", "median (brain)", "p99.5 (brain)", "max", "background"],
                 rows)


def models_table(metrics: dict) -> Markdown:
    rows = [[name, m.get("parameters"), m.get("epochs"), m.get("wall_time_s"),
             m.get("slices_per_s"), m.get("device"), m["description"]]
            for name, m in metrics["methods"].items()]
    return table(["method", "parameters", "epochs", "training time (s)", "slices/s", "device",
                  "what it is"], rows)


def overfitting_table(metrics: dict) -> Markdown:
    """Brain SSIM on the training and validation monitor subsets at the last epoch, and the
    validation peak (reported only; the final weights are what gets evaluated)."""
    rows = [[name, m["monitor"]["final_train_masked_ssim"], m["monitor"]["final_validation_masked_ssim"],
             f"{m['monitor']['peak_validation_masked_ssim']:.3f} (epoch {m['monitor']['peak_epoch']})"]
            for name, m in metrics["methods"].items() if "monitor" in m]
    return table(["model", "train SSIM, last epoch", "validation SSIM, last epoch",
                  "validation SSIM, best epoch"], rows)


def metrics_table(metrics: dict, masked: bool = True) -> Markdown:
    """Mean of per-slice values (95 % patient-bootstrap interval), overall and per view."""
    keys = [f"{'masked_' if masked else ''}{k}" for k in ("ssim", "psnr", "mae")]
    rows = []
    for name, m in metrics["methods"].items():
        for view, agg in [("all", m["overall"]), *m["per_view"].items()]:
            rows.append([name, view] + [with_ci(agg[k], 2 if "psnr" in k else 3) for k in keys])
    return table(["method", "view"] + [LABELS[k] for k in keys], rows)


def pooled_table(metrics: dict) -> Markdown:
    """Pixel-pooled values and the spread over patients (mean ± std of per-patient means)."""
    rows = []
    for name, m in metrics["methods"].items():
        o = m["overall"]
        rows.append([name] + [f"{o[k]['pooled']:.3f}" if "psnr" not in k else f"{o[k]['pooled']:.2f}"
                              for k in ("masked_ssim", "masked_psnr", "masked_mae")]
                    + [f"{o['masked_ssim']['patient_mean']:.3f} ± {o['masked_ssim']['patient_std']:.3f}"])
    return table(["method", "SSIM pooled", "PSNR pooled (dB)", "MAE pooled",
                  "SSIM per patient (mean ± std)"], rows)
