"""Q1 protocol without training: splits with inner validation, per-patient statistics, paired
comparisons, the left-right flip per view, 2.5-D neighbours, and evaluation of a hand-made
prediction file."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from common.cli import DataError
from common.io import write_json
from q1_mri import eval as q1_eval
from q1_mri import patient_stats, splits
from q1_mri.data import UNITS, VIEWS, Slices, load_mri, normalise, pool
from q1_mri.demo import make_demo_mri
from q1_mri.metrics import slice_scaled
from q1_mri.neighbours import neighbour_rows
from q1_mri.prediction_file import save_predictions
from q1_mri.train import augment, shift_images
from tests.test_q1_bad_input import write_mri

skimage_metrics = pytest.importorskip("skimage.metrics")


def slices_of(patients: dict[str, str], n: int = 2) -> Slices:
    """A Slices set with `n` blank slices per patient; patients = {id: source split}."""
    pid = np.repeat(list(patients), n)
    split = np.repeat(np.array(list(patients.values()), dtype="<U10"), n)
    row = np.concatenate([np.flatnonzero(split == s) for s in dict.fromkeys(split)])
    z = np.zeros((len(pid), 1, 64, 64), np.float16)
    return Slices(z, z, pid, np.full(len(pid), "axial"), 0, row, split)


# ---------------------------------------------------------------- splits

def test_kfold_tests_each_patient_once_and_tunes_on_a_sixth_of_the_rest():
    patients = {f"p{i}": "train" if i < 30 else "validation" for i in range(38)}
    folds = splits.assign(patients, "kfold", 5, seed=0)
    tested = [p for roles in folds.values() for p, r in roles.items() if r == "test"]
    assert sorted(tested) == sorted(patients)                   # every patient, once
    assert sorted(sum(r == "test" for r in roles.values()) for roles in folds.values()) == [
        7, 7, 8, 8, 8]
    for roles in folds.values():                                # 30-31 train -> 5 inner val
        assert sum(r == "val" for r in roles.values()) == 5
    assert folds != splits.assign(patients, "kfold", 5, seed=1)  # the seed changes the split
    with pytest.raises(DataError, match="needs at least 8 patients"):
        splits.assign({f"p{i}": "train" for i in range(7)}, "kfold", 4, 0)


def test_split_file_is_written_once_and_refuses_other_data(tmp_path):
    data = slices_of({f"p{i}": "train" for i in range(4)})
    split, path = splits.open_split(tmp_path, "demo", data, "kfold", 2, 0)
    assert path.name == "kfold2-seed0.json" and split["patients"] == 4
    mtime = path.stat().st_mtime_ns
    again, _ = splits.open_split(tmp_path, "demo", data, "kfold", 2, 0)
    assert again == split and path.stat().st_mtime_ns == mtime
    with pytest.raises(DataError, match="was made from other data"):
        splits.open_split(tmp_path, "demo", slices_of({f"p{i}": "train" for i in range(5)}),
                          "kfold", 2, 0)


def test_a_shared_patient_is_refused():
    shared = slices_of({"p0": "train", "p1": "train"})
    shared.split[-1] = "validation"                              # p1's last slice elsewhere
    with pytest.raises(DataError, match="patient p1 is in both the train and the validation"):
        splits.patients_of(shared)
    with pytest.raises(DataError, match="patient p1 is in both train and test"):
        splits.check_roles(np.array(["p0", "p1", "p1"]), np.array(["train", "train", "test"]))


def test_official_scheme_tests_the_validation_split():
    roles = splits.assign({"a": "train", "b": "train", "c": "validation"}, "official", 4, 0)
    assert roles["official"]["c"] == "test"
    assert sorted(roles["official"][p] for p in "ab") == ["train", "val"]   # inner validation
    with pytest.raises(DataError, match="--split official needs patients in both"):
        splits.assign({"a": "validation", "b": "validation"}, "official", 4, 0)


# ---------------------------------------------------------------- statistics per patient

def test_the_headline_is_the_mean_over_patients_not_over_slices():
    values = np.array([0.9, 0.9, 0.9, 0.1])              # patient a: 3 slices, b: 1 slice
    pid = np.array(["a", "a", "a", "b"])
    stats = patient_stats.summary(values, pid)
    assert stats["mean"] == pytest.approx(0.5) and stats["slice_mean"] == pytest.approx(0.7)
    scores = {k: values for k in q1_eval.METRICS}
    out = q1_eval.summarise(scores, pid, np.array(["axial"] * 4))
    assert out["overall"]["masked_ssim"]["mean"] == pytest.approx(0.5)
    assert out["per_view"]["axial"]["masked_ssim"]["mean"] == pytest.approx(0.5)
    assert out["per_patient"]["a"] == {"slices": 3, **{k: pytest.approx(0.9) for k in scores}}


def test_intervals_need_five_patients_and_paired_counts_improvements():
    four = {p: v for p, v in zip("abcd", [0.7, 0.8, 0.75, 0.9])}
    assert patient_stats.across(four)["ci95"] is None
    five = {**four, "e": 0.6}
    low, high = patient_stats.across(five)["ci95"]
    assert low <= np.mean(list(five.values())) <= high
    better = {p: v + d for (p, v), d in zip(five.items(), [0.02, 0.01, -0.01, 0.03, 0.0])}
    paired = patient_stats.paired(five, better, higher_is_better=True)
    assert paired["improved"] == 3 and paired["ties"] == 1 and paired["patients"] == 5
    assert paired["mean_diff"] == pytest.approx(0.01)
    assert patient_stats.paired(five, better, higher_is_better=False)["improved"] == 1


# ---------------------------------------------------------------- anatomy-keeping flips

def brats_volume(seed: int = 0) -> np.ndarray:
    """(64, 64, 64) float32 random anatomy in the BraTS convention (i: right->left,
    j: anterior->posterior, k: inferior->superior)."""
    return np.random.default_rng(seed).random((64, 64, 64), dtype=np.float32)


def view_slice(vol: np.ndarray, view: str, k: int) -> np.ndarray:
    """The converter's slicing (../shared/data/mri/README.md step 6)."""
    return {"axial": vol[:, :, k], "coronal": vol[:, k, :], "sagittal": vol[k, :, :]}[view]


def test_the_flip_is_left_right_in_every_view():
    vol = brats_volume()
    mirrored = vol[::-1]                                         # the patient mirrored left-right
    for view in ("axial", "coronal"):                            # rows run right->left
        np.testing.assert_array_equal(view_slice(mirrored, view, 20),
                                      view_slice(vol, view, 20)[::-1])
    gen = torch.Generator().manual_seed(0)
    for view in VIEWS:
        x = torch.from_numpy(np.stack([view_slice(vol, view, 20)] * 16)[:, None].copy())
        _, t2 = augment(x, x.clone(), torch.full((16,), VIEWS.index(view)), gen)
        flipped = []
        for b in range(16):
            shifted = {(dy, dx): shift_images(x[b:b + 1], torch.tensor([dy]), torch.tensor([dx]))[0]
                       for dy in range(-4, 5) for dx in range(-4, 5)}
            plain = any(torch.equal(t2[b], s) for s in shifted.values())
            mirror = any(torch.equal(t2[b], shift_images(x[b:b + 1].flip(-2), torch.tensor([dy]),
                                                          torch.tensor([dx]))[0])
                         for dy, dx in shifted)
            assert plain or mirror
            flipped.append(mirror and not plain)
        if view == "sagittal":      # no left-right axis in the plane: never mirrored
            assert not any(flipped)
        else:
            assert 0 < sum(flipped) < 16


def test_demo_phantom_has_the_real_data_orientation():
    demo = make_demo_mri(n_train=2, n_val=1, slices_per_view=6, with_labels=True)["train"]
    brain = demo["labels"][:, 0] > 0
    cols = np.arange(64)
    for view in ("coronal", "sagittal"):                         # superior toward the right
        m = brain[demo["view"] == view]
        centre = (m * cols).sum() / m.sum()
        assert centre > 31.5 + 1, view
    for view in ("axial", "coronal"):                            # rows: left-right symmetric
        m = brain[demo["view"] == view]
        rows = (m * cols[:, None]).sum() / m.sum()
        assert abs(rows - 31.5) < 1.5, view


# ---------------------------------------------------------------- 2.5-D neighbours

def demo_slices() -> Slices:
    raw = make_demo_mri(n_train=2, n_val=1, slices_per_view=8)
    from q1_mri.data import MRISplit
    return pool({s: MRISplit(raw[s]["t1"].astype(np.float16), raw[s]["t2"].astype(np.float16),
                             raw[s]["patient_id"], raw[s]["view"]) for s in raw})


def test_neighbours_follow_verified_slice_order_and_refuse_a_shuffled_one():
    data = demo_slices()
    rows, report = neighbour_rows(data, 1)
    assert report == {"stacks": 9, "verified": 9, "slices_without_context": 0}
    first = np.flatnonzero((data.patient_id == "demo-000") & (data.view == "coronal"))
    assert rows[first[3]].tolist() == [first[2], first[3], first[4]]
    assert rows[first[0]].tolist() == [first[0], first[0], first[1]]   # the stack's end
    shuffled = np.random.default_rng(0).permutation(len(data))
    bad = Slices(data.t1[shuffled], data.t2[shuffled], data.patient_id, data.view, 0,
                 data.row, data.split)                            # images no longer in order
    with pytest.raises(DataError, match="no stack of slices of this data is in slice order"):
        neighbour_rows(bad, 1)
    rows, report = neighbour_rows(bad, 1, require=False)
    assert report["verified"] == 0 and (rows == np.arange(len(bad))[:, None]).all()


# ---------------------------------------------------------------- evaluation from a file

def handmade_run(tmp_path, noise: float = 0.05):
    """A source with 3 train and 2 validation patients and one run folder of the official
    scheme holding a hand-made prediction file (the true T2 plus noise) for its inner-
    validation and test slices."""
    source = write_mri(tmp_path / "src", n=10, train=["p1", "p2", "p5"], validation=["p3", "p4"])
    root = tmp_path / "results" / "q1" / source.tag
    data = pool(load_mri(source))
    split, path = splits.open_split(root, source.tag, data, "official", 1, 0)
    entry = splits.run_entry(split, path, "official")
    roles = splits.slice_roles(split["folds"]["official"], data)
    rows = np.flatnonzero(roles != "train")
    _, t2, mask = normalise(data)
    pred = np.clip(t2[rows] + np.random.default_rng(0).normal(0, noise, t2[rows].shape), 0, 1)
    run = root / "unet-official-seed0"
    write_json(run / "split.json", entry)
    write_json(run / "summary.json", {"model": "unet", "name": None, "split": "official",
                                      "fold": "official", "seed": 0, "config": {"model": "unet"}})
    sub = data.select(rows)
    save_predictions(run / "predictions.npz", sub.row, sub.split, sub.patient_id, sub.view,
                     roles[rows], pred, UNITS, "unet", entry["split_id"], source.tag,
                     dtype=np.float32)
    test = roles[rows] == "test"
    return (source, run, data.t2[rows][test].astype(np.float32), pred.astype(np.float32)[test],
            sub.patient_id[test], mask[rows][test])


def test_evaluation_of_a_handmade_file_equals_skimage_and_hand_psnr(tmp_path, monkeypatch):
    """Per slice, truth and prediction scaled by their own brain p99.5 (metrics.slice_scaled),
    then skimage's SSIM and a hand PSNR, averaged per patient, then over patients."""
    from q1_mri import figures
    monkeypatch.setattr(figures, "write_all", lambda *a, **k: None)
    source, _, gt, pred, pid, mask = handmade_run(tmp_path)
    result = q1_eval.main(q1_eval.parse_args(["--data", str(source.path), "--results-root",
                                              str(tmp_path / "results")]))
    g = slice_scaled(torch.from_numpy(gt), torch.from_numpy(mask)).numpy()
    p = slice_scaled(torch.from_numpy(pred), torch.from_numpy(mask)).numpy()
    ssim = [skimage_metrics.structural_similarity(a[0], b[0], data_range=1.0) for a, b in zip(g, p)]
    psnr = [10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2)) for a, b in zip(g, p)]
    scores = result["methods"]["unet"]
    for key, values in (("ssim", ssim), ("psnr", psnr)):
        per_patient = [np.mean(np.array(values)[pid == q]) for q in ("p3", "p4")]
        assert scores["overall"][key]["mean"] == pytest.approx(np.mean(per_patient), abs=1e-3)
        assert scores["per_patient"]["p3"][key] == pytest.approx(per_patient[0], abs=1e-3)
    assert scores["overall"]["ssim"]["ci95"] is None             # 2 patients: no interval
    assert result["headline_scheme"] == "official" and result["patients"] == 5


def test_evaluation_refuses_a_file_of_another_split_or_other_patients(tmp_path):
    source, run, _, _, _, _ = handmade_run(tmp_path)
    args = q1_eval.parse_args(["--data", str(source.path), "--results-root",
                               str(tmp_path / "results")])
    with np.load(run / "predictions.npz") as f:
        a = {k: f[k] for k in f.files}
    save_predictions(run / "predictions.npz", a["row"], a["split"], a["patient_id"], a["view"],
                     a["role"], a["t2_pred"], UNITS, "unet", "0123456789ab", source.tag)
    with pytest.raises(DataError, match="were made on split 0123456789ab"):
        q1_eval.main(args)
    keep = a["patient_id"] != "p3"
    save_predictions(run / "predictions.npz", a["row"][keep], a["split"][keep],
                     a["patient_id"][keep], a["view"][keep], a["role"][keep], a["t2_pred"][keep],
                     UNITS, "unet", str(a["split_id"]), source.tag)
    with pytest.raises(DataError, match="its test patients .* are not those of"):
        q1_eval.main(args)
