"""Checkpoints as plain dicts, written atomically, readable without the training script.

Layout of a checkpoint (all keys always present):
    model        state_dict of the raw model (not the EMA copy, not a compiled wrapper)
    ema          state_dict of the EMA weights, or None
    optimizer    optimizer state_dict
    scaler       GradScaler state_dict
    model_args   kwargs that rebuild the model: build_model(**model_args)
    epoch        number of finished epochs
    best_metric  best validation metric so far
    config       the resolved command-line arguments (a dict)
    rng          state of the training generator (batch order, augmentation)
    history      list of per-epoch metric dicts
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from common.io import torch_save

KEYS = ("model", "ema", "optimizer", "scaler", "model_args", "epoch", "best_metric", "config",
        "rng", "history")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or lacks required keys."""


def save_checkpoint(path: str | Path, **state: Any) -> Path:
    missing = set(KEYS) - set(state)
    if missing:
        raise ValueError(f"checkpoint state lacks {sorted(missing)}")
    return torch_save(path, state)


def _torch_read(path: Path, map_location, unreadable: str) -> Any:
    """torch.load `path`; a truncated or foreign file becomes one CheckpointError line."""
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # a truncated or foreign file: say which one
        first = str(e).splitlines()[0].split(". ")[0] if str(e) else ""   # torch's first sentence
        detail = f": {first}" if unreadable == "checkpoint" and first else ""
        what = f"checkpoint {path}" if unreadable == "checkpoint" else str(path)
        hint = "" if unreadable == "checkpoint" else ": retrain that run"
        raise CheckpointError(f"cannot read {what} ({type(e).__name__}{detail}){hint}") from e


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: train first (or drop --resume)")
    state = _torch_read(path, map_location, "checkpoint")
    missing = set(KEYS) - set(state)
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {sorted(missing)}")
    return state


def restore(ck: dict[str, Any], model, ema, optimizer, scaler) -> None:
    """Load the training state of a checkpoint into live objects (for --resume)."""
    model.load_state_dict(ck["model"])
    ema.load_state_dict(ck["ema"])
    optimizer.load_state_dict(ck["optimizer"])
    scaler.load_state_dict(ck["scaler"])


WEIGHT_KEYS = ("model_args", "ema", "epoch", "config")


def load_weights(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a weights-only file (best.pt: model_args, ema, epoch, config); one-line errors."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no trained weights at {path}: train first")
    state = _torch_read(path, map_location, "weights")
    if not isinstance(state, dict) or set(WEIGHT_KEYS) - set(state):
        raise CheckpointError(f"{path} is not a weights file of this project")
    return state
