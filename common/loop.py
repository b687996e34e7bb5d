"""The epoch loop's bookkeeping, written once for both questions: a run folder that holds one
run or nothing, the history, the best epoch on inner validation, patience, checkpoints and
resume. Each question's train() keeps its own loop (data, model, loss, step) in view:

    book = RunBook(out, patience, resume=args.resume, config=config)
    book.restore(model, ema, opt, scaler, gen, dgen)        # no-op unless resuming
    with book.running(split_entry):                         # the lock; clears a replaced run
        for epoch in book.epochs(args.epochs):              # stops after `patience` flat epochs
            ...train steps..., row = {"epoch": epoch + 1, ..., "score": inner-val score}
            book.end_epoch(row, state, weights)             # checkpoint.pt, best.pt, history.csv
        book.finish(summary, write_predictions)             # predictions.npz, then summary.json

The files of a run belong together: summary.json is written last and names the SHA-256 of the
prediction file and of the best weights it was finished with (evaluation checks them), and a
replaced run's outputs are removed before its first epoch, so a killed rerun leaves a folder
without summary.json, which evaluation does not score, never a mix of two runs. history.csv is
written after the checkpoint: after a kill it may lag the checkpoint, never run ahead of it.
"""
from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from common import runtime
from common.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from common.ema import ModelEMA
from common.io import file_digest, read_json, torch_save, write_csv, write_json
from common.results import results_dir
from common.runs import check_finished_files, check_resume, locked
from common.runtime import rng_state, set_rng_state
from common.splitfile import split_id

OUTPUTS = ("summary.json", "predictions.npz", "best.pt", "checkpoint.pt", "history.csv",
           "split.json")
FINISHED = ("summary.json", "predictions.npz")   # what a resumed run finishes anew


class RunBook:
    """History, best score and resume state of one run folder `out` (see the module docstring).

    config: the run's resolved settings (saved in every checkpoint; --resume must match them).
    patience: stop after this many epochs without a better inner-validation score.
    """

    def __init__(self, out: Path, patience: int, resume: bool, config: dict):
        self.out, self.patience, self.config = out, patience, config
        self.history: list[dict] = []
        self.best, self.start_epoch, self.checkpoint = -float("inf"), 0, None
        path = out / "checkpoint.pt"
        if resume and not path.exists():
            print(f"notice: nothing to resume in {out}; starting from scratch")
        elif resume:
            # to the CPU: the RNG states must stay CPU ByteTensors; the weights and optimiser
            # state move to the device when they are loaded into the live objects
            ck = load_checkpoint(path, "cpu")
            check_resume(ck["config"], config, ck["epoch"], out)
            self.checkpoint = ck
            self.history, self.best, self.start_epoch = ck["history"], ck["best_metric"], ck["epoch"]

    def restore(self, model, ema, optimizer, scaler, gen: torch.Generator,
                device_gen: torch.Generator | None = None) -> None:
        """Load a resumed checkpoint into the live training objects (no-op when fresh)."""
        ck = self.checkpoint
        if ck is None:
            return
        try:
            model.load_state_dict(ck["model"])
            ema.load_state_dict(ck["ema"])
            optimizer.load_state_dict(ck["optimizer"])
            scaler.load_state_dict(ck["scaler"])
            set_rng_state(gen, ck["rng"], device_gen)
        except (KeyError, TypeError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"cannot resume from {self.out / 'checkpoint.pt'} "
                                  f"({type(e).__name__}: {str(e).splitlines()[0]}): drop "
                                  "--resume to start afresh") from e

    def finished(self, epochs: int) -> dict | None:
        """The saved summary when a resumed run has nothing left to train (all `epochs` run,
        or patience exhausted) and was finished (summary.json naming its files), else None:
        resuming such a run reads it back instead of training or writing anything."""
        path = self.out / "summary.json"
        if self.checkpoint is None or not path.exists():
            return None
        stopped = self.history and len(self.history) - self.best_epoch >= self.patience
        if len(self.history) < epochs and not stopped:
            return None
        summary = read_json(path)
        return summary if summary.get("epochs_run") == len(self.history) else None

    @property
    def fresh(self) -> bool:
        return self.start_epoch == 0

    @property
    def best_epoch(self) -> int:
        return max((h["epoch"] for h in self.history if h["score"] == self.best), default=0)

    @contextlib.contextmanager
    def running(self, split_entry: dict) -> Iterator[None]:
        """Hold the run folder's lock (common.runs.locked) for the run's whole life, starting it
        with `begin`."""
        with locked(self.out):
            self.begin(split_entry)
            yield

    def begin(self, split_entry: dict) -> None:
        """Inside the run's lock, before the first epoch: a fresh run removes every output of
        a run it replaces; a resumed one only the files of its earlier finish. Writes the
        fold's split.json."""
        stale = OUTPUTS if self.fresh else FINISHED
        replaced = [f for f in stale if (self.out / f).exists()]
        if self.fresh and set(replaced) - {"split.json"}:     # a split alone: no epoch ever ended
            print(f"notice: replacing the earlier run in {self.out} (--resume continues one)")
        for name in replaced:
            (self.out / name).unlink()
        write_json(self.out / "split.json", split_entry)

    def epochs(self, total: int) -> Iterator[int]:
        """Epoch indices start_epoch..total-1, ending early after `patience` epochs without a
        better score."""
        for epoch in range(self.start_epoch, total):
            if self.history and epoch - self.best_epoch >= self.patience:
                print(f"early stop: no inner-validation gain for {self.patience} epochs")
                return
            yield epoch

    def epoch_loss(self, loss_sum: torch.Tensor, steps: int, epoch: int) -> float:
        """The epoch's mean training loss from its on-device sum: the epoch's one host
        synchronisation, checked before anything of the epoch is saved."""
        loss = (loss_sum / steps).item()
        if not math.isfinite(loss):
            kept = ("keeps the last good checkpoint" if (self.out / "checkpoint.pt").exists()
                    else "has no checkpoint yet")
            raise CheckpointError(f"training diverged (loss {loss}) in epoch {epoch + 1}; "
                                  f"{self.out} {kept}")
        return loss

    def end_epoch(self, row: dict, state: dict, weights: Callable[[], dict]) -> bool:
        """Record an epoch: `row` (needs "epoch" and "score"), the training `state` (the
        checkpoint's model, ema, optimizer, scaler, model_args and rng), and, when the score
        is the best so far, `weights()` as best.pt. Returns whether it was the best."""
        floats = [t for t in state["model"].values() if t.is_floating_point()]
        if not math.isfinite(row["score"]) or not all(torch.isfinite(t).all() for t in floats):
            raise CheckpointError(f"epoch {row['epoch']}: non-finite weights or inner-validation "
                                  f"score ({row['score']}); {self.out} keeps the last good "
                                  "checkpoint")
        self.history.append(row)
        improved = row["score"] > self.best
        if improved:
            self.best = row["score"]
            torch_save(self.out / "best.pt", {**weights(), "epoch": row["epoch"],
                                              "config": self.config})
        save_checkpoint(self.out / "checkpoint.pt", **state, epoch=row["epoch"],
                        best_metric=self.best, config=self.config, history=self.history)
        write_csv(self.out / "history.csv", self.history)
        print(epoch_line(row))
        return improved

    def finish(self, summary: dict, write_predictions: Callable[[], Path]) -> dict:
        """Write the prediction file, then summary.json naming it and the best weights by
        SHA-256 (the last file written: a folder without it is unfinished)."""
        path = write_predictions()
        summary = {**summary, "best_epoch": self.best_epoch, "epochs_run": len(self.history),
                   "wall_time_s": self.history[-1]["elapsed_s"] if self.history else 0.0,
                   "files": {"predictions.npz": file_digest(path),
                             "best.pt": file_digest(self.out / "best.pt")}}
        write_json(self.out / "summary.json", summary)
        return summary


def finished_run(args, question: str, source, split_path: Callable, fold: str, run: str,
                 derived: str) -> dict | None:
    """With --resume, the summary of the finished run `run` of `question` that `args`
    describe (nothing left to train), its epoch log printed; else None. Reads no data, so a
    notebook or a rerun of make finds existing runs in seconds. split_path(folder, scheme,
    folds, seed) names the split file. `derived` names the setting resolved from the data at
    training time when "auto" (a budget of one pass): taken from the run's own record (the
    data tag in its configuration pins the data it came from)."""
    root = results_dir(question, source, args.results_root)
    split_file, out = split_path(root / "splits", args.split, args.folds, args.seed), root / run
    if not args.resume or not split_file.exists():
        return None
    split = read_json(split_file)
    if fold not in split["folds"] or not (out / "summary.json").exists() or not (
            out / "checkpoint.pt").exists():
        return None
    saved = read_json(out / "summary.json").get("config", {})
    config = {**vars(args), "data_tag": source.tag, "split_id": split_id(split, fold),
              **({derived: saved.get(derived)} if getattr(args, derived) == "auto" else {})}
    book = RunBook(out, args.patience, True, config)
    done = book.finished(args.epochs)
    if done:
        check_finished_files(out, done)
        read_json(out / "split.json")          # one line if damaged, like every other reader
        print("\n".join(epoch_line(row) for row in book.history)
              + f"\nfinished earlier (best epoch {done['best_epoch']}): read back from {out}")
    return done


def epoch_line(row: dict) -> str:
    """The log line of one epoch's history row."""
    return " | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())


def elapsed(history: list[dict], epoch_s: float) -> float:
    """Training seconds so far, resumed runs included: the last row's plus this epoch's."""
    return (history[-1]["elapsed_s"] if history else 0.0) + epoch_s


def checkpoint_state(model, ema, optimizer, scaler, model_args: dict, gen: torch.Generator,
                     device_gen: torch.Generator | None = None, **extra) -> dict:
    """The training state every checkpoint holds (common.checkpoint.KEYS, less what RunBook
    adds: epoch, best_metric, config, history)."""
    return {"model": model.state_dict(), "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "model_args": model_args, "rng": rng_state(gen, device_gen), **extra}


@dataclass
class Trainer:
    """The training objects of one run, the same in both questions; each question's Setup
    adds its data to these fields."""
    out: Path                   # the run folder
    device: torch.device
    model: torch.nn.Module
    step_model: torch.nn.Module  # the model, torch.compiled where asked
    model_args: dict            # what rebuilds it: build_model(**model_args)
    ema: ModelEMA
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    gen: torch.Generator        # host generator (seeding; its state is checkpointed)
    device_gen: torch.Generator  # batches and augmentation, drawn on the device
    amp: Callable               # context-manager factory for the forward pass
    precision: str
    book: RunBook
    split_entry: dict           # the fold's split.json
    meta: dict                  # provenance, split counts: for summary.json

    def end_epoch(self, row: dict, started: float) -> None:
        """Record an epoch's `row` (RunBook.end_epoch) with its training time since `started`
        (time.time()), the full training state and the EMA weights."""
        row["elapsed_s"] = elapsed(self.book.history, time.time() - started)
        self.book.end_epoch(row, checkpoint_state(self.model, self.ema, self.opt, self.scaler,
                                                  self.model_args, self.gen, self.device_gen),
                            lambda: {"model_args": self.model_args, "ema": self.ema.state_dict()})

    def finish(self, extra: dict, write_predictions: Callable[[], Path]) -> dict:
        """RunBook.finish with the summary every run has (provenance, parameters, settings) and
        the question's `extra` fields."""
        params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        return self.book.finish({**self.meta, "parameters": params, "model_args": self.model_args,
                                 "precision": self.precision, "config": self.book.config, **extra},
                                write_predictions)


def trainer(out: Path, model: torch.nn.Module, model_args: dict, args, config: dict,
            device: torch.device, gen: torch.Generator, split_entry: dict, meta: dict,
            cpu_bf16: bool = False) -> dict:
    """Trainer's fields for `model` (already on `device`) trained as `args` say (lr,
    weight_decay, ema_decay, seed, resume, patience, compile; precision where the script has
    it), resumed from out/checkpoint.pt with --resume."""
    ema = ModelEMA(model, args.ema_decay)
    opt = runtime.adamw(model.parameters(), device, lr=args.lr, weight_decay=args.weight_decay)
    scaler = runtime.grad_scaler(device)
    device_gen = runtime.device_generator(device, args.seed)
    book = RunBook(out, args.patience, args.resume, config)
    book.restore(model, ema, opt, scaler, gen, device_gen)
    amp, name = runtime.precision(device, getattr(args, "precision", "auto") == "auto", cpu_bf16)
    return {"out": out, "device": device, "model": model,
            "step_model": torch.compile(model) if args.compile else model,
            "model_args": model_args, "ema": ema, "opt": opt, "scaler": scaler, "gen": gen,
            "device_gen": device_gen, "amp": amp, "precision": name, "book": book,
            "split_entry": split_entry, "meta": meta}
