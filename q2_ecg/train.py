"""Train one Q2 run (model x fold x seed) on device-resident beats; write its held-out predictions.

    python -m q2_ecg.train --data ../shared/data/ecg --model resnet --split kfold --fold 0
    python -m q2_ecg.train --data ../shared/data/ecg --model context --split lodo --fold mitdb
    python -m q2_ecg.train --data ../shared/data/ecg --split all --from-cv   # the final model

Every beat's window is gathered from one signal tensor on the device, so a batch is an index
draw. Early stopping on the inner-validation F1 averaged over SVEB and VEB; the best epoch's EMA
weights are kept. The split comes from the split file (q2_ecg.splits), written once per scheme
and seed. Writes results/q2/<source>/<run>/: split.json, checkpoint.pt, best.pt, history.csv,
summary.json and predictions.npz (inner-validation and test beats; q2_ecg.eval reads it).

On CUDA the defaults use the device: batches of 4,096 beats (the learning rate scaled by
sqrt(4096 / 512)), the model torch.compiled, fused AdamW, bf16 autocast and a step without
host synchronisation; the CPU defaults are unchanged. The resolved batch, learning rate and
compile go into config.json.
"""
from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from common import cli
from common.checkpoint import load_checkpoint, load_weights, restore, save_checkpoint
from common.ema import ModelEMA
from common.io import torch_save, write_csv, write_json
from common.progress import progress
from common.results import count_parameters, provenance, results_dir
from common.runs import check_resume, locked, run_name
from common.runtime import (
    adamw,
    compile_enabled,
    configure_threads,
    device_batch,
    device_generator,
    device_type,
    grad_scaler,
    optimiser_step,
    precision,
    rng_state,
    seed_everything,
    select_device,
    set_rng_state,
)
from common.schedule import warmup_cosine
from common.splitfile import cv_choice
from q2_ecg import splits
from q2_ecg.beats import build_table, table_to_device
from q2_ecg.data import load_records, resolve_source
from q2_ecg.metrics import confusion, summary_from_confusion
from q2_ecg.model import MODELS, build_model, model_args
from q2_ecg.predict import chunk_indices, inputs, predict, predict_and_adapt, record_bounds
from q2_ecg.prediction_file import save_predictions

LODO_FOLDS = [db.removesuffix("_npy") for db in splits.DATABASES]
IMBALANCE = ("weight", "sample", "logit-adjust")
OUTPUTS = ("summary.json", "predictions.npz", "best.pt", "checkpoint.pt", "history.csv")
MONITORED = ("abnormal_macro_f1", "macro_f1", "NOR_f1", "SVEB_f1", "VEB_f1", "normal_f1",
             "abnormal_f1", "abnormal_se", "abnormal_ppv")
BATCH = {"cpu": 512, "cuda": 4096}     # --batch-beats auto, per device
PER_EPOCH = 30_000                       # --beats-per-epoch auto at the CPU batch
BASE_LR = 2e-3                         # --lr auto at the CPU batch


def parse_args(argv=None, kind: str | None = None):
    """The run's flags, with the per-device defaults resolved for `kind` ("cpu" | "cuda";
    default: the device --device selects)."""
    p = cli.parser(__doc__.splitlines()[0])
    cli.add_run_args(p)
    p.add_argument("--model", choices=sorted(MODELS), default="resnet")
    p.add_argument("--split", choices=splits.SCHEMES, default="kfold",
                   help="kfold | lodo (leave one database out) | beat (leaky) | all (final model)")
    p.add_argument("--folds", type=cli.count, default=5, help="K of the k-fold scheme")
    p.add_argument("--fold", default=None,
                   help="kfold: 0..K-1; lodo: " + " | ".join(LODO_FOLDS))
    p.add_argument("--name", default=None, help="extra word in the run folder (ablations)")
    p.add_argument("--from-cv", action="store_true",
                   help="--split all: take model, epochs and decision biases from the "
                        "cross-validation's metrics.json")
    p.add_argument("--epochs", type=cli.count, default=8, help="at most; early stopping may end sooner")
    p.add_argument("--beats-per-epoch", type=cli.auto_or(cli.count), default="auto",
                   help=f"training beats per epoch; auto: {PER_EPOCH:,} at the CPU batch, scaled "
                        "with --batch-beats so an epoch keeps its number of optimiser steps")
    p.add_argument("--batch-beats", type=cli.auto_or(cli.count), default="auto",
                   help="beats per batch (the context model gets batch-beats / L chunks); "
                        f"auto: {BATCH['cpu']} on the CPU, {BATCH['cuda']} on CUDA")
    p.add_argument("--lr", type=cli.auto_or(cli.positive), default="auto",
                   help=f"peak AdamW learning rate; auto: {BASE_LR:g}, scaled by "
                        f"sqrt(batch / {BATCH['cpu']}) when --batch-beats is auto (CUDA: "
                        f"{BASE_LR * (BATCH['cuda'] / BATCH['cpu']) ** 0.5:.2g}); an explicit "
                        f"--batch-beats keeps {BASE_LR:g}")
    p.add_argument("--weight-decay", type=cli.non_negative, default=1e-3)
    p.add_argument("--imbalance", choices=IMBALANCE, default="weight",
                   help="weight: class-weighted loss; sample: class-balanced sampling; "
                        "logit-adjust: loss on logits + log prior (Menon et al. 2021)")
    p.add_argument("--class-weight-power", type=cli.non_negative, default=0.5,
                   help="weights / sampling rates = frequency ** -power (1: fully balanced)")
    p.add_argument("--patience", type=cli.count, default=3, help="epochs without validation gain")
    p.add_argument("--ema-decay", type=cli.fraction, default=0.995)
    p.add_argument("--channels", type=cli.count, nargs=3, default=None, help="ResNet stage widths")
    p.add_argument("--max-monitor-beats", type=cli.count, default=None,
                   help="score at most this many validation beats per epoch (quick runs)")
    p.add_argument("--resume", action="store_true",
                   help="continue from checkpoint.pt (starts afresh if there is none)")
    cli.add_compile_args(p)
    p.add_argument("--dry-run", action="store_true", help="one batch, no files")
    args = p.parse_args(argv)
    if args.split == "kfold" and (args.fold is None or not args.fold.isdigit()
                                  or int(args.fold) >= args.folds):
        p.error(f"--split kfold needs --fold 0..{args.folds - 1} (got {args.fold})")
    if args.split == "lodo" and args.fold not in LODO_FOLDS:
        p.error(f"--split lodo needs --fold {' | '.join(LODO_FOLDS)} (got {args.fold})")
    if args.split in ("beat", "all") and args.fold is not None:
        p.error(f"--split {args.split} has a single fold: drop --fold")
    if args.from_cv and args.split != "all":
        p.error("--from-cv goes with --split all")
    if args.split == "kfold" and args.folds < 2:
        p.error("--folds must be at least 2")
    resolve_device_defaults(args, kind or device_type(args.device))
    length = MODELS[args.model].context
    if args.batch_beats < length:
        p.error(f"--batch-beats {args.batch_beats}: the {args.model} model reads chunks of "
                f"{length} beats, so a batch needs at least {length}")
    return args


def resolve_device_defaults(args, kind: str) -> None:
    """Replace the auto batch, learning rate, beats per epoch and compile by their values on
    `kind`."""
    args.batch_beats, args.lr = device_batch(args.batch_beats, args.lr, kind, BATCH["cpu"],
                                             BATCH["cuda"], BASE_LR)
    if args.beats_per_epoch == "auto":     # the same optimiser steps per epoch on every device
        args.beats_per_epoch = PER_EPOCH * args.batch_beats // BATCH["cpu"]
    args.compile = compile_enabled(args.compile, kind)


def fold_name(args) -> str:
    if args.split == "kfold":
        return f"fold{args.fold}"
    return args.fold or args.split


def run_folder_name(args) -> str:
    scheme = f"kfold{args.folds}" if args.split == "kfold" else args.split
    fold = None if args.split in ("beat", "all") else fold_name(args)
    return run_name(args.model, args.name, scheme, fold, f"seed{args.seed}")


def apply_cv_choice(args, root) -> dict:
    """--from-cv: the chosen configuration of the cross-validation (model, epochs, biases). For
    an ensemble, `args.model` names the member to train and gets that member's epochs."""
    final = cv_choice(root, "q2")
    if final.get("members"):
        if args.model not in final["members"]:
            raise cli.DataError(f"--from-cv: the chosen ensemble's members are "
                                f"{list(final['members'])}, not {args.model}")
        args.epochs = int(final["members"][args.model])
    else:
        args.model, args.epochs = final["model"], int(final["epochs"])
    return final


def main(args) -> list[dict]:
    """Train the run `args` describes; with --from-cv and an ensemble chosen, each member."""
    if not args.from_cv:
        return [train(args)]
    final = cv_choice(results_dir("q2", resolve_source(args.data), args.results_root), "q2")
    models = list(final.get("members") or [final["model"]])
    return [train(SimpleNamespace(**{**vars(args), "model": m})) for m in models]


def class_weights(labels: np.ndarray, power: float) -> torch.Tensor:
    """(3,) weights frequency**-power, scaled so the average weight per training beat is 1.

    power 0.5 sits between no weighting (the network ignores SVEB) and full balancing (which
    flags far too many normal beats as abnormal, ruining the positive predictive value).
    """
    freq = np.bincount(labels, minlength=3) / len(labels)
    w = freq ** -power
    return torch.tensor(w / (freq * w).sum(), dtype=torch.float32)


def setup(args) -> SimpleNamespace:
    configure_threads()
    r = SimpleNamespace(gen=seed_everything(args.seed), device=select_device(args.device))
    r.source = resolve_source(args.data)
    root = results_dir("q2", r.source, args.results_root)
    r.final_choice = apply_cv_choice(args, root) if args.from_cv else None
    r.out = root / run_folder_name(args)
    records = load_records(r.source)
    r.records, r.table = records, build_table(records)
    split, split_file, persons = splits.open_split(root, r.source.tag, records, r.table,
                                                   args.split, args.folds, args.seed)
    r.fold = fold_name(args)
    if r.fold not in split["folds"]:
        raise cli.DataError(f"--fold {r.fold}: {r.source.label} has no such fold; its "
                            f"{args.split} folds: {' | '.join(split['folds'])}")
    r.roles = splits.beat_role_array(split, r.fold, records, r.table)
    splits.check_split(persons[r.table.record], r.roles, r.table.label, r.table.scored,
                       record_level=args.split != "beat")
    r.split_entry = splits.run_entry(split, split_file, r.fold, records, r.table)
    r.split_id = r.split_entry["split_id"]
    r.split_counts = splits.describe(records, r.table, r.roles)
    r.config = {**vars(args), "data_tag": r.source.tag, "split_id": r.split_id}
    r.dev = table_to_device(r.table, r.device)
    r.model_args = model_args(args.model, channels=tuple(args.channels) if args.channels else None)
    r.model = build_model(**r.model_args).to(r.device)
    r.autoencoder = r.model.cfg.autoencoder
    train = r.table.scored & (r.roles == "train") & ((r.table.label == 0) | (not r.autoencoder))
    r.trainable = torch.from_numpy(train).to(r.device)           # beats that carry a loss
    if r.model.cfg.rr_features:
        r.model.rr_norm.fit(r.dev["rr"][r.trainable])
    length = r.model.cfg.context
    first, last = record_bounds(r.table.record)
    starts = np.flatnonzero(train) if length == 1 else np.unique(np.maximum(
        np.minimum(np.flatnonzero(train) - length // 2, last[train] - length + 1), first[train]))
    r.starts, r.chunk_last = starts, last[starts]
    r.val_beats = np.flatnonzero(r.table.scored & (r.roles == "val"))
    if args.max_monitor_beats and len(r.val_beats) > args.max_monitor_beats:
        r.val_beats = np.sort(np.random.default_rng(0).choice(r.val_beats, args.max_monitor_beats,
                                                              replace=False))
    r.loss_weight, r.start_p, r.logit_prior = imbalance_terms(args, r, length)
    r.dgen = device_generator(r.device, args.seed)
    r.ema = ModelEMA(r.model, args.ema_decay)
    r.opt = adamw(r.model.parameters(), r.device, lr=args.lr, weight_decay=args.weight_decay)
    r.scaler = grad_scaler(r.device)
    r.start_epoch, r.history, r.best = 0, [], -float("inf")
    if args.resume and not (r.out / "checkpoint.pt").exists():
        print(f"notice: nothing to resume in {r.out}; starting from scratch")
    elif args.resume:
        ck = load_checkpoint(r.out / "checkpoint.pt", r.device)
        check_resume(ck["config"], r.config, ck["epoch"], r.out)
        restore(ck, r.model, r.ema, r.opt, r.scaler)
        set_rng_state(r.gen, ck["rng"], r.dgen)
        r.start_epoch, r.history, r.best = ck["epoch"], ck["history"], ck["best_metric"]
    r.fresh = not (args.resume and r.start_epoch)
    r.step_model = torch.compile(r.model) if args.compile else r.model
    r.amp, r.precision = precision(r.device)
    return r


def imbalance_terms(args, r, length: int):
    """(loss class weights | None, chunk sampling probabilities | None, log prior | None)."""
    if r.autoencoder:
        return None, None, None
    labels = r.table.label[r.trainable.cpu().numpy()]
    weights = class_weights(labels, args.class_weight_power)
    if args.imbalance == "weight":
        return weights.to(r.device), None, None
    if args.imbalance == "sample":  # a chunk is drawn as often as its middle beat's class asks
        mid = r.table.label[np.minimum(r.starts + length // 2, r.chunk_last)].clip(0, 2)
        p = weights.numpy()[mid]
        return None, torch.from_numpy(p / p.sum()), None
    prior = np.bincount(labels, minlength=3) / len(labels)
    return None, None, torch.tensor(np.log(prior), dtype=torch.float32, device=r.device)


def train_step(r, chunks: int, length: int) -> torch.Tensor:
    """One optimiser step on `chunks` random chunks of `length` beats -> loss.

    Augmentation of the beat channel, drawn on the device: shifted by up to 3 samples (inside
    its record), scaled by 0.8..1.2 and given white noise of up to 0.05 (in units of the
    record's R amplitude).
    """
    pick = (torch.multinomial(r.start_p, chunks, replacement=True, generator=r.gen)
            if r.start_p is not None else torch.randint(0, len(r.starts), (chunks,), generator=r.gen))
    idx = torch.from_numpy(chunk_indices(r.starts[pick.numpy()], length,
                                         r.chunk_last[pick.numpy()])).to(r.device)
    g = r.dgen
    shift = torch.randint(-3, 4, idx.shape, generator=g, device=r.device)
    gain = 0.8 + 0.4 * torch.rand(*idx.shape, 1, generator=g, device=r.device)
    waves, rr = inputs(r.dev, idx, r.model.cfg, shift)
    noise = 0.05 * torch.rand(*idx.shape, 1, generator=g, device=r.device)
    beat = waves[..., 0, :] * gain + noise * torch.randn(waves[..., 0, :].shape, generator=g,
                                                         device=r.device)
    waves = torch.cat([beat[..., None, :], waves[..., 1:, :]], dim=-2)
    with r.amp():
        out = r.step_model(waves, rr).float()
    loss = beat_loss(r, out, r.dev["label"][idx], r.trainable[idx])
    optimiser_step(loss, r.model, r.opt, r.scaler, r.ema)
    return loss.detach()


def beat_loss(r, out: torch.Tensor, label: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The loss over the beats of a batch that carry one (`mask`, shape (B, L) like `label`).

    out: (B, L, 3) logits, or (B, L) reconstruction errors of the autoencoder. Boolean
    indexing would make CUDA wait for the host to learn how many beats the mask keeps, so on
    CUDA the same mean is taken over every beat with the masked ones weighted 0 (ignore_index);
    the CPU keeps the indexing, which gives the CPU runs' loss bit for bit.
    """
    prior = r.logit_prior if r.logit_prior is not None else 0
    if r.device.type == "cpu":
        if r.autoencoder:
            return out[mask].mean()
        return F.cross_entropy(out[mask] + prior, label[mask], weight=r.loss_weight)
    if r.autoencoder:
        return torch.where(mask, out, 0).sum() / mask.sum()
    return F.cross_entropy((out + prior).flatten(0, 1), torch.where(mask, label, -100).flatten(),
                           weight=r.loss_weight, ignore_index=-100)


def validate(r) -> dict:
    if not len(r.val_beats):                 # the final model has no validation records
        return {"score": 0.0}
    out = predict(r.ema.shadow, r.dev, r.val_beats, r.table.record, r.device)
    y = r.table.label[r.val_beats]
    if r.autoencoder:  # lower reconstruction error on normal validation beats is better
        return {"val_normal_error": float(out[y == 0].mean()), "score": -float(out[y == 0].mean())}
    s = summary_from_confusion(confusion(y, out.argmax(1)))
    return {**{f"val_{k}": float(s[k]) for k in MONITORED}, "score": float(s["abnormal_macro_f1"])}


def save(r, args, epoch: int) -> None:
    save_checkpoint(r.out / "checkpoint.pt", model=r.model.state_dict(), ema=r.ema.state_dict(),
                    optimizer=r.opt.state_dict(), scaler=r.scaler.state_dict(),
                    model_args=r.model_args, epoch=epoch, best_metric=r.best, config=r.config,
                    rng=rng_state(r.gen, r.dgen), history=r.history)


def train(args) -> dict:
    r = setup(args)
    length = r.model.cfg.context
    chunks = max(1, args.batch_beats // length)
    steps_per_epoch = max(1, args.beats_per_epoch // (chunks * length))
    total_steps = args.epochs * steps_per_epoch
    print(f"q2 {args.model} ({args.split} {r.fold}, seed {args.seed}): "
          f"{count_parameters(r.model):,} parameters, {r.device}, {r.precision}, batch "
          f"{chunks * length} beats, lr {args.lr:.3g}{', compiled' if args.compile else ''}, "
          f"data: {r.source.label}\n  records/beats: {r.split_counts}")
    if args.dry_run:
        print(f"dry run: one batch, loss {train_step(r, chunks, length).item():.4f}")
        return {}
    with locked(r.out):
        if r.fresh:       # a killed replacement must never leave the earlier run's results
            replaced = [f for f in OUTPUTS if (r.out / f).exists()]
            if replaced:
                print(f"notice: replacing the earlier run in {r.out} (--resume continues one)")
            for name in replaced:
                (r.out / name).unlink()
        write_json(r.out / "split.json", r.split_entry)
        for epoch in range(r.start_epoch, args.epochs):
            best_epoch = max((h["epoch"] for h in r.history if h["score"] == r.best), default=0)
            if len(r.val_beats) and r.history and epoch - best_epoch >= args.patience:
                print(f"early stop: no validation gain for {args.patience} epochs")
                break
            r.model.train()
            bar = progress(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}",
                           unit="batch")
            t_epoch, loss_sum = time.time(), torch.zeros((), device=r.device)
            for step in bar:
                for group in r.opt.param_groups:
                    group["lr"] = args.lr * warmup_cosine(epoch * steps_per_epoch + step,
                                                          total_steps, steps_per_epoch // 2)
                loss = train_step(r, chunks, length)
                loss_sum += loss
                if step % 20 == 0:  # .item() waits for the GPU, so only now and then
                    if not torch.isfinite(loss):
                        raise cli.DataError(f"training diverged (loss {loss.item()}) at epoch "
                                            f"{epoch + 1}; {r.out} keeps the last good checkpoint")
                    rate = (step + 1) * chunks * length / (time.time() - t_epoch)
                    bar.set_postfix(loss=f"{loss.item():.4f}", beats_s=f"{rate:.0f}")
            epoch_s = time.time() - t_epoch
            row = {"epoch": epoch + 1, "lr": r.opt.param_groups[0]["lr"],
                   "train_loss": (loss_sum / steps_per_epoch).item(), "epoch_s": epoch_s,
                   "beats_per_s": steps_per_epoch * chunks * length / epoch_s, **validate(r)}
            row["elapsed_s"] = (r.history[-1]["elapsed_s"] if r.history else 0) + time.time() - t_epoch
            r.history.append(row)
            if row["score"] > r.best or not len(r.val_beats):
                r.best = row["score"]
                torch_save(r.out / "best.pt", {"model_args": r.model_args, "epoch": epoch + 1,
                                               "ema": r.ema.state_dict(), "config": r.config})
            print(" | ".join(f"{k} {v:.4g}" for k, v in row.items()))
            write_csv(r.out / "history.csv", r.history)
            save(r, args, epoch + 1)
        best_epoch = max(h["epoch"] for h in r.history if h["score"] == r.best)
        summary = {**provenance(r.source, r.device, args.seed), "model": args.model,
                   "split": args.split, "fold": r.fold, "split_id": r.split_id,
                   "parameters": count_parameters(r.model), "model_args": r.model_args,
                   "precision": r.precision, "config": r.config, "split_counts": r.split_counts,
                   "imbalance": args.imbalance, "epochs_run": len(r.history),
                   "best_epoch": best_epoch, "wall_time_s": r.history[-1]["elapsed_s"],
                   "beats_per_s": float(np.mean([h["beats_per_s"] for h in r.history])),
                   "final_choice": r.final_choice}
        if args.split != "all":
            write_predictions(r)
        write_json(r.out / "summary.json", summary)
    return summary


def write_predictions(r) -> None:
    """predictions.npz: the best weights' outputs on the inner-validation and test beats."""
    best = build_model(**r.model_args).to(r.device)
    best.load_state_dict(load_weights(r.out / "best.pt", r.device)["ema"]["shadow"])
    beats = np.flatnonzero(r.table.scored & np.isin(r.roles, ("val", "test")))
    out, adapted = predict_and_adapt(best, r.dev, beats, r.table, r.device)
    save_predictions(r.out / "predictions.npz", r.records, r.table, beats, r.roles[beats],
                     out, model=r.config["model"], split_id=r.split_id, data_tag=r.source.tag,
                     adapted=adapted)


if __name__ == "__main__":
    cli.run_main(lambda: main(parse_args()))
