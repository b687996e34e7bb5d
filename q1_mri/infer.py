"""Predict every slice of another dataset with the deployable final model (make q1-final).

Used by `q1_mri.eval --data OTHER --trained-on SOURCE`: this is the one place where a trained
model runs outside training. It writes prediction files in the usual format
(q1_mri.prediction_file, split_id "external"), which evaluation then scores: the final model's
(with the test-time flip when the cross-validation chose it) and the two baselines', fitted on
every patient of SOURCE.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from common.checkpoint import CheckpointError, load_checkpoint
from common.io import read_json
from common.runtime import configure_threads, select_device
from q1_mri.baselines import fit_linear, predict_baselines
from q1_mri.data import SCALE, Slices, load_mri, normalise, pool, to_device
from q1_mri.model import build_model
from q1_mri.neighbours import neighbour_rows
from q1_mri.predict import predict_with_flip
from q1_mri.prediction_file import save_predictions

EXTERNAL = "external"


def final_run(run_root: Path) -> Path:
    """The newest `<model>-all-seed<s>` folder with a finished run (summary.json)."""
    runs = sorted((f for f in run_root.glob("*-all-seed*")
                   if (f / "checkpoint.pt").exists() and (f / "summary.json").exists()),
                  key=lambda f: f.stat().st_mtime)
    if not runs:
        raise CheckpointError(f"no final Q1 model in {run_root}: run `make q1-final` (python -m "
                              "q1_mri.train --split all --from-cv) first")
    return runs[-1]


def load_model(path: Path, device) -> tuple[torch.nn.Module, dict]:
    """Rebuild a translator from its checkpoint alone and load the EMA weights.

    A truncated file, or one that does not hold a Q1 translator, raises CheckpointError.
    """
    ck = load_checkpoint(path, device)
    try:
        model = build_model(**ck["model_args"]).to(device)
        model.load_state_dict(ck["ema"]["shadow"])
    except (TypeError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {path} does not hold a Q1 translator's EMA weights "
                              f"({type(e).__name__}: {str(e).splitlines()[0]})") from e
    return model, ck


def predict_external(run_root: Path, train_source, test_source, out_dir: Path, device: str
                     ) -> tuple[dict[str, Path], dict, Slices]:
    """Write out_dir/predictions-<method>.npz for every slice of `test_source`.

    Returns {method: file}, the final run's description and the test slices.
    """
    configure_threads()
    device = select_device(device)
    folder = final_run(run_root)
    summary = read_json(folder / "summary.json")
    final = summary.get("final_choice") or {"model": summary["model"], "flip": False}
    model, ck = load_model(folder / "checkpoint.pt", device)
    slices = pool(load_mri(test_source))
    data = to_device(slices, device)
    n = ck["model_args"].get("neighbours", 0)
    neighbours = torch.from_numpy(neighbour_rows(slices, n, require=False)[0]).to(device) if n else None
    rows = np.arange(len(slices))
    plain, flipped = predict_with_flip(model, data, neighbours, rows, device)
    method = final["model"] + ("+flip" if final.get("flip") else "")
    preds = {method: (flipped if final.get("flip") else plain).cpu().numpy()}
    train = pool(load_mri(train_source))
    t1, t2, mask = normalise(train)
    t1_test = data["t1"].float().cpu().numpy()
    preds.update(predict_baselines(t1_test, fit_linear(t1, t2, mask)))
    files = {}
    for name, pred in preds.items():
        files[name] = save_predictions(out_dir / f"predictions-{name}.npz", slices.row,
                                       slices.split, slices.patient_id, slices.view, pred,
                                       scale=SCALE, model=name, split_id=EXTERNAL,
                                       data_tag=test_source.tag, dtype=np.float32)
    print(f"final {method} ({folder.name}) predicted {len(slices)} slices of {test_source.label}")
    return files, {"run": folder.name, "method": method, "epochs": ck["epoch"],
                   "final_choice": final, "train_patients": len(np.unique(train.patient_id)),
                   "train_slices": len(train)}, slices
