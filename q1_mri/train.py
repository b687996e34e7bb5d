"""Train one Q1 run (model x fold x seed) on device-resident slices; write its predictions.

    python -m q1_mri.train --data ../shared/data/mri --model unet --fold 0
    python -m q1_mri.train --data hub --model unet25d --split official

Every slice of the source (train and validation splits pooled) is one tensor on the device;
batches are drawn by index and augmented there, so no per-slice Python runs inside the loop.
The split comes from the split file (q1_mri.splits): train, inner validation and test patients.
After every epoch the EMA weights are scored on the inner-validation patients (brain SSIM per
slice in metrics.SLICE_SCALE units, averaged per patient, then over patients); the best
epoch's weights are kept (best.pt) and predict the inner-validation and test slices
(predictions.npz, which q1_mri.eval reads). The test patients choose nothing.

Budgets (--budget): cpu, 8 epochs of half a pass over the training slices (sized so `make q1`
fits 2 CPU cores), the default on the CPU; full, 20 epochs of one pass, the default on CUDA.
On CUDA batches are 8x larger (the learning rate scaled by sqrt(8)), the model is
torch.compiled, AdamW fused, and augmentation drawn on the device. bf16 autocast runs on CUDA
and on CPUs with AMX-BF16 units (there it is 1.4-2.7x faster than fp32, measured).
Model recipes: our U-Nets train on L1 + (1 - SSIM) with augmentation, AdamW and a weight EMA;
the plain reference (--model plain) on L1 alone with Adam, batches of 64 and no augmentation.
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
from q1_mri import splits
from q1_mri.data import UNITS, Slices, load_mri, pool, resolve_source, to_device
from q1_mri.metrics import slice_scores, ssim
from q1_mri.model import MODELS, build_model, model_args
from q1_mri.neighbours import neighbour_rows
from q1_mri.prediction_file import save_predictions
from q1_mri.translate import lr_flippable, model_input, predict, predict_with_flip

BATCH = {"cpu": 32, "cuda": 256}       # --batch-size auto, per device (the plain U-Net: x2)
BASE_LR = 1e-3                         # --lr auto at the CPU batch
BUDGETS = {"cpu": (8, 0.5), "full": (20, 1.0)}   # epochs, passes over the training slices each
RECIPES = {   # what --model sets where a flag is left at auto
    "unet": {"ssim_weight": 1.0, "augment": True, "weight_decay": 1e-4, "ema_decay": 0.995,
             "batch_factor": 1},
    "plain": {"ssim_weight": 0.0, "augment": False, "weight_decay": 0.0, "ema_decay": 0.0,
              "batch_factor": 2},
}
RECIPES["unet25d"] = RECIPES["unet"]
MAX_SHIFT = 4                          # augmentation: pixels
BYTES_PER_SLICE_AND_CHANNEL = 600_000  # training memory per slice of a batch and unit of width
#                                        (measured: 11 MB a slice at width 32 in bf16; fp32 more)
TRAIN_MONITOR = 256                    # training slices scored after each epoch (over-fitting)


def parse_args(argv=None, kind: str | None = None):
    """The run's flags, with the per-device and per-model defaults resolved for `kind`
    ("cpu" | "cuda"; default: the device --device selects)."""
    p = cli.parser(__doc__.splitlines()[0])
    cli.add_run_args(p)
    p.add_argument("--model", choices=sorted(MODELS), default="unet",
                   help="unet: 2-D residual U-Net; unet25d: the same with the slice and its "
                        "two neighbours on each side as input (2.5-D); plain: the reference")
    p.add_argument("--split", choices=splits.SCHEMES, default="kfold",
                   help="kfold: patient-grouped K folds over every patient; official: the "
                        "source's validation split is the test set (the Hub)")
    p.add_argument("--folds", type=cli.count, default=5, help="K of the k-fold scheme")
    p.add_argument("--fold", type=cli.natural, default=None, help="kfold: 0..K-1")
    p.add_argument("--name", type=cli.name, default=None,
                   help="extra word in the run folder (ablations)")
    p.add_argument("--budget", choices=("auto", *BUDGETS), default="auto",
                   help="cpu: 8 epochs of half a pass; full: 20 epochs of a pass; auto: full "
                        "on CUDA, cpu on the CPU")
    p.add_argument("--epochs", type=cli.auto_or(cli.count), default="auto",
                   help="at most (early stopping on inner validation); auto: the budget's")
    p.add_argument("--slices-per-epoch", type=cli.auto_or(cli.count), default="auto",
                   help="training slices drawn (without replacement) per epoch; auto: the "
                        "budget's share of a pass")
    p.add_argument("--patience", type=cli.count, default=4,
                   help="epochs without an inner-validation gain before stopping")
    p.add_argument("--batch-size", type=cli.auto_or(cli.count), default="auto",
                   help=f"auto: {BATCH['cpu']} on the CPU, {BATCH['cuda']} on CUDA (x2 for plain)")
    p.add_argument("--lr", type=cli.auto_or(cli.positive), default="auto",
                   help=f"peak learning rate; auto: {BASE_LR:g}, scaled by sqrt(batch / "
                        f"{BATCH['cpu']}) when --batch-size is auto")
    p.add_argument("--weight-decay", type=cli.auto_or(cli.non_negative), default="auto")
    p.add_argument("--ema-decay", type=cli.auto_or(cli.fraction), default="auto",
                   help="EMA of the weights (0: none); auto: the model's recipe")
    p.add_argument("--ssim-weight", type=cli.auto_or(cli.non_negative), default="auto",
                   help="loss = L1 + w * (1 - SSIM); auto: the model's recipe")
    p.add_argument("--grad-weight", type=cli.non_negative, default=0.0,
                   help="+ w * L1 of the image gradients (sharper edges; Mathieu et al. 2016)")
    p.add_argument("--augment", choices=("auto", "on", "off"), default="auto",
                   help="flips, per-slice shifts with zero fill, input gain; auto: the recipe's")
    p.add_argument("--base-channels", type=cli.count, default=None,
                   help=f"model width (default {MODELS['unet'].base_channels})")
    p.add_argument("--precision", choices=["auto", "fp32"], default="auto",
                   help="auto: bf16 autocast on CUDA and on CPUs with AMX-BF16, else fp32")
    cli.add_compile_args(p)
    p.add_argument("--max-train-slices", type=cli.count, default=None,
                   help="train on a fixed random subset of the training slices (quick runs)")
    p.add_argument("--monitor-slices", type=cli.count, default=None,
                   help="score at most this many inner-validation slices per epoch (quick runs)")
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
    resolve_defaults(args, kind or runtime.device_type(args.device))
    return args


def resolve_defaults(args, kind: str) -> None:
    """Replace every "auto" by its value for the model's recipe on a device of `kind`; the
    slices per epoch stay "auto" until the data is read (the budget's share of a pass)."""
    recipe = RECIPES[args.model]
    f = recipe["batch_factor"]
    args.batch_size, args.lr = runtime.device_batch(args.batch_size, args.lr, kind, f * BATCH["cpu"],
                                            f * BATCH["cuda"], BASE_LR)
    if args.budget == "auto":
        args.budget = "full" if kind == "cuda" else "cpu"
    if args.epochs == "auto":
        args.epochs = BUDGETS[args.budget][0]
    for key in ("ssim_weight", "weight_decay", "ema_decay"):
        if getattr(args, key) == "auto":
            setattr(args, key, recipe[key])
    if args.augment == "auto":
        args.augment = "on" if recipe["augment"] else "off"
    args.compile = runtime.compile_enabled(args.compile, kind)


def fold_name(args) -> str:
    return f"fold{args.fold}" if args.split == "kfold" else args.split


def run_folder_name(args) -> str:
    scheme = f"kfold{args.folds}" if args.split == "kfold" else args.split
    return run_name(args.model, args.name, scheme,
                    fold_name(args) if args.split == "kfold" else None, f"seed{args.seed}")


def shift_images(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> each image moved by its own (dy[b], dx[b]) pixels (|d| <= MAX_SHIFT),
    zeros shifted in: the brain never wraps across the edge."""
    b, c, h, w = images.shape
    m = MAX_SHIFT
    padded = F.pad(images, (m, m, m, m))
    rows = torch.arange(h, device=images.device)[None] + m - dy[:, None]      # (B, H)
    cols = torch.arange(w, device=images.device)[None] + m - dx[:, None]      # (B, W)
    padded = torch.gather(padded, 2, rows[:, None, :, None].expand(b, c, h, w + 2 * m))
    return torch.gather(padded, 3, cols[:, None, None, :].expand(b, c, h, w))


def augment(x: torch.Tensor, t2: torch.Tensor, view: torch.Tensor, gen: torch.Generator
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Paired augmentation of a batch on its device: input (B, C, H, W), target (B, 1, H, W).

    Per slice: a left-right mirror (rows, axis -2) with probability 1/2 on axial and coronal
    slices only (`view` (B,) index into VIEWS; a sagittal slice has no left-right axis in its
    plane), the same shift of up to MAX_SHIFT pixels for input and target with zero fill, and
    a +-10 % gain on the input only (the error of estimating the per-volume scale). Every
    number comes from `gen`, a generator on the batch's device.
    """
    b, dev = x.shape[0], x.device
    flip = (torch.rand(b, generator=gen, device=dev) < 0.5) & lr_flippable(view)
    gain = 0.9 + 0.2 * torch.rand(b, 1, 1, 1, generator=gen, device=dev)
    dy, dx = torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (2, b), generator=gen, device=dev)
    pair = torch.cat([x, t2], dim=1)
    pair = shift_images(torch.where(flip[:, None, None, None], pair.flip(-2), pair), dy, dx)
    return (pair[:, :-1] * gain).clamp(0, 1), pair[:, -1:]


def image_gradient_l1(t2: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Mean |d/dy| + |d/dx| difference between prediction and truth (B, 1, H, W): penalises the
    blur a pixel loss tolerates."""
    dy = lambda a: a[..., 1:, :] - a[..., :-1, :]  # noqa: E731
    dx = lambda a: a[..., :, 1:] - a[..., :, :-1]  # noqa: E731
    return F.l1_loss(dy(pred), dy(t2)) + F.l1_loss(dx(pred), dx(t2))


def translation_loss(t2: torch.Tensor, pred: torch.Tensor, ssim_weight: float,
                     grad_weight: float) -> torch.Tensor:
    """L1 + ssim_weight (1 - SSIM) + grad_weight * image-gradient L1, on (B, 1, H, W)."""
    loss = F.l1_loss(pred, t2)
    if ssim_weight:
        loss = loss + ssim_weight * (1 - ssim(t2, pred).mean())
    if grad_weight:
        loss = loss + grad_weight * image_gradient_l1(t2, pred)
    return loss


@dataclass
class Setup(Trainer):
    """What the loop reads: the training objects (common.loop.Trainer) and the slices."""
    slices: Slices              # every slice of the source, raw
    data: dict                  # to_device(slices): t1, t2 (N, 1, 64, 64) float16, mask, view
    neighbours: torch.Tensor | None   # (N, 2n+1) rows of each slice's stack neighbours
    roles: np.ndarray           # (N,) "train" / "val" / "test"
    train_rows: torch.Tensor    # (n,) int64 on the device
    monitor_rows: dict          # {"val": rows, "train": rows} scored after each epoch


def setup(args) -> Setup:
    runtime.configure_threads()
    gen, device = runtime.seed_everything(args.seed), runtime.select_device(args.device)
    source = resolve_source(args.data)
    root = results_dir("q1", source, args.results_root)
    slices = pool(load_mri(source))
    split, path = splits.open_split(root, source.tag, slices, args.split, args.folds, args.seed)
    fold = fold_name(args)
    roles = splits.slice_roles(split["folds"][fold], slices)
    entry = splits.run_entry(split, path, fold)
    train_rows = np.flatnonzero(roles == "train")
    if args.max_train_slices and args.max_train_slices < len(train_rows):
        train_rows = np.sort(np.random.default_rng(args.seed).choice(
            train_rows, args.max_train_slices, replace=False))
    if args.slices_per_epoch == "auto":
        args.slices_per_epoch = max(args.batch_size,
                                    int(BUDGETS[args.budget][1] * len(train_rows)))
    fixed = np.random.default_rng(1)
    val_rows = np.flatnonzero(roles == "val")
    if args.monitor_slices and args.monitor_slices < len(val_rows):
        val_rows = np.sort(fixed.choice(val_rows, args.monitor_slices, replace=False))
    monitor_rows = {"val": val_rows, "train": np.sort(fixed.choice(
        train_rows, min(TRAIN_MONITOR, len(train_rows)), replace=False))}
    config = {**vars(args), "data_tag": source.tag, "split_id": entry["split_id"]}
    margs = model_args(args.model, base_channels=args.base_channels)
    runtime.check_memory(args.batch_size * margs["base_channels"] * BYTES_PER_SLICE_AND_CHANNEL
                         + len(slices) * 64 * 64 * 5, device,
                         f"training at --batch-size {args.batch_size} and width "
                         f"{margs['base_channels']} with {len(slices):,} slices on the device")
    neighbours, report = None, None
    if margs["neighbours"]:
        rows, report = neighbour_rows(slices, margs["neighbours"])
        neighbours = torch.from_numpy(rows).to(device)
    model = build_model(**margs).to(device)
    if device.type == "cpu":   # NHWC: 1.4x (fp32) to 2x (bf16) the slices/s of NCHW here
        model = model.to(memory_format=torch.channels_last)
    meta = {**provenance(source, device, args.seed), "model": args.model, "name": args.name,
            "split": args.split, "fold": fold, "split_id": entry["split_id"],
            "split_counts": splits.describe(slices, roles), "neighbours": report,
            "data_label": source.label, "data_tag": source.tag}
    return Setup(**trainer(root / run_folder_name(args), model, margs, args, config, device, gen,
                           entry, meta, cpu_bf16=True),
                 slices=slices, data=to_device(slices, device), neighbours=neighbours,
                 roles=roles, train_rows=torch.from_numpy(train_rows).to(device),
                 monitor_rows=monitor_rows)


@torch.no_grad()
def monitor(s: Setup, rows: np.ndarray) -> dict[str, float]:
    """Brain SSIM, PSNR and MAE of the EMA weights on slices `rows`, in metrics.SLICE_SCALE
    units: per slice, averaged per patient, then over patients."""
    pred = predict(s.ema.shadow, s.data["t1"], s.neighbours, rows, s.device, amp=s.amp)
    idx = torch.as_tensor(rows)
    scores = slice_scores(s.data["t2"][idx].float().to(s.device), pred,
                          s.data["mask"][idx].to(s.device))
    patient = s.slices.patient_id[rows]
    out = {}
    for k in ("masked_ssim", "masked_psnr", "masked_mae"):
        v = scores[k].cpu().numpy()
        out[k] = float(np.mean([v[patient == p].mean() for p in np.unique(patient)]))
    return out


def batch(s: Setup, args, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Training slices `idx` (B,) on the device -> input (B, C, 64, 64) and target
    (B, 1, 64, 64) float32, augmented there."""
    x, t2 = model_input(s.data["t1"], s.neighbours, idx), s.data["t2"][idx].float()
    if args.augment == "on":
        x, t2 = augment(x, t2, s.data["view"][idx], s.device_gen)
    return x, t2


def train_step(s: Setup, args, x: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
    """One optimiser step on input x (B, C, H, W) and target t2 (B, 1, H, W) -> the detached
    loss (left on the device)."""
    if s.device.type == "cpu":
        x = x.contiguous(memory_format=torch.channels_last)
    with s.amp():
        pred = s.step_model(x).float()
    loss = translation_loss(t2, pred, args.ssim_weight, args.grad_weight)
    runtime.optimiser_step(loss, s.model, s.opt, s.scaler, s.ema)
    return loss.detach()


def train(args) -> dict:
    if done := loop.finished_run(args, "q1", resolve_source(args.data), splits.split_path,
                                 fold_name(args), run_folder_name(args), "slices_per_epoch"):
        return done          # --resume on a finished run: read back, nothing trained
    s = setup(args)
    steps = max(1, min(args.slices_per_epoch, len(s.train_rows)) // args.batch_size)
    total, warmup = args.epochs * steps, steps // 2
    print(f"q1 {args.model} ({args.split} {s.meta['fold']}, seed {args.seed}): "
          f"{count_parameters(s.model):,} parameters, {s.device}, {s.precision}, batch "
          f"{args.batch_size}, lr {args.lr:.3g}, {args.budget} budget: {args.epochs} epochs of "
          f"{steps * args.batch_size} of {len(s.train_rows)} training slices\n"
          f"  patients/slices: {s.meta['split_counts']}; data: {s.meta['data_label']}")
    if args.dry_run:
        loss = train_step(s, args, *batch(s, args, s.train_rows[:args.batch_size]))
        print(f"dry run: one batch, loss {loss.item():.4f}")
        return {}
    with s.book.running(s.split_entry):
        for epoch in s.book.epochs(args.epochs):
            s.model.train()
            order = s.train_rows[torch.randperm(len(s.train_rows), generator=s.device_gen,
                                                device=s.device)]
            t0, loss_sum = time.time(), torch.zeros((), device=s.device)
            for step in progress(range(steps), desc=f"epoch {epoch + 1}/{args.epochs}"):
                set_lr(s.opt, args.lr, epoch * steps + step, total, warmup)
                idx = order[step * args.batch_size:(step + 1) * args.batch_size]
                loss_sum += train_step(s, args, *batch(s, args, idx))
            train_loss = s.book.epoch_loss(loss_sum, steps, epoch)
            epoch_s = time.time() - t0
            row = {"epoch": epoch + 1, "lr": s.opt.param_groups[0]["lr"],
                   "slices_seen": (epoch + 1) * steps * args.batch_size, "train_loss": train_loss,
                   "slices_per_s": steps * args.batch_size / epoch_s}
            for part, rows in s.monitor_rows.items():
                row.update({f"{part}_{k}": v for k, v in monitor(s, rows).items()})
            row["score"] = row["val_masked_ssim"]
            s.end_epoch(row, t0)
        return s.finish({"train_slices": len(s.train_rows),
                         "slices_per_epoch": steps * args.batch_size,
                         "slices_per_s": float(np.mean([h["slices_per_s"]
                                                        for h in s.book.history]))},
                        lambda: write_predictions(s))


def write_predictions(s: Setup):
    """predictions.npz: the best epoch's EMA weights on every inner-validation and test slice,
    plain and flip-averaged."""
    best = build_model(**s.model_args).to(s.device)
    best.load_state_dict(load_weights(s.out / "best.pt", s.device)["ema"]["shadow"])
    rows = np.flatnonzero(np.isin(s.roles, ("val", "test")))
    plain, flipped = predict_with_flip(best, s.data, s.neighbours, rows, s.device, amp=s.amp)
    sub = s.slices.select(rows)
    return save_predictions(s.out / "predictions.npz", sub.row, sub.split, sub.patient_id,
                            sub.view, s.roles[rows], plain.cpu().numpy(), units=UNITS,
                            model=s.meta["model"], split_id=s.meta["split_id"],
                            data_tag=s.meta["data_tag"], t2_pred_flip=flipped.cpu().numpy())


if __name__ == "__main__":
    cli.run_main(lambda: train(parse_args()))
