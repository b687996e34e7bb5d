"""Q1 training throughput: slices/s, peak memory and FLOPs per model; device-resident tensors
vs a per-item `datasets` + DataLoader path.

    python -m q1_mri.bench --data ../shared/data/mri
    python -m q1_mri.bench --data demo --path resident --batch-size 32 --compile off  # CPU settings

Both paths run the training script's own step (q1_mri.train.train_step: forward, loss,
backward, clipped AdamW, EMA) on a run the training script sets up with its defaults for this
device, unless --batch-size, --compile, --precision or --channels-last say otherwise; they
differ only in how batches reach the model. Each model and path runs in its own process, so
peak memory is its own. Per run: slices/s, peak memory, FLOPs per training slice (one forward +
backward, torch's FLOP counter), the FLOP/s achieved and their fraction of the device's peak.
"""
from __future__ import annotations

import json
import tempfile

import numpy as np
import torch

from common import bench, cli
from q1_mri import train as q1_train
from q1_mri.translate import model_input


def resident_batches(s, args):
    """The training script's path: index the device tensors, augment on the device."""
    def next_batch():
        idx = s.train_rows[torch.randint(0, len(s.train_rows), (args.batch_size,),
                                         generator=s.device_gen, device=s.device)]
        return q1_train.batch(s, args, idx)
    return next_batch


def dataloader_batches(s, args, workers: int):
    """The template's path: a `datasets.Dataset` of the training slices' inputs, targets and
    views with a per-item tensor transform, batched by a DataLoader, augmented on the device."""
    import datasets

    idx = s.train_rows
    x = model_input(s.data["t1"], s.neighbours, idx).cpu().numpy()
    t2 = s.data["t2"][idx].float().cpu().numpy()
    table = datasets.Dataset.from_dict({"x": list(x), "t2": list(t2),
                                        "view": list(s.data["view"][idx].cpu().numpy())})

    def to_tensors(batch):
        return {k: [torch.tensor(np.asarray(v, np.int64 if k == "view" else np.float32))
                    for v in batch[k]] for k in batch}
    loader = torch.utils.data.DataLoader(table.with_transform(to_tensors),
                                         batch_size=args.batch_size, shuffle=True,
                                         num_workers=workers, drop_last=True, generator=s.gen)
    iterator = iter(loader)

    def next_batch():
        nonlocal iterator
        try:
            b = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            b = next(iterator)
        x, t2 = b["x"].to(s.device), b["t2"].to(s.device)
        if args.augment == "on":
            x, t2 = q1_train.augment(x, t2, b["view"].to(s.device), s.device_gen)
        return x, t2
    return next_batch


def train_argv(args, model: str) -> list[str]:
    """The training script's flags for `model`: its defaults unless this bench's flags say."""
    argv = ["--data", args.data, "--device", args.device, "--model", model, "--split", "kfold",
            "--folds", "2", "--fold", "0", "--compile", args.compile, "--precision", args.precision]
    return (argv + (["--batch-size", str(args.batch_size)] if args.batch_size else [])
            + (["--base-channels", str(args.base_channels)] if args.base_channels else []))


def measure(args) -> dict:
    """`common.bench.measure` of one model (args.models[0]) on one path (args.path)."""
    model = args.models[0]
    with tempfile.TemporaryDirectory(prefix="q1-bench-") as root:   # the split file goes here
        targs = q1_train.parse_args(train_argv(args, model) + ["--results-root", root])
        s = q1_train.setup(targs)
        batches = (resident_batches(s, targs) if args.path == "resident"
                   else dataloader_batches(s, targs, args.workers))
        s.model.train()

        def step() -> int:
            x, t2 = batches()
            q1_train.train_step(s, targs, x, t2)
            return len(x)
        return {"model": model, "path": args.path, "precision": s.precision,
                **bench.measure(s, step, args.steps)}


HUB_SLICES, HUB_PATIENTS = 155_000, 369


def preparation_memory(n_slices: int = HUB_SLICES, n_patients: int = HUB_PATIENTS) -> dict:
    """Peak host memory (numpy allocations, tracemalloc) of normalising a synthetic source of
    `n_slices` float16 slices: what every stage that prepares the Q1 data costs at Hub scale.
    Returns bytes of the input, of normalise's outputs (two float16 images and the mask) and
    the peak of the allocations made while normalising."""
    import tracemalloc

    from q1_mri.data import MRISplit, normalise

    t1 = np.zeros((n_slices, 1, 64, 64), np.float16)
    patient = np.repeat(np.arange(n_patients), -(-n_slices // n_patients))[:n_slices]
    t1[:, :, 16:48, 12:52] = (100 + patient % 7)[:, None, None, None]      # a brain per slice
    split = MRISplit(t1, t1 * 2, patient.astype(str), np.full(n_slices, "axial"))
    tracemalloc.start()
    out = normalise(split)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"slices": n_slices, "input_bytes": 2 * t1.nbytes,
            "output_bytes": sum(a.nbytes for a in out), "peak_bytes": peak}


def main() -> None:
    p = cli.parser(__doc__.splitlines()[0])
    cli.add_run_args(p)
    p.add_argument("--models", nargs="+", choices=sorted(q1_train.MODELS),
                   default=["unet", "unet25d", "plain"])
    p.add_argument("--batch-size", type=cli.count, default=None,
                   help="slices per batch (default: the training script's for the device)")
    p.add_argument("--base-channels", type=cli.count, default=None,
                   help="U-Net width (default: the training script's)")
    p.add_argument("--steps", type=cli.count, default=30, help="timed training steps per run")
    p.add_argument("--workers", type=cli.natural, default=2, help="DataLoader worker processes")
    p.add_argument("--path", choices=["both", "resident", "dataloader"], default="both",
                   help="dataloader needs the `datasets` package")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                   help="torch.compile the model; auto: as the training script (on for CUDA)")
    p.add_argument("--precision", choices=["auto", "fp32"], default="auto",
                   help="as the training script's --precision")
    p.add_argument("--json", action="store_true",
                   help="measure the one model of --models on the one --path here, print JSON")
    args = p.parse_args()
    if args.json:
        print(json.dumps(measure(args)))
        return
    m = preparation_memory()
    print(f"\nQ1 data preparation at Hub scale ({m['slices']:,} synthetic slices): normalised "
          f"copies {m['output_bytes'] / 2**30:.2f} GiB, peak allocations while normalising "
          f"{m['peak_bytes'] / 2**30:.2f} GiB (input {m['input_bytes'] / 2**30:.2f} GiB)")
    paths = ["resident", "dataloader"] if args.path == "both" else [args.path]
    print(f"\nQ1 training throughput, data {args.data}")
    peak = None
    for model in args.models:
        rates = {}
        for path in paths:
            argv = ["--data", args.data, "--device", args.device, "--models", model, "--path", path,
                    "--steps", str(args.steps), "--workers", str(args.workers),
                    "--compile", args.compile, "--precision", args.precision, "--json"]
            argv += ["--batch-size", str(args.batch_size)] if args.batch_size else []
            argv += ["--base-channels", str(args.base_channels)] if args.base_channels else []
            m = bench.isolated("q1_mri.bench", argv)
            width = f" width {args.base_channels}" if args.base_channels else ""
            print(bench.row(f"{model}{width} {path}", "slice", m), flush=True)
            rates[path], peak = m["items_per_s"], m["peak"]
        if len(rates) == 2:
            print(f"  {model}: resident / dataloader {rates['resident'] / rates['dataloader']:.2f}x")
    print(f"  peak: {peak}")


if __name__ == "__main__":
    cli.run_main(main)
