"""Train one Q1 run (model x fold x seed) on device-resident slices; write its test predictions.

    python -m q1_mri.train --data ../shared/data/mri --model unet --split kfold --folds 4 --fold 0
    python -m q1_mri.train --data hub --model unet25d --split official
    python -m q1_mri.train --data ../shared/data/mri --split all --from-cv    # the final model

Every slice of the source (train and validation splits pooled) is one tensor on the device;
batches are drawn by index and augmented there, so no per-slice Python runs inside the loop.
The split comes from the split file (q1_mri.splits), written once per scheme and seed. The
schedule is fixed (--epochs x --slices-per-epoch, warm-up then cosine decay) and the final EMA
weights are the run's model: nothing is chosen on the test patients. Writes
results/q1/<source>/<run>/: split.json, checkpoint.pt (every epoch, atomically), history.csv,
summary.json and predictions.npz (the test patients' slices; q1_mri.eval reads it).

Default schedule: 16 epochs of 1,280 slices (640 steps of 32). On the local data the
validation curves of 40-epoch runs had flattened by epoch 12-20 (of 2,530 slices each); 16 x
1,280 = 20k slices is a U-Net run of about 12 min in fp32 on 2 CPU cores (~28 slices/s), so
the 4-fold protocol for two models fits in 2 hours there, minutes on a GPU. On CUDA the
defaults use the device: batches of 256 (the learning rate scaled by sqrt(256 / 32)), the model
torch.compiled, fused AdamW, bf16 autocast and augmentation drawn on the device; the CPU
defaults are unchanged. The resolved batch size, learning rate and compile go into config.json.
"""
from __future__ import annotations

import contextlib
import time
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from common import cli
from common.checkpoint import load_checkpoint, restore, save_checkpoint
from common.ema import ModelEMA
from common.io import write_csv, write_json
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
from q1_mri import splits
from q1_mri.data import DATA_RANGE, SCALE, load_mri, pool, resolve_source, to_device
from q1_mri.metrics import all_metrics, ssim
from q1_mri.model import MODELS, PatchDiscriminator, build_model, model_args
from q1_mri.neighbours import neighbour_rows
from q1_mri.predict import lr_flippable, model_input, predict, predict_with_flip
from q1_mri.prediction_file import save_predictions

ADV_DEFAULT = {"unet": 0.0, "unet25d": 0.0, "transunet": 0.01}
MONITORED = ("masked_ssim", "masked_psnr", "masked_mae", "ssim", "psnr")
MONITOR_SETS = ("train", "heldout")   # a fixed subset of training slices, and of test slices
BATCH = {"cpu": 32, "cuda": 256}       # --batch-size auto, per device
PER_EPOCH = 1280                       # --slices-per-epoch auto at the CPU batch
BASE_LR = 1e-3                         # --lr auto at the CPU batch


def parse_args(argv=None, kind: str | None = None):
    """The run's flags, with the per-device defaults resolved for `kind` ("cpu" | "cuda";
    default: the device --device selects)."""
    p = cli.parser(__doc__.splitlines()[0])
    cli.add_run_args(p)
    p.add_argument("--model", choices=sorted(MODELS), default="unet",
                   help="unet: 2-D U-Net; unet25d: the same with the slice and its two "
                        "neighbours as input (2.5-D); transunet: transformer bottleneck")
    p.add_argument("--split", choices=splits.SCHEMES, default="kfold",
                   help="kfold: patient-grouped K folds over every patient; official: the "
                        "source's validation split is the test set; all: the final model")
    p.add_argument("--folds", type=cli.count, default=4, help="K of the k-fold scheme")
    p.add_argument("--fold", type=cli.natural, default=None, help="kfold: 0..K-1")
    p.add_argument("--name", default=None, help="extra word in the run folder (ablations)")
    p.add_argument("--from-cv", action="store_true",
                   help="--split all: take the model and its schedule from the "
                        "cross-validation's metrics.json (final_choice)")
    p.add_argument("--epochs", type=cli.count, default=16)
    p.add_argument("--slices-per-epoch", type=cli.auto_or(cli.count), default="auto",
                   help=f"training slices drawn (without replacement) per epoch, at most all; "
                        f"auto: {PER_EPOCH} at the CPU batch, scaled with --batch-size so an "
                        "epoch keeps its number of optimiser steps")
    p.add_argument("--batch-size", type=cli.auto_or(cli.count), default="auto",
                   help=f"auto: {BATCH['cpu']} on the CPU, {BATCH['cuda']} on CUDA")
    p.add_argument("--lr", type=cli.auto_or(cli.positive), default="auto",
                   help=f"peak AdamW learning rate; auto: {BASE_LR:g}, scaled by "
                        f"sqrt(batch / {BATCH['cpu']}) when --batch-size is auto (CUDA: "
                        f"{BASE_LR * (BATCH['cuda'] / BATCH['cpu']) ** 0.5:.2g}); an explicit "
                        f"--batch-size keeps {BASE_LR:g}")
    p.add_argument("--weight-decay", type=cli.non_negative, default=1e-4)
    p.add_argument("--warmup-epochs", type=cli.non_negative, default=1.0)
    p.add_argument("--ema-decay", type=cli.fraction, default=0.995,
                   help="EMA of the weights (window ~1/(1-decay) = 200 of the 640 steps)")
    p.add_argument("--ssim-weight", type=cli.non_negative, default=1.0,
                   help="loss = L1 + w * (1 - SSIM)")
    p.add_argument("--adv-weight", type=cli.non_negative, default=None,
                   help="weight of the PatchGAN term (default per model: "
                        + ", ".join(f"{k} {v}" for k, v in ADV_DEFAULT.items()) + ")")
    p.add_argument("--base-channels", type=cli.count, default=None,
                   help="override the model width")
    p.add_argument("--no-augment", action="store_true", help="disable flip/shift/gain jitter")
    p.add_argument("--precision", choices=["auto", "fp32"], default="auto",
                   help="auto: bf16 autocast on CUDA (fp16 + loss scaling on GPUs without "
                        "bf16), fp32 on the CPU")
    p.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto",
                   help="NHWC memory layout; auto = on for CPU (1.4x faster here), off for CUDA "
                        "(GroupNorm made it 10-20%% slower on an H200)")
    cli.add_compile_args(p)
    p.add_argument("--max-train-slices", type=cli.count, default=None,
                   help="train on a fixed random subset of the training slices (quick runs)")
    p.add_argument("--monitor-slices", type=cli.count, default=192,
                   help="training and held-out slices scored after each epoch for the curves")
    p.add_argument("--resume", action="store_true",
                   help="continue from checkpoint.pt (starts afresh if there is none)")
    p.add_argument("--dry-run", action="store_true", help="one batch, no files")
    args = p.parse_args(argv)
    if args.split == "kfold" and (args.fold is None or args.fold >= args.folds):
        p.error(f"--split kfold needs --fold 0..{args.folds - 1} (got {args.fold})")
    if args.split == "kfold" and args.folds < 2:
        p.error("--folds must be at least 2")
    if args.split != "kfold" and args.fold is not None:
        p.error(f"--split {args.split} has a single fold: drop --fold")
    if args.from_cv and args.split != "all":
        p.error("--from-cv goes with --split all")
    if args.adv_weight is None:
        args.adv_weight = ADV_DEFAULT[args.model]
    check_width(p, args.model, args.base_channels)
    resolve_device_defaults(args, kind or device_type(args.device))
    return args


def resolve_device_defaults(args, kind: str) -> None:
    """Replace the auto batch size, learning rate, slices per epoch and compile by their values
    on `kind`."""
    args.batch_size, args.lr = device_batch(args.batch_size, args.lr, kind, BATCH["cpu"],
                                            BATCH["cuda"], BASE_LR)
    if args.slices_per_epoch == "auto":     # the same optimiser steps per epoch on every device
        args.slices_per_epoch = PER_EPOCH * args.batch_size // BATCH["cpu"]
    args.compile = compile_enabled(args.compile, kind)


def check_width(p, model: str, base: int | None) -> None:
    """Refuse a --base-channels the model cannot build with, naming the nearest that build."""
    cfg = MODELS[model]

    def builds(b: int) -> bool:
        """Whether every GroupNorm (min(groups, width) groups over the width, doubled per
        level) and the attention heads over the bottleneck width divide their widths."""
        widths = [b * 2 ** i for i in range(cfg.levels)]
        return (all(w % min(cfg.groups, w) == 0 for w in widths)
                and not (cfg.transformer_layers and widths[-1] % cfg.heads))

    if base is not None and not builds(base):
        widths = ", ".join(str(base * 2 ** i) for i in range(cfg.levels))
        nearest = [next((b for b in range(base, 0, -1) if builds(b)), None),
                   next(b for b in range(base, base * cfg.groups * cfg.heads + 1) if builds(b))]
        heads = (f" and the bottleneck width by its {cfg.heads} attention heads"
                 if cfg.transformer_layers else "")
        p.error(f"--base-channels {base}: the {model}'s level widths {widths} must each "
                f"be divisible by its GroupNorm group count min({cfg.groups}, width){heads}; "
                f"nearest widths that build: {' or '.join(str(b) for b in nearest if b)}")


def fold_name(args) -> str:
    return f"fold{args.fold}" if args.split == "kfold" else args.split


def run_folder_name(args) -> str:
    scheme = f"kfold{args.folds}" if args.split == "kfold" else args.split
    fold = fold_name(args) if args.split == "kfold" else None
    return run_name(args.model, args.name, scheme, fold, f"seed{args.seed}")


def apply_cv_choice(args, root) -> dict:
    """--from-cv: the model and schedule the cross-validation chose (metrics.json)."""
    final = cv_choice(root, "q1")
    for key, value in final.items():       # the CV runs' settings (eval.TRAINING_KEYS)
        if hasattr(args, key) and key not in ("seed", "data", "split", "folds", "fold"):
            setattr(args, key, value)
    return final


def augment(x: torch.Tensor, t2: torch.Tensor, view: torch.Tensor, gen: torch.Generator,
            dgen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Paired, on-device augmentation of a batch: input (B, C, H, W), target (B, 1, H, W).

    A left-right mirror (rows, axis -2) with probability 1/2 on axial and coronal slices only
    (`view` (B,) index into VIEWS): a sagittal slice has no left-right axis in its plane, and
    mirroring it would turn the face backwards. The same shift (up to 4 px) for input and
    target, so the pair stays aligned; a +-10 % gain on the input only imitates the error of
    estimating the per-volume scale.

    The flips and gains come from `dgen` (a generator on x's device, so nothing is copied from
    the host; default `gen`, which the CPU runs use), the shift from the host generator `gen`
    (roll takes Python ints, and reading them from the device would wait for it).
    """
    b, g = x.shape[0], dgen if dgen is not None else gen
    flip = (torch.rand(b, generator=g, device=g.device) < 0.5).to(x.device) & lr_flippable(view)
    flip = flip[:, None, None, None]
    gain = (0.9 + 0.2 * torch.rand(b, generator=g, device=g.device)).to(x.device)
    gain = gain[:, None, None, None]
    dy, dx = torch.randint(-4, 5, (2,), generator=gen).tolist()
    pair = torch.cat([x, t2], dim=1)
    pair = torch.where(flip, pair.flip(-2), pair).roll((dy, dx), dims=(-2, -1))
    return (pair[:, :-1] * gain).clamp(0, 1), pair[:, -1:]


def generator_loss(t2, pred, args, disc, t1):
    """L1 + w * (1 - SSIM), plus the adversarial term when a discriminator is given."""
    loss = F.l1_loss(pred, t2) + args.ssim_weight * (1 - ssim(t2, pred).mean())
    if disc is not None:
        loss = loss + args.adv_weight * F.softplus(-disc(t1, pred)).mean()  # non-saturating GAN
    return loss


def discriminator_step(disc, opt_d, t1, t2, pred) -> None:
    """One critic update: real pairs -> 1, generated pairs -> 0 (logistic loss)."""
    loss = F.softplus(-disc(t1, t2)).mean() + F.softplus(disc(t1, pred.detach())).mean()
    opt_d.zero_grad(set_to_none=True)
    loss.backward()
    opt_d.step()


@torch.no_grad()
def monitor(model, data: dict, neighbours, rows: np.ndarray, device) -> dict[str, float]:
    """Mean of per-slice metrics (normalised units) of `model` on `rows`, for the curves."""
    pred = predict(model, data["t1"], neighbours, rows, device)
    idx = torch.as_tensor(rows)
    scores = all_metrics(data["t2"][idx].float().to(device), pred, data["mask"][idx].to(device),
                         DATA_RANGE)
    return {k: scores[k].mean().item() for k in MONITORED}


def setup(args) -> SimpleNamespace:
    """Everything the loop needs: device, data tensors, split, model, EMA, optimisers, state."""
    configure_threads()
    r = SimpleNamespace(gen=seed_everything(args.seed), device=select_device(args.device))
    r.source = resolve_source(args.data)
    root = results_dir("q1", r.source, args.results_root)
    r.final_choice = apply_cv_choice(args, root) if args.from_cv else None
    r.out = root / run_folder_name(args)
    r.slices = pool(load_mri(r.source))
    split, path = splits.open_split(root, r.source.tag, r.slices, args.split, args.folds,
                                    args.seed)
    r.fold = fold_name(args)
    r.roles = splits.slice_roles(split["folds"][r.fold], r.slices)
    r.split_entry = splits.run_entry(split, path, r.fold)
    r.split_id = r.split_entry["split_id"]
    r.split_counts = splits.describe(r.slices, r.roles)
    r.config = {**vars(args), "data_tag": r.source.tag, "split_id": r.split_id}
    r.data = to_device(r.slices, r.device)
    r.model_args = model_args(args.model, base_channels=args.base_channels)
    n = r.model_args["neighbours"]
    r.neighbours, r.neighbour_report = None, None
    if n:
        rows, r.neighbour_report = neighbour_rows(r.slices, n)
        r.neighbours = torch.from_numpy(rows).to(r.device)
    r.train_rows = np.flatnonzero(r.roles == "train")
    if args.max_train_slices and args.max_train_slices < len(r.train_rows):
        pick = torch.randperm(len(r.train_rows), generator=r.gen)[:args.max_train_slices]
        r.train_rows = np.sort(r.train_rows[pick.numpy()])
    r.test_rows = np.flatnonzero(r.roles == "test")
    fixed = np.random.default_rng(1)
    r.monitor = {s: np.sort(fixed.choice(rows, min(args.monitor_slices, len(rows)), replace=False))
                 for s, rows in zip(MONITOR_SETS, (r.train_rows, r.test_rows)) if len(rows)}
    r.model = build_model(**r.model_args).to(r.device)
    r.channels_last = args.channels_last == "on" or (args.channels_last == "auto"
                                                     and r.device.type == "cpu")
    if r.channels_last:
        r.model = r.model.to(memory_format=torch.channels_last)
    r.ema = ModelEMA(r.model, args.ema_decay)
    r.opt = adamw(r.model.parameters(), r.device, lr=args.lr, weight_decay=args.weight_decay)
    r.scaler = grad_scaler(r.device)
    r.disc = PatchDiscriminator().to(r.device) if args.adv_weight > 0 else None
    r.opt_d = adamw(r.disc.parameters(), r.device, lr=args.lr, betas=(0.5, 0.999)) if r.disc else None
    # augmentation flips and gains on CUDA come from a CUDA generator; the CPU keeps drawing
    # them from r.gen, so CPU runs draw the same numbers as ever
    r.dgen = device_generator(r.device, args.seed) if r.device.type == "cuda" else None
    r.start_epoch, r.history = 0, []
    if args.resume and not (r.out / "checkpoint.pt").exists():
        print(f"notice: nothing to resume in {r.out}; starting from scratch")
    elif args.resume:
        ck = load_checkpoint(r.out / "checkpoint.pt", r.device)
        check_resume(ck["config"], r.config, ck["epoch"], r.out)
        restore(ck, r.model, r.ema, r.opt, r.scaler)
        if r.disc:
            r.disc.load_state_dict(ck["disc"])
            r.opt_d.load_state_dict(ck["disc_optimizer"])
        set_rng_state(r.gen, ck["rng"], r.dgen)
        r.start_epoch, r.history = ck["epoch"], ck["history"]
    elif (r.out / "checkpoint.pt").exists() and not args.dry_run:
        print(f"notice: {r.out} holds an earlier run; it is replaced (use --resume to continue)")
    r.step_model = torch.compile(r.model) if args.compile else r.model
    r.amp, r.precision = precision(r.device, enabled=args.precision == "auto")
    return r


def save(r, args, epoch: int) -> None:
    extra = {"disc": r.disc.state_dict(), "disc_optimizer": r.opt_d.state_dict()} if r.disc else {}
    # best_metric: None, since no epoch is chosen (fixed schedule, final EMA weights kept)
    save_checkpoint(r.out / "checkpoint.pt", model=r.model.state_dict(), ema=r.ema.state_dict(),
                    optimizer=r.opt.state_dict(), scaler=r.scaler.state_dict(),
                    model_args=r.model_args, epoch=epoch, best_metric=None, config=r.config,
                    rng=rng_state(r.gen, r.dgen), history=r.history, **extra)


def diverged(loss: torch.Tensor, epoch: int, out) -> cli.DataError:
    return cli.DataError(f"training diverged (loss {loss.item()}) in epoch {epoch + 1}; {out} "
                         "keeps the last good checkpoint")


def batch(r, args, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Training slices `idx` (B,) on the device -> augmented input (B, C, 64, 64) and target
    (B, 1, 64, 64) float32, gathered from the device tensors without leaving the device."""
    x, t2 = model_input(r.data["t1"], r.neighbours, idx), r.data["t2"][idx].float()
    if not args.no_augment:
        x, t2 = augment(x, t2, r.data["view"][idx], r.gen, r.dgen)
    return x, t2


def train_step(r, args, x: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
    """One optimiser step on input x (B, C, H, W) and target t2 (B, 1, H, W) -> the detached
    loss, left on the device (no host synchronisation)."""
    if r.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with r.amp():
        pred = r.step_model(x).float()
    mid = r.model_args["neighbours"]                      # the input channel of the slice itself
    t1 = x[:, mid:mid + 1]
    if r.disc:
        discriminator_step(r.disc, r.opt_d, t1, t2, pred)
    with r.amp():
        loss = generator_loss(t2, pred, args, r.disc, t1)
    optimiser_step(loss, r.model, r.opt, r.scaler, r.ema)
    return loss.detach()


def train(args) -> dict:
    r = setup(args)
    n = len(r.train_rows)
    per_epoch = min(args.slices_per_epoch, n)
    steps_per_epoch = max(1, per_epoch // args.batch_size)
    total_steps, warmup = args.epochs * steps_per_epoch, int(args.warmup_epochs * steps_per_epoch)
    print(f"q1 {args.model} ({args.split} {r.fold}, seed {args.seed}): "
          f"{count_parameters(r.model):,} parameters, {r.device}, {r.precision}, batch "
          f"{args.batch_size}, lr {args.lr:.3g}{', compiled' if args.compile else ''}, "
          f"data: {r.source.label}\n  patients/slices: {r.split_counts}, "
          f"{steps_per_epoch * args.batch_size} of {n} training slices per epoch")
    with locked(r.out) if not args.dry_run else contextlib.nullcontext():  # a dry run writes nothing
        if not args.dry_run:
            write_json(r.out / "split.json", r.split_entry)
        for epoch in range(r.start_epoch, args.epochs):
            r.model.train()
            perm = torch.from_numpy(r.train_rows)[torch.randperm(n, generator=r.gen)]
            bar = progress(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}",
                           unit="batch")
            t_epoch, loss_sum = time.time(), torch.zeros((), device=r.device)
            for step in bar:
                for group in r.opt.param_groups:
                    group["lr"] = args.lr * warmup_cosine(epoch * steps_per_epoch + step,
                                                          total_steps, warmup)
                idx = perm[step * args.batch_size:(step + 1) * args.batch_size].to(r.device)
                loss = train_step(r, args, *batch(r, args, idx))
                loss_sum += loss                # summed on the device, read once per epoch
                if step % 20 == 0:  # .item() waits for the GPU, so only now and then
                    if not torch.isfinite(loss):
                        raise diverged(loss, epoch, r.out)
                    rate = (step + 1) * args.batch_size / (time.time() - t_epoch)
                    bar.set_postfix(loss=f"{loss.item():.4f}", slices_s=f"{rate:.0f}")
                if args.dry_run:
                    print(f"dry run: one batch, loss {loss.item():.4f}")
                    return {}
            if not torch.isfinite(loss_sum):   # a NaN between the checks: keep the old file
                raise diverged(loss_sum, epoch, r.out)
            epoch_s = time.time() - t_epoch
            row = {"epoch": epoch + 1, "lr": r.opt.param_groups[0]["lr"],
                   "train_loss": (loss_sum / steps_per_epoch).item(), "epoch_s": epoch_s,
                   "slices_per_s": steps_per_epoch * args.batch_size / epoch_s}
            for name, rows in r.monitor.items():
                scores = monitor(r.ema.shadow, r.data, r.neighbours, rows, r.device)
                row.update({f"{name}_{k}": v for k, v in scores.items()})
            row["elapsed_s"] = (r.history[-1]["elapsed_s"] if r.history else 0) + time.time() - t_epoch
            r.history.append(row)
            print(" | ".join(f"{k} {v:.4g}" for k, v in row.items()))
            write_csv(r.out / "history.csv", r.history)
            save(r, args, epoch + 1)
        summary = {**provenance(r.source, r.device, args.seed), "model": args.model,
                   "name": args.name, "split": args.split, "fold": r.fold,
                   "split_id": r.split_id, "parameters": count_parameters(r.model),
                   "model_args": r.model_args, "precision": r.precision, "config": r.config,
                   "split_counts": r.split_counts, "train_slices": n,
                   "slices_per_epoch": steps_per_epoch * args.batch_size,
                   "neighbours": r.neighbour_report, "epochs": len(r.history),
                   "wall_time_s": r.history[-1]["elapsed_s"],
                   "slices_per_s": float(np.mean([h["slices_per_s"] for h in r.history])),
                   "final": r.history[-1], "final_choice": r.final_choice}
        if len(r.test_rows):
            write_predictions(r)
        write_json(r.out / "summary.json", summary)
    return summary


def write_predictions(r) -> None:
    """predictions.npz: the final EMA weights' T2 for every test slice, plain and flip-averaged."""
    plain, flipped = predict_with_flip(r.ema.shadow, r.data, r.neighbours, r.test_rows, r.device)
    s = r.slices.select(r.test_rows)
    save_predictions(r.out / "predictions.npz", s.row, s.split, s.patient_id, s.view,
                     plain.cpu().numpy(), scale=SCALE, model=r.config["model"],
                     split_id=r.split_id, data_tag=r.source.tag,
                     t2_pred_flip=flipped.cpu().numpy())


if __name__ == "__main__":
    cli.run_main(lambda: train(parse_args()))
