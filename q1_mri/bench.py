"""Q1 training throughput: device-resident tensors vs a per-item `datasets` + DataLoader path.

    python -m q1_mri.bench --data ../shared/data/mri

Both paths train the same model with the same batch size, loss and optimiser; they differ only
in how batches reach the model. Each path runs in its own process so peak memory is its own.
"""
from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import torch

from common import cli
from common.bench import items_per_second, peak_memory_mb
from common.runtime import autocast, configure_threads, seed_everything, select_device
from q1_mri.data import load_mri, normalise, resolve_source, to_device
from q1_mri.model import build_model, model_args
from q1_mri.train import augment, generator_loss


def resident_batches(split, device, batch_size, gen):
    """The training script's path: index a device tensor, augment on the device."""
    data = to_device(split, device)
    n = len(data["t1"])

    def next_batch():
        idx = torch.randint(0, n, (batch_size,), generator=gen).to(device)
        return augment(data["t1"][idx].float(), data["t2"][idx].float(), data["view"][idx], gen)
    return next_batch


def dataloader_batches(split, device, batch_size, gen, workers):
    """The template's path: a `datasets.Dataset` with a per-item tensor transform + DataLoader."""
    import datasets

    t1, t2, _ = normalise(split)
    table = datasets.Dataset.from_dict({"t1": list(t1), "t2": list(t2),
                                        "view": list(split.view_index)})

    def to_tensors(batch):
        return {k: [torch.tensor(np.asarray(x, np.int64 if k == "view" else np.float32))
                    for x in batch[k]] for k in batch}
    loader = torch.utils.data.DataLoader(table.with_transform(to_tensors), batch_size=batch_size,
                                         shuffle=True, num_workers=workers, drop_last=True,
                                         generator=gen)
    iterator = iter(loader)

    def next_batch():
        nonlocal iterator
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            batch = next(iterator)
        return augment(batch["t1"].to(device), batch["t2"].to(device), batch["view"].to(device),
                       gen)
    return next_batch


def measure(args) -> dict:
    configure_threads()
    gen = seed_everything(0)
    device = select_device(args.device)
    split = load_mri(resolve_source(args.data))["train"]
    fmt = torch.channels_last if args.channels_last == "on" else torch.contiguous_format
    model = build_model(**model_args(args.model)).to(device, memory_format=fmt)
    step_model = torch.compile(model) if args.compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train_args = SimpleNamespace(ssim_weight=1.0, adv_weight=0.0)
    batches = (resident_batches(split, device, args.batch_size, gen) if args.path == "resident"
               else dataloader_batches(split, device, args.batch_size, gen, args.workers))

    def step() -> int:
        t1, t2 = batches()
        with autocast(device):
            pred = step_model(t1.contiguous(memory_format=fmt)).float()
            loss = generator_loss(t2, pred, train_args, None, t1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return len(t1)
    rate = items_per_second(step, device, args.steps, warmup=10 if args.compile else 3)
    return {"path": args.path, "slices_per_s": rate, "channels_last": args.channels_last,
            "compile": args.compile, **peak_memory_mb(device)}


def main() -> None:
    p = cli.parser(__doc__.splitlines()[0])
    cli.add_run_args(p)
    p.add_argument("--model", default="unet")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=30, help="timed training steps per path")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--path", choices=["both", "resident", "dataloader"], default="both")
    p.add_argument("--channels-last", choices=["on", "off"], default="on")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    args = p.parse_args()
    if args.path != "both":
        print(json.dumps(measure(args)))
        return
    rows = []
    for path in ("resident", "dataloader"):
        argv = [a for a in sys.argv[1:] if not a.startswith("--path")] + ["--path", path]
        done = subprocess.run([sys.executable, "-m", "q1_mri.bench", *argv], capture_output=True,
                              text=True)
        if done.returncode:
            sys.exit(done.stderr.strip().splitlines()[-1])
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"\nQ1 training throughput, model {args.model}, batch {args.batch_size}, data {args.data}")
    for r in rows:
        gpu = f", peak GPU {r['peak_gpu_mb']:.0f} MiB" if "peak_gpu_mb" in r else ""
        print(f"  {r['path']:<11} {r['slices_per_s']:8.1f} slices/s   peak RSS "
              f"{r['peak_rss_mb']:.0f} MiB{gpu}")
    print(f"  ratio resident / dataloader: {rows[0]['slices_per_s'] / rows[1]['slices_per_s']:.2f}x")


if __name__ == "__main__":
    cli.run_main(main)
