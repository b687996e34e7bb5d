"""Q1 bad input (issue 7): every case ends in one `error: ...` line and exit 2, or a notice and
a clean run; never a traceback, NaN metrics or a silent exit 0. No test trains a model."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from common import cli
from common.cli import DataError
from common.datasource import DataSource
from common.ema import ModelEMA
from common.io import torch_save, write_csv, write_json
from q1_mri import eda
from q1_mri import eval as q1_eval
from q1_mri import train as q1_train
from q1_mri.data import UNITS, VIEWS, load_mri, normalise, pool, resolve_source
from q1_mri.metrics import slice_scores
from q1_mri.model import build_model, model_args
from q1_mri.prediction_file import save_predictions
from tests.conftest import shared_data

ROOT = Path(__file__).resolve().parents[1]
IMAGE = pa.list_(pa.list_(pa.list_(pa.float32())))          # (1, 64, 64) as in the hub files
MRI_SCHEMA = pa.schema([("patient_id", pa.string()), ("split", pa.string()),
                        ("view", pa.string()), ("t1", IMAGE), ("t2", IMAGE)])


def brain(seed: int) -> np.ndarray:
    """(1, 64, 64) float32: a 32x32 square of 'brain' on a zero background."""
    img = np.zeros((1, 64, 64), np.float32)
    img[0, 16:48, 16:48] = np.random.default_rng(seed).uniform(100, 1000, (32, 32))
    return img


def write_mri(folder: Path, views=VIEWS, n: int = 6, empty: dict | None = None,
              **patients: list[str]) -> DataSource:
    """`folder`/<split>.parquet in the hub schema, one file per keyword split (train=[ids]).

    n slices per split, views cycled; `empty` maps split -> {row: "t1" | "t2"} to zero.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for split, pids in patients.items():
        t1 = [brain(k) for k in range(n)]
        t2 = [2 * img[:, ::-1] for img in t1]
        for row, contrast in (empty or {}).get(split, {}).items():
            (t1 if contrast == "t1" else t2)[row] = np.zeros((1, 64, 64), np.float32)
        table = pa.table({"patient_id": [pids[k % len(pids)] for k in range(n)],
                          "split": [split] * n, "view": [views[k % len(views)] for k in range(n)],
                          "t1": [a.tolist() for a in t1], "t2": [a.tolist() for a in t2]},
                         schema=MRI_SCHEMA)
        pq.write_table(table, folder / f"{split}.parquet")
    return resolve_source(str(folder))


def run(main, capsys) -> tuple[int, str]:
    """Run `main` as the scripts do (common.cli.run_main): exit status and stderr."""
    with pytest.raises(SystemExit) as exit_:
        cli.run_main(main)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return exit_.value.code, err


def error_line(err: str) -> str:
    """The one `error:` line, which must be the last line of stderr."""
    lines = err.strip().splitlines()
    assert [x for x in lines if x.startswith("error:") or ": error: " in x] == lines[-1:], err
    return lines[-1]


def no_data(*_):
    raise AssertionError("data was loaded")


# ---------------------------------------------------------------- 1. flags

@pytest.mark.parametrize("flag,value,message", [
    ("--epochs", "0", "argument --epochs: 0 is not an integer >= 1"),
    ("--batch-size", "-4", "argument --batch-size: -4 is not an integer >= 1"),
    ("--max-train-slices", "0", "argument --max-train-slices: 0 is not an integer >= 1"),
    ("--monitor-slices", "2.5", "argument --monitor-slices: '2.5' is not an integer >= 1"),
    ("--lr", "0", "argument --lr: 0 is not a number > 0"),
    ("--lr", "nan", "argument --lr: nan is not a number > 0"),
    ("--weight-decay", "-1e-4", "argument --weight-decay: -1e-4 is not a number >= 0"),
    ("--ssim-weight", "-1", "argument --ssim-weight: -1 is not a number >= 0"),
    ("--grad-weight", "inf", "argument --grad-weight: inf is not a number >= 0"),
    ("--ema-decay", "1", "argument --ema-decay: 1 is not a number in [0, 1)"),
    ("--base-channels", "0", "argument --base-channels: 0 is not an integer >= 1"),
    ("--name", "x/../../escaped", "argument --name: 'x/../../escaped' is not a name: start "
                                  "with a letter or digit, then use letters, digits, '-', '_' "
                                  "and '.' only"),
    ("--name", "-x", "argument --name: '-x' is not a name: start with a letter or digit, then "
                     "use letters, digits, '-', '_' and '.' only"),
    ("--name", "..", "argument --name: '..' is not a name: start with a letter or digit, then "
                     "use letters, digits, '-', '_' and '.' only"),
])
def test_bad_flag_is_refused_before_any_data_is_loaded(flag, value, message, capsys,
                                                       monkeypatch):
    monkeypatch.setattr(q1_train, "load_mri", no_data)
    code, err = run(lambda: q1_train.train(q1_train.parse_args(["--data", "demo", "--fold", "0",
                                                         f"{flag}={value}"])),
                    capsys)
    assert code == 2 and err.startswith("usage:") and error_line(err).endswith(message)


# ---------------------------------------------------------------- 2a. shared patients

def test_patient_in_both_splits_is_refused_by_train_eval_and_eda(tmp_path, capsys):
    source = write_mri(tmp_path / "leak", train=["p1", "p2"], validation=["p2", "p3"])
    message = f"error: {source.path}: 1 patient(s) in both the train and the validation split: p2"
    flags = ["--data", str(source.path), "--results-root", str(tmp_path / "results")]
    fake_run(tmp_path / "results" / "q1" / source.tag / "unet-kfold4-fold0-seed0")
    for main in (lambda: q1_train.train(q1_train.parse_args(flags + ["--device", "cpu",
                                                                     "--fold", "0"])),
                 lambda: q1_eval.main(q1_eval.parse_args(flags)),
                 lambda: eda.main(flags)):
        code, err = run(main, capsys)
        assert code == 2 and error_line(err).startswith(message)
    assert not (tmp_path / "results" / "q1" / source.tag / "figures").exists()


# ---------------------------------------------------------------- 2b. empty slices

def test_empty_slices_are_skipped_counted_and_never_scored(tmp_path, capsys):
    source = write_mri(tmp_path / "holes", train=["p1", "p2"], validation=["p3"],
                       empty={"train": {0: "t1", 4: "t2"}, "validation": {1: "t2"}})
    splits = load_mri(source)
    assert "notice: skipped 3 slices with an empty T1 or T2 (train: 2, validation: 1)" \
        in capsys.readouterr().err
    assert [len(s) for s in splits.values()] == [4, 5]
    assert [s.skipped_empty for s in splits.values()] == [2, 1]
    t1, t2, mask = normalise(splits["validation"])
    scores = slice_scores(*(torch.from_numpy(a) for a in (t2, t1, mask)))
    assert all(torch.isfinite(v).all() for v in scores.values())


@pytest.mark.parametrize("contrast", ["t1", "t2"])
def test_split_with_only_empty_slices_is_refused(tmp_path, contrast):
    source = write_mri(tmp_path / "blank", n=3, train=["p1"], validation=["p2"],
                       empty={"validation": {k: contrast for k in range(3)}})
    with pytest.raises(DataError, match=f"every {contrast.upper()} slice of validation is empty"):
        load_mri(source)


# ---------------------------------------------------------------- 2c. a missing view

def test_axial_only_data_skips_the_missing_views(tmp_path, capsys):
    source = write_mri(tmp_path / "axial", views=("axial",), train=["p1", "p2"],
                       validation=["p3"])
    eda.main(["--data", str(source.path), "--results-root", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert "notice: the train split has no coronal, sagittal slices; leaving out their panels" \
        in err and "Traceback" not in err
    out = tmp_path / "results" / "q1" / source.tag
    stats = json.loads((out / "eda_stats.json").read_text())
    assert stats["splits"]["train"]["slices_per_view"] == {"axial": 6, "coronal": 0,
                                                            "sagittal": 0}
    assert (out / "figures" / "eda_pairs_raw.png").exists()
    split = load_mri(source)["validation"]
    scores = {m: np.arange(len(split), dtype=float) for m in q1_eval.METRICS}
    scores.update(n_brain=np.ones(len(split)), n_brain_windows=np.ones(len(split)))
    assert set(q1_eval.summarise(scores, split.patient_id, split.view)["per_view"]) == {"axial"}


# ---------------------------------------------------------------- 2d. the other question's data

def write_ecg(folder: Path) -> Path:
    """A two-record folder in Q2's schema, with the class_mapping.json that sits beside it."""
    folder.mkdir()
    pq.write_table(pa.table({"patient_id": ["100", "101"], "source_db": ["mitdb_npy"] * 2,
                             "sampling_rate": [128, 128], "signal": [[0.1] * 256] * 2,
                             "beat_locs": [[10, 200]] * 2, "beat_labels": [[0, 1]] * 2}),
                   folder / "mitdb.parquet")
    (folder / "class_mapping.json").write_text('{"0": "NOR", "1": "SVEB"}')
    return folder


def test_ecg_folder_is_refused_by_name_from_the_command_line(tmp_path):
    folder = write_ecg(tmp_path / "ecg")
    env = {**os.environ, "PROJECT_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1",
           "NO_PROGRESS": "1"}
    done = subprocess.run([sys.executable, "-m", "q1_mri.train", "--data", str(folder),
                           "--device", "cpu", "--fold", "0", "--results-root", str(tmp_path / "results")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert error_line(done.stderr) == (
        f"error: {folder} holds ECG records (Q2's schema: signal, beat_locs, beat_labels), "
        "not T1/T2 slices; use it with make q2 / q2_ecg")
    assert not list((tmp_path / "results").rglob("*.*"))


def test_real_ecg_folder_is_refused_by_name():
    folder = shared_data("ecg")
    with pytest.raises(DataError, match=r"holds ECG records \(Q2's schema"):
        load_mri(DataSource("folder", folder, "local-ecg"))


def test_non_parquet_files_and_hub_file_names_are_handled(tmp_path):
    """README/JSON files are ignored; hub-style shard names give the splits."""
    source = write_mri(tmp_path / "hub" / "data", train=["p1"], validation=["p2"])
    for split in ("train", "validation"):
        (source.path / f"{split}.parquet").rename(
            source.path / f"{split}-00000-of-00001.parquet")
    (tmp_path / "hub" / "README.md").write_text("# notes")
    (tmp_path / "hub" / "volumes.json").write_text("{}")
    splits = load_mri(resolve_source(str(tmp_path / "hub")))
    assert [len(s) for s in splits.values()] == [6, 6]


# ---------------------------------------------------------------- 2e. a single split

def test_validation_only_folder_is_scored_but_has_no_official_split(tmp_path, capsys):
    other = write_mri(tmp_path / "other", validation=["q1", "q2"])
    root = tmp_path / "results"
    assert list(load_mri(other)) == ["validation"]
    flags = ["--data", str(other.path), "--device", "cpu", "--results-root", str(root)]
    code, err = run(lambda: q1_train.train(q1_train.parse_args(flags + ["--split", "official"])),
                    capsys)
    assert code == 2 and error_line(err).startswith(
        "error: --split official needs patients in both the train and the validation split")
    code, err = run(lambda: q1_train.train(q1_train.parse_args(flags + ["--fold", "0"])), capsys)
    assert code == 2 and error_line(err).startswith(
        "error: a 5-fold cross-validation with inner validation needs at least 10 patients and "
        "2 folds; the data has 2")
    s = pool(load_mri(other))
    _, t2, _ = normalise(s)
    save_predictions(tmp_path / "p.npz", s.row, s.split, s.patient_id, s.view,
                     np.full(len(s), "test"), t2, UNITS, "unet", "external", other.tag)
    result = q1_eval.main(q1_eval.parse_args(["--data", str(other.path), "--predictions",
                                              str(tmp_path / "p.npz"), "--results-root",
                                              str(root)]))
    assert result["overall"]["masked_ssim"]["mean"] == pytest.approx(1.0)   # the truth itself
    assert set(result["per_patient"]) == {"q1", "q2"}


# ---------------------------------------------------------------- 3. evaluation without a model

def fake_run(run_dir: Path) -> Path:
    """A finished run folder as training leaves it (untrained tiny weights, an empty prediction
    file); returns its best weights."""
    args = model_args("unet", base_channels=8)
    model = build_model(**args)
    write_csv(run_dir / "history.csv", [{"epoch": 1, "train_loss": 0.5, "score": 0.1}])
    write_json(run_dir / "summary.json", {"model": "unet", "name": None, "split": "kfold",
                                          "fold": "fold0", "seed": 0})
    write_json(run_dir / "split.json", {"split_id": "x", "roles": {}})
    (run_dir / "predictions.npz").write_bytes(b"")
    return torch_save(run_dir / "best.pt", {"model_args": args, "epoch": 1,
                                            "ema": ModelEMA(model).state_dict(), "config": {}})


def test_evaluation_before_training_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(q1_eval, "load_mri", no_data)
    root = tmp_path / "results"
    code, err = run(lambda: q1_eval.main(q1_eval.parse_args(
        ["--data", "demo", "--results-root", str(root)])), capsys)
    assert code == 2 and error_line(err) == (
        f"error: no finished Q1 run in {root / 'q1' / 'demo'}: run make q1 "
        "(or python -m q1_mri.train) first")
    assert not list(root.rglob("*.*"))


def test_truncated_deployed_weights_give_one_line(tmp_path, capsys):
    from common.io import file_digest
    from q1_mri import infer

    source = write_mri(tmp_path / "src", train=["p1"], validation=["p2"])
    other = write_mri(tmp_path / "other", validation=["q1"])
    root = tmp_path / "results"
    path = fake_run(root / "q1" / source.tag / "unet-kfold5-fold0-seed0")
    path.write_bytes(path.read_bytes()[:2000])
    write_json(root / "q1" / source.tag / "final.json", {
        "method": "unet", "flip": False, "data_label": "src", "folds": {"fold0": [{
            "run": path.parent.name, "weights": f"{path.parent.name}/best.pt",
            "sha256": file_digest(path)}]}})
    code, err = run(lambda: infer.main(infer.parse_args(
        ["--data", str(other.path), "--trained-on", str(source.path), "--device", "cpu",
         "--results-root", str(root), "--out", str(tmp_path / "p.npz")])), capsys)
    assert code == 2 and error_line(err).startswith(f"error: cannot read {path} (")
    assert not (tmp_path / "p.npz").exists()
