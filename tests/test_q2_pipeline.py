"""Q2 end to end on tiny demo settings: the out-of-fold protocol, files handed between stages,
run identity, resume, the final model and its export."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from common.io import read_csv, read_json, write_json
from common.runs import RunError
from q2_ecg import eval as q2_eval
from q2_ecg import train as q2_train
from q2_ecg.prediction_file import load_predictions
from tests.conftest import Q2_KFOLD, Q2_TINY, interrupt_after_first_epoch

DEMO = "q2/demo"


@pytest.fixture(scope="module")
def evaluated(q2_evaluated):
    return q2_evaluated


def runs_of(root, method, scheme="kfold2"):
    return sorted(f for f in (root / DEMO).glob(f"{method}-{scheme}-fold*-seed0"))


def test_every_record_is_tested_exactly_once_and_persons_never_cross(q2_results):
    split = read_json(q2_results / DEMO / "splits" / "kfold2-seed0.json")
    tested = []
    for fold in split["folds"].values():
        roles = fold["roles"]
        persons = lambda role, roles=roles: {  # noqa: E731
            split["persons"][r] for r, x in roles.items() if x == role}
        assert not persons("train") & persons("test") and not persons("val") & persons("test")
        assert not persons("train") & persons("val")
        tested += [r for r, x in roles.items() if x == "test"]
    assert sorted(tested) == sorted(split["persons"])            # each record once
    for folder in runs_of(q2_results, "resnet"):                 # the runs used that file
        p = load_predictions(folder / "predictions.npz")
        entry = read_json(folder / "split.json")
        assert set(p.patient_id[p.role == "test"]) == {r for r, x in entry["roles"].items()
                                                       if x == "test"}


def test_run_folders_hold_model_fold_and_seed(q2_results):
    names = {f.name for f in (q2_results / DEMO).iterdir() if f.is_dir()}
    assert {"resnet-kfold2-fold0-seed0", "resnet-kfold2-fold1-seed0", "context-kfold2-fold0-seed0",
            "resnet-lodo-svdb-seed0", "resnet-beat-seed0", "rr-logistic-kfold2-fold1-seed0",
            "majority-kfold2-fold0-seed0"} <= names
    history = read_csv(q2_results / DEMO / "resnet-kfold2-fold0-seed0" / "history.csv")
    assert [r["epoch"] for r in history] == [1.0, 2.0]


def test_evaluation_reports_out_of_fold_normal_and_abnormal(evaluated):
    root, result = evaluated
    kfold = result["models"]["kfold"]
    assert {"resnet", "context", "segment", "autoencoder", "rr-logistic", "majority"} <= set(kfold)
    seed0 = kfold["resnet"]["seeds"]["0"]
    assert seed0["problems"] == [] and seed0["pooled"]["records"] == 24
    for group in ("normal", "abnormal", "NOR", "SVEB", "VEB"):
        for metric in ("se", "ppv", "f1", "sp"):
            assert f"{group}_{metric}" in seed0["pooled"]
    assert set(seed0["per_fold"]) == {"fold0", "fold1"} and set(seed0["per_database"])
    assert "SVEB_f1" not in kfold["autoencoder"]["seeds"]["0"]["pooled"]
    assert kfold["majority"]["seeds"]["0"]["pooled"]["abnormal_se"]["value"] == 0
    assert kfold["resnet"]["seed_summary"]["SVEB_f1"]["seeds"] == 1
    assert "svdb" in result["models"]["lodo"]["resnet"]["seeds"]["0"]["per_database"]
    assert result["final_choice"]["model"] in ("resnet", "context")
    figures = {f.name for f in (root / DEMO / "figures").iterdir()}
    assert {"curves.png", "confusion.png", "roc_pr.png", "examples.png", "lodo.png",
            "leaky.png"} <= figures


def test_metrics_of_a_hand_made_prediction_file_equal_sklearn(evaluated, tmp_path):
    root, _ = evaluated
    folder = runs_of(root, "resnet")[0]
    p = load_predictions(folder / "predictions.npz")
    run = q2_eval.Run(folder, "demo")
    test, pred, p_abn = run.test()
    s = q2_eval.score(test.label, pred, p_abn, test.patient_id, n_boot=50)
    for k, name in ((1, "SVEB"), (2, "VEB")):
        assert s[f"{name}_f1"]["value"] == pytest.approx(f1_score(test.label == k, pred == k))
        assert s[f"{name}_se"]["value"] == pytest.approx(recall_score(test.label == k, pred == k))
        assert s[f"{name}_ppv"]["value"] == pytest.approx(
            precision_score(test.label == k, pred == k, zero_division=np.nan), nan_ok=True)
    assert s["auroc"]["value"] == pytest.approx(roc_auc_score(test.label > 0, p_abn))
    assert len(p.label) > len(test.label)                     # val rows are there, unscored


def test_evaluation_refuses_a_prediction_file_of_another_split(evaluated, tmp_path):
    root, _ = evaluated
    copy = tmp_path / "results"
    shutil.copytree(root, copy)
    fold0, fold1 = runs_of(copy, "resnet")
    shutil.copy(fold0 / "predictions.npz", fold1 / "predictions.npz")
    with pytest.raises(q2_eval.cli.DataError, match="made on split"):
        q2_eval.main(q2_eval.parse_args(["--data", "demo", "--results-root", str(copy)]))


def test_resumed_run_matches_uninterrupted_run(q2_results, tmp_path, monkeypatch):
    interrupt_after_first_epoch(monkeypatch, q2_train)
    args = Q2_TINY + ["--model", "resnet", *Q2_KFOLD, "--fold", "0", "--results-root",
                      str(tmp_path)]
    with pytest.raises(KeyboardInterrupt):
        q2_train.train(q2_train.parse_args(args))
    monkeypatch.undo()
    assert not (tmp_path / DEMO / "resnet-kfold2-fold0-seed0" / ".lock").exists()
    q2_train.train(q2_train.parse_args(args + ["--resume"]))
    resumed = read_csv(tmp_path / DEMO / "resnet-kfold2-fold0-seed0" / "history.csv")
    straight = read_csv(q2_results / DEMO / "resnet-kfold2-fold0-seed0" / "history.csv")
    for key in ("train_loss", "val_abnormal_macro_f1", "val_normal_f1"):
        assert resumed[-1][key] == pytest.approx(straight[-1][key], rel=1e-5)
    with pytest.raises(RunError, match="other settings"):          # another configuration
        q2_train.train(q2_train.parse_args(args + ["--resume", "--lr", "0.01"]))
    with pytest.raises(RunError, match="already trained 2 epochs"):
        q2_train.train(q2_train.parse_args(args + ["--resume", "--epochs", "1"]))


def test_ensemble_is_the_normalised_geometric_mean_of_its_members(q2_results):
    from scipy.stats import gmean

    folders = runs_of(q2_results, "ensemble")
    assert [f.name for f in folders] == ["ensemble-kfold2-fold0-seed0", "ensemble-kfold2-fold1-seed0"]
    for folder in folders:
        ens = load_predictions(folder / "predictions.npz")
        members = [load_predictions(folder.parent / folder.name.replace("ensemble", m) / "predictions.npz")
                   for m in ("resnet", "context")]
        for field in ("prob", "prob_adapted"):
            g = gmean([getattr(m, field).astype(np.float64) for m in members], axis=0)
            np.testing.assert_allclose(getattr(ens, field), g / g.sum(1, keepdims=True), atol=1e-6)
        assert (ens.patient_id == members[0].patient_id).all() and ens.model == "ensemble"
        assert read_json(folder / "split.json") == read_json(
            folder.parent / folder.name.replace("ensemble", "resnet") / "split.json")


def test_ensemble_refuses_members_that_hold_other_beats(q2_results, tmp_path):
    from q2_ecg import ensemble

    root = tmp_path / "results"
    shutil.copytree(q2_results / DEMO, root / DEMO)
    fold0, fold1 = (root / DEMO / f"context-kfold2-fold{k}-seed0" for k in (0, 1))
    shutil.copy(fold1 / "predictions.npz", fold0 / "predictions.npz")
    with pytest.raises(q2_eval.cli.DataError, match="made on split|do not hold the same beats"):
        ensemble.main(ensemble.parse_args(["--data", "demo", "--results-root", str(root)]))


def test_final_ensemble_trains_each_member_and_exports_their_mean(tmp_path):
    from tests.test_q2_data import _record, _write_parquet

    root = tmp_path / "results"
    write_json(root / DEMO / "metrics.json", {"final_choice": {
        "model": "ensemble", "epochs": None, "members": {"resnet": 1, "context": 2},
        "logit_bias": [0.0, 0.0, 0.0], "adapt": True}})
    runs = q2_train.main(q2_train.parse_args(Q2_TINY + ["--split", "all", "--from-cv",
                                                        "--results-root", str(root)]))
    assert [(r["model"], r["epochs_run"]) for r in runs] == [("resnet", 1), ("context", 2)]
    source = _write_parquet(tmp_path / "other", [_record("x0", n=2000, locs=tuple(
        range(100, 1900, 100)), labels=tuple([0, 0, 1, 0, 2, 0] * 3))])
    out = q2_eval.main(q2_eval.parse_args([
        "--data", str(source.path), "--trained-on", "demo", "--device", "cpu",
        "--results-root", str(root), "--save-predictions", str(tmp_path / "x.npz")]))
    assert out["final_choice"]["model"] == "ensemble" and out["external"]["pooled"]["beats"] == 18
    assert str(np.load(tmp_path / "x.npz")["model"]) == "ensemble"
    summary = root / DEMO / "resnet-all-seed0" / "summary.json"
    first = read_json(summary)                  # retrained for other biases, its partner not
    write_json(summary, {**first, "final_choice": {**first["final_choice"], "logit_bias": [0, 1, 1]}})
    with pytest.raises(q2_eval.cli.DataError, match=r"\['context-all-seed0'\] .* another final choice"):
        q2_eval.main(q2_eval.parse_args(["--data", str(source.path), "--trained-on", "demo",
                                         "--device", "cpu", "--results-root", str(root)]))
    shutil.rmtree(root / DEMO / "context-all-seed0")
    with pytest.raises(q2_eval.cli.DataError, match=r"the final ensemble lacks \['context-all-seed0'\]"):
        q2_eval.main(q2_eval.parse_args(["--data", str(source.path), "--trained-on", "demo",
                                         "--device", "cpu", "--results-root", str(root)]))


def test_final_model_and_external_export(evaluated, tmp_path):
    from tests.test_q2_data import _record, _write_parquet

    root, result = evaluated
    runs = q2_train.main(q2_train.parse_args(Q2_TINY + ["--split", "all", "--from-cv",
                                                        "--results-root", str(root)]))
    chosen = result["final_choice"]
    assert [r["model"] for r in runs] == list(chosen["members"] or [chosen["model"]])
    assert all(r["split_counts"]["train"]["records"] == 24 for r in runs)
    rows = [_record(f"x{i}", n=2000, locs=tuple(range(100, 1900, 100)),
                    labels=tuple([0, 0, 1, 0, 2, 0] * 3)) for i in range(3)]
    source = _write_parquet(tmp_path / "other", rows)
    out = q2_eval.main(q2_eval.parse_args([
        "--data", str(source.path), "--trained-on", "demo", "--device", "cpu",
        "--results-root", str(root), "--save-predictions", str(tmp_path / "x.npz")]))
    assert out["external"]["pooled"]["beats"] == 3 * 18
    saved = np.load(tmp_path / "x.npz")
    assert set(saved["patient_id"]) == {"x0", "x1", "x2"} and len(saved["beat_loc"]) == 3 * 18
    assert set(np.unique(saved["pred"])) <= {0, 1, 2}
    assert ((saved["p_abnormal"] >= 0) & (saved["p_abnormal"] <= 1)).all()
