"""Q1 end to end on tiny demo settings: the out-of-fold protocol, resume, evaluation from files,
the final model and its export."""
from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from common.cli import DataError
from common.datasource import PROJECT_ROOT
from common.io import read_csv, read_json
from q1_mri import eval as q1_eval
from q1_mri import train as q1_train
from q1_mri.data import SCALE, load_mri, pool, resolve_source
from tests.conftest import Q1_RUNS, Q1_TINY, interrupt_after_first_epoch

RUN = "unet-kfold2-fold0-seed0"


@pytest.fixture(scope="module")
def trained(q1_results):
    return q1_results


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Tiny models on one thread (configure_threads would take every core: on a busy machine
    two OpenMP threads per process run ~10x slower)."""
    from q1_mri import infer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for module in (q1_train, infer):
        monkeypatch.setattr(module, "configure_threads", lambda: None)
    yield
    torch.set_num_threads(threads)


def test_training_writes_split_history_checkpoint_summary_and_predictions(trained):
    run = trained / "q1" / "demo" / RUN
    history = read_csv(run / "history.csv")
    assert [r["epoch"] for r in history] == [1.0, 2.0]
    assert {"train_loss", "heldout_masked_ssim", "train_masked_ssim", "slices_per_s"} <= set(history[0])
    summary = read_json(run / "summary.json")
    assert summary["data_source"] == "demo" and summary["parameters"] > 0
    assert summary["split_id"] == read_json(run / "split.json")["split_id"]
    assert (run / "checkpoint.pt").exists()
    with np.load(run / "predictions.npz") as f:
        assert f["t2_pred"].shape == (len(f["row"]), 1, 64, 64) and f["t2_pred"].dtype == np.float16
        assert str(f["scale"]) == SCALE and str(f["split_id"]) == summary["split_id"]
        assert set(f["split"]) <= {"train", "validation"}


def test_each_patient_is_predicted_exactly_once_out_of_fold(trained):
    root = trained / "q1" / "demo"
    split = read_json(root / "splits" / "kfold2-seed0.json")
    tested = [p for fold in split["folds"].values() for p, r in fold["roles"].items() if r == "test"]
    slices = pool(load_mri(resolve_source("demo")))
    assert sorted(tested) == sorted(set(slices.patient_id.tolist()))     # once each, all of them
    for method in ("unet", "unet25d", "linear"):
        seen = []
        for fold in (0, 1):
            run = root / f"{method}-kfold2-fold{fold}-seed0"
            roles = read_json(run / "split.json")["roles"]
            with np.load(run / "predictions.npz") as f:
                assert {roles[p] for p in f["patient_id"]} == {"test"}    # never a training patient
                seen += list(zip(f["split"].tolist(), f["row"].tolist()))
        assert sorted(seen) == sorted(zip(slices.split.tolist(), slices.row.tolist()))


def test_resumed_run_matches_uninterrupted_run(trained, tmp_path, monkeypatch):
    interrupt_after_first_epoch(monkeypatch, q1_train)
    args = Q1_TINY + Q1_RUNS[0] + ["--results-root", str(tmp_path)]
    with pytest.raises(KeyboardInterrupt):
        q1_train.train(q1_train.parse_args(args))
    monkeypatch.undo()
    q1_train.train(q1_train.parse_args(args + ["--resume"]))
    resumed = read_csv(tmp_path / "q1" / "demo" / RUN / "history.csv")
    straight = read_csv(trained / "q1" / "demo" / RUN / "history.csv")
    for key in ("train_loss", "heldout_masked_ssim", "heldout_masked_psnr"):
        assert resumed[-1][key] == pytest.approx(straight[-1][key], rel=1e-5)


def test_evaluation_scores_every_method_per_patient_from_files(q1_evaluated):
    trained, result = q1_evaluated
    methods = result["methods"]
    assert list(methods) == ["unet", "unet+flip", "unet25d", "unet25d+flip", "identity", "linear"]
    assert result["device"].startswith("none") and result["patients"] == 20
    for m in methods.values():
        assert not m["problems"]
        for scale in (SCALE, "t1-derived"):
            overall = m["scores"][scale]["overall"]["masked_ssim"]
            per_patient = [p["masked_ssim"] for p in m["scores"][scale]["per_patient"].values()]
            assert len(per_patient) == 20 and overall["mean"] == pytest.approx(np.mean(per_patient))
            assert overall["ci95"][0] <= overall["mean"] <= overall["ci95"][1]   # 20 >= 5 patients
    linear, identity = (methods[k]["scores"][SCALE]["overall"]["masked_mae"]["mean"]
                        for k in ("linear", "identity"))
    assert linear < identity                      # the linear map inverts the contrast
    paired = result["paired"]["methods"]["unet25d"][SCALE]["masked_ssim"]
    assert result["paired"]["reference"] == "unet" and paired["patients"] == 20
    assert result["final_choice"]["model"] in ("unet", "unet25d")
    assert result["final_choice"]["epochs"] == 2
    figures = trained / "q1" / "demo" / "figures"
    assert {"curves.png", "examples.png", "worst_slices.png", "per_view_bars.png",
            "per_patient.png"} <= {f.name for f in figures.iterdir()}
    saved = read_json(trained / "q1" / "demo" / "metrics.json")
    assert saved["scales"][SCALE].startswith("oracle") and saved["data_range"] == 1.0


def test_evaluation_imports_no_training_code():
    code = ("import sys, q1_mri.eval; bad = [m for m in ('q1_mri.train', 'q1_mri.predict', "
            "'q1_mri.model') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, check=True, timeout=60)


def test_evaluation_refuses_a_prediction_file_of_another_split(trained, tmp_path):
    root = tmp_path / "results"
    shutil.copytree(trained, root)
    demo = root / "q1" / "demo"
    shutil.copy(demo / "unet-kfold2-fold1-seed0" / "predictions.npz",
                demo / RUN / "predictions.npz")
    with pytest.raises(DataError, match="were made on split .* but the run's split.json is"):
        q1_eval.main(q1_eval.parse_args(["--data", "demo", "--results-root", str(root)]))


def test_final_model_from_cv_and_external_export(q1_evaluated, tmp_path):
    """make q1-final, then q1_mri.eval --data OTHER --trained-on demo --save-predictions."""
    from tests.test_q1_bad_input import write_mri

    trained, _ = q1_evaluated
    root = tmp_path / "results"
    shutil.copytree(trained, root, ignore=shutil.ignore_patterns("*-kfold2-fold1-*"))
    (root / "q1" / "demo" / "metrics.json").write_text(
        (trained / "q1" / "demo" / "metrics.json").read_text())
    summary = q1_train.train(q1_train.parse_args(["--data", "demo", "--device", "cpu",
                                                  "--split", "all", "--from-cv",
                                                  "--results-root", str(root)]))
    choice = read_json(trained / "q1" / "demo" / "metrics.json")["final_choice"]
    assert summary["model"] == choice["model"] and summary["epochs"] == choice["epochs"]
    assert summary["split_counts"]["test"]["patients"] == 0
    other = write_mri(tmp_path / "other", validation=["q1", "q2"])       # a single split
    out = tmp_path / "p.npz"
    result = q1_eval.main(q1_eval.parse_args([
        "--data", str(other.path), "--trained-on", "demo", "--device", "cpu",
        "--results-root", str(root), "--save-predictions", str(out)]))
    assert result["test_slices"] == 6 and result["trained_on"] == "demo"
    assert result["train_patients"] == 20
    with np.load(out) as f:
        assert f["t2_pred"].shape == (6, 1, 64, 64) and f["t2_pred"].dtype == np.float32
        assert list(f["row"]) == list(range(6)) and set(f["split"]) == {"validation"}
        assert list(f["patient_id"][:2]) == ["q1", "q2"] and str(f["scale"]) == SCALE
    assert (root / "q1" / other.tag / "trained-on-demo" / "metrics.json").exists()
