"""Tests for the synthetic T1/T2 demo data (q1_mri.demo): schema, determinism, physics sanity."""
import numpy as np
import pytest

from q1_mri.demo import TISSUES, VIEWS, make_demo_mri

SMALL = {"n_train": 3, "n_val": 1, "slices_per_view": 5}
SCHEMA = {"patient_id", "split", "view", "t1", "t2"}
WM, GM, CSF, OEDEMA = (TISSUES.index(t) for t in ("wm", "gm", "csf", "oedema"))


@pytest.fixture(scope="module")
def demo():
    return make_demo_mri(**SMALL, seed=0, with_labels=True)


def _brain(split):
    return split["labels"] > 0


def _slices(split):
    """(t1, t2, brain mask) per slice, each a (64, 64) image."""
    return zip(split["t1"][:, 0], split["t2"][:, 0], _brain(split)[:, 0], strict=True)


def test_schema_matches_hub_set():
    data = make_demo_mri(**SMALL)
    assert set(data) == {"train", "validation"}
    for name, n_patients, first_id in (("train", 3, 0), ("validation", 1, 3)):
        split = data[name]
        n = n_patients * len(VIEWS) * SMALL["slices_per_view"]
        assert set(split) == SCHEMA
        for key in ("t1", "t2"):
            assert split[key].dtype == np.float32
            assert split[key].shape == (n, 1, 64, 64)
        for key in ("patient_id", "split", "view"):
            assert split[key].shape == (n,) and split[key].dtype.kind == "U"
        assert set(split["split"]) == {name}
        views, counts = np.unique(split["view"], return_counts=True)
        assert set(views) == set(VIEWS)
        assert set(counts) == {n_patients * SMALL["slices_per_view"]}
        expected = {f"demo-{i:03d}" for i in range(first_id, first_id + n_patients)}
        assert set(split["patient_id"]) == expected


def test_labels_are_an_extra_column_only(demo):
    plain = make_demo_mri(**SMALL, seed=0)
    for name, split in demo.items():
        assert split["labels"].dtype == np.uint8
        assert split["labels"].max() < len(TISSUES)
        for key in SCHEMA:
            np.testing.assert_array_equal(plain[name][key], split[key])


def test_deterministic_per_seed(demo):
    again = make_demo_mri(**SMALL, seed=0, with_labels=True)
    other = make_demo_mri(**SMALL, seed=1)
    for name, split in demo.items():
        for key, values in split.items():
            np.testing.assert_array_equal(again[name][key], values)
        assert not np.array_equal(other[name]["t1"], split["t1"])
        assert not np.array_equal(other[name]["t2"], split["t2"])


def test_skull_stripped_background_is_exactly_zero(demo):
    for split in demo.values():
        brain = _brain(split)
        for key in ("t1", "t2"):
            values = split[key]
            assert np.isfinite(values).all()
            assert (values[~brain] == 0).all()
            assert (values[brain] > 0).all()
        np.testing.assert_array_equal(split["t1"] > 0, split["t2"] > 0)


def test_every_slice_shows_enough_brain(demo):
    for split in demo.values():
        assert (_brain(split).mean(axis=(1, 2, 3)) >= 0.05).all()


def test_patients_disjoint_between_splits(demo):
    assert not set(demo["train"]["patient_id"]) & set(demo["validation"]["patient_id"])


def test_raw_intensities_and_brighter_validation(demo):
    for key in ("t1", "t2"):
        train, val = (demo[s][key][_brain(demo[s])] for s in ("train", "validation"))
        assert 100 < np.median(train) and val.max() < 10_000  # raw scanner units, not [0, 1]
        assert 1.5 < np.median(val) / np.median(train) < 3.0


def test_brightest_t2_pixels_are_dark_on_t1(demo):
    """CSF/fluid is the top of the T2 range and the bottom of the T1 range."""
    for split in demo.values():
        hits = []
        for t1, t2, brain in _slices(split):
            top = brain & (t2 >= np.percentile(t2[brain], 99))
            hits.append(np.median(t1[top]) < np.percentile(t1[brain], 25))
        assert np.mean(hits) >= 0.85


def test_t1_and_t2_anticorrelated_within_brain(demo):
    for split in demo.values():
        corr = [np.corrcoef(t1[brain], t2[brain])[0, 1] for t1, t2, brain in _slices(split)]
        assert np.median(corr) < -0.5 and max(corr) < 0


def test_tissue_contrast_order_per_patient(demo):
    for split in demo.values():
        for patient in np.unique(split["patient_id"]):
            rows = split["patient_id"] == patient
            labels = split["labels"][rows]
            t1, t2 = ({t: split[k][rows][labels == t].mean() for t in (WM, GM, CSF)}
                      for k in ("t1", "t2"))
            assert t1[WM] > t1[GM] > t1[CSF]
            assert t2[CSF] > t2[GM] > t2[WM]


def test_tumour_in_some_but_not_all_patients(demo):
    has_tumour, oedema_ratio = [], []
    for split in demo.values():
        for patient in np.unique(split["patient_id"]):
            rows = split["patient_id"] == patient
            labels, t2 = split["labels"][rows], split["t2"][rows]
            has_tumour.append((labels >= OEDEMA).any())
            if (labels == OEDEMA).any():
                oedema_ratio.append(t2[labels == OEDEMA].mean() / t2[labels == WM].mean())
    assert 0 < sum(has_tumour) < len(has_tumour)
    assert oedema_ratio and min(oedema_ratio) > 1.5  # oedema is bright on T2


def test_rejects_empty_split():
    with pytest.raises(ValueError):
        make_demo_mri(n_train=2, n_val=0)
