"""Q2 representation, splits, metrics, chunked prediction and models."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import precision_recall_fscore_support

from common.datasource import DataSource
from q2_ecg import splits
from q2_ecg.beats import (
    HALF_WINDOW,
    RR_NAMES,
    build_table,
    centred_windows,
    rr_features,
    table_to_device,
)
from q2_ecg.classify import predict
from q2_ecg.data import load_records
from q2_ecg.metrics import SelectionScore, confusion, summary_from_confusion, tune_logit_bias
from q2_ecg.model import build_model, model_args
from q2_ecg.persons import group_persons


@pytest.fixture(scope="module")
def demo():
    records = load_records(DataSource("demo", None, "demo"))
    return records, build_table(records)


def test_rr_features_by_hand():
    locs = np.array([0, 128, 256, 320, 512])         # RR 1, 1, 0.5 (premature), 1.5 s
    rr = rr_features(locs)
    col = {name: rr[:, k] for k, name in enumerate(RR_NAMES)}
    assert rr.shape == (5, len(RR_NAMES))
    assert col["rr_prev_s"][3] == 0.5 and col["rr_next_s"][3] == 1.5   # the premature beat
    assert col["rr_prev_s"][0] == col["rr_next_s"][0] == 1.0   # the first beat borrows its next RR
    assert col["log_prev_local"][3] == pytest.approx(np.log(0.5))      # local median: 1 s
    assert col["log_prev2_sinus"][4] == col["log_prev_sinus"][3]


def test_windows_are_centred_on_r_peaks(demo):
    records, table = demo
    dev = table_to_device(table, "cpu")
    idx = torch.tensor([5, 6, 7])
    windows = centred_windows(dev, idx)
    assert windows.shape == (3, 2 * HALF_WINDOW)
    signal, locs, _ = records.record(0)
    scale = np.median(np.abs(signal[locs] - np.median(signal)))
    expected = (signal[locs[5:8]] - np.median(signal)) / scale
    assert np.allclose(windows[:, HALF_WINDOW].numpy(), expected, atol=1e-2)


def test_kfold_is_disjoint_by_person_and_tests_every_record_once(demo):
    records, table = demo
    persons, _ = group_persons(records, table)
    names, roles = splits.record_roles(records, table, persons, "kfold", 3, seed=0)
    assert names == ["fold0", "fold1", "fold2"]
    tested = np.concatenate([records.patient_id[r == "test"] for r in roles])
    assert sorted(tested) == sorted(records.patient_id)
    for r in roles:
        beat_roles = r[table.record]
        splits.check_split(persons[table.record], beat_roles, table.label, table.scored)
        assert (r == "val").sum() >= 1 and (r == "train").sum() > (r == "val").sum()
    _, other = splits.record_roles(records, table, persons, "kfold", 3, seed=1)
    assert any(not np.array_equal(a, b) for a, b in zip(roles, other))
    names, lodo = splits.record_roles(records, table, persons, "lodo", 0, seed=0)
    svdb = lodo[names.index("svdb")]
    assert set(records.source_db[svdb == "test"]) == {"svdb_npy"}
    leaky = splits.beat_roles(len(table.label), 0)
    with pytest.raises(AssertionError, match="is in both"):
        splits.check_split(persons[table.record], leaky, table.label, table.scored)


def test_every_fold_and_its_inner_validation_hold_persons_of_every_database():
    """Folds are balanced database by database: 12 persons of one database and 60 of another
    spread over 5 folds give each fold 2-3 and 12 of them, and each inner validation (1/6 of a
    fold's training persons) at least one of the small database."""
    from q2_ecg.data import ECGRecords

    n_small, n_large = 12, 60
    db = np.array(["mitdb_npy"] * n_small + ["svdb_npy"] * n_large)
    per = 30
    record = np.repeat(np.arange(len(db)), per)
    rng = np.random.default_rng(0)
    label = np.where(rng.random(len(record)) < 0.1, rng.integers(1, 3, len(record)), 0)
    records = ECGRecords(np.array([f"r{i}" for i in range(len(db))]), db, np.zeros(1, np.float16),
                         np.zeros(len(db) + 1, np.int64), np.zeros(len(record), np.int64), label,
                         np.arange(0, len(record) + 1, per), np.array([], str))
    table = SimpleNamespace(record=record, label=label, scored=np.ones(len(record), bool))
    persons = records.patient_id.copy()
    _, roles = splits.record_roles(records, table, persons, "kfold", 5, seed=3)
    for r in roles:
        assert 2 <= ((r == "test") & (db == "mitdb_npy")).sum() <= 3
        assert ((r == "test") & (db == "svdb_npy")).sum() == 12
        assert ((r == "val") & (db == "mitdb_npy")).sum() >= 1


def test_too_few_records_for_the_folds_is_refused_by_name(demo):
    records, table = demo
    persons, _ = group_persons(records, table)
    with pytest.raises(splits.DataError, match="13-fold cross-validation needs at least 26"):
        splits.record_roles(records, table, persons, "kfold", 13, seed=0)
    only_mitdb = records.source_db.copy()
    only_mitdb[:] = "mitdb_npy"
    records.source_db, saved = only_mitdb, records.source_db
    try:
        with pytest.raises(splits.DataError, match="at least 2 databases"):
            splits.record_roles(records, table, persons, "lodo", 0, seed=0)
    finally:
        records.source_db = saved


def test_same_person_records_stay_together(demo):
    records, table = demo
    records.patient_id, saved = records.patient_id.copy(), records.patient_id
    records.patient_id[:2] = ["201", "202"]
    try:
        persons, _ = group_persons(records, table)
        assert persons[0] == persons[1]
    finally:
        records.patient_id = saved


def test_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.choice(3, 2000, p=[0.8, 0.08, 0.12])
    pred = np.where(rng.random(2000) < 0.8, y, rng.integers(0, 3, 2000))
    s = summary_from_confusion(confusion(y, pred))
    p, r, f, _ = precision_recall_fscore_support(y, pred, labels=[0, 1, 2], zero_division=0)
    for k, name in enumerate(("NOR", "SVEB", "VEB")):
        assert s[f"{name}_ppv"] == pytest.approx(p[k]) and s[f"{name}_se"] == pytest.approx(r[k])
        assert s[f"{name}_f1"] == pytest.approx(f[k])
    ab_true, ab_pred = y > 0, pred > 0
    p, r, f, _ = precision_recall_fscore_support(ab_true, ab_pred, average="binary")
    assert s["abnormal_ppv"] == pytest.approx(p) and s["abnormal_f1"] == pytest.approx(f)
    assert s["normal_se"] == pytest.approx(s["abnormal_sp"])        # the two views mirror
    assert s["abnormal_sp"] == pytest.approx(((~ab_true) & (~ab_pred)).sum() / (~ab_true).sum())


def test_logit_bias_tuning_helps():
    rng = np.random.default_rng(1)
    y = rng.choice(3, 3000, p=[0.9, 0.04, 0.06])
    logits = rng.normal(0, 1, (3000, 3)) + 2.5 * np.eye(3)[y] + np.array([0, 1.5, 1.5])
    before = summary_from_confusion(confusion(y, logits.argmax(1)))["abnormal_macro_f1"]
    bias, grid = tune_logit_bias(logits, SelectionScore(y, np.array(["a"] * len(y)), ["a"]))
    assert grid.shape == (17, 17) and grid.max() <= after_score(logits + bias, y) + 1e-9
    after = summary_from_confusion(confusion(y, (logits + bias).argmax(1)))["abnormal_macro_f1"]
    assert after > before and bias[1] < 0 and bias[2] < 0      # it undoes the over-calling


def after_score(logits, y):
    return summary_from_confusion(confusion(y, logits.argmax(1)))["abnormal_macro_f1"]


class BeatIndexModel(torch.nn.Module):
    """Outputs, for every beat of a chunk, the RR feature it was given (= its beat index)."""
    def __init__(self, context):
        super().__init__()
        self.cfg = build_model(**model_args("context", context=context)).cfg

    def forward(self, windows, rr):
        return rr[..., :1].repeat(1, 1, 3)


@pytest.mark.parametrize("context", [1, 8])
def test_chunked_prediction_returns_each_beats_own_output(demo, context):
    _, table = demo
    dev = table_to_device(table, "cpu")
    dev["rr"] = torch.arange(len(table.label), dtype=torch.float32)[:, None].repeat(1, len(RR_NAMES))
    beats = np.flatnonzero(table.scored)[::7]
    out = predict(BeatIndexModel(context), dev, beats, table.record, torch.device("cpu"))
    assert np.array_equal(out[:, 0], beats.astype(np.float32))


@pytest.mark.parametrize("name", ["resnet", "context"])
def test_model_shapes(name):
    model = build_model(**model_args(name, channels=(8, 8, 16)))
    length = model.cfg.context
    channels = 2 if model.cfg.template else 1
    out = model(torch.randn(2, length, channels, 256), torch.randn(2, length, len(RR_NAMES)))
    assert out.shape == (2, length, 3)


def test_resnet_overfits_one_batch():
    torch.manual_seed(0)
    model = build_model(**model_args("resnet", channels=(8, 16, 16)))
    windows = torch.randn(64, 1, 2, 256)
    rr = torch.randn(64, 1, len(RR_NAMES))
    y = torch.randint(0, 3, (64,))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(80):
        loss = torch.nn.functional.cross_entropy(model(windows, rr)[:, 0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1


def test_binned_ranking_bootstrap_matches_resampling_with_sklearn():
    from common.stats import patient_bootstrap
    from q2_ecg.metrics import ranking_bootstrap, ranking_metrics

    rng = np.random.default_rng(0)
    record = rng.integers(0, 20, 4000)
    y = (rng.random(4000) < 0.05 + 0.01 * record).astype(int)
    score = rng.normal(size=4000) + 1.5 * y + 0.03 * record
    fast = ranking_bootstrap(y, score, record, n_boot=400)
    for name in ("auroc", "auprc"):
        _, low, high = patient_bootstrap(record, lambda i, n=name: ranking_metrics(y[i], score[i])[n],
                                         n_boot=400)
        assert fast[name] == pytest.approx([low, high], abs=0.01)


def test_selection_score_weighs_a_small_database_like_a_large_one():
    """Database a: 2 records' worth of beats, all right; database b: 50 times as many, SVEB
    half wrong. Each database counts once, so the score is the mean of their scores, far
    below what pooling the beats would give."""
    def block(n, sveb_right):
        y = np.repeat([0, 1, 2], [20 * n, n, n])
        pred = y.copy()
        pred[np.flatnonzero(y == 1)[: int(n * (1 - sveb_right))]] = 0
        return y, pred
    (ya, pa), (yb, pb) = block(40, 1.0), block(2000, 0.5)
    y, pred = np.r_[ya, yb], np.r_[pa, pb]
    db = np.r_[["a"] * len(ya), ["b"] * len(yb)]
    scorer = SelectionScore(y, db, ["a", "b"])
    per = scorer.per_database(pred)
    assert scorer.kind == "database-balanced" and per["a"]["SVEB_f1"] == 1.0
    b = (per["b"]["SVEB_f1"] + per["b"]["VEB_f1"]) / 2
    assert scorer(pred) == pytest.approx((1.0 + b) / 2)
    pooled = summary_from_confusion(confusion(y, pred))["abnormal_macro_f1"]
    assert scorer(pred) > pooled + 0.005


def test_selection_score_falls_back_to_pooled_and_says_why():
    y = np.repeat([0, 1, 2], [200, 30, 30])
    db = np.array(["a"] * len(y))
    scorer = SelectionScore(y, db, ["a", "b"])          # b has no inner-validation rows
    assert scorer.kind == "pooled" and "inner validation of b" in scorer.reason
    pred = y.copy()
    pred[200:210] = 0
    assert scorer(pred) == pytest.approx(summary_from_confusion(confusion(y, pred))["abnormal_macro_f1"])
    few = SelectionScore(np.r_[y, [0] * 50, [1] * 5], np.r_[db, ["b"] * 55], ["a", "b"])
    assert few.kind == "pooled" and "fewer than 20" in few.reason      # b: 5 SVEB, 0 VEB


def test_the_fast_bias_search_scores_every_pair_as_trying_it_would():
    """The sweep over VEB biases from sorted thresholds gives, pair for pair, the score of
    deciding every beat by argmax with those biases, and picks the same pair."""
    from q2_ecg.metrics import BIAS_COARSE

    rng = np.random.default_rng(3)
    y = rng.choice(3, 3000, p=[0.85, 0.07, 0.08])
    db = rng.choice(["a", "b"], 3000)
    logits = rng.normal(0, 1.5, (3000, 3)) + 1.5 * np.eye(3)[y] + [0, 1.0, 0.5]
    scorer = SelectionScore(y, db, ["a", "b"])
    bias, grid = tune_logit_bias(logits, scorer)
    exhaustive = np.array([[scorer((logits + [0, b1, b2]).argmax(1)) for b2 in BIAS_COARSE]
                           for b1 in BIAS_COARSE])
    np.testing.assert_allclose(grid, exhaustive)
    assert scorer((logits + bias).argmax(1)) >= exhaustive.max() - 1e-12
