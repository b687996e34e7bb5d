"""Nothing silently wrong: a damaged file, a bad flag or out-of-range data ends in one
`error: ...` line (exit 2) or a one-line notice and a clean result, never a traceback, a run on
the wrong device or inf pixels. Each case is small (seconds); nothing trains."""
from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

import common.datasource
import tests.test_q1_bad_input as q1_bad_input
from common import cli
from common.cache import to_float16
from common.datasource import PROJECT_ROOT
from common.io import read_csv, read_json, write_csv, write_json
from common.prediction_files import read_predictions
from common.runs import RunError, locked, process_start
from common.runtime import check_memory
from q1_mri import baselines as q1_baselines
from q1_mri import train as q1_train
from q1_mri.data import load_mri, normalise
from q2_ecg import baselines as q2_baselines
from q2_ecg.beats import amplitude_scale
from q2_ecg.data import load_records
from tests.test_q2_data import _record, _write_parquet

HINT = "the file is damaged; remove it and rerun the step that wrote it"


def run_cli(main, capsys) -> tuple[int, str]:
    """Run `main` as the scripts do (common.cli.run_main): exit status and its one stderr line."""
    with pytest.raises(SystemExit) as exit_:
        cli.run_main(main)
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return exit_.value.code, err.strip()


# ---------------------------------------------------------------- damaged files

@pytest.mark.parametrize("damage,kind", [(lambda b: b[:len(b) // 2], "JSONDecodeError"),
                                         (lambda b: b"\xff\xfe\x00" + b, "UnicodeDecodeError")],
                         ids=["truncated", "binary"])
def test_damaged_json_is_one_error_line(tmp_path, capsys, damage, kind):
    path = write_json(tmp_path / "summary.json", {"model": "unet", "epochs": [1, 2, 3]})
    path.write_bytes(damage(path.read_bytes()))
    assert run_cli(lambda: read_json(path), capsys) == (2, f"error: cannot read {path} ({kind}): "
                                                          f"{HINT}")
    with pytest.raises(FileNotFoundError):       # callers test for a missing file themselves
        read_json(tmp_path / "absent.json")


@pytest.mark.parametrize("damage", [lambda b: b[:-3],                 # cut off inside the last row
                                    lambda b: b[:8] + b"\x00\xff" + b[8:]],  # not text
                         ids=["truncated", "binary"])
def test_damaged_csv_is_one_error_line(tmp_path, capsys, damage):
    path = write_csv(tmp_path / "history.csv", [{"epoch": e, "loss": 0.5 / e} for e in (1, 2)])
    path.write_bytes(damage(path.read_bytes()))
    code, line = run_cli(lambda: read_csv(path), capsys)
    assert code == 2 and line.startswith(f"error: cannot read {path} (") and line.endswith(HINT)
    with pytest.raises(FileNotFoundError):
        read_csv(tmp_path / "absent.csv")


def test_truncated_predictions_npz_is_one_error_line(tmp_path, capsys):
    path = tmp_path / "predictions.npz"
    np.savez(path, pred=np.zeros((64, 3), np.float32), split_id=np.array("0123456789ab"))
    path.write_bytes(path.read_bytes()[:300])
    assert run_cli(lambda: read_predictions(path, ("pred",), None, None), capsys) == (
        2, f"error: cannot read {path} (BadZipFile): rerun that run")


# ---------------------------------------------------------------- flags

@pytest.mark.parametrize("parse,flag,value,message", [
    (q1_train.parse_args, "--seed", "4294967296", "4294967296 is not an integer in 0..4294967295"),
    (q1_baselines.parse_args, "--seed", "4294967296", "is not an integer in 0..4294967295"),
    (q2_baselines.parse_args, "--seed", "-1", "is not an integer in 0..4294967295"),
    (q1_train.parse_args, "--device", "foo", "'foo' is not a device: use auto, cpu, cuda, "
                                             "cuda:N or mps"),
    (q1_train.parse_args, "--data", "", "an empty value names no data"),
])
def test_bad_flag_is_refused_before_any_data_is_read(monkeypatch, capsys, parse, flag, value,
                                                     message):
    def no_data(*_):
        raise AssertionError("data was read for a refused flag")
    monkeypatch.setattr(common.datasource, "folder_fingerprint", no_data)   # --data "": cwd
    with pytest.raises(SystemExit) as exit_:
        parse([flag, value])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"error: argument {flag}: " in err and message in err, err


def test_edge_flags_are_accepted():
    args = q1_train.parse_args(["--seed", "4294967295", "--device", "mps", "--fold", "0"])
    assert (args.seed, args.device) == (2**32 - 1, "mps")
    assert [cli.device(d) for d in ("auto", "cuda", "cuda:1", "mps")] == ["auto", "cuda", "cuda:1",
                                                                         "mps"]


# ---------------------------------------------------------------- memory

def test_memory_estimate_beyond_the_free_memory_is_one_error_line(capsys):
    cpu = torch.device("cpu")
    check_memory(1 << 20, cpu, "a 1 MB batch")                  # fits: nothing happens
    code, line = run_cli(lambda: check_memory(1 << 60, cpu, "training the U-Net"), capsys)
    assert code == 2 and line.startswith("error: training the U-Net needs about 1152921504.6 GB "
                                         "of cpu memory, this machine has ")
    assert line.endswith("GB free: lower --batch-size or the model width, or stop other jobs "
                         "using it")


# ---------------------------------------------------------------- run lock

def test_lock_of_a_reused_pid_is_cleared(tmp_path, capsys):
    """A lock naming a live process that started at another time than the lock's writer (the
    pid was reused) is stale; the same process, or a lock in the old "pid host" format, is not."""
    other = subprocess.Popen(["sleep", "60"])
    try:
        start = process_start(other.pid)
        lock = tmp_path / ".lock"
        for owner in (f"{other.pid} {socket.gethostname()} {start}",
                      f"{other.pid} {socket.gethostname()}"):
            lock.write_text(owner)
            with pytest.raises(RunError, match=f"pid {other.pid}"):
                with locked(tmp_path):
                    pass
        lock.write_text(f"{other.pid} {socket.gethostname()} {start + 1}")
        with locked(tmp_path):
            assert lock.read_text().split()[0] == str(os.getpid())
        assert "notice: clearing the stale lock" in capsys.readouterr().err
    finally:
        other.kill()
        other.wait()


# ---------------------------------------------------------------- float16 range

def test_float16_scaling_keeps_huge_values_finite(capsys):
    huge = np.full((8, 8), 1e6, np.float32)
    huge[0, 0] = -3e6
    scaled, factor = to_float16(huge, "test intensities")
    assert factor == 2.0**6 and scaled.dtype == np.float16 and np.isfinite(scaled).all()
    np.testing.assert_allclose(scaled.astype(np.float32) * factor, huge, rtol=1e-3)
    assert capsys.readouterr().err.strip() == ("notice: test intensities exceed the float16 "
                                               "cache's range (+-65504): cached divided by 64")
    ordinary = np.linspace(-100, 60000, 50, dtype=np.float32)
    same, factor = to_float16(ordinary, "ordinary")
    assert factor == 1.0 and np.array_equal(same, ordinary.astype(np.float16))
    assert capsys.readouterr().err == ""


def test_chunks_scaled_late_share_one_factor():
    """A later chunk that overflows rescales the chunks already held: one factor for all."""
    from common.cache import Float16Arrays

    holder = Float16Arrays("chunks")
    holder.add("t1", np.full(4, 1000.0))
    holder.add("t2", np.full(4, 2000.0))
    holder.add("t1", np.full(4, 1.6e5))
    arrays = holder.arrays()
    assert holder.factor == 4.0
    np.testing.assert_array_equal(arrays["t1"], np.r_[np.full(4, 250.0), np.full(4, 4e4)])
    np.testing.assert_array_equal(arrays["t2"], np.full(4, 500.0))


def test_mri_intensities_beyond_float16_load_finite(tmp_path, monkeypatch):
    """Intensities x1000 (up to 2e6) load without inf and normalise as the originals do
    (to float16 precision)."""
    plain = q1_bad_input.write_mri(tmp_path / "plain", train=["p1", "p2"], validation=["p3"])
    brain = q1_bad_input.brain
    monkeypatch.setattr(q1_bad_input, "brain", lambda seed: 1000 * brain(seed))
    huge = q1_bad_input.write_mri(tmp_path / "huge", train=["p1", "p2"], validation=["p3"])
    loaded, original = load_mri(huge), load_mri(plain)
    for split in ("train", "validation"):
        got = loaded[split]
        assert np.isfinite(got.t1).all() and np.isfinite(got.t2).all()
        for a, b in zip(normalise(got), normalise(original[split])):
            np.testing.assert_allclose(a, b, atol=3e-3)


def test_ecg_signal_beyond_float16_loads_finite(tmp_path):
    """A record x1e5 loads finite and, divided by its R amplitude, as the original record."""
    wave = _record("a")["signal"]
    records = load_records(_write_parquet(tmp_path / "ecg", [_record("a"),
                                                             _record("b", signal=wave * 1e5)]))
    assert np.isfinite(records.signal).all()
    scaled = []
    for r in range(2):
        signal, locs, _ = records.record(r)
        scaled.append((signal - np.median(signal)) / amplitude_scale(signal, locs))
    np.testing.assert_allclose(scaled[1], scaled[0], atol=5e-3)


# ---------------------------------------------------------------- make notebooks

def test_ctrl_c_in_run_notebooks_is_one_line(tmp_path, monkeypatch, capsys):
    """Ctrl-C while the notebook processes run: they are waited for (they shut their kernels
    down), their tracebacks are dropped, and one line and exit status 130 remain."""
    spec = importlib.util.spec_from_file_location("run_notebooks",
                                                  PROJECT_ROOT / "tools" / "run_notebooks.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)

    class Child:
        """A notebook process: the first wait is interrupted by Ctrl-C, then it ends."""
        started: list[Child] = []

        def __init__(self, argv, stdout=None, **_):
            if stdout:
                stdout.write(b"Traceback (most recent call last): nbclient after Ctrl-C\n")
            self.waits = 0
            self.started.append(self)

        def wait(self) -> int:
            self.waits += 1
            if self.waits == 1:
                raise KeyboardInterrupt
            return 1
    monkeypatch.setattr(tool.subprocess, "Popen", Child)
    monkeypatch.setattr(sys, "argv", ["run_notebooks.py", "--out-dir", str(tmp_path)])
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))   # the tool changes it
    monkeypatch.delenv(tool.CHILD, raising=False)
    with pytest.raises(SystemExit) as exit_:
        tool.main()
    captured = capsys.readouterr()
    assert exit_.value.code == 130 and captured.out == "" and captured.err.strip().splitlines() == [
        "interrupted: the notebooks were not (all) executed; rerun make notebooks"]
    assert [child.waits for child in Child.started] == [2, 1]     # both waited for


def test_a_dead_kernel_in_run_notebooks_is_one_line(tmp_path, monkeypatch):
    """A kernel killed (e.g. for memory) while a notebook runs: one line naming the notebook,
    no nbclient traceback, and no notebook written."""
    from nbclient.exceptions import DeadKernelError

    spec = importlib.util.spec_from_file_location("run_notebooks",
                                                  PROJECT_ROOT / "tools" / "run_notebooks.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)

    def dies(*_):
        raise DeadKernelError("Kernel died\nmore detail")
    monkeypatch.setattr(tool, "execute", dies)
    monkeypatch.setattr(sys, "argv", ["run_notebooks.py", "--out-dir", str(tmp_path), "--only", "q1"])
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv(tool.CHILD, "1")
    monkeypatch.delenv("NOTEBOOK_DATA", raising=False)
    with pytest.raises(SystemExit) as exit_:
        tool.main()
    assert exit_.value.code == ("Assessment_Q1.ipynb: the kernel died (Kernel died), e.g. killed "
                                "for memory; nothing was saved; rerun make notebooks")
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- training that goes wrong

def test_a_diverging_run_keeps_no_non_finite_weights(tmp_path, capsys):
    """--lr 1e30 blows up the first epoch: one line, and no checkpoint or best weights of NaN
    are written for --resume to continue from (before, an epoch of NaN weights was saved)."""
    from q2_ecg import train as q2_train
    from tests.conftest import Q2_KFOLD, Q2_TINY

    args = Q2_TINY + [*Q2_KFOLD, "--fold", "0", "--lr", "1e30", "--results-root", str(tmp_path)]
    code, err = run_cli(lambda: q2_train.train(q2_train.parse_args(args)), capsys)
    assert code == 2 and ("diverged" in err or "non-finite" in err)
    run = tmp_path / "q2" / "demo" / "resnet-kfold2-fold0-seed0"
    for name in ("checkpoint.pt", "best.pt"):
        if (run / name).exists():
            state = torch.load(run / name, weights_only=False)
            weights = state.get("model") or state["ema"]["shadow"]
            assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())
    assert not (run / "summary.json").exists()


def test_too_few_monitor_beats_and_an_oversized_batch_are_refused_before_training(
        tmp_path, capsys, monkeypatch):
    from q2_ecg import train as q2_train
    from tests.conftest import Q2_KFOLD, Q2_TINY

    base = Q2_TINY + [*Q2_KFOLD, "--fold", "0", "--results-root", str(tmp_path)]
    with pytest.raises(SystemExit):
        q2_train.parse_args(base + ["--max-monitor-beats", "1"])
    assert "--max-monitor-beats 1: fewer than 100 inner-validation beats cannot choose an epoch" \
        in capsys.readouterr().err
    monkeypatch.setattr("common.runtime.free_memory", lambda device: 2 * 10**9)   # a 2 GB machine
    code, err = run_cli(lambda: q2_train.train(q2_train.parse_args(
        base[:-4] + ["--batch-beats", "200000", *base[-4:]])), capsys)   # (flags after the tiny set)
    assert code == 2 and err.startswith("error: training at --batch-beats 200000 and width 8 needs "
                                        "about")
    assert not list((tmp_path / "q2" / "demo").glob("resnet-*/checkpoint.pt"))


def test_a_killed_rerun_leaves_no_mix_of_two_runs(tmp_path, monkeypatch):
    """Finish a run, rerun it with another learning rate and kill it after its first epoch:
    the folder holds the new run's checkpoint and history only, no summary or prediction of the
    old run that evaluation could score beside them."""
    from q1_mri import train as q1_train
    from tests.conftest import Q1_TINY, interrupt_after_first_epoch

    args = Q1_TINY + ["--model", "unet", "--fold", "0", "--results-root", str(tmp_path)]
    q1_train.train(q1_train.parse_args(args))
    run = tmp_path / "q1" / "demo" / "unet-kfold2-fold0-seed0"
    assert (run / "summary.json").exists()
    interrupt_after_first_epoch(monkeypatch, q1_train)
    with pytest.raises(KeyboardInterrupt):
        q1_train.train(q1_train.parse_args(args + ["--lr", "0.01"]))
    assert {f.name for f in run.iterdir()} == {"split.json", "checkpoint.pt", "best.pt",
                                               "history.csv"}
    assert len(read_csv(run / "history.csv")) == 1
    assert torch.load(run / "checkpoint.pt", weights_only=False)["config"]["lr"] == 0.01


def test_a_fresh_run_names_what_it_replaces_and_not_a_lone_split_file(tmp_path, capsys):
    """A run killed before its first epoch leaves only split.json: starting again is no
    "replacement"; a folder with a finished run's files says it replaces them, and removes them."""
    from common.loop import RunBook

    run = tmp_path / "run"
    run.mkdir()
    write_json(run / "split.json", {"split_id": "old"})
    RunBook(run, patience=3, resume=False, config={}).begin({"split_id": "new"})
    assert "replacing" not in capsys.readouterr().out
    assert read_json(run / "split.json") == {"split_id": "new"}
    write_json(run / "summary.json", {})
    (run / "predictions.npz").write_bytes(b"old")
    RunBook(run, patience=3, resume=False, config={}).begin({"split_id": "newer"})
    assert f"notice: replacing the earlier run in {run}" in capsys.readouterr().out
    assert {f.name for f in run.iterdir()} == {"split.json"}
