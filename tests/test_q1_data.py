"""Q1 data: the parquet-folder path (the Hub's code path), bad input, normalisation, caching."""
from __future__ import annotations

import numpy as np
import pytest

from common.cli import DataError
from common.datasource import DataSource
from q1_mri.data import SPLITS, MRISplit, cache_path, load_mri, normalise, shared_patients
from tests.conftest import shared_data

datasets = pytest.importorskip("datasets")


def _write_folder(path, n=6, corrupt=None):
    """A tiny dataset in the hub's schema as parquet files: one per split."""
    rng = np.random.default_rng(0)
    path.mkdir()
    for s, pids in (("train", ["p1", "p2"]), ("validation", ["p3"])):
        rows = {"patient_id": [], "split": [], "view": [], "t1": [], "t2": []}
        for k in range(n):
            img = np.zeros((1, 64, 64), np.float32)
            img[0, 16:48, 16:48] = rng.uniform(100, 1000, (32, 32))
            rows["patient_id"].append(pids[k % len(pids)])
            rows["split"].append(s)
            rows["view"].append(("axial", "coronal", "sagittal")[k % 3])
            rows["t1"].append(img.tolist())
            rows["t2"].append((img[:, ::-1] * 2).tolist())
        if corrupt and s == "train":
            corrupt(rows)
        datasets.Dataset.from_dict(rows).to_parquet(str(path / f"{s}.parquet"))
    return DataSource("folder", path, f"local-{path.name}")


def test_parquet_folder_loads_like_the_hub(tmp_path):
    splits = load_mri(_write_folder(tmp_path / "mri"))
    assert set(splits) == set(SPLITS)
    assert splits["train"].t1.shape == (6, 1, 64, 64) and splits["train"].t1.dtype == np.float16
    assert list(splits["validation"].patient_id) == ["p3"] * 6
    assert shared_patients(splits) == []


@pytest.mark.parametrize("corrupt,message", [
    (lambda rows: rows["t1"].__setitem__(3, np.full((1, 64, 64), np.nan).tolist()),
     "train row 3 .*NaN"),
    (lambda rows: rows["t2"].__setitem__(2, np.zeros((1, 32, 32)).tolist()), "train row 2: t2"),
    (lambda rows: rows.pop("view"), r"train.parquet: missing column\(s\) \['view'\]"),
    (lambda rows: rows["view"].__setitem__(1, "oblique"), "unknown view.*oblique"),
])
def test_bad_rows_are_named(tmp_path, corrupt, message):
    with pytest.raises(DataError, match=message):
        load_mri(_write_folder(tmp_path / "bad", corrupt=corrupt))


def test_corrupt_cache_is_rebuilt(tmp_path):
    source = _write_folder(tmp_path / "mri")
    first = load_mri(source)
    path = cache_path(source)
    path.write_bytes(path.read_bytes()[:1000])
    again = load_mri(source)
    assert np.array_equal(first["train"].t1, again["train"].t1)


def _split(scale_p1=1.0):
    rng = np.random.default_rng(1)
    t1 = np.zeros((4, 1, 64, 64), np.float32)
    t1[:, :, 10:50, 10:50] = rng.uniform(50, 500, (4, 1, 40, 40))
    t1[:2] *= scale_p1
    return MRISplit(t1.astype(np.float16), (t1 * 3).astype(np.float16),
                    np.array(["p1", "p1", "p2", "p2"]), np.array(["axial"] * 4))


def test_normalisation_is_per_volume_and_keeps_background():
    t1, t2, mask = normalise(_split())
    assert t1.min() == 0 and t1.max() == 1.0 and t2.max() == 1.0
    assert (t1[~mask] == 0).all() and (t2[~mask] == 0).all()
    assert np.mean(t1[mask] == 1.0) < 0.01               # only the top 0.5 % is clipped
    t1_scaled, _, _ = normalise(_split(scale_p1=2.5))    # patient p1 scanned 2.5x brighter
    assert np.allclose(t1, t1_scaled, atol=2e-3)


def test_leaked_patients_are_detected():
    a = _split()
    splits = {"train": a, "validation": MRISplit(a.t1, a.t2, np.array(["p2", "p9"] * 2), a.view)}
    assert shared_patients(splits) == ["p2"]


def test_real_mri_folder():
    splits = load_mri(DataSource("folder", shared_data("mri"), "local-mri"))
    # rows in the files (README of ../shared/data/mri); a slice whose T1 or T2 is all zero is skipped
    assert len(splits["train"]) + splits["train"].skipped_empty == 12838
    assert len(splits["validation"]) + splits["validation"].skipped_empty == 3464
    assert (splits["train"].skipped_empty, splits["validation"].skipped_empty) == (3, 2)
    assert shared_patients(splits) == []
    t1, t2, mask = normalise(splits["validation"])
    assert 0.25 < mask.mean() < 0.32 and t1.max() == 1.0 and (t2[~mask] == 0).all()
