"""Q2 end to end on tiny demo settings: the out-of-fold protocol, files handed between stages,
run identity, resume, the final model and its export."""
from __future__ import annotations

import json
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


def same(a, b) -> bool:
    """Equal as JSON (NaN equals NaN)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


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
    assert {"resnet", "context", "ensemble", "rr-logistic", "rr-record-logistic",
            "majority"} <= set(kfold)
    seed0 = kfold["resnet"]["seeds"]["0"]
    assert seed0["problems"] == [] and seed0["pooled"]["beats"] > 0
    for group in ("normal", "abnormal", "NOR", "SVEB", "VEB"):
        for metric in ("se", "ppv", "f1", "sp"):
            assert f"{group}_{metric}" in seed0["pooled"]
    assert set(seed0["per_fold"]) == {"fold0", "fold1"}
    assert {"mitdb", "svdb"} <= set(seed0["per_database"])
    assert "SVEB_f1_ci95" in seed0["per_database"]["svdb"]
    assert set(seed0["by_adaptation"]) == {"raw", "adapted"}
    assert kfold["majority"]["seeds"]["0"]["pooled"]["abnormal_se"]["value"] == 0
    assert kfold["resnet"]["seed_summary"]["SVEB_f1"]["seeds"] == 1
    assert "mitdb_SVEB_f1" in kfold["resnet"]["seed_summary"]
    assert "svdb" in result["models"]["lodo"]["resnet"]["seeds"]["0"]["per_database"]
    assert result["final_choice"]["model"] in ("resnet", "context", "ensemble")
    assert result["headline"]["chosen"] == result["final_choice"]["model"]
    assert "left_out" in result["headline"]["methods"]["resnet"]
    figures = {f.name for f in (root / DEMO / "figures").iterdir()}
    assert {"curves.png", "confusion.png", "roc_pr.png", "examples.png", "lodo.png",
            "leaky.png", "bias_grid.png"} <= figures


def test_metrics_of_a_hand_made_prediction_file_equal_sklearn(evaluated):
    from q2_ecg.rules import decide

    root, _ = evaluated
    run = q2_eval.Run(runs_of(root, "resnet")[0], "demo")
    test = run.preds.select(run.preds.role == "test")
    pred, p_abn = decide(test.prob, [0.0, 0.3, -0.2])
    s = q2_eval.score(test.label, pred, p_abn, test.patient_id, n_boot=50)
    for k, name in ((1, "SVEB"), (2, "VEB")):
        assert s[f"{name}_f1"]["value"] == pytest.approx(f1_score(test.label == k, pred == k))
        assert s[f"{name}_se"]["value"] == pytest.approx(recall_score(test.label == k, pred == k))
        assert s[f"{name}_ppv"]["value"] == pytest.approx(
            precision_score(test.label == k, pred == k, zero_division=np.nan), nan_ok=True)
    assert s["auroc"]["value"] == pytest.approx(roc_auc_score(test.label > 0, p_abn))
    assert len(run.preds.label) > len(test.label)                 # val rows are there, unscored


def test_decision_rules_never_read_held_out_labels(evaluated):
    """Scramble every held-out label of every fold: the rules (biases, adaptation) chosen for
    the folds and for the deployed model stay exactly the same."""
    root, _ = evaluated
    runs = [q2_eval.Run(f, "demo") for f in runs_of(root, "ensemble")]
    full, per_fold = q2_eval.choose_rules(runs)
    rng = np.random.default_rng(0)
    for run in runs:
        test = run.preds.role == "test"
        run.preds.label = np.where(test, rng.integers(0, 3, len(test)), run.preds.label)
    full2, per_fold2 = q2_eval.choose_rules(runs)
    assert same(full2, full) and same(per_fold2, per_fold)


def test_a_folds_rule_is_chosen_without_its_held_out_persons(evaluated):
    """The rule deciding fold k's held-out records ignores other folds' inner-validation rows of
    those records: changing exactly those labels leaves fold k's rule as it was."""
    root, _ = evaluated
    runs = [q2_eval.Run(f, "demo") for f in runs_of(root, "resnet")]
    _, per_fold = q2_eval.choose_rules(runs)
    held = runs[0].test_records
    for run in runs[1:]:
        mine = np.isin(run.preds.patient_id, list(held)) & (run.preds.role == "val")
        run.preds.label = np.where(mine, 2 - run.preds.label.clip(0, 2), run.preds.label)
    _, again = q2_eval.choose_rules(runs)
    assert same(again[runs[0].fold], per_fold[runs[0].fold])


def test_person_bootstrap_resamples_whole_persons():
    """Two records of one person always travel together: the intervals equal those of the
    person-merged counts and differ from resampling the records apart."""
    rng = np.random.default_rng(1)
    record = np.repeat(np.arange(12), 50).astype(str)
    person = np.where(np.isin(record, ["0", "1"]), "0", record)
    y = np.where(np.isin(record, ["0", "1"]), rng.integers(0, 3, len(record)), 0)
    pred = np.where(rng.random(len(y)) < 0.8, y, 0)
    by_person = q2_eval.score(y, pred, None, person, n_boot=200)
    merged = q2_eval.score(y, pred, None, np.where(person == "0", "merged", person), n_boot=200)
    by_record = q2_eval.score(y, pred, None, record, n_boot=200)
    assert by_person["persons"] == 11 and by_record["persons"] == 12
    assert by_person["SVEB_f1"]["ci95"] == merged["SVEB_f1"]["ci95"]
    assert by_person["SVEB_f1"]["ci95"] != by_record["SVEB_f1"]["ci95"]


def test_evaluation_refuses_a_prediction_file_of_another_split(evaluated, tmp_path):
    root, _ = evaluated
    copy = tmp_path / "results"
    shutil.copytree(root, copy)
    fold0, fold1 = runs_of(copy, "resnet")
    shutil.copy(fold0 / "predictions.npz", fold1 / "predictions.npz")
    with pytest.raises(RunError, match="mixes two runs"):     # summary's digest
        q2_eval.main(q2_eval.parse_args(["--data", "demo", "--results-root", str(copy)]))
    summary = read_json(fold1 / "summary.json")
    summary.pop("files")                          # a run of older code, without digests
    write_json(fold1 / "summary.json", summary)
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


def test_ensemble_keeps_a_fold_that_holds_its_probabilities_and_rewrites_a_changed_one(
        q2_results, tmp_path):
    """A fold written earlier (here by other code: no member digests in its summary) that holds
    exactly the members' combination is kept as it is, commit and all; one whose probabilities
    differ is written again."""
    from q2_ecg import ensemble
    from q2_ecg.prediction_file import save_rows

    root = tmp_path / "results"
    shutil.copytree(q2_results / DEMO, root / DEMO)
    fold0, fold1 = (root / DEMO / f"ensemble-kfold2-fold{k}-seed0" for k in (0, 1))
    for folder in (fold0, fold1):
        summary = read_json(folder / "summary.json")
        summary.pop("member_files", None)
        write_json(folder / "summary.json", {**summary, "git_commit": "older"})
    right = load_predictions(fold1 / "predictions.npz")
    wrong = load_predictions(fold1 / "predictions.npz")
    wrong.prob = wrong.prob[::-1].copy()
    save_rows(fold1 / "predictions.npz", wrong)
    ensemble.main(ensemble.parse_args(["--data", "demo", "--results-root", str(root)]))
    assert read_json(fold0 / "summary.json")["git_commit"] == "older"
    assert read_json(fold1 / "summary.json")["git_commit"] != "older"
    np.testing.assert_array_equal(load_predictions(fold1 / "predictions.npz").prob, right.prob)


def test_deployed_model_is_the_fold_models_the_cross_validation_scored(evaluated, tmp_path):
    from q2_ecg import final as q2_final
    from q2_ecg import infer as q2_infer
    from tests.test_q2_data import _record, _write_parquet

    root, result = evaluated
    copy = tmp_path / "results"
    shutil.copytree(root, copy)
    deployed = q2_final.main(q2_final.parse_args(["--data", "demo", "--results-root", str(copy)]))
    chosen = result["final_choice"]
    entry = result["models"]["kfold"][chosen["model"]]["seeds"][str(chosen["seed"])]
    assert sorted(deployed["folds"]) == sorted(entry["fold_rules"])       # every fold, once
    runs = [e["run"] for entries in deployed["folds"].values() for e in entries]
    members = ["resnet", "context"] if chosen["model"] == "ensemble" else [chosen["model"]]
    assert sorted(runs) == sorted(f"{m}-kfold2-fold{k}-seed{chosen['seed']}"
                                  for m in members for k in range(2))
    assert deployed["logit_bias"] == entry["rule"]["bias"]
    assert deployed["adapt"] == entry["rule"]["adapt"]
    rows = [_record(f"x{i}", n=2000, locs=tuple(range(100, 1900, 100)),
                    labels=tuple([0, 0, 1, 0, 2, 0] * 3)) for i in range(3)]
    source = _write_parquet(tmp_path / "other", rows)
    path = q2_infer.main(q2_infer.parse_args(["--data", str(source.path), "--trained-on", "demo",
                                              "--device", "cpu", "--results-root", str(copy),
                                              "--out", str(tmp_path / "x.npz")]))
    saved = np.load(path)
    assert set(saved["patient_id"]) == {"x0", "x1", "x2"} and len(saved["beat_loc"]) == 3 * 18
    assert set(np.unique(saved["pred"][saved["scored"]])) <= {0, 1, 2}
    out = q2_eval.main(q2_eval.parse_args(["--data", str(source.path), "--predictions", str(path),
                                           "--results-root", str(copy)]))
    assert out["pooled"]["beats"] == int(saved["scored"].sum())
    assert out["final_model"]["model"] == chosen["model"]
    (copy / DEMO / runs[0] / "predictions.npz").write_bytes(b"retrained")   # not the scored run
    with pytest.raises(q2_eval.cli.DataError, match="not the run the cross-validation scored"):
        q2_final.main(q2_final.parse_args(["--data", "demo", "--results-root", str(copy)]))


def test_the_deployed_probabilities_are_the_mean_of_the_fold_models():
    from q2_ecg.rules import decide, fold_average, geometric_mean

    a = np.array([[0.8, 0.1, 0.1], [0.2, 0.5, 0.3]])
    b = np.array([[0.6, 0.3, 0.1], [0.4, 0.1, 0.5]])
    np.testing.assert_allclose(fold_average([a, b]), [[0.7, 0.2, 0.1], [0.3, 0.3, 0.4]], atol=1e-6)
    g = geometric_mean([a, b])
    np.testing.assert_allclose(g[0], np.sqrt(a[0] * b[0]) / np.sqrt(a[0] * b[0]).sum(), atol=1e-6)
    pred, p_abn = decide(fold_average([a, b]), [0.0, 0.0, 0.0])
    assert pred.tolist() == [0, 2] and p_abn == pytest.approx([0.3, 0.7])
    assert decide(fold_average([a, b]), [0.0, 0.5, 0.0])[0].tolist() == [0, 1]


def test_a_prediction_file_of_other_beats_is_refused(evaluated, tmp_path):
    from q2_ecg.data import load_records, resolve_source
    from q2_ecg.prediction_file import read_external

    records = load_records(resolve_source("demo"))
    path = tmp_path / "p.npz"
    n = len(records.beat_locs) - 1
    np.savez(path, patient_id=records.patient_id[records.beat_record][:n],
             source_db=np.array(["x"] * n), beat_loc=records.beat_locs[:n],
             scored=np.ones(n, bool), pred=np.zeros(n, int), p_abnormal=np.zeros(n),
             prob=np.zeros((n, 3)), final=np.array("{}"), data_tag=np.array("demo"))
    with pytest.raises(q2_eval.cli.DataError, match="does not hold the beats of this data"):
        read_external(path, records)
