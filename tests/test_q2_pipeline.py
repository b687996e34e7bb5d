"""Q2 end to end on tiny demo settings: training, resume, evaluation, saved predictions."""
from __future__ import annotations

import numpy as np
import pytest

from common.io import read_csv, read_json
from q2_ecg import eval as q2_eval
from q2_ecg import train as q2_train
from tests.conftest import Q2_TINY as TINY
from tests.conftest import interrupt_after_first_epoch


@pytest.fixture(scope="module")
def trained(q2_results):
    return q2_results


def test_training_writes_history_and_summary(trained):
    run = trained / "q2" / "demo" / "resnet-patient"
    history = read_csv(run / "history.csv")
    assert [r["epoch"] for r in history] == [1.0, 2.0]
    assert {"train_loss", "val_SVEB_f1", "val_normal_f1", "val_abnormal_f1", "beats_per_s"} <= set(
        history[0])
    summary = read_json(run / "summary.json")
    counts = summary["split_counts"]
    assert counts["train"]["SVEB"] > 0 and counts["test"]["VEB"] > 0
    assert summary["class_weights"][1] > summary["class_weights"][0]
    assert (run / "best.pt").exists() and (run / "checkpoint.pt").exists()


def test_resumed_run_matches_uninterrupted_run(trained, tmp_path, monkeypatch):
    interrupt_after_first_epoch(monkeypatch, q2_train)
    args = TINY + ["--model", "resnet", "--results-root", str(tmp_path)]
    with pytest.raises(KeyboardInterrupt):
        q2_train.train(q2_train.parse_args(args))
    monkeypatch.undo()
    q2_train.train(q2_train.parse_args(args + ["--resume"]))
    resumed = read_csv(tmp_path / "q2" / "demo" / "resnet-patient" / "history.csv")
    straight = read_csv(trained / "q2" / "demo" / "resnet-patient" / "history.csv")
    for key in ("train_loss", "val_abnormal_macro_f1", "val_normal_f1"):
        assert resumed[-1][key] == pytest.approx(straight[-1][key], rel=1e-5)


def test_evaluation_reports_normal_and_abnormal(trained, tmp_path):
    result = q2_eval.main(q2_eval.parse_args(["--data", "demo", "--device", "cpu",
                                              "--results-root", str(trained),
                                              "--save-predictions", str(tmp_path / "p.npz")]))
    models = result["models"]
    assert {"resnet-patient", "context-patient", "segment-patient", "autoencoder-patient",
            "rr-logistic-patient", "majority-patient"} <= set(models)
    test = models["resnet-patient"]["test"]
    for group in ("normal", "abnormal", "NOR", "SVEB", "VEB"):
        for metric in ("se", "ppv", "f1", "sp"):
            assert f"{group}_{metric}" in test
    lo, hi = test["abnormal_f1"]["ci95"]
    assert lo <= test["abnormal_f1"]["value"] <= hi
    assert "SVEB_f1" not in models["autoencoder-patient"]["test"]     # a detector has no classes
    assert models["majority-patient"]["test"]["abnormal_se"]["value"] == 0
    assert set(result["leaky_vs_patient"]["resnet"]) == {"beat", "patient"}
    assert "svdb" in result["leave_one_database_out"]["resnet"]
    saved = np.load(tmp_path / "p.npz")
    n = models[result["chosen_model"]]["test"]["beats"]
    assert saved["pred"].shape == saved["p_abnormal"].shape == saved["beat_loc"].shape == (n,)
    assert set(np.unique(saved["pred"])) <= {0, 1, 2}
    figures = {f.name for f in (trained / "q2" / "demo" / "figures").iterdir()}
    assert {"curves.png", "confusion.png", "roc_pr.png", "examples.png", "leaky_vs_patient.png",
            "lodo.png"} <= figures


def test_external_evaluation_uses_every_record(trained, tmp_path):
    from tests.test_q2_data import _record, _write_parquet

    rows = [_record(f"x{i}", n=2000, locs=tuple(range(100, 1900, 100)),
                    labels=tuple([0, 0, 1, 0, 2, 0] * 3)) for i in range(3)]
    source = _write_parquet(tmp_path / "other", rows)
    result = q2_eval.main(q2_eval.parse_args([
        "--data", str(source.path), "--trained-on", "demo", "--device", "cpu",
        "--results-root", str(trained), "--save-predictions", str(tmp_path / "x.npz")]))
    assert all(m["split"] == "patient" for m in result["models"].values())
    assert result["models"]["resnet-patient"]["test"]["beats"] == 3 * 18
    assert set(np.load(tmp_path / "x.npz")["patient_id"]) == {"x0", "x1", "x2"}
