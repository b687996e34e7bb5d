"""Fail if a training step of either question waits for the host (CUDA only).

    python tools/sync_check.py            (run by tools/gpu_check.sh)

Sets up a tiny run of each question on the demo data exactly as the training scripts do,
takes one warm-up step, then takes STEPS steps under torch.cuda.set_sync_debug_mode("error"):
any host synchronisation inside the step (a .item(), a host-to-device copy from pageable
memory, a boolean-mask index) raises there and names its line.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from q1_mri import train as q1_train  # noqa: E402
from q2_ecg import train as q2_train  # noqa: E402

STEPS = 5


def q1_step(root: str):
    args = q1_train.parse_args(["--data", "demo", "--device", "cuda", "--split", "kfold",
                                "--folds", "2", "--fold", "0", "--results-root", root])
    s = q1_train.setup(args)
    s.model.train()

    def step():
        order = s.train_rows[torch.randperm(len(s.train_rows), generator=s.device_gen,
                                            device=s.device)]
        q1_train.train_step(s, args, *q1_train.batch(s, args, order[:args.batch_size]))
    return step


def q2_step(root: str, model: str):
    args = q2_train.parse_args(["--data", "demo", "--device", "cuda", "--model", model,
                                "--split", "kfold", "--folds", "2", "--fold", "0",
                                "--results-root", root])
    s = q2_train.setup(args)
    s.model.train()
    chunks = max(1, args.batch_beats // s.model.cfg.context)
    return lambda: q2_train.train_step(s, chunks)


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this check is for a GPU machine")
    with tempfile.TemporaryDirectory() as root:
        for name, make in (("q1 unet", lambda: q1_step(root)),
                           ("q2 resnet", lambda: q2_step(root, "resnet")),
                           ("q2 context", lambda: q2_step(root, "context"))):
            step = make()
            step()                                     # warm-up: allocation, autotuning, compile
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                for _ in range(STEPS):
                    step()
            finally:
                torch.cuda.set_sync_debug_mode(0)
            torch.cuda.synchronize()
            print(f"{name}: {STEPS} training steps without a host synchronisation")


if __name__ == "__main__":
    main()
