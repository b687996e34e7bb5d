"""Q1 end to end on tiny demo settings: the out-of-fold protocol with inner validation, resume,
evaluation from files, the deployed model and its export."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from common.io import read_csv, read_json
from common.runs import RunError
from q1_mri import eval as q1_eval
from q1_mri import report
from q1_mri import train as q1_train
from q1_mri.data import UNITS, load_mri, pool, resolve_source
from tests.conftest import Q1_RUNS, Q1_TINY, interrupt_after_first_epoch

RUN = "unet-kfold2-fold0-seed0"


@pytest.fixture(scope="module")
def trained(q1_results):
    return q1_results


def test_training_writes_split_history_checkpoint_summary_and_predictions(trained):
    run = trained / "q1" / "demo" / RUN
    history = read_csv(run / "history.csv")
    assert [r["epoch"] for r in history] == [1.0, 2.0]
    assert {"train_loss", "val_masked_ssim", "train_masked_ssim", "slices_seen",
            "score"} <= set(history[0])
    summary = read_json(run / "summary.json")
    assert summary["data_source"] == "demo" and summary["parameters"] > 0
    assert summary["split_id"] == read_json(run / "split.json")["split_id"]
    best = max(history, key=lambda r: r["score"])["epoch"]
    assert summary["best_epoch"] == best and torch.load(run / "best.pt")["epoch"] == best
    with np.load(run / "predictions.npz") as f:
        assert f["t2_pred"].shape == (len(f["row"]), 1, 64, 64) and f["t2_pred"].dtype == np.float16
        assert str(f["units"]) == UNITS and str(f["split_id"]) == summary["split_id"]
        assert set(f["role"]) == {"val", "test"} and set(f["split"]) <= {"train", "validation"}


def test_each_patient_is_predicted_exactly_once_out_of_fold(trained):
    root = trained / "q1" / "demo"
    split = read_json(root / "splits" / "kfold2-seed0.json")
    tested = [p for fold in split["folds"].values() for p, r in fold["roles"].items() if r == "test"]
    slices = pool(load_mri(resolve_source("demo")))
    assert sorted(tested) == sorted(set(slices.patient_id.tolist()))     # once each, all of them
    for fold in split["folds"].values():
        roles = fold["roles"]
        assert {r for r in roles.values()} == {"train", "val", "test"}
    for method in ("unet", "unet25d", "plain", "linear"):
        seen = []
        for fold in (0, 1):
            run = root / f"{method}-kfold2-fold{fold}-seed0"
            roles = read_json(run / "split.json")["roles"]
            with np.load(run / "predictions.npz") as f:
                assert all(roles[p] == r for p, r in zip(f["patient_id"], f["role"]))
                assert "train" not in {roles[p] for p in f["patient_id"]}   # never trained on
                test = f["role"] == "test"
                seen += list(zip(f["split"][test].tolist(), f["row"][test].tolist()))
        assert sorted(seen) == sorted(zip(slices.split.tolist(), slices.row.tolist()))


def test_resumed_run_matches_uninterrupted_run(trained, tmp_path, monkeypatch):
    interrupt_after_first_epoch(monkeypatch, q1_train)
    args = Q1_TINY + Q1_RUNS[0] + ["--results-root", str(tmp_path)]
    with pytest.raises(KeyboardInterrupt):
        q1_train.train(q1_train.parse_args(args))
    monkeypatch.undo()
    assert not (tmp_path / "q1" / "demo" / RUN / "summary.json").exists()   # not a finished run
    q1_train.train(q1_train.parse_args(args + ["--resume"]))
    resumed = read_csv(tmp_path / "q1" / "demo" / RUN / "history.csv")
    straight = read_csv(trained / "q1" / "demo" / RUN / "history.csv")
    for key in ("train_loss", "val_masked_ssim", "val_masked_psnr"):
        assert resumed[-1][key] == pytest.approx(straight[-1][key], rel=1e-5)


def test_evaluation_scores_every_method_per_patient_from_files(q1_evaluated):
    trained, result = q1_evaluated
    methods = result["methods"]
    assert list(methods) == ["unet", "unet25d", "plain", "identity", "linear", "lut"]
    assert result["device"].startswith("none") and result["patients"] == 20
    for m in methods.values():
        assert not m["problems"]
        overall = m["overall"]["masked_ssim"]
        per_patient = [p["masked_ssim"] for p in m["per_patient"].values()]
        assert len(per_patient) == 20 and overall["mean"] == pytest.approx(np.mean(per_patient))
        assert overall["ci95"][0] <= overall["mean"] <= overall["ci95"][1]   # 20 >= 5 patients
        assert set(m["inner_validation"]) >= {"plain", "flip", "score"}
    linear, identity = (methods[k]["overall"]["masked_mae"]["mean"] for k in ("linear", "identity"))
    assert linear < identity                      # the linear map inverts the contrast
    paired = result["paired"]["methods"]["unet"]["masked_ssim"]
    assert result["paired"]["reference"] == "plain" and paired["patients"] == 20
    assert result["final_choice"]["method"] in ("unet", "unet25d")
    figures = trained / "q1" / "demo" / "figures"
    assert {"curves.png", "examples.png", "worst_slices.png",
            "per_patient.png"} <= {f.name for f in figures.iterdir()}
    saved = read_json(trained / "q1" / "demo" / "metrics.json")
    assert saved["scale"] == "slice-p995" and saved["data_range"] == 1.0


def test_choices_never_read_the_test_patients(q1_evaluated, tmp_path):
    """Replace every test slice's prediction by noise: the flip choices and the deployed
    configuration stay the same; only the test scores move."""
    trained, result = q1_evaluated
    root = tmp_path / "results"
    shutil.copytree(trained, root)
    rng = np.random.default_rng(0)
    for run in (root / "q1" / "demo").glob("*-kfold2-fold*-seed0"):
        with np.load(run / "predictions.npz") as f:
            arrays = {k: f[k] for k in f.files}
        test = arrays["role"] == "test"
        for key in ("t2_pred", "t2_pred_flip"):
            if key in arrays:
                arrays[key][test] = rng.random(arrays[key][test].shape).astype(np.float16)
        np.savez_compressed(run / "predictions.npz", **arrays)
        summary = read_json(run / "summary.json")
        summary.pop("files", None)                         # the file is knowingly replaced
        (run / "summary.json").write_text(json.dumps(summary))
    again = q1_eval.main(q1_eval.parse_args(["--data", "demo", "--results-root", str(root)]))
    for m, e in result["methods"].items():
        assert again["methods"][m]["inner_validation"] == e["inner_validation"]
        assert again["methods"][m]["fold_flip"] == e["fold_flip"]
    assert again["final_choice"]["method"] == result["final_choice"]["method"]
    assert again["against_chosen"].keys() == result["against_chosen"].keys()
    for name, c in result["against_chosen"].items():
        assert again["against_chosen"][name]["inner_validation"] == c["inner_validation"]
    assert again["methods"]["unet"]["overall"] != result["methods"]["unet"]["overall"]


def test_an_ablation_on_some_folds_is_compared_with_the_chosen_model_on_its_patients_only(
        q1_evaluated, tmp_path):
    """The 2.5-D U-Net run on fold 0 only: it is no headline and no candidate, and its
    comparison with the chosen U-Net uses fold 0's inner validation and test patients alone."""
    trained, _ = q1_evaluated
    root = tmp_path / "results"
    shutil.copytree(trained, root)
    shutil.rmtree(root / "q1" / "demo" / "unet25d-kfold2-fold1-seed0")
    result = q1_eval.main(q1_eval.parse_args(["--data", "demo", "--results-root", str(root)]))
    unet, partial = result["methods"]["unet"], result["methods"]["unet25d"]
    assert partial["problems"] and result["final_choice"]["method"] == "unet"
    c = result["against_chosen"]["unet25d"]
    assert c["folds"] == ["fold0"]
    assert c["inner_validation"] == {"unet25d": partial["inner_by_fold"]["fold0"],
                                     "unet": unet["inner_by_fold"]["fold0"]}
    fold0 = [p for p, v in unet["per_patient"].items() if v["fold"] == "fold0"]
    assert sorted(c["paired"]["masked_ssim"]["per_patient"]) == sorted(fold0) == sorted(
        partial["per_patient"])
    assert c["paired"]["masked_ssim"]["mean_diff"] == pytest.approx(np.mean(
        [partial["per_patient"][p]["masked_ssim"] - unet["per_patient"][p]["masked_ssim"]
         for p in fold0]))
    rows = report.ablation_table(result).data.splitlines()[2:]
    assert [r.split(" | ")[0].strip("| ") for r in rows] == ["unet (chosen)", "unet25d"]
    assert "1 (10 patients)" in rows[1] and "2 (20 patients)" in rows[0]


def test_evaluation_refuses_a_prediction_file_of_another_run(trained, tmp_path):
    root = tmp_path / "results"
    shutil.copytree(trained, root)
    demo = root / "q1" / "demo"
    shutil.copy(demo / "unet-kfold2-fold1-seed0" / "predictions.npz",
                demo / RUN / "predictions.npz")
    with pytest.raises(RunError, match="mixes two runs"):
        q1_eval.main(q1_eval.parse_args(["--data", "demo", "--results-root", str(root)]))


def test_resume_refuses_to_read_back_a_damaged_prediction_file(trained, tmp_path):
    """--resume of a finished run (what the notebooks call) checks its prediction file against
    summary.json's digest: a truncated file is named in one line, never read back as the run."""
    root = tmp_path / "results"
    shutil.copytree(trained, root)
    path = root / "q1" / "demo" / RUN / "predictions.npz"
    path.write_bytes(path.read_bytes()[:1000])
    args = Q1_TINY + ["--model", "unet", "--fold", "0", "--results-root", str(root), "--resume"]
    with pytest.raises(RunError, match="missing, damaged or not the file"):
        q1_train.train(q1_train.parse_args(args))


def test_deployed_model_and_its_export_map_every_row_back(q1_evaluated, tmp_path):
    """make q1-final, then q1_mri.infer on a folder whose splits have empty slices in the
    middle: every row of the file is the row of that slice in the input as read."""
    from q1_mri import final as q1_final
    from q1_mri import infer as q1_infer
    from tests.test_q1_bad_input import write_mri

    trained, result = q1_evaluated
    root = tmp_path / "results"
    shutil.copytree(trained, root)
    deployed = q1_final.main(q1_final.parse_args(["--data", "demo", "--results-root", str(root)]))
    choice = result["final_choice"]
    assert deployed["method"] == choice["method"] and deployed["flip"] == choice["flip"]
    assert sorted(e["run"] for (e,) in deployed["folds"].values()) == sorted(
        f"{choice['method']}-kfold2-fold{k}-seed0" for k in range(2))
    patients = {"train": ["a", "b"], "validation": ["q1", "q2"]}
    empty = {"train": {2: "t1"}, "validation": {1: "t2", 4: "t1"}}
    other = write_mri(tmp_path / "other", n=6, empty=empty, **patients)
    out = tmp_path / "p.npz"
    q1_infer.main(q1_infer.parse_args(["--data", str(other.path), "--trained-on", "demo",
                                       "--device", "cpu", "--results-root", str(root),
                                       "--out", str(out)]))
    with np.load(out) as f:
        assert str(f["units"]) == UNITS and f["t2_pred"].dtype == np.float32
        for s in ("train", "validation"):               # row k of the file holds patient k % 2
            rows = f["row"][f["split"] == s].tolist()
            assert rows == [r for r in range(6) if r not in empty[s]]
            assert f["patient_id"][f["split"] == s].tolist() == [patients[s][r % 2] for r in rows]
    scored = q1_eval.main(q1_eval.parse_args(["--data", str(other.path), "--predictions",
                                              str(out), "--results-root", str(root)]))
    assert scored["overall"]["masked_ssim"]["patients"] == 4


def test_resuming_a_finished_run_reads_it_back_and_writes_nothing(trained, tmp_path):
    """What the notebooks do: the same training call, with --resume, on a run that exists
    returns its summary without training or touching a file."""
    root = tmp_path / "results"
    shutil.copytree(trained, root)
    run = root / "q1" / "demo" / RUN
    before = {f.name: f.stat().st_mtime_ns for f in run.iterdir()}
    summary = q1_train.train(q1_train.parse_args(Q1_TINY + Q1_RUNS[0] + [
        "--results-root", str(root), "--resume"]))
    assert summary == read_json(run / "summary.json")
    assert {f.name: f.stat().st_mtime_ns for f in run.iterdir()} == before
