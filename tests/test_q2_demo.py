"""Tests for the synthetic ECG cohort in q2_ecg.demo."""
from __future__ import annotations

import time

import numpy as np
import pytest

from q2_ecg.demo import SAMPLING_RATE, SOURCE_DBS, make_demo_ecg

FS = SAMPLING_RATE
CONTEXT = int(0.3 * FS)  # samples either side of a beat used to estimate its baseline


@pytest.fixture(scope="module")
def records():
    return make_demo_ecg(n_records=12, minutes=2, seed=0)


def _labels(records):
    return np.concatenate([r["beat_labels"] for r in records])


def _rr_around(record):
    """Preceding and following intervals (samples) of every beat except the first and last."""
    rr = np.diff(record["beat_locs"])
    return rr[:-1], rr[1:], record["beat_labels"][1:-1]


def _centred(signal, loc, half):
    """signal[loc - half : loc + half + 1] minus the median of the surrounding 0.6 s."""
    context = signal[max(loc - CONTEXT, 0):loc + CONTEXT + 1]
    return signal[loc - half:loc + half + 1] - np.median(context)


def test_schema_and_dtypes(records):
    assert len(records) == 12
    for i, r in enumerate(records):
        assert set(r) == {"patient_id", "source_db", "sampling_rate", "signal", "beat_locs",
                          "beat_labels"}
        assert r["patient_id"] == f"d{i:03d}"
        assert r["source_db"] in SOURCE_DBS
        assert r["sampling_rate"] == 128 and isinstance(r["sampling_rate"], int)
        assert r["signal"].dtype == np.float32 and r["signal"].shape == (2 * 60 * FS,)
        assert np.isfinite(r["signal"]).all()
        assert r["beat_locs"].dtype == np.int64 and r["beat_labels"].dtype == np.int64
        assert r["beat_locs"].shape == r["beat_labels"].shape and r["beat_locs"].ndim == 1
    assert {r["source_db"] for r in records} == set(SOURCE_DBS)


def test_deterministic_in_seed():
    a, b = make_demo_ecg(3, 1, seed=7), make_demo_ecg(3, 1, seed=7)
    c = make_demo_ecg(3, 1, seed=8)
    for ra, rb, rc in zip(a, b, c, strict=True):
        for key in ("signal", "beat_locs", "beat_labels"):
            np.testing.assert_array_equal(ra[key], rb[key])
        assert not np.array_equal(ra["signal"], rc["signal"])


def test_rejects_records_too_short_for_beats():
    with pytest.raises(ValueError):
        make_demo_ecg(2, minutes=0.05)


def test_beat_locs_increasing_and_away_from_edges(records):
    for r in records:
        locs = r["beat_locs"]
        assert np.all(np.diff(locs) > 0)
        assert locs[0] >= 0.3 * FS and locs[-1] <= len(r["signal"]) - 0.3 * FS


def test_labels_and_class_proportions(records):
    labels = _labels(records)
    assert set(np.unique(labels)) <= {0, 1, 2, 3}
    assert {0, 1, 2} <= set(np.unique(labels))
    frac = np.bincount(labels, minlength=4) / len(labels)
    assert 0.80 <= frac[0] <= 0.94
    assert 0.015 <= frac[1] <= 0.08
    assert 0.03 <= frac[2] <= 0.13
    assert frac[3] <= 0.01


def test_ectopic_propensity_varies_between_records(records):
    ectopic = [np.mean(r["beat_labels"] > 0) for r in records]
    assert min(ectopic) < 0.05 and max(ectopic) > 0.15


def test_normal_beats_sit_on_r_peaks(records):
    hits = []
    for r in records:
        for loc in r["beat_locs"][r["beat_labels"] == 0]:
            hits.append(np.argmax(np.abs(_centred(r["signal"], loc, 3))) == 3)
    assert np.mean(hits) >= 0.9


def test_r_amplitudes_in_mv_and_gain_varies(records):
    amplitude = [np.median([_centred(r["signal"], loc, 0)[0]
                            for loc in r["beat_locs"][r["beat_labels"] == 0]]) for r in records]
    assert 0.6 <= min(amplitude) and max(amplitude) <= 3.0
    assert max(amplitude) > 1.0 and max(amplitude) / min(amplitude) > 1.5


def test_ectopic_beats_are_premature(records):
    for label in (1, 2):
        premature = []
        for r in records:
            before, _, labels = _rr_around(r)
            premature.extend(before[labels == label] < np.median(np.diff(r["beat_locs"])))
        assert np.mean(premature) >= 0.9


def test_veb_pause_longer_than_sveb_pause(records):
    pause = {1: [], 2: []}
    for r in records:
        _, after, labels = _rr_around(r)
        median_rr = np.median(np.diff(r["beat_locs"]))
        for label, relative_pauses in pause.items():
            relative_pauses.extend(after[labels == label] / median_rr)
    assert np.mean(pause[2]) > np.mean(pause[1]) + 0.1


def test_veb_qrs_wider_and_sveb_qrs_normal(records):
    width, shape_corr = {0: [], 1: [], 2: []}, {1: [], 2: []}
    for r in records:
        qrs = {label: [_centred(r["signal"], loc, 12) for loc in
                       r["beat_locs"][r["beat_labels"] == label]] for label in width}
        template = np.median(qrs[0], axis=0)
        for label, beats in qrs.items():
            width[label].extend(np.sum(np.abs(b) > 0.5 * np.abs(b[12])) for b in beats)
            if label:
                shape_corr[label].extend(np.corrcoef(b, template)[0, 1] for b in beats)
    assert np.median(width[2]) >= 1.8 * np.median(width[0])
    assert np.median(width[1]) <= 1.3 * np.median(width[0])
    assert np.median(shape_corr[1]) > 0.9 > np.median(shape_corr[2])


def test_rr_within_project_filter(records):
    rr = np.concatenate([np.diff(r["beat_locs"]) for r in records])
    assert np.mean((rr >= 32) & (rr <= 256)) >= 0.99


def test_defaults_are_fast():
    start = time.perf_counter()
    records = make_demo_ecg()
    assert time.perf_counter() - start < 5.0
    assert len(records) == 24 and len(records[0]["signal"]) == 5 * 60 * FS
