"""Predict every beat of another dataset with the deployable final model (make q2-final).

Used by `q2_ecg.eval --data OTHER --trained-on SOURCE`: this is the one place where a trained
model runs outside training. It writes a predictions.npz in the usual format (role "test" for
scored beats, "unscored" for UNK or out-of-range beats), which evaluation then scores.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.special import softmax

from common import cli
from common.checkpoint import load_weights
from common.io import read_json
from common.runtime import configure_threads, select_device
from q2_ecg.beats import build_table, table_to_device
from q2_ecg.data import load_records
from q2_ecg.ensemble import geometric_mean
from q2_ecg.model import build_model
from q2_ecg.predict import predict_and_adapt
from q2_ecg.prediction_file import save_predictions


def final_runs(run_root: Path) -> tuple[list[Path], dict]:
    """The final model's run folders (one, or an ensemble's members) and its decision rule.

    The newest `<model>-all-seed<s>` folder with trained weights names the chosen configuration;
    an ensemble's members are the `<member>-all-seed<s>` folders beside it.
    """
    runs = sorted((f for f in run_root.glob("*-all-seed*") if (f / "best.pt").exists()),
                  key=lambda f: f.stat().st_mtime)
    if not runs:
        raise cli.DataError(f"no final Q2 model in {run_root}: run `make q2-final` first")
    final = read_json(runs[-1] / "summary.json").get("final_choice")
    if not final:
        raise cli.DataError(f"{runs[-1]} was not trained with --from-cv: it has no decision biases")
    if not final.get("members"):
        return [runs[-1]], final
    seed = runs[-1].name.rsplit("-seed", 1)[1]
    folders = [run_root / f"{m}-all-seed{seed}" for m in final["members"]]
    missing = [f.name for f in folders if not (f / "best.pt").exists()]
    if missing:
        raise cli.DataError(f"the final ensemble lacks {missing} in {run_root}: run `make q2-final`")
    stale = [f.name for f in folders if read_json(f / "summary.json").get("final_choice") != final]
    if stale:
        raise cli.DataError(f"{stale} in {run_root} were trained for another final choice than "
                            f"{runs[-1].name}: run `make q2-final`")
    return folders, final


def predict_external(run_root: Path, source, out_dir: Path, device: str) -> tuple[Path, dict]:
    """Write out_dir/predictions.npz for every beat of `source`; return it and the decision rule."""
    configure_threads()
    device = select_device(device)
    folders, final = final_runs(run_root)
    records = load_records(source)
    table = build_table(records)
    dev = table_to_device(table, device)
    beats = np.arange(len(table.label))
    probs, adapted = [], []
    for folder in folders:
        weights = load_weights(folder / "best.pt", device)
        model = build_model(**weights["model_args"]).to(device)
        model.load_state_dict(weights["ema"]["shadow"])
        out, out_adapted = predict_and_adapt(model, dev, beats, table, device)
        probs.append(softmax(out.astype(np.float64), axis=1))
        adapted.append(out_adapted)
    roles = np.where(table.scored, "test", "unscored")     # UNK rows are never scored
    path = save_predictions(out_dir / "predictions.npz", records, table, beats, roles,
                            np.log(geometric_mean(probs)), model=final["model"],
                            split_id="external", data_tag=source.tag,
                            adapted=geometric_mean(adapted))
    print(f"final {final['model']} ({', '.join(f.name for f in folders)}) predicted "
          f"{len(beats)} beats of {source.label}")
    return path, final
