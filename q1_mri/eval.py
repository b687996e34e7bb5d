"""Evaluate trained T1->T2 models and the trivial baselines; write metrics.json and figures.

    python -m q1_mri.eval --data ../shared/data/mri               # validation split of that source
    python -m q1_mri.eval --data OTHER --trained-on ../shared/data/mri --save-predictions p.npz

Protocol: metrics are computed per slice on normalised images (data range 1.0), whole image and
inside the brain mask; reported per view and overall as the mean of per-slice values with a 95 %
bootstrap interval over patients, the pixel-pooled value, and mean +- std of per-patient means.
The reported models are the final EMA weights: no checkpoint is chosen on the validation split.
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from common import cli
from common.checkpoint import CheckpointError, load_checkpoint
from common.io import read_csv, read_json, write_json
from common.results import count_parameters, evaluation_dirs, provenance
from common.runtime import autocast, configure_threads, select_device
from common.stats import bootstrap_additive
from q1_mri.data import (
    DATA_RANGE,
    NORMALISATION,
    SPLITS,
    VIEWS,
    MRISplit,
    load_mri,
    resolve_source,
    to_device,
)
from q1_mri.metrics import SSIM_WINDOW, all_metrics
from q1_mri.model import MODELS, build_model

METRICS = ("mae", "mse", "psnr", "ssim", "masked_mae", "masked_mse", "masked_psnr", "masked_ssim")
BASELINES = {"identity": "normalised T1 as the prediction (scale matched by the normalisation)",
             "linear": "T2 = a * T1 + b on brain pixels, least squares on the training split"}


# ---------------------------------------------------------------- predictions

@torch.no_grad()
def predict(model: torch.nn.Module, t1: torch.Tensor, device: torch.device,
            batch_size: int = 256) -> torch.Tensor:
    """(N, 1, H, W) normalised T1 (any float dtype) -> (N, 1, H, W) float32 predicted T2."""
    model.eval()
    out = []
    for start in range(0, len(t1), batch_size):
        with autocast(device):
            out.append(model(t1[start:start + batch_size].float()).float())
    return torch.cat(out)


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: dict, device: torch.device) -> dict[str, float]:
    """Mean of per-slice metrics of `model` on a to_device() dict (used for training curves)."""
    pred = predict(model, data["t1"], device)
    scores = all_metrics(data["t2"].float(), pred, data["mask"], DATA_RANGE)
    return {k: v.mean().item() for k, v in scores.items()}


def fit_linear(t1: torch.Tensor, t2: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """Least-squares a, b of T2 ~ a * T1 + b over brain pixels."""
    x, y = t1[mask].double(), t2[mask].double()
    a = ((x - x.mean()) * (y - y.mean())).mean() / x.var(unbiased=False)
    return float(a), float(y.mean() - a * x.mean())


def linear_map(t1: torch.Tensor, coef: tuple[float, float]) -> torch.Tensor:
    """Apply the fitted map inside the brain (T1 > 0); background stays 0."""
    return torch.where(t1 > 0, (coef[0] * t1.float() + coef[1]).clamp(0, 1), 0.0)


def load_model(path, device) -> tuple[torch.nn.Module, dict]:
    """Rebuild a model from its checkpoint alone and load the EMA weights.

    A truncated file, or one that does not hold a Q1 translator, raises CheckpointError.
    """
    ck = load_checkpoint(path, device)
    try:
        model = build_model(**ck["model_args"]).to(device)
        model.load_state_dict(ck["ema"]["shadow"])
    except (TypeError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {path} does not hold a Q1 translator's EMA weights "
                              f"({type(e).__name__}: {str(e).splitlines()[0]})") from e
    return model, ck


def trained_runs(run_dir, requested: list[str] | None) -> list[str]:
    """Run folders of `run_dir` to score: `requested`, or every run with a checkpoint (models
    first). Evaluating before any training raises CheckpointError instead of reporting only the
    baselines."""
    found = sorted(p.parent.name for p in run_dir.glob("*/checkpoint.pt"))
    names = requested or [m for m in MODELS if m in found] + [m for m in found if m not in MODELS]
    for name in names:
        if name not in found:
            print(f"notice: no trained {name} in {run_dir}; skipping it", file=sys.stderr)
    names = [name for name in names if name in found]
    if not names:
        raise CheckpointError(f"no trained Q1 run in {run_dir}: run make q1 "
                              "(or python -m q1_mri.train) first")
    return names


# ---------------------------------------------------------------- aggregation

def monitor_summary(history: list[dict]) -> dict:
    """Last epoch's training-subset SSIM and the validation peak, to show overfitting; the peak
    is reported, never used to pick weights."""
    peak = max(history, key=lambda r: r["validation_masked_ssim"])
    return {"final_train_masked_ssim": history[-1]["train_masked_ssim"],
            "final_validation_masked_ssim": history[-1]["validation_masked_ssim"],
            "peak_validation_masked_ssim": peak["validation_masked_ssim"],
            "peak_epoch": int(peak["epoch"])}


def per_slice_scores(gt, pred, mask) -> dict[str, np.ndarray]:
    """Every metric per slice, plus the pixel and SSIM-window counts used for pooling. (N,) each."""
    scores = {k: v.cpu().numpy().astype(np.float64)
              for k, v in all_metrics(gt, pred, mask, DATA_RANGE).items()}
    pad = SSIM_WINDOW // 2
    scores["n_brain"] = mask.flatten(1).sum(1).cpu().numpy().astype(np.float64)
    scores["n_brain_windows"] = (mask[..., pad:-pad, pad:-pad].flatten(1).sum(1)
                                 .cpu().numpy().astype(np.float64))
    return scores


def aggregate(scores: dict[str, np.ndarray], patient_id: np.ndarray, seed: int = 0) -> dict:
    """Per metric: mean of slices with patient-bootstrap CI, pooled value, per-patient mean/std."""
    patients = np.unique(patient_id)
    member = patient_id[None, :] == patients[:, None]                       # (P, N)
    out = {}
    for metric in METRICS:
        v = scores[metric]
        per_patient = np.stack([member @ v, member.sum(1)], axis=1)           # (P, 2): sum, count
        mean, low, high = bootstrap_additive(per_patient, lambda t: t[..., 0] / t[..., 1],
                                             seed=seed)
        weight = {"masked_ssim": scores["n_brain_windows"]}.get(
            metric, scores["n_brain"] if metric.startswith("masked") else np.ones_like(v))
        if metric.endswith("psnr"):
            mse = scores[metric.replace("psnr", "mse")]
            pooled = 10 * np.log10(DATA_RANGE ** 2 / (np.sum(mse * weight) / np.sum(weight)))
        else:
            pooled = np.sum(v * weight) / np.sum(weight)
        patient_means = per_patient[:, 0] / per_patient[:, 1]
        out[metric] = {"mean": mean, "ci95": [low, high], "pooled": float(pooled),
                       "patient_mean": float(patient_means.mean()),
                       "patient_std": float(patient_means.std(ddof=1)) if len(patients) > 1
                       else float("nan")}
    return out


def summarise(scores: dict[str, np.ndarray], patient_id: np.ndarray, view: np.ndarray) -> dict:
    by_view = {v: aggregate({k: s[view == v] for k, s in scores.items()}, patient_id[view == v])
               for v in VIEWS if (view == v).any()}
    return {"overall": aggregate(scores, patient_id), "per_view": by_view}


# ---------------------------------------------------------------- main

def test_split(splits: dict[str, MRISplit], external: bool
               ) -> tuple[MRISplit, np.ndarray, np.ndarray]:
    """The validation split, or for an external dataset every slice of the splits it holds.

    Returns the slices, the dataset split each came from (N,) str and its row there (N,) int.
    """
    names = ["validation"] if not external else [s for s in SPLITS if s in splits]
    parts = [splits[s] for s in names]
    merged = MRISplit(*(np.concatenate([getattr(p, f) for p in parts])
                        for f in ("t1", "t2", "patient_id", "view")),
                      skipped_empty=sum(p.skipped_empty for p in parts))
    origin = np.concatenate([np.full(len(p), s) for s, p in zip(names, parts)])
    row = np.concatenate([np.arange(len(p)) for p in parts])
    return merged, origin, row


def parse_args(argv=None):
    p = cli.parser(__doc__.splitlines()[0])
    cli.add_eval_args(p, "slice")
    p.add_argument("--models", nargs="+", default=None,
                   help="run folders to score (default: every trained run, models first)")
    return p.parse_args(argv)


def main(args) -> dict:
    from q1_mri import figures

    configure_threads()
    device = select_device(args.device)
    test_source = resolve_source(args.data)
    train_source = resolve_source(args.trained_on) if args.trained_on else test_source
    run_dir, out, external = evaluation_dirs("q1", train_source, test_source, args.results_root)
    names = trained_runs(run_dir, args.models)
    test_splits = load_mri(test_source)
    split, origin, row = test_split(test_splits, external)
    data = to_device(split, device)
    gt, mask = data["t2"].float(), data["mask"]
    train_split = load_mri(train_source)["train"] if external else test_splits["train"]
    train_data = to_device(train_split, device)
    coef = fit_linear(train_data["t1"].float(), train_data["t2"].float(), train_data["mask"])
    del train_data

    preds = {"identity": data["t1"].float(), "linear": linear_map(data["t1"], coef)}
    methods = {"identity": {"description": BASELINES["identity"]},
               "linear": {"description": BASELINES["linear"], "coef": list(coef)}}
    histories = {}
    for name in names:
        model, ck = load_model(run_dir / name / "checkpoint.pt", device)
        preds[name] = predict(model, data["t1"], device)
        summary = run_dir / name / "summary.json"
        adv = ck["config"].get("adv_weight", 0)
        methods[name] = {"description": f"{ck['config']['model']}"
                                        f"{f' + PatchGAN (weight {adv})' if adv else ''}, "
                                        f"final EMA weights after {ck['epoch']} epochs",
                         "parameters": count_parameters(model), "epochs": ck["epoch"],
                         "model_args": ck["model_args"], "config": ck["config"],
                         **({k: read_json(summary)[k] for k in ("wall_time_s", "slices_per_s",
                                                                 "device", "precision")}
                            if summary.exists() else {})}
        histories[name] = read_csv(run_dir / name / "history.csv")
        methods[name]["monitor"] = monitor_summary(histories[name])

    scores = {m: per_slice_scores(gt, p, mask) for m, p in preds.items()}
    for m in methods:
        methods[m].update(summarise(scores[m], split.patient_id, split.view))
    best = max(methods, key=lambda m: methods[m]["overall"]["masked_ssim"]["mean"])
    result = {**provenance(test_source, device, args.seed),
              "trained_on": train_source.tag, "normalisation": NORMALISATION,
              "data_range": DATA_RANGE,
              "test_set": (f"all {len(split)} slices of {test_source.label}" if external
                           else f"validation split of {test_source.label}"),
              "train_slices": len(train_split),
              "train_patients": int(len(np.unique(train_split.patient_id))),
              "test_slices": len(split), "test_patients": int(len(np.unique(split.patient_id))),
              "test_slices_skipped_empty": split.skipped_empty,
              "protocol": __doc__.split("Protocol: ")[1].strip(), "best_method": best,
              "methods": methods}
    write_json(out / "metrics.json", result)
    figures.write_all(out / "figures", split, data, preds, scores, methods, histories,
                      test_source.label)
    if args.save_predictions:
        model_name = best if best in histories else next(iter(histories), best)
        np.savez_compressed(args.save_predictions, patient_id=split.patient_id, view=split.view,
                            split=origin, row=row, pred=preds[model_name].cpu().numpy(),
                            model=model_name, normalisation=NORMALISATION)
        print(f"predictions of {model_name} written to {args.save_predictions}")
    print_table(result)
    return result


def print_table(result: dict) -> None:
    print(f"\nQ1 on {result['test_set']} (normalisation: {result['normalisation']})")
    w = max(len("method"), *map(len, result["methods"]))
    print(f"{'method':<{w}} {'view':<9} {'SSIM(brain)':>12} {'PSNR(brain)':>12} {'MAE(brain)':>11}")
    for m, r in result["methods"].items():
        for view, agg in [("all", r["overall"]), *r["per_view"].items()]:
            print(f"{m:<{w}} {view:<9} {agg['masked_ssim']['mean']:>12.4f} "
                  f"{agg['masked_psnr']['mean']:>12.2f} {agg['masked_mae']['mean']:>11.4f}")


if __name__ == "__main__":
    cli.run_main(lambda: main(parse_args()))
