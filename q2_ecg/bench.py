"""Q2 training throughput of each model on device-resident beats: beats/s, peak memory, FLOPs.

    python -m q2_ecg.bench --data ../shared/data/ecg
    python -m q2_ecg.bench --data demo --batch-beats 512 --compile off     # the CPU settings

Runs the training script's own step (window gathering on the device, augmentation, forward,
backward, AdamW, EMA) for a fixed number of batches per model, each model in its own process,
with the training script's defaults for this device unless --batch-beats or --compile say
otherwise. Per model: beats/s, peak memory, FLOPs per training beat (one forward + backward,
torch's FLOP counter), the FLOP/s achieved and their fraction of the device's peak.
"""
from __future__ import annotations

import json
import tempfile

from common import bench, cli
from q2_ecg import train as q2_train


def measure(name: str, args) -> dict:
    """`common.bench.measure` of model `name`'s training step, set up by the training script."""
    argv = ["--data", args.data, "--device", args.device, "--model", name, "--split", "beat",
            "--compile", args.compile]
    if args.batch_beats is not None:
        argv += ["--batch-beats", str(args.batch_beats)]
    with tempfile.TemporaryDirectory(prefix="q2-bench-") as root:    # the split file goes here
        s = q2_train.setup(q2_train.parse_args(argv + ["--results-root", root]))
        length = s.model.cfg.context
        chunks = max(1, s.book.config["batch_beats"] // length)
        s.model.train()
        return {"model": name, **bench.measure(
            s, lambda: (q2_train.train_step(s, chunks), chunks * length)[1], args.steps)}


def main() -> None:
    p = cli.parser(__doc__.splitlines()[0])
    cli.add_run_args(p)
    p.add_argument("--models", nargs="+", choices=sorted(q2_train.MODELS),
                   default=["resnet", "context"])
    p.add_argument("--steps", type=cli.count, default=20, help="timed batches per model")
    p.add_argument("--batch-beats", type=cli.count, default=None,
                   help="beats per training batch (default: the training script's for the device)")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                   help="torch.compile the model; auto: as the training script (on for CUDA)")
    p.add_argument("--json", action="store_true",
                   help="measure the one model of --models here and print its JSON line")
    args = p.parse_args()
    if args.json:
        print(json.dumps(measure(args.models[0], args)))
        return
    print(f"\nQ2 training throughput, data {args.data}")
    peak = None
    for name in args.models:
        argv = ["--data", args.data, "--device", args.device, "--models", name,
                "--steps", str(args.steps), "--compile", args.compile, "--json"]
        if args.batch_beats is not None:
            argv += ["--batch-beats", str(args.batch_beats)]
        m = bench.isolated("q2_ecg.bench", argv)
        print(bench.row(name, "beat", m), flush=True)
        peak = m["peak"]
    print(f"  peak: {peak}")


if __name__ == "__main__":
    cli.run_main(main)
