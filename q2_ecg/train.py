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
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from common import cli, loop, runtime
from common.checkpoint import load_weights
from common.loop import Trainer, trainer
from common.progress import progress
from common.results import count_parameters, provenance, results_dir
from common.runs import run_name
from common.schedule import set_lr
from q2_ecg import splits
from q2_ecg.beats import RR_SETS, BeatTable, build_table, table_to_device
from q2_ecg.classify import inputs, predict, predict_and_adapt, record_bounds
from q2_ecg.data import ECGRecords, load_records, resolve_source
from q2_ecg.metrics import SelectionScore, confusion, summary_from_confusion
from q2_ecg.model import MODELS, build_model, model_args
from q2_ecg.prediction_file import save_predictions

LODO_FOLDS = [db.removesuffix("_npy") for db in splits.DATABASES]
MONITORED = ("abnormal_macro_f1", "macro_f1", "NOR_f1", "SVEB_f1", "VEB_f1", "normal_f1",
             "abnormal_f1", "abnormal_se", "abnormal_ppv")
BATCH = {"cpu": 512, "cuda": 4096}     # --batch-beats auto, per device
MIN_MONITOR_BEATS = 100
PER_EPOCH = 30_000                       # --beats-per-epoch auto under --budget cpu
BYTES_PER_BEAT = 400_000                 # training memory per beat of a batch at channels 32-64-128
#                                          (measured: 0.35 MB in fp32, both models)
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
                   help=f"score at most this many validation beats per epoch (quick runs; at "
                        f"least {MIN_MONITOR_BEATS})")
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
    if args.max_monitor_beats is not None and args.max_monitor_beats < MIN_MONITOR_BEATS:
        p.error(f"--max-monitor-beats {args.max_monitor_beats}: fewer than {MIN_MONITOR_BEATS} "
                "inner-validation beats cannot choose an epoch")
    resolve_device_defaults(args, kind or runtime.device_type(args.device))
    length = MODELS[args.model].context
    if args.batch_beats < length:
        p.error(f"--batch-beats {args.batch_beats}: the {args.model} model reads chunks of "
                f"{length} beats, so a batch needs at least {length}")
    return args


def resolve_device_defaults(args, kind: str) -> None:
    """Replace the auto batch, learning rate, budget and compile by their values on `kind`.
    Under the full budget the beats per epoch stay "auto" until the data is read (one pass)."""
    args.batch_beats, args.lr = runtime.device_batch(args.batch_beats, args.lr, kind, BATCH["cpu"],
                                             BATCH["cuda"], BASE_LR)
    if args.budget == "auto":
        args.budget = "full" if kind == "cuda" else "cpu"
    if args.beats_per_epoch == "auto" and args.budget == "cpu":
        args.beats_per_epoch = PER_EPOCH
    args.compile = runtime.compile_enabled(args.compile, kind)


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


@dataclass
class Setup(Trainer):
    """What the loop reads: the training objects (common.loop.Trainer) and the beats."""
    records: ECGRecords
    table: BeatTable     # every annotated beat of the source
    dev: dict            # the beat table as device tensors (beats.table_to_device)
    roles: np.ndarray    # (B,) "train" / "val" / "test" of every beat
    trainable: torch.Tensor  # (B,) bool on the device: beats that carry a loss
    starts: torch.Tensor     # (C,) first beat of each training chunk (on the device)
    chunk_last: torch.Tensor  # (C,) last beat of each chunk's record
    offsets: torch.Tensor    # (L,) 0..L-1
    loss_weight: torch.Tensor  # (3,) class weights
    val_beats: np.ndarray    # inner-validation beats scored after each epoch
    selection: SelectionScore  # the score early stopping and best.pt follow


def setup(args) -> Setup:
    runtime.configure_threads()
    gen, device = runtime.seed_everything(args.seed), runtime.select_device(args.device)
    source = resolve_source(args.data)
    root = results_dir("q2", source, args.results_root)
    records = load_records(source)
    table = build_table(records)
    split, split_file, persons = splits.open_split(root, source.tag, records, table, args.split,
                                                   args.folds, args.seed)
    fold = fold_name(args)
    if fold not in split["folds"]:
        raise cli.DataError(f"--fold {fold}: {source.label} has no such fold; its "
                            f"{args.split} folds: {' | '.join(split['folds'])}")
    roles = splits.beat_role_array(split, fold, records, table)
    splits.check_split(persons[table.record], roles, table.label, table.scored,
                       record_level=args.split != "beat")
    entry = splits.run_entry(split, split_file, fold, records, table)
    train = table.scored & (roles == "train")
    if args.beats_per_epoch == "auto":                           # --budget full: one pass
        args.beats_per_epoch = int(train.sum())
    config = {**vars(args), "data_tag": source.tag, "split_id": entry["split_id"]}
    width = (args.channels or MODELS[args.model].channels)[0]
    runtime.check_memory(args.batch_beats * BYTES_PER_BEAT * width // 32 + table.signal.nbytes,
                         device, f"training at --batch-beats {args.batch_beats} and width {width}")
    dev = table_to_device(table, device)
    margs = model_args(args.model, rr_set=args.rr_set,
                       channels=tuple(args.channels) if args.channels else None)
    model = build_model(**margs).to(device)
    trainable = torch.from_numpy(train).to(device)
    model.fit_rr(dev["rr"][trainable])
    length = model.cfg.context
    first, last = record_bounds(table.record)
    starts = np.flatnonzero(train) if length == 1 else np.unique(np.maximum(
        np.minimum(np.flatnonzero(train) - length // 2, last[train] - length + 1), first[train]))
    as_device = lambda a: torch.as_tensor(a, dtype=torch.int64, device=device)  # noqa: E731
    val_beats = np.flatnonzero(table.scored & (roles == "val"))
    if args.max_monitor_beats and len(val_beats) > args.max_monitor_beats:
        val_beats = np.sort(np.random.default_rng(0).choice(val_beats, args.max_monitor_beats,
                                                            replace=False))
    if not len(val_beats):
        raise cli.DataError(f"fold {fold} has no inner-validation beats: too few records")
    db = records.source_db[table.record]
    selection = SelectionScore(table.label[val_beats], db[val_beats], np.unique(db[train]))
    if selection.reason:
        print(f"notice: {selection.reason}")
    meta = {**provenance(source, device, args.seed), "model": args.model, "split": args.split,
            "fold": fold, "split_id": entry["split_id"], "data_label": source.label,
            "data_tag": source.tag, "split_counts": splits.describe(records, table, roles)}
    return Setup(**trainer(root / run_folder_name(args), model, margs, args, config, device, gen,
                           entry, meta),
                 records=records, table=table, dev=dev, roles=roles, trainable=trainable,
                 starts=as_device(starts), chunk_last=as_device(last[starts]),
                 offsets=torch.arange(length, device=device),
                 loss_weight=class_weights(table.label[train],
                                           args.class_weight_power).to(device),
                 val_beats=val_beats, selection=selection)


def train_step(s: Setup, chunks: int) -> torch.Tensor:
    """One optimiser step on `chunks` random chunks of L beats -> the detached loss.

    Everything is drawn on the device (no host synchronisation): the chunks, and the
    augmentation of the beat channel, shifted by up to 3 samples (inside its record), scaled by
    0.8..1.2 and given white noise of up to 0.05 (in units of the record's R amplitude).
    """
    g, d = s.device_gen, s.device
    pick = torch.randint(0, len(s.starts), (chunks,), generator=g, device=d)
    idx = torch.minimum(s.starts[pick, None] + s.offsets, s.chunk_last[pick, None])  # (B, L)
    shift = torch.randint(-3, 4, idx.shape, generator=g, device=d)
    gain = 0.8 + 0.4 * torch.rand(*idx.shape, 1, generator=g, device=d)
    waves, rr = inputs(s.dev, idx, s.model.cfg, shift)        # (B, L, 2, W), (B, L, F)
    noise = 0.05 * torch.rand(*idx.shape, 1, generator=g, device=d)
    beat = waves[..., 0, :] * gain + noise * torch.randn(waves[..., 0, :].shape, generator=g,
                                                         device=d)
    waves = torch.cat([beat[..., None, :], waves[..., 1:, :]], dim=-2)
    with s.amp():
        out = s.step_model(waves, rr).float()                  # (B, L, 3)
    loss = beat_loss(out, s.dev["label"][idx], s.trainable[idx], s.loss_weight)
    runtime.optimiser_step(loss, s.model, s.opt, s.scaler, s.ema)
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


def validate(s: Setup) -> dict:
    """Inner-validation metrics of the EMA weights: pooled, per database, and the selection
    score (metrics.SelectionScore) that early stopping and the best checkpoint follow."""
    pred = predict(s.ema.shadow, s.dev, s.val_beats, s.table.record, s.device).argmax(1)
    m = summary_from_confusion(confusion(s.table.label[s.val_beats], pred))
    per_db = {f"val_{d.removesuffix('_npy')}_{k}": v
              for d, scores in s.selection.per_database(pred).items()
              for k, v in scores.items() if k.endswith("f1")}
    return {**{f"val_{k}": float(m[k]) for k in MONITORED}, **per_db,
            "score": s.selection(pred)}


def train(args) -> dict:
    if done := loop.finished_run(args, "q2", resolve_source(args.data), splits.split_path,
                                 fold_name(args), run_folder_name(args), "beats_per_epoch"):
        return done          # --resume on a finished run: read back, nothing trained
    s = setup(args)
    length = s.model.cfg.context
    chunks = max(1, args.batch_beats // length)
    steps = max(1, args.beats_per_epoch // (chunks * length))
    total = args.epochs * steps
    print(f"q2 {args.model} ({args.split} {s.meta['fold']}, seed {args.seed}): "
          f"{count_parameters(s.model):,} parameters, {s.device}, {s.precision}, batch "
          f"{chunks * length} beats, lr {args.lr:.3g}{', compiled' if args.compile else ''}, "
          f"data: {s.meta['data_label']}\n  records/beats: {s.meta['split_counts']}")
    if args.dry_run:
        print(f"dry run: one batch, loss {train_step(s, chunks).item():.4f}")
        return {}
    with s.book.running(s.split_entry):
        for epoch in s.book.epochs(args.epochs):
            s.model.train()
            t0, loss_sum = time.time(), torch.zeros((), device=s.device)
            for step in progress(range(steps), desc=f"epoch {epoch + 1}/{args.epochs}"):
                set_lr(s.opt, args.lr, epoch * steps + step, total, steps // 2)
                loss_sum += train_step(s, chunks)
            train_loss = s.book.epoch_loss(loss_sum, steps, epoch)
            epoch_s = time.time() - t0
            row = {"epoch": epoch + 1, "lr": s.opt.param_groups[0]["lr"],
                   "beats_seen": (epoch + 1) * steps * chunks * length, "train_loss": train_loss,
                   "epoch_s": epoch_s, "beats_per_s": steps * chunks * length / epoch_s,
                   **validate(s)}
            s.end_epoch(row, t0)
        return s.finish({"beats_per_s": float(np.mean([h["beats_per_s"]
                                                        for h in s.book.history]))},
                        lambda: write_predictions(s))


def write_predictions(s: Setup):
    """predictions.npz: the best weights' outputs on the inner-validation and test beats."""
    best = build_model(**s.model_args).to(s.device)
    best.load_state_dict(load_weights(s.out / "best.pt", s.device)["ema"]["shadow"])
    beats = np.flatnonzero(s.table.scored & np.isin(s.roles, ("val", "test")))
    out, adapted = predict_and_adapt(best, s.dev, beats, s.table, s.device)
    return save_predictions(s.out / "predictions.npz", s.records, s.table, beats, s.roles[beats],
                            out, model=s.meta["model"], split_id=s.meta["split_id"],
                            data_tag=s.meta["data_tag"], adapted=adapted)


if __name__ == "__main__":
    cli.run_main(lambda: train(parse_args()))
