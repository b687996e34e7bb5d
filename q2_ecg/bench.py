"""Q2 training throughput (beats/s) of each model on device-resident beats.

    python -m q2_ecg.bench --data ../shared/data/ecg

Runs the training script's own step (window gathering on the device, augmentation, forward,
backward, AdamW) for a fixed number of batches per model.
"""
from __future__ import annotations

from common import cli
from common.bench import items_per_second, peak_memory_mb
from q2_ecg import train as q2_train


def throughput(name: str, args) -> str:
    """One line: training beats/s of model `name` over args.steps batches."""
    targs = q2_train.parse_args(["--data", args.data, "--device", args.device, "--model", name,
                                 "--batch-beats", str(args.batch_beats), "--split", "beat",
                                 "--results-root", "/tmp/q2-bench"])
    r = q2_train.setup(targs)
    length = r.model.cfg.context
    chunks = max(1, targs.batch_beats // length)
    r.model.train()
    rate = items_per_second(lambda: (q2_train.train_step(r, chunks, length), chunks * length)[1],
                            r.device, args.steps)
    mem = peak_memory_mb(r.device)
    gpu = f", peak GPU {mem['peak_gpu_mb']:.0f} MiB" if "peak_gpu_mb" in mem else ""
    return f"  {name:<12} {rate:9.0f} beats/s  ({r.precision}, batch {chunks * length} beats{gpu})"


def main() -> None:
    p = cli.parser(__doc__.splitlines()[0])
    cli.add_run_args(p)
    p.add_argument("--models", nargs="+", default=["resnet", "context", "autoencoder"])
    p.add_argument("--steps", type=int, default=20, help="timed batches per model")
    p.add_argument("--batch-beats", type=int, default=512, help="beats per training batch")
    args = p.parse_args()
    print(f"\nQ2 training throughput, data {args.data}")
    for name in args.models:
        print(throughput(name, args))


if __name__ == "__main__":
    cli.run_main(main)
