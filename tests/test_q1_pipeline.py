"""Q1 end to end on tiny demo settings: training, resume, evaluation, saved predictions."""
from __future__ import annotations

import numpy as np
import pytest

from common.datasource import resolve
from common.io import read_csv, read_json
from q1_mri import eval as q1_eval
from q1_mri import train as q1_train
from tests.conftest import Q1_TINY as TINY
from tests.conftest import interrupt_after_first_epoch


@pytest.fixture(scope="module")
def trained(q1_results):
    return q1_results


def test_training_writes_history_checkpoint_and_summary(trained):
    run = trained / "q1" / "demo" / "unet-seed0"
    history = read_csv(run / "history.csv")
    assert [r["epoch"] for r in history] == [1.0, 2.0]
    assert {"train_loss", "validation_masked_ssim", "slices_per_s"} <= set(history[0])
    summary = read_json(run / "summary.json")
    assert summary["data_source"] == "demo" and summary["parameters"] > 0
    assert (run / "checkpoint.pt").exists()


def test_resumed_run_matches_uninterrupted_run(trained, tmp_path, monkeypatch):
    interrupt_after_first_epoch(monkeypatch, q1_train)
    args = TINY + ["--model", "unet", "--results-root", str(tmp_path)]
    with pytest.raises(KeyboardInterrupt):
        q1_train.train(q1_train.parse_args(args))
    monkeypatch.undo()
    q1_train.train(q1_train.parse_args(args + ["--resume"]))
    resumed = read_csv(tmp_path / "q1" / "demo" / "unet-seed0" / "history.csv")
    straight = read_csv(trained / "q1" / "demo" / "unet-seed0" / "history.csv")
    for key in ("train_loss", "validation_masked_ssim", "validation_masked_psnr"):
        assert resumed[-1][key] == pytest.approx(straight[-1][key], rel=1e-5)


def test_evaluation_reports_every_method_and_view(trained):
    result = q1_eval.main(q1_eval.parse_args(["--data", "demo", "--device", "cpu",
                                              "--results-root", str(trained)]))
    assert set(result["methods"]) == {"identity", "linear", "unet-seed0", "transunet-seed0"}
    for m in result["methods"].values():
        for agg in [m["overall"], *m["per_view"].values()]:
            stats = agg["masked_ssim"]
            assert stats["ci95"][0] <= stats["mean"] <= stats["ci95"][1]
    # the linear map inverts the contrast: it must beat using T1 as it is
    overall = {k: v["overall"] for k, v in result["methods"].items()}
    assert overall["linear"]["masked_mae"]["mean"] < overall["identity"]["masked_mae"]["mean"]
    figures = trained / "q1" / "demo" / "figures"
    assert {"curves.png", "examples.png", "worst_slices.png", "per_view_bars.png"} <= {
        f.name for f in figures.iterdir()}
    saved = read_json(trained / "q1" / "demo" / "metrics.json")
    assert saved["normalisation"] and saved["data_range"] == 1.0 and saved["git_commit"]


def test_external_evaluation_saves_predictions(trained, tmp_path):
    """Evaluating the demo-trained models on another dataset: every slice is a test slice."""
    from tests.test_q1_data import _write_folder

    source = _write_folder(tmp_path / "other")
    out = tmp_path / "pred.npz"
    result = q1_eval.main(q1_eval.parse_args([
        "--data", str(source.path), "--trained-on", "demo", "--device", "cpu",
        "--results-root", str(trained), "--save-predictions", str(out)]))
    assert result["test_slices"] == 12 and result["trained_on"] == "demo"
    pred = np.load(out)
    assert pred["pred"].shape == (12, 1, 64, 64) and pred["pred"].dtype == np.float32
    assert list(pred["split"][:6]) == ["train"] * 6 and list(pred["row"][:3]) == [0, 1, 2]
    assert "percentile" in str(pred["normalisation"])
    tag = resolve(str(source.path), hub_cached=False).tag
    assert tag.startswith("local-other-")                 # the folder's name + its data's hash
    assert (trained / "q1" / tag / "trained-on-demo" / "metrics.json").exists()
