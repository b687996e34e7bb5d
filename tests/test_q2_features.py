"""Q2 rhythm features and their sets, record-bounded windows, EMA buffers, the grouping of
records into persons and label-free test-time adaptation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from common.ema import ModelEMA
from q2_ecg.adapt import reconcile_by_cluster, standardise_per_record
from q2_ecg.beats import (
    HALF_WINDOW,
    RR_NAMES,
    RR_SETS,
    build_table,
    centred_windows,
    rr_features,
    table_to_device,
)
from q2_ecg.classify import predict, predict_embedded
from q2_ecg.data import ECGRecords, assemble
from q2_ecg.model import MODELS, build_model, model_args
from q2_ecg.persons import group_persons

FS = 128


def column(rr: np.ndarray, name: str) -> np.ndarray:
    return rr[:, RR_NAMES.index(name)]


def locs_from_rr(rr_s) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(np.round(np.asarray(rr_s) * FS))]).astype(np.int64)


@pytest.mark.parametrize("locs", [[50], [50, 170], [0, 1], [10, 100, 5000]])
def test_rr_features_are_finite_for_tiny_records(locs):
    rr = rr_features(np.array(locs))
    assert rr.shape == (len(locs), len(RR_NAMES)) and rr.dtype == np.float32
    assert np.isfinite(rr).all()
    assert (np.abs(rr) <= 3.5).all()                  # clipped intervals bound every log-ratio


@pytest.mark.parametrize("rr_set", sorted(RR_SETS))
def test_a_model_reads_exactly_the_rr_features_of_its_set(rr_set):
    """Each set's columns reach the network, in its order; the other columns never do."""
    model = build_model(**model_args("resnet", rr_set=rr_set, channels=(8, 8, 16))).eval()
    rr = torch.randn(4, 1, len(RR_NAMES))
    wanted = [RR_NAMES.index(n) for n in RR_SETS[rr_set]]
    assert model.rr_index.tolist() == wanted and model.rr_norm.mean.shape == (len(wanted),)
    others = [k for k in range(len(RR_NAMES)) if k not in wanted]
    changed = rr.clone()
    changed[..., others] += 10.0
    windows = torch.randn(4, 1, 2, 256)
    assert torch.equal(model(windows, rr), model(windows, changed))
    assert set(RR_SETS[rr_set]) <= set(RR_NAMES)
    assert all(cfg.rr_set in RR_SETS for cfg in MODELS.values())


def test_record_normalised_intervals_by_hand():
    """de Chazal's features: each interval over the record's mean RR (here (5 * 1 + 0.5 + 1.5) / 7
    s, the first beat borrowing its next interval)."""
    locs = locs_from_rr([1.0, 1.0, 1.0, 1.0, 0.5, 1.5])
    rr = rr_features(locs)
    mean = (5 * 1.0 + 0.5 + 1.5) / 7
    assert column(rr, "rr_record_s") == pytest.approx(np.full(7, mean), abs=1e-3)
    assert column(rr, "log_prev_record")[5] == pytest.approx(np.log(0.5 / mean), abs=1e-3)
    assert column(rr, "log_next_record")[5] == pytest.approx(np.log(1.5 / mean), abs=1e-3)


def test_premature_beats_are_judged_against_sinus_even_when_they_dominate():
    """Runs of five atrial premature beats (0.7 s) between sinus beats after 1.2 s pauses: a
    running median calls the premature beats normal; the sinus estimate does not."""
    pattern = [1.2] + [0.7] * 5
    locs = locs_from_rr(pattern * 60)
    rr = rr_features(locs)
    beat_rr = np.r_[pattern[0], np.tile(pattern, 60)][: len(locs)]
    premature = np.flatnonzero(beat_rr == 0.7)[10:-10]
    sinus = np.flatnonzero(beat_rr == 1.2)[2:-2]
    assert np.allclose(column(rr, "rr_sinus_s")[premature], 1.2, atol=0.02)
    assert (column(rr, "log_prev_sinus")[premature] < np.log(0.7 / 1.2) + 0.05).all()
    assert (np.abs(column(rr, "log_prev_sinus")[sinus]) < 0.05).all()
    assert np.median(np.abs(column(rr, "log_prev_local")[premature])) < 0.05   # the old view
    assert (column(rr, "log_regular_sinus")[premature] < -0.3).all()   # the regular run is fast


def test_compensatory_pause_and_neighbouring_intervals():
    pattern = [1.0] * 9 + [0.6, 1.4]          # a premature beat, then a compensatory pause
    locs = locs_from_rr(pattern * 20)
    rr = rr_features(locs)
    k = 10 + 11 * 10                          # the premature beat of the 11th repeat
    assert column(rr, "rr_prev_s")[k] == pytest.approx(0.6, abs=0.01)
    assert column(rr, "log_next_sinus")[k] > np.log(1.3)
    assert column(rr, "log_prev2_sinus")[k + 1] == pytest.approx(column(rr, "log_prev_sinus")[k])
    assert column(rr, "log_next2_sinus")[k - 1] == pytest.approx(column(rr, "log_next_sinus")[k])


def test_irregularity_marks_atrial_fibrillation():
    rng = np.random.default_rng(0)
    sinus = rr_features(locs_from_rr(1.0 + 0.01 * rng.standard_normal(300)))
    af = rr_features(locs_from_rr(rng.uniform(0.4, 1.2, 300)))
    for name in ("irregularity_9", "irregularity_15"):
        assert np.median(column(sinus, name)) < 0.03 and np.median(column(af, name)) > 0.15


def _row(name, signal, locs, db="mitdb_npy"):
    return {"patient_id": name, "source_db": db, "sampling_rate": FS,
            "signal": np.asarray(signal, np.float32), "beat_locs": np.asarray(locs),
            "beat_labels": np.zeros(len(locs), np.int64)}


@pytest.fixture(scope="module")
def two_records():
    n = 1000
    t = np.arange(n)
    rows = [_row("a", 1 + np.sin(t / 5), [0, 200, 400, 600, 800, n - 1]),
            _row("b", 2 + np.cos(t / 7), [0, 250, 500, 750, n - 1])]
    records = ECGRecords(**assemble(rows))
    return records, build_table(records)


@pytest.mark.parametrize("shift", [-3, 3])
def test_shifted_windows_never_read_outside_their_record(two_records, shift):
    _, table = two_records
    dev = table_to_device(table, "cpu")
    edge = torch.tensor([0, 5, 6, len(table.label) - 1])     # first/last beats of both records
    got = centred_windows(dev, edge, torch.full((4,), shift)).numpy()
    pos = table.centre[edge.numpy(), None] + shift + np.arange(-HALF_WINDOW, HALF_WINDOW)
    inside = (pos >= table.rec_start[edge.numpy(), None]) & (pos < table.rec_end[edge.numpy(), None])
    assert not inside.all()                                   # the windows do reach the edge
    assert (got[~inside] == 0).all()
    assert np.allclose(got[inside], table.signal[pos[inside]])
    if shift > 0:      # record a's last beat: 2 samples past the gap would be record b's
        past = pos[1] >= table.rec_start[6]
        assert past.any() and (table.signal[pos[1][past]] != 0).all() and (got[1][past] == 0).all()


def test_ema_averages_batchnorm_statistics():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = ModelEMA(model, decay=0.5)
    expected = ema.shadow[1].running_mean.clone()
    for n in range(1, 6):
        model(torch.randn(16, 3) + n)                        # train mode: running stats move
        d = min(0.5, (1 + n) / (10 + n))
        ema.update(model)
        expected = d * expected + (1 - d) * model[1].running_mean
    assert torch.allclose(ema.shadow[1].running_mean, expected)
    assert not torch.allclose(ema.shadow[1].running_mean, model[1].running_mean)
    assert ema.shadow[1].num_batches_tracked == model[1].num_batches_tracked == 5
    assert set(ema.state_dict()["shadow"]) == set(model.state_dict())


def _beat_shape(width: float, amplitude: float, noise: float, seed: int, n: int = 30 * FS):
    """A synthetic lead II record: Gaussian R waves (and T waves) every ~0.8 s."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    locs = np.arange(64, n - 64, 102) + rng.integers(-2, 3, len(np.arange(64, n - 64, 102)))
    signal = np.zeros(n)
    for loc in locs:
        signal += amplitude * np.exp(-0.5 * ((t - loc) / width) ** 2)
        signal += 0.3 * amplitude * np.exp(-0.5 * ((t - loc - 35) / (4 * width)) ** 2)
    return signal + noise * rng.standard_normal(n), locs


def test_incart_records_of_one_person_are_grouped_and_others_not():
    rows = [_row(f"I0{k + 1}", *_beat_shape(w, a, 0.01, k), db="incartdb_npy")
            for k, (w, a) in enumerate([(2.0, 1.0), (2.0, 1.05), (6.0, 3.0), (2.0, 0.2)])]
    records = ECGRecords(**assemble(rows))
    persons, description = group_persons(records, build_table(records))
    assert persons[0] == persons[1] == "I01"          # near-identical beats and amplitude
    assert len(set(persons)) == 3                      # I03: other shape; I04: other amplitude
    assert "incartdb" in description and "3 persons for 4" in description


def test_cluster_reconciliation_makes_similar_beats_agree():
    rng = np.random.default_rng(0)
    n = 120
    record = np.repeat([0, 1], n // 2)
    kind = np.tile(np.repeat([0, 1], n // 4), 2)               # two beat kinds per record
    embedding = (5.0 * kind[:, None] + 0.1 * rng.standard_normal((n, 8))).astype(np.float32)
    rr = (kind[:, None] + 0.1 * rng.standard_normal((n, 3))).astype(np.float32)
    prob = np.where(kind[:, None] == 1, [0.1, 0.1, 0.8], [0.9, 0.05, 0.05])
    mixed = np.flatnonzero(kind == 0)[::2]
    prob[mixed] = [0.2, 0.7, 0.1]                              # kind 0 split between classes
    out = reconcile_by_cluster(embedding, rr, prob, record, alpha=1.0)
    assert out.shape == prob.shape and np.allclose(out.sum(1), 1)
    for r in (0, 1):
        same = (record == r) & (kind == 0)
        assert np.allclose(out[same], out[same][0])            # one kind, one answer
        assert np.allclose(out[same][0], prob[same].mean(0))
    assert np.allclose(reconcile_by_cluster(embedding, rr, prob, record, alpha=0.0), prob)
    z = standardise_per_record(rr, record)
    assert np.allclose(z[record == 1].mean(0), 0, atol=1e-5)


def test_predict_embedded_matches_predict(two_records):
    _, table = two_records
    dev = table_to_device(table, "cpu")
    torch.manual_seed(0)
    model = build_model(**model_args("context", context=4, channels=(8, 8, 16)))
    model.fit_rr(dev["rr"])
    beats = np.arange(len(table.label))
    logits, emb = predict_embedded(model, dev, beats, table.record, torch.device("cpu"))
    assert emb.shape == (len(beats), model.cfg.embed) and emb.dtype == np.float32
    assert np.allclose(logits, predict(model, dev, beats, table.record, torch.device("cpu")),
                       atol=1e-5)
