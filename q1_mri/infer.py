"""Predict every slice of another dataset with the deployed Q1 model (make q1-final).

    python -m q1_mri.infer --data OTHER --trained-on ../shared/data/mri --out p.npz
    python -m q1_mri.eval --data OTHER --predictions p.npz       # then score it

The deployed model is the k fold models of final.json (q1_mri.final); their predicted T2 are
averaged (each flip-averaged where the cross-validation chose the flip). The file's `row` is
each slice's row in its split of OTHER as read, so every prediction maps back to the input
(slices with an empty T1 or T2 are skipped and have no row in the file); `units` names the
intensity units (data.UNITS).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from common import cli
from common.checkpoint import load_weights
from common.deploy import inference_note, open_deployed
from common.runtime import precision
from q1_mri.data import UNITS, load_mri, pool, resolve_source, to_device
from q1_mri.model import build_model
from q1_mri.neighbours import neighbour_rows
from q1_mri.prediction_file import save_predictions
from q1_mri.translate import predict_with_flip


def parse_args(argv=None):
    p = cli.parser(__doc__.splitlines()[0])
    cli.add_infer_args(p)
    return p.parse_args(argv)


def main(args) -> Path:
    device, root, final = open_deployed("q1", resolve_source(args.trained_on), args)
    source = resolve_source(args.data)
    slices = pool(load_mri(source))
    data = to_device(slices, device)
    rows = np.arange(len(slices))
    amp, _ = precision(device, cpu_bf16=True)
    total = None
    for (e,) in final["folds"].values():                  # one network per fold
        weights = load_weights(root / e["weights"], device)
        model = build_model(**weights["model_args"]).to(device)
        model.load_state_dict(weights["ema"]["shadow"])
        n = weights["model_args"].get("neighbours", 0)
        neighbours = (torch.from_numpy(neighbour_rows(slices, n, require=False)[0]).to(device)
                      if n else None)
        plain, flipped = predict_with_flip(model, data, neighbours, rows, device, amp=amp)
        pred = (flipped if final["flip"] else plain).cpu().numpy().astype(np.float64)
        total = pred if total is None else total + pred
    mean = (total / len(final["folds"])).astype(np.float32)
    path = save_predictions(Path(args.out), slices.row, slices.split, slices.patient_id,
                            slices.view, np.full(len(slices), "test"), mean, units=UNITS,
                            model=final["method"], split_id="external", data_tag=source.tag,
                            dtype=np.float32)
    print(inference_note(final, f"{len(slices)} slices", source.label, path))
    return path


if __name__ == "__main__":
    cli.run_main(lambda: main(parse_args()))
