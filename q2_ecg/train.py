"""Train a beat classifier (or the normal-beat autoencoder) on device-resident beats.

    python -m q2_ecg.train --data ../shared/data/ecg --model resnet --split patient
    python -m q2_ecg.train --data ../shared/data/ecg --model context --split lodo-svdb --resume

Every beat's window is gathered from one signal tensor on the device, so a batch is an index
draw. Early stopping on the validation F1 averaged over SVEB and VEB; the best epoch's weights
are kept. Writes results/q2/<source>/<model>-<split>/: checkpoint.pt, best.pt, history.csv,
summary.json.
"""
from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from common import cli
from common.checkpoint import load_checkpoint, restore, save_checkpoint
from common.ema import ModelEMA
from common.io import torch_save, write_csv, write_json
from common.progress import progress
from common.results import count_parameters, provenance, results_dir
from common.runtime import (
    configure_threads,
    grad_scaler,
    precision,
    rng_state,
    seed_everything,
    select_device,
    set_rng_state,
)
from common.schedule import warmup_cosine
from q2_ecg.beats import build_table, table_to_device
from q2_ecg.data import load_records, resolve_source
from q2_ecg.metrics import confusion, summary_from_confusion
from q2_ecg.model import MODELS, build_model, model_args
from q2_ecg.predict import chunk_indices, inputs, predict, record_bounds
from q2_ecg.splits import DATABASES, beat_split, describe, lodo_split, patient_split

SPLIT_CHOICES = ["patient", "beat"] + [f"lodo-{db.removesuffix('_npy')}" for db in DATABASES]
MONITORED = ("abnormal_macro_f1", "macro_f1", "NOR_f1", "SVEB_f1", "VEB_f1", "normal_f1",
             "abnormal_f1", "abnormal_se", "abnormal_ppv")


def parse_args(argv=None):
    p = cli.parser(__doc__.splitlines()[0])
    cli.add_run_args(p)
    p.add_argument("--model", choices=sorted(MODELS), default="resnet")
    p.add_argument("--split", choices=SPLIT_CHOICES, default="patient")
    p.add_argument("--epochs", type=int, default=20, help="at most; early stopping may end sooner")
    p.add_argument("--beats-per-epoch", type=int, default=60_000, help="training beats per epoch")
    p.add_argument("--batch-beats", type=int, default=512,
                   help="beats per batch (the context model gets batch-beats / L chunks)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=1e-3)
    p.add_argument("--class-weight-power", type=float, default=0.5,
                   help="class weight = frequency ** -power (0: none, 1: fully balanced)")
    p.add_argument("--patience", type=int, default=5, help="epochs without validation gain")
    p.add_argument("--ema-decay", type=float, default=0.995)
    p.add_argument("--channels", type=int, nargs=3, default=None, help="ResNet stage widths")
    p.add_argument("--max-monitor-beats", type=int, default=None,
                   help="score at most this many validation beats per epoch (quick runs)")
    p.add_argument("--resume", action="store_true",
                   help="continue from checkpoint.pt (starts afresh if there is none)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--dry-run", action="store_true", help="one batch, no files")
    return p.parse_args(argv)


def make_split(records, table, name: str, seed: int) -> np.ndarray:
    if name == "patient":
        return patient_split(records, table, seed)
    if name == "beat":
        return beat_split(table, seed)
    return lodo_split(records, table, name.removeprefix("lodo-") + "_npy", seed)


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
    r.out = results_dir("q2", r.source, args.results_root) / f"{args.model}-{args.split}"
    records = load_records(r.source)
    r.table = build_table(records)
    r.split = make_split(records, r.table, args.split, args.seed)
    r.split_counts = describe(records, r.table, r.split)
    r.dev = table_to_device(r.table, r.device)
    r.model_args = model_args(args.model, channels=tuple(args.channels) if args.channels else None)
    r.model = build_model(**r.model_args).to(r.device)
    r.autoencoder = r.model.cfg.autoencoder
    train = r.table.scored & (r.split == "train") & ((r.table.label == 0) | (not r.autoencoder))
    r.trainable = torch.from_numpy(train).to(r.device)           # beats that carry a loss
    if r.model.cfg.rr_features:
        r.model.rr_norm.fit(r.dev["rr"][r.trainable])
    length = r.model.cfg.context
    first, last = record_bounds(r.table.record)
    starts = np.flatnonzero(train) if length == 1 else np.unique(np.maximum(
        np.minimum(np.flatnonzero(train) - length // 2, last[train] - length + 1), first[train]))
    r.starts, r.chunk_last = starts, last[starts]
    r.val_beats = np.flatnonzero(r.table.scored & (r.split == "val"))
    if args.max_monitor_beats and len(r.val_beats) > args.max_monitor_beats:
        r.val_beats = np.sort(np.random.default_rng(0).choice(r.val_beats, args.max_monitor_beats,
                                                              replace=False))
    r.weights = (None if r.autoencoder else
                 class_weights(r.table.label[train], args.class_weight_power).to(r.device))
    r.ema = ModelEMA(r.model, args.ema_decay)
    r.opt = torch.optim.AdamW(r.model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    r.scaler = grad_scaler(r.device)
    r.start_epoch, r.history, r.best = 0, [], -float("inf")
    if args.resume and not (r.out / "checkpoint.pt").exists():
        print(f"notice: nothing to resume in {r.out}; starting from scratch")
    elif args.resume:
        ck = load_checkpoint(r.out / "checkpoint.pt", r.device)
        restore(ck, r.model, r.ema, r.opt, r.scaler)
        set_rng_state(r.gen, ck["rng"])
        r.start_epoch, r.history, r.best = ck["epoch"], ck["history"], ck["best_metric"]
    r.step_model = torch.compile(r.model) if args.compile else r.model
    r.amp, r.precision = precision(r.device)
    return r


def batch_loss(r, idx: torch.Tensor) -> torch.Tensor:
    """Loss of a (B, L) chunk batch: weighted cross-entropy, or reconstruction error for the AE.

    Augmentation of the beat channel: shifted by up to 3 samples, scaled by 0.8..1.2 and given
    white noise of up to 0.05 (in units of the record's R amplitude).
    """
    shift = torch.randint(-3, 4, idx.shape, generator=r.gen).to(r.device)
    gain = (0.8 + 0.4 * torch.rand(*idx.shape, 1, generator=r.gen)).to(r.device)
    noise = 0.05 * torch.rand(*idx.shape, 1, generator=r.gen).to(r.device)
    waves, rr = inputs(r.dev, idx, r.model.cfg, shift)
    beat = waves[..., 0, :] * gain + noise * torch.randn(waves[..., 0, :].shape,
                                                         generator=r.gen).to(r.device)
    waves = torch.cat([beat[..., None, :], waves[..., 1:, :]], dim=-2)
    mask = r.trainable[idx]
    with r.amp():
        out = r.step_model(waves, rr).float()
    if r.autoencoder:
        return out[mask].mean()
    return F.cross_entropy(out[mask], r.dev["label"][idx][mask], weight=r.weights)


def train_step(r, chunks: int, length: int) -> torch.Tensor:
    """Draw `chunks` random chunks of `length` beats and take one optimiser step. -> loss"""
    pick = torch.randint(0, len(r.starts), (chunks,), generator=r.gen).numpy()
    idx = torch.from_numpy(chunk_indices(r.starts[pick], length, r.chunk_last[pick]))
    loss = batch_loss(r, idx.to(r.device))
    r.opt.zero_grad(set_to_none=True)
    r.scaler.scale(loss).backward()
    r.scaler.step(r.opt)
    r.scaler.update()
    r.ema.update(r.model)
    return loss.detach()


def validate(r) -> dict:
    out = predict(r.ema.shadow, r.dev, r.val_beats, r.table.record, r.device)
    y = r.table.label[r.val_beats]
    if r.autoencoder:  # lower reconstruction error on normal validation beats is better
        return {"val_normal_error": float(out[y == 0].mean()), "score": -float(out[y == 0].mean())}
    s = summary_from_confusion(confusion(y, out.argmax(1)))
    return {**{f"val_{k}": float(s[k]) for k in MONITORED}, "score": float(s["abnormal_macro_f1"])}


def save(r, args, epoch: int) -> None:
    save_checkpoint(r.out / "checkpoint.pt", model=r.model.state_dict(), ema=r.ema.state_dict(),
                    optimizer=r.opt.state_dict(), scaler=r.scaler.state_dict(),
                    model_args=r.model_args, epoch=epoch, best_metric=r.best, config=vars(args),
                    rng=rng_state(r.gen), history=r.history)


def train(args) -> dict:
    r = setup(args)
    length = r.model.cfg.context
    chunks = max(1, args.batch_beats // length)
    steps_per_epoch = max(1, args.beats_per_epoch // (chunks * length))
    total_steps = args.epochs * steps_per_epoch
    print(f"q2 {args.model} ({args.split} split): {count_parameters(r.model):,} parameters, "
          f"{r.device}, {r.precision}, data: {r.source.label}\n  splits: {r.split_counts}")
    for epoch in range(r.start_epoch, args.epochs):
        if r.history and epoch - max(h["epoch"] for h in r.history
                                     if h["score"] == r.best) >= args.patience:
            print(f"early stop: no validation gain for {args.patience} epochs")
            break
        r.model.train()
        bar = progress(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}",
                       unit="batch")
        t_epoch, loss_sum = time.time(), torch.zeros((), device=r.device)
        for step in bar:
            for group in r.opt.param_groups:
                group["lr"] = args.lr * warmup_cosine(epoch * steps_per_epoch + step, total_steps,
                                                      steps_per_epoch // 2)
            loss = train_step(r, chunks, length)
            loss_sum += loss
            if step % 20 == 0:  # .item() waits for the GPU, so only now and then
                rate = (step + 1) * chunks * length / (time.time() - t_epoch)
                bar.set_postfix(loss=f"{loss.item():.4f}", beats_s=f"{rate:.0f}")
            if args.dry_run:
                print(f"dry run: one batch, loss {loss.item():.4f}")
                return {}
        epoch_s = time.time() - t_epoch
        row = {"epoch": epoch + 1, "lr": r.opt.param_groups[0]["lr"],
               "train_loss": (loss_sum / steps_per_epoch).item(), "epoch_s": epoch_s,
               "beats_per_s": steps_per_epoch * chunks * length / epoch_s, **validate(r)}
        row["elapsed_s"] = (r.history[-1]["elapsed_s"] if r.history else 0) + time.time() - t_epoch
        r.history.append(row)
        if row["score"] > r.best:
            r.best = row["score"]
            torch_save(r.out / "best.pt", {"model_args": r.model_args, "epoch": epoch + 1,
                                           "ema": r.ema.state_dict(), "config": vars(args)})
        print(" | ".join(f"{k} {v:.4g}" for k, v in row.items()))
        write_csv(r.out / "history.csv", r.history)
        save(r, args, epoch + 1)
    best_epoch = max(h["epoch"] for h in r.history if h["score"] == r.best)
    summary = {**provenance(r.source, r.device, args.seed), "model": args.model,
               "split": args.split, "parameters": count_parameters(r.model),
               "model_args": r.model_args, "precision": r.precision, "config": vars(args),
               "split_counts": r.split_counts,
               "class_weights": None if r.weights is None else r.weights.tolist(),
               "epochs_run": len(r.history), "best_epoch": best_epoch,
               "wall_time_s": r.history[-1]["elapsed_s"],
               "beats_per_s": float(np.mean([h["beats_per_s"] for h in r.history]))}
    write_json(r.out / "summary.json", summary)
    return summary


if __name__ == "__main__":
    cli.run_main(lambda: train(parse_args()))
