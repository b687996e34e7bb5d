"""Predict every beat of another dataset with the deployable final model (make q2-final).

Used by `q2_ecg.eval --data OTHER --trained-on SOURCE`: this is the one place where a trained
model runs outside training. It writes a predictions.npz in the usual format (role "test" for
scored beats, "unscored" for UNK or out-of-range beats), which evaluation then scores.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from common import cli
from common.checkpoint import load_weights
from common.io import read_json
from common.runtime import configure_threads, select_device
from q2_ecg.beats import build_table, table_to_device
from q2_ecg.data import load_records
from q2_ecg.model import build_model
from q2_ecg.predict import predict_and_adapt
from q2_ecg.prediction_file import save_predictions


def final_run(run_root: Path) -> Path:
    """The newest `<model>-all-seed<s>` folder with trained weights."""
    runs = sorted((f for f in run_root.glob("*-all-seed*") if (f / "best.pt").exists()),
                  key=lambda f: f.stat().st_mtime)
    if not runs:
        raise cli.DataError(f"no final Q2 model in {run_root}: run `make q2-final` first")
    return runs[-1]


def predict_external(run_root: Path, source, out_dir: Path, device: str) -> tuple[Path, dict]:
    """Write out_dir/predictions.npz for every beat of `source`; return it and the decision rule."""
    configure_threads()
    device = select_device(device)
    folder = final_run(run_root)
    final = read_json(folder / "summary.json").get("final_choice")
    if not final:
        raise cli.DataError(f"{folder} was not trained with --from-cv: it has no decision biases")
    weights = load_weights(folder / "best.pt", device)
    model = build_model(**weights["model_args"]).to(device)
    model.load_state_dict(weights["ema"]["shadow"])
    records = load_records(source)
    table = build_table(records)
    beats = np.arange(len(table.label))
    out, adapted = predict_and_adapt(model, table_to_device(table, device), beats, table,
                                     device)
    roles = np.where(table.scored, "test", "unscored")     # UNK rows are never scored
    path = save_predictions(out_dir / "predictions.npz", records, table, beats, roles, out,
                            model=final["model"], split_id="external", data_tag=source.tag,
                            adapted=adapted)
    print(f"final {final['model']} ({folder.name}) predicted {len(beats)} beats of {source.label}")
    return path, final
