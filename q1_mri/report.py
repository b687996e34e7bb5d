"""Q1 tables for the notebook, built from results/q1/<source>/metrics.json (q1_mri.eval) and
eda_stats.json; the notebook's offline twin of the template's loading cells.

Every number is a mean over patients of per-patient means, in metrics.SLICE_SCALE units.
"""
from __future__ import annotations

import numpy as np
from IPython.display import Markdown

from common.report import demo_parquet, table, with_ci
from q1_mri.data import SPLITS, parquet_files, resolve_source
from q1_mri.demo import make_demo_mri
from q1_mri.eval import BASELINES, REFERENCE, SOLUTIONS

LABELS = {"masked_ssim": "SSIM", "masked_psnr": "PSNR (dB)", "masked_mae": "MAE"}
KEYS = tuple(LABELS)


def local_files(spec: str) -> dict[str, list[str]]:
    """{split: parquet files in the Hub's schema} of an offline source: a local folder, or the
    demo slices, written once to the cache as parquet. What the notebook's loading cell hands
    to the same `load_dataset("parquet", ...)` call the Hub copy answers."""
    source = resolve_source(spec)
    if source.kind == "hub":
        raise ValueError("the Hub is loaded by the template's own call, not from local files")
    if source.kind == "folder":
        return parquet_files(source.path)

    def splits():
        from datasets import Dataset
        return {split: Dataset.from_dict({k: list(v) for k, v in arrays.items()})
                for split, arrays in make_demo_mri().items()}
    return demo_parquet("demo-mri-parquet", splits)


def ablation_flags(variant: str) -> list[str]:
    """The training flags of an ablation named as in Q1_ABLATIONS: "wN" is the U-Net at width N,
    anything else a model name (e.g. unet25d)."""
    if variant[0] == "w" and variant[1:].isdigit():
        return ["--model", "unet", "--base-channels", variant[1:], "--name", variant]
    return ["--model", variant]


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


def _stat(s: dict, digits: int) -> str:
    """'0.812 (0.790–0.830)' with a patient-bootstrap interval, else '0.812 ± 0.020' (sd over
    patients)."""
    if s.get("ci95"):
        return with_ci(s, digits)
    sd = s.get("sd")
    return f"{s['mean']:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd == sd and sd is not None else "")


def _digits(key: str) -> int:
    return 2 if "psnr" in key else 3


def _order(name: str) -> tuple:
    base = name.split("-")[0]
    return (base not in BASELINES, base != REFERENCE, base in SOLUTIONS, name)


def complete(metrics: dict) -> dict:
    """The methods whose every fold ran, in reading order: baselines, the reference, our
    solutions (width variants run on some folds only appear in the choices)."""
    return {n: metrics["methods"][n] for n in sorted(metrics["methods"], key=_order)
            if not metrics["methods"][n].get("problems")}


def headline_table(metrics: dict) -> Markdown:
    """Out of fold over every patient: brain SSIM, PSNR and MAE, mean over patients with a 95 %
    patient-bootstrap interval; the range over seeds where there are several; the training
    time summed over the folds."""
    scale, rows = metrics["scale"], []
    chosen = metrics.get("chosen_model")
    for name, m in complete(metrics).items():
        seeds = m["seed_summary"]["masked_ssim"]["seeds"]
        spread = (f"{seeds} seeds: SSIM {m['seed_summary']['masked_ssim']['min']:.3f}–"
                  f"{m['seed_summary']['masked_ssim']['max']:.3f}" if seeds > 1 else "1 seed")
        hours = m.get("wall_time_s") or 0
        params = m.get("parameters")
        rows.append([name + (" (chosen)" if name == chosen else ""),
                     f"{params / 1e6:.2f} M" if params else "–"]
                    + [_stat(m["overall"][k], _digits(k)) for k in KEYS]
                    + [spread, f"{hours / 3600:.2f} h" if hours else "–"])
    return table(["method", "parameters"] + [f"brain {LABELS[k]} ({scale})" for k in KEYS]
                 + ["seeds", "training (all folds)"], rows)


def paired_table(metrics: dict) -> Markdown:
    """Each complete method minus the reference, paired per patient: mean difference (interval
    or sd) and how many patients improve, for brain SSIM, PSNR and MAE."""
    scale = metrics["scale"]
    ref = metrics["paired"]["reference"]
    rows = []
    names = [n for n in complete(metrics) if n in metrics["paired"]["methods"]]
    for name in names:
        row = [f"{name} − {ref}"]
        for k in KEYS:
            p = metrics["paired"]["methods"][name][k]
            row.append(f"{_stat({'mean': p['mean_diff'], 'sd': p['sd_diff'], 'ci95': p['ci95']}, _digits(k))}"
                       f"; {p['improved']}/{p['patients']} better")
        rows.append(row)
    return table(["comparison"] + [f"Δ brain {LABELS[k]} ({scale})" for k in KEYS], rows)


def choices_table(metrics: dict) -> Markdown:
    """Every choice with its candidates: the inner-validation brain SSIM that decided it (mean
    over the folds' inner-validation patients; mean over seeds), and beside it what the test
    patients said afterwards (out-of-fold brain SSIM; never used to choose). Width variants ran
    on some folds only: ablation_table compares them with the chosen model."""
    choice, methods = metrics["final_choice"], metrics["methods"]
    rows = []
    for name, score in sorted(choice["inner_val_scores"].items(), key=lambda kv: -kv[1]):
        m = methods[name]
        width = (m.get("model_args") or {}).get("base_channels")
        rows.append(["model and width", f"{name} (width {width})", score,
                     m["overall"]["masked_ssim"]["mean"], name == choice["method"]])
    for name in [n for n in complete(metrics) if n.split("-")[0] not in BASELINES]:
        iv = methods[name]["inner_validation"]
        if iv.get("with_flip") is not None:
            for label, value, used in (("no flip", iv["plain"], not iv["flip"]),
                                       ("averaged with the flip", iv["with_flip"], iv["flip"])):
                rows.append([f"test-time left-right flip ({name})", label, value, None, used])
    return table(["choice", "candidate", "inner-validation brain SSIM", "out-of-fold brain SSIM",
                  "used"], [r[:-1] + ["✔" if r[-1] else ""] for r in rows])


def ablation_table(metrics: dict) -> Markdown:
    """Each other solution variant against the chosen model on the folds the variant ran
    (eval.against_chosen): its size, the inner-validation brain SSIM of both, and the paired
    per-patient test differences (variant minus chosen). No training speed: the runs shared the
    cores with different neighbours; make bench measures speed."""
    chosen, methods = metrics["chosen_model"], metrics["methods"]

    def size(m: dict) -> str:
        return f"{m['parameters'] / 1e6:.2f} M" if m.get("parameters") else "–"
    own = methods[chosen]
    rows = [[f"{chosen} (chosen)", size(own),
             f"{len(own['inner_by_fold'])} ({own['overall']['masked_ssim']['patients']} patients)",
             "–", "–", "–"]]
    for name, c in metrics.get("against_chosen", {}).items():
        iv = c["inner_validation"]
        rows.append([name, size(methods[name]),
                     f"{len(c['folds'])} ({c['paired']['masked_ssim']['patients']} patients)",
                     f"{iv[name]:.3f} vs {iv[chosen]:.3f}"]
                    + [f"{c['paired'][k]['mean_diff']:+.{_digits(k)}f}; "
                       f"{c['paired'][k]['improved']}/{c['paired'][k]['patients']} better"
                       for k in ("masked_ssim", "masked_psnr")])
    return table(["variant", "parameters", "folds",
                  f"inner-validation brain SSIM (variant vs {chosen})",
                  f"Δ brain SSIM vs {chosen}", f"Δ brain PSNR (dB) vs {chosen}"], rows)


def worst_patients(metrics: dict, n: int = 3) -> str:
    """One line: the chosen model's lowest and highest patients by brain SSIM (median seed)."""
    per = metrics["methods"][metrics["chosen_model"]]["per_patient"]
    order = sorted(per, key=lambda p: per[p]["masked_ssim"])
    show = lambda ps: ", ".join(f"{p} {per[p]['masked_ssim']:.3f}" for p in ps)  # noqa: E731
    return (f"{metrics['chosen_model']}, brain SSIM per patient: lowest {show(order[:n])}; "
            f"highest {show(order[-n:])}; median {np.median([v['masked_ssim'] for v in per.values()]):.3f}")

