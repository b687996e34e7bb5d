"""Train one Q2 run (model x fold x seed) on device-resident beats; write its held-out predictions.

    python -m q2_ecg.train --data ../shared/data/ecg --model resnet --split kfold --fold 0
    python -m q2_ecg.train --data ../shared/data/ecg --model context --split lodo --fold mitdb

Every beat's window is gathered from one signal tensor on the device, so a batch is an index
draw. Early stopping on the inner-validation selection score (the mean over databases of the
mean F1 of SVEB and VEB: metrics.SelectionScore); the best epoch's EMA weights are kept. The
split comes from the split file (q2_ecg.splits), written once per scheme and seed. Writes
results/q2/<source>/<run>/: split.json, checkpoint.pt, best.pt, history.csv, summary.json and
predictions.npz (inner-validation and test beats; q2_ecg.eval reads it).

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
from q2_ecg import splits
from q2_ecg.beats import RR_SETS, build_table, table_to_device
from q2_ecg.data import load_records, resolve_source
from q2_ecg.metrics import SelectionScore, confusion, summary_from_confusion
from q2_ecg.model import MODELS, build_model, model_args
from q2_ecg.predict import inputs, predict, predict_and_adapt, record_bounds
from q2_ecg.prediction_file import save_predictions

LODO_FOLDS = [db.removesuffix("_npy") for db in splits.DATABASES]
OUTPUTS = ("summary.json", "predictions.npz", "best.pt", "checkpoint.pt", "history.csv")
MONITORED = ("abnormal_macro_f1", "macro_f1", "NOR_f1", "SVEB_f1", "VEB_f1", "normal_f1",
             "abnormal_f1", "abnormal_se", "abnormal_ppv")
BATCH = {"cpu": 512, "cuda": 4096}     # --batch-beats auto, per device
PER_EPOCH = 30_000                       # --beats-per-epoch auto under --budget cpu
BUDGETS = ("cpu", "full")                # --budget auto: full on CUDA, cpu on the CPU
BASE_LR = 2e-3                         # --lr auto at the CPU batch


def parse_args(argv=None, kind: str | None = None):
    """The run's flags, with the per-device defaults resolved for `kind` ("cpu" | "cuda";
    default: the device --device selects)."""
    p = cli.parser(__doc__.splitlines()[0])
    cli.add_run_args(p)
    p.add_argument("--model", choices=sorted(MODELS), default="resnet")
    p.add_argument("--split", choices=splits.SCHEMES, default="kfold",
                   help="kfold | lodo (leave one database out) | beat (leaky)")
    p.add_argument("--folds", type=cli.count, default=5, help="K of the k-fold scheme")
    p.add_argument("--fold", default=None,
                   help="kfold: 0..K-1; lodo: " + " | ".join(LODO_FOLDS))
    p.add_argument("--name", type=cli.name, default=None,
                   help="extra word in the run folder (ablations)")
    p.add_argument("--epochs", type=cli.count, default=8, help="at most; early stopping may end sooner")
    p.add_argument("--budget", choices=("auto",) + BUDGETS, default="auto",
                   help=f"cpu: epochs of {PER_EPOCH:,} beats (sized so make q2 fits 2 CPU "
                        "cores); full: epochs of one pass over the training beats; auto: full "
                        "on CUDA, cpu on the CPU")
    p.add_argument("--beats-per-epoch", type=cli.auto_or(cli.count), default="auto",
                   help="training beats per epoch; auto: as --budget says")
    p.add_argument("--batch-beats", type=cli.auto_or(cli.count), default="auto",
                   help="beats per batch (the context model gets batch-beats / L chunks); "
                        f"auto: {BATCH['cpu']} on the CPU, {BATCH['cuda']} on CUDA")
    p.add_argument("--lr", type=cli.auto_or(cli.positive), default="auto",
                   help=f"peak AdamW learning rate; auto: {BASE_LR:g}, scaled by "
                        f"sqrt(batch / {BATCH['cpu']}) when --batch-beats is auto (CUDA: "
                        f"{BASE_LR * (BATCH['cuda'] / BATCH['cpu']) ** 0.5:.2g}); an explicit "
                        f"--batch-beats keeps {BASE_LR:g}")
    p.add_argument("--weight-decay", type=cli.non_negative, default=1e-3)
    p.add_argument("--class-weight-power", type=cli.non_negative, default=0.5,
                   help="the loss weighs each class by frequency ** -power (1: fully balanced)")
    p.add_argument("--patience", type=cli.count, default=3, help="epochs without validation gain")
    p.add_argument("--ema-decay", type=cli.fraction, default=0.995)
    p.add_argument("--channels", type=cli.count, nargs=3, default=None, help="ResNet stage widths")
    p.add_argument("--rr-set", choices=sorted(RR_SETS), default=None,
                   help="RR features the model reads (q2_ecg.beats.RR_SETS; default: the "
                        "model's own)")
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
    if args.split == "beat" and args.fold is not None:
        p.error("--split beat has a single fold: drop --fold")
    if args.split == "kfold" and args.folds < 2:
        p.error("--folds must be at least 2")
    resolve_device_defaults(args, kind or device_type(args.device))
    length = MODELS[args.model].context
    if args.batch_beats < length:
        p.error(f"--batch-beats {args.batch_beats}: the {args.model} model reads chunks of "
                f"{length} beats, so a batch needs at least {length}")
    return args


def resolve_device_defaults(args, kind: str) -> None:
    """Replace the auto batch, learning rate, budget and compile by their values on `kind`.
    Under the full budget the beats per epoch stay "auto" until the data is read (one pass)."""
    args.batch_beats, args.lr = device_batch(args.batch_beats, args.lr, kind, BATCH["cpu"],
                                             BATCH["cuda"], BASE_LR)
    if args.budget == "auto":
        args.budget = "full" if kind == "cuda" else "cpu"
    if args.beats_per_epoch == "auto" and args.budget == "cpu":
        args.beats_per_epoch = PER_EPOCH
    args.compile = compile_enabled(args.compile, kind)


def fold_name(args) -> str:
    if args.split == "kfold":
        return f"fold{args.fold}"
    return args.fold or args.split


def run_folder_name(args) -> str:
    scheme = f"kfold{args.folds}" if args.split == "kfold" else args.split
    fold = None if args.split == "beat" else fold_name(args)
    return run_name(args.model, args.name, scheme, fold, f"seed{args.seed}")


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
    train = r.table.scored & (r.roles == "train")
    if args.beats_per_epoch == "auto":                           # --budget full: one pass
        args.beats_per_epoch = int(train.sum())
    r.config = {**vars(args), "data_tag": r.source.tag, "split_id": r.split_id}
    r.dev = table_to_device(r.table, r.device)
    r.model_args = model_args(args.model, rr_set=args.rr_set,
                              channels=tuple(args.channels) if args.channels else None)
    r.model = build_model(**r.model_args).to(r.device)
    r.trainable = torch.from_numpy(train).to(r.device)           # beats that carry a loss
    r.model.fit_rr(r.dev["rr"][r.trainable])
    length = r.model.cfg.context
    first, last = record_bounds(r.table.record)
    starts = np.flatnonzero(train) if length == 1 else np.unique(np.maximum(
        np.minimum(np.flatnonzero(train) - length // 2, last[train] - length + 1), first[train]))
    as_device = lambda a: torch.as_tensor(a, dtype=torch.int64, device=r.device)  # noqa: E731
    r.starts, r.chunk_last = as_device(starts), as_device(last[starts])   # (C,) chunk bounds
    r.offsets = torch.arange(length, device=r.device)
    r.val_beats = np.flatnonzero(r.table.scored & (r.roles == "val"))
    if args.max_monitor_beats and len(r.val_beats) > args.max_monitor_beats:
        r.val_beats = np.sort(np.random.default_rng(0).choice(r.val_beats, args.max_monitor_beats,
                                                              replace=False))
    if not len(r.val_beats):
        raise cli.DataError(f"fold {r.fold} has no inner-validation beats: too few records")
    db = r.records.source_db[r.table.record]
    r.selection = SelectionScore(r.table.label[r.val_beats], db[r.val_beats],
                                 np.unique(db[train]))
    if len(r.val_beats) and r.selection.reason:
        print(f"notice: {r.selection.reason}")
    r.loss_weight = class_weights(r.table.label[train], args.class_weight_power).to(r.device)
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


def train_step(r, chunks: int, length: int) -> torch.Tensor:
    """One optimiser step on `chunks` random chunks of `length` beats -> the detached loss.

    Everything is drawn on the device (no host synchronisation): the chunks, and the
    augmentation of the beat channel, shifted by up to 3 samples (inside its record), scaled by
    0.8..1.2 and given white noise of up to 0.05 (in units of the record's R amplitude).
    """
    g = r.dgen
    pick = torch.randint(0, len(r.starts), (chunks,), generator=g, device=r.device)
    idx = torch.minimum(r.starts[pick, None] + r.offsets, r.chunk_last[pick, None])  # (B, L)
    shift = torch.randint(-3, 4, idx.shape, generator=g, device=r.device)
    gain = 0.8 + 0.4 * torch.rand(*idx.shape, 1, generator=g, device=r.device)
    waves, rr = inputs(r.dev, idx, r.model.cfg, shift)
    noise = 0.05 * torch.rand(*idx.shape, 1, generator=g, device=r.device)
    beat = waves[..., 0, :] * gain + noise * torch.randn(waves[..., 0, :].shape, generator=g,
                                                         device=r.device)
    waves = torch.cat([beat[..., None, :], waves[..., 1:, :]], dim=-2)
    with r.amp():
        out = r.step_model(waves, rr).float()
    loss = beat_loss(out, r.dev["label"][idx], r.trainable[idx], r.loss_weight)
    optimiser_step(loss, r.model, r.opt, r.scaler, r.ema)
    return loss.detach()


def beat_loss(out: torch.Tensor, label: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor
              ) -> torch.Tensor:
    """Class-weighted cross-entropy over the beats of a batch that carry a loss.

    out: (B, L, 3) logits; label, mask: (B, L). The masked beats (context neighbours from
    inner-validation records, UNK, out-of-range segments) are weighted 0 through ignore_index
    rather than removed by boolean indexing, which would make CUDA wait for the host to learn
    how many beats the mask keeps.
    """
    return F.cross_entropy(out.flatten(0, 1), torch.where(mask, label, -100).flatten(),
                           weight=weight, ignore_index=-100)


def validate(r) -> dict:
    """Inner-validation metrics of the EMA weights: pooled, per database, and the selection
    score (metrics.SelectionScore) that early stopping and the best checkpoint follow."""
    pred = predict(r.ema.shadow, r.dev, r.val_beats, r.table.record, r.device).argmax(1)
    s = summary_from_confusion(confusion(r.table.label[r.val_beats], pred))
    per_db = {f"val_{d.removesuffix('_npy')}_{k}": v
              for d, m in r.selection.per_database(pred).items()
              for k, v in m.items() if k.endswith("f1")}
    return {**{f"val_{k}": float(s[k]) for k in MONITORED}, **per_db,
            "score": r.selection(pred)}


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
            if r.history and epoch - best_epoch >= args.patience:
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
            if not torch.isfinite(loss_sum):    # checked before anything of this epoch is saved
                raise cli.DataError(f"training diverged (non-finite loss) in epoch {epoch + 1}; "
                                    f"{r.out} keeps the last good checkpoint")
            row = {"epoch": epoch + 1, "lr": r.opt.param_groups[0]["lr"],
                   "beats_seen": (epoch + 1) * steps_per_epoch * chunks * length,
                   "train_loss": (loss_sum / steps_per_epoch).item(), "epoch_s": epoch_s,
                   "beats_per_s": steps_per_epoch * chunks * length / epoch_s, **validate(r)}
            row["elapsed_s"] = (r.history[-1]["elapsed_s"] if r.history else 0) + time.time() - t_epoch
            r.history.append(row)
            if row["score"] > r.best:
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
                   "epochs_run": len(r.history),
                   "best_epoch": best_epoch, "wall_time_s": r.history[-1]["elapsed_s"],
                   "beats_per_s": float(np.mean([h["beats_per_s"] for h in r.history]))}
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
    cli.run_main(lambda: train(parse_args()))
