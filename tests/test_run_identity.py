"""Run identity and bad input (issue 7): runs never mix, bad input never crashes.

Each case builds a tiny bad input and checks the exit status, the one `error: ...` line (never a
traceback) and that no other run's files changed. Training runs use the demo data with the tiny
settings of conftest and one epoch; `cli_run` starts the real command line where the exit status
and stderr of the script itself matter (one per kind of error), `run_cli` runs a script's main the
same way (common.cli.run_main) in this process.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

import common.io
from common import cli
from common.cache import CacheError
from common.checkpoint import load_checkpoint
from common.io import (
    WriteError,
    atomic_write,
    read_csv,
    read_json,
    remove_orphans,
    write_bytes,
    write_json,
)
from common.runs import RunError, check_resume, locked, run_name
from q1_mri import train as q1_train
from q2_ecg import eval as q2_eval
from q2_ecg import train as q2_train
from q2_ecg.data import cache_path, load_records, resolve_source
from tests.conftest import Q1_TINY, Q2_KFOLD, Q2_TINY, interrupt_after_first_epoch
from tests.test_q1_bad_input import write_mri
from tests.test_q2_data import _record, _write_parquet

ROOT = Path(__file__).resolve().parents[1]
DEMO = Path("q2") / "demo"
RUN = "resnet-kfold2-fold0-seed0"
KFOLD0 = [*Q2_KFOLD, "--fold", "0"]
HINT = "set PROJECT_CACHE to a writable folder"


# ---------------------------------------------------------------- helpers

def q2_args(root: Path, *extra: str):
    """Tiny one-epoch resnet run, fold 0 of a 2-fold split of the demo data, under `root`."""
    return q2_train.parse_args(Q2_TINY + KFOLD0 + ["--epochs", "1", "--results-root", str(root),
                                                   *extra])


def q1_args(root: Path, *extra: str):
    """Tiny one-epoch U-Net run on the demo data (fold 0 where Q1 runs are k-fold runs)."""
    argv = Q1_TINY + ["--epochs", "1", "--base-channels", "4", "--results-root", str(root),
                      *extra]
    if hasattr(q1_train, "run_folder_name") and "--fold" not in argv:
        argv += ["--fold", "0"]
    return q1_train.parse_args(argv)


def q1_folder(root: Path, *extra: str) -> Path:
    """The run folder of `q1_args(root, *extra)`."""
    args = q1_args(root, *extra)
    name = (q1_train.run_folder_name(args) if hasattr(q1_train, "run_folder_name")
            else run_name(args.name or args.model, f"seed{args.seed}"))
    return root / "q1" / "demo" / name


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden ones included) -> its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def tmp_files(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def run_cli(main, capsys) -> tuple[int, str]:
    """Run `main` as the scripts do (common.cli.run_main): exit status and stderr."""
    with pytest.raises(SystemExit) as exit_:
        cli.run_main(main)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return exit_.value.code, err


def cli_run(module: str, *args: str, cache: Path | None = None) -> tuple[int, str]:
    """`python -m module args` from the project root: exit status and stderr."""
    env = {**os.environ, "PROJECT_CACHE": str(cache or os.environ["PROJECT_CACHE"]),
           "HF_HUB_OFFLINE": "1", "NO_PROGRESS": "1"}
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stderr


def error_line(err: str) -> str:
    """The one `error:` line, which must be the last line of stderr."""
    lines = err.strip().splitlines()
    assert [x for x in lines if x.startswith("error:") or ": error: " in x] == lines[-1:], err
    return lines[-1]


def no_data(*_, **__):
    raise AssertionError("data was loaded")


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@pytest.fixture
def live_pid():
    """The pid of a running process (another run still writing)."""
    child = subprocess.Popen(["sleep", "30"])
    yield child.pid
    child.kill()
    child.wait()


def ecg_folder(folder: Path, n: int = 4, db: str = "mitdb_npy", seed: int = 0) -> Path:
    """A folder of `n` records in Q2's schema (every record holds all three classes)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = [_record(f"{db[:2]}{i}", n=2000, source_db=db, locs=tuple(range(100, 1900, 100)),
                    labels=tuple([0, 0, 1, 0, 2, 0] * 3),
                    signal=rng.normal(0, 0.1, 2000).astype(np.float32)) for i in range(n)]
    return _write_parquet(folder, rows).path


def refuse_writes_under(monkeypatch, folder: Path, code: int = errno.EROFS,
                        calls: tuple[str, ...] = ("mkstemp", "TemporaryFile")) -> None:
    """Make creating files under `folder` fail with OSError(code), as on a read-only mount or a
    full disk (root ignores chmod): tempfile is how common.io creates every file (mkstemp) and
    probes a folder (TemporaryFile)."""
    for name in calls:
        real = getattr(tempfile, name)

        def refuse(*args, real=real, **kwargs):
            where = kwargs.get("dir")
            if where is not None and Path(where).resolve().is_relative_to(folder.resolve()):
                raise OSError(code, os.strerror(code))
            return real(*args, **kwargs)
        monkeypatch.setattr(tempfile, name, refuse)


def writable(folder: Path) -> bool:
    """Whether a file can really be created in `folder` (root ignores the mode bits)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------- 1. same-named data folders

def test_same_named_folders_never_share_a_tag_and_a_copy_does(tmp_path):
    a = ecg_folder(tmp_path / "a" / "ecg", seed=0)
    b = ecg_folder(tmp_path / "b" / "ecg", seed=1)
    tag_a, tag_b = resolve_source(str(a)).tag, resolve_source(str(b)).tag
    assert re.fullmatch(r"local-ecg-[0-9a-f]{8}", tag_a) and tag_b.startswith("local-ecg-")
    assert tag_a != tag_b
    assert cache_path(resolve_source(str(a))) != cache_path(resolve_source(str(b)))
    first = load_records(resolve_source(str(a)))          # the caches never mix either
    second = load_records(resolve_source(str(b)))
    assert not np.array_equal(first.signal, second.signal)

    copy = tmp_path / "elsewhere" / "ecg"
    shutil.copytree(a, copy)
    assert resolve_source(str(copy)).tag == tag_a          # same content: same results folder
    (copy / "README.md").write_text("# a local copy of the ECG data\n")
    (copy / "notes.txt").write_text("downloaded yesterday")
    (copy / ".hidden.parquet").write_bytes(b"editor backup")
    assert resolve_source(str(copy)).tag == tag_a          # non-data files do not count

    ecg_folder(tmp_path / "re-export" / "ecg", seed=2)     # same path, new content: new tag
    shutil.rmtree(copy)
    shutil.copytree(tmp_path / "re-export" / "ecg", copy)
    assert resolve_source(str(copy)).tag not in (tag_a, tag_b)


# ---------------------------------------------------------------- 2. concurrent runs

def test_live_lock_refuses_a_second_writer_and_leaves_its_files(tmp_path, live_pid):
    q2_train.train(q2_args(tmp_path))
    folder = tmp_path / DEMO / RUN
    (folder / ".lock").write_text(f"{live_pid} {socket.gethostname()}")
    before = snapshot(folder)
    message = (f"{folder} is being written by another run (pid {live_pid}); wait for it to "
               "finish, stop it, or choose another --name/--seed")
    with pytest.raises(RunError, match=re.escape(message)):
        q2_train.train(q2_args(tmp_path))
    code, err = cli_run("q2_ecg.train", *Q2_TINY, *KFOLD0, "--epochs", "1",
                        "--results-root", str(tmp_path))
    assert code == 2 and error_line(err) == f"error: {message}"
    assert snapshot(folder) == before                       # checkpoint, history and the lock


def test_stale_lock_and_orphans_of_a_killed_run_are_cleared(tmp_path, capsys):
    folder = tmp_path / DEMO / RUN
    folder.mkdir(parents=True)
    dead = dead_pid()
    (folder / ".lock").write_text(f"{dead} {socket.gethostname()}")
    orphan = folder / f".checkpoint.pt.{dead}.x1y2z3.tmp"
    orphan.write_bytes(b"half a checkpoint")
    q2_train.train(q2_args(tmp_path))
    assert (f"notice: clearing the stale lock of a run that no longer exists in {folder}"
            in capsys.readouterr().err)
    assert not (folder / ".lock").exists() and not orphan.exists()
    assert {"checkpoint.pt", "best.pt", "history.csv", "summary.json"} <= set(os.listdir(folder))


def test_lock_of_another_machine_is_respected(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / ".lock").write_text(f"{dead_pid()} some-other-host")   # cannot be checked here
    with pytest.raises(RunError, match="being written by another run"), locked(folder):
        pass
    assert (folder / ".lock").read_text().endswith(" some-other-host")


def test_interrupted_replacement_never_leaves_the_earlier_runs_results(tmp_path, monkeypatch):
    q2_train.train(q2_args(tmp_path))
    folder = tmp_path / DEMO / RUN
    interrupt_after_first_epoch(monkeypatch, q2_train)
    with pytest.raises(KeyboardInterrupt):
        q2_train.train(q2_args(tmp_path, "--lr", "0.01", "--epochs", "2"))
    trained = load_checkpoint(folder / "checkpoint.pt")["config"]
    assert trained["lr"] == 0.01
    summary = folder / "summary.json"              # q2_ecg.eval scores a run that has one
    assert not summary.exists() or read_json(summary)["config"] == trained


# ---------------------------------------------------------------- 3. resume

def test_q1_resume_refuses_other_settings_and_may_only_add_epochs(tmp_path):
    first = q1_train.train(q1_args(tmp_path))
    folder = q1_folder(tmp_path)
    before = snapshot(folder)
    with pytest.raises(RunError, match=re.escape(
            f"--resume: {folder / 'checkpoint.pt'} was trained with other settings or data "
            "(lr 0.001 -> 0.01); drop --resume, or use another --name/--seed")):
        q1_train.train(q1_args(tmp_path, "--resume", "--lr", "0.01"))
    assert snapshot(folder) == before
    resumed = q1_train.train(q1_args(tmp_path, "--resume", "--epochs", "2"))
    config = read_json(folder / "summary.json")["config"]
    assert config["epochs"] == resumed["config"]["epochs"] == 2
    same = lambda c: {k: v for k, v in c.items() if k not in ("epochs", "resume")}  # noqa: E731
    assert same(config) == same(first["config"])
    assert [row["epoch"] for row in read_csv(folder / "history.csv")] == [1.0, 2.0]
    with pytest.raises(RunError, match=re.escape(
            f"--resume: {folder} has already trained 2 epochs, more than --epochs 1")):
        q1_train.train(q1_args(tmp_path, "--resume"))


def test_q2_resume_refuses_another_class_weight_power(tmp_path, capsys):
    first = q2_train.train(q2_args(tmp_path))
    folder = tmp_path / DEMO / RUN
    before = snapshot(folder)
    code, err = run_cli(lambda: q2_train.train(q2_args(tmp_path, "--resume",
                                                       "--class-weight-power", "1")), capsys)
    assert code == 2 and error_line(err) == (
        f"error: --resume: {folder / 'checkpoint.pt'} was trained with other settings or data "
        "(class_weight_power 0.5 -> 1.0); drop --resume, or use another --name/--seed")
    assert snapshot(folder) == before
    resumed = q2_train.train(q2_args(tmp_path, "--resume", "--epochs", "2"))
    config = read_json(folder / "summary.json")["config"]
    assert config["epochs"] == resumed["config"]["epochs"] == 2
    assert config["class_weight_power"] == 0.5 and config["split_id"] == first["split_id"]
    assert resumed["epochs_run"] == 2


def test_resume_compares_data_and_ignores_how_a_run_is_executed(tmp_path):
    saved = {"model": "resnet", "lr": 1e-3, "epochs": 2, "data_tag": "local-ecg-aaaa1111",
             "device": "cuda", "data": "/mnt/ecg", "results_root": None}
    check_resume(saved, {**saved, "epochs": 5, "device": "cpu", "data": "../copy/ecg",
                         "results_root": "elsewhere", "resume": True}, 2, tmp_path)
    with pytest.raises(RunError, match="data_tag 'local-ecg-aaaa1111' -> 'local-ecg-bbbb2222'"):
        check_resume(saved, {**saved, "data_tag": "local-ecg-bbbb2222"}, 2, tmp_path)


# ---------------------------------------------------------------- 4. seeds and names

def test_runs_of_other_seeds_and_names_never_overwrite_each_other(tmp_path):
    q2_train.train(q2_args(tmp_path))
    q1_train.train(q1_args(tmp_path))
    seed0, q1_seed0 = tmp_path / DEMO / RUN, q1_folder(tmp_path)
    before, q1_before = snapshot(seed0), snapshot(q1_seed0)
    q2_train.train(q2_args(tmp_path, "--seed", "1"))
    q2_train.train(q2_args(tmp_path, "--name", "ablation"))
    q1_train.train(q1_args(tmp_path, "--seed", "1"))
    assert snapshot(seed0) == before and snapshot(q1_seed0) == q1_before
    q2_runs = {f.name for f in (tmp_path / DEMO).iterdir()}
    assert {RUN, "resnet-kfold2-fold0-seed1", "resnet-ablation-kfold2-fold0-seed0",
            "splits"} == q2_runs
    assert sorted(os.listdir(tmp_path / DEMO / "splits")) == ["kfold2-seed0.json",
                                                             "kfold2-seed1.json"]
    assert read_json(tmp_path / DEMO / "resnet-kfold2-fold0-seed1" / "summary.json")["seed"] == 1
    q1_seed1 = q1_folder(tmp_path, "--seed", "1")
    assert q1_seed1 != q1_seed0 and (q1_seed1 / "summary.json").exists()
    assert read_json(q1_seed1 / "summary.json")["seed"] == 1


# ---------------------------------------------------------------- 5. OS errors

def test_read_only_run_folder_gives_one_line(tmp_path, capsys, monkeypatch):
    q2_train.train(q2_args(tmp_path))
    folder = tmp_path / DEMO / RUN
    before = snapshot(folder)
    folder.chmod(0o555)
    try:
        if writable(folder):       # running as root: emulate a read-only file system
            refuse_writes_under(monkeypatch, folder)
            reason = "Read-only file system"
        else:
            reason = "Permission denied"
        code, err = run_cli(lambda: q2_train.train(q2_args(tmp_path)), capsys)
    finally:
        folder.chmod(0o755)
    assert code == 2 and error_line(err) == (
        f"error: results folder {folder} is not writable: {reason}")
    assert snapshot(folder) == before and not tmp_files(folder)


def test_disk_full_while_saving_keeps_the_old_file_and_no_temporary(tmp_path, capsys,
                                                                   monkeypatch):
    q2_train.train(q2_args(tmp_path))
    folder = tmp_path / DEMO / RUN
    before = snapshot(folder)
    failure = ("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing "
               "file data/3: file write failed")

    def full_disk(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"the first few bytes")
        raise RuntimeError(failure + "\nframe #0: c10::Error::Error(...)")
    monkeypatch.setattr(torch, "save", full_disk)
    code, err = run_cli(lambda: q2_train.train(q2_args(tmp_path, "--resume", "--epochs", "3")),
                        capsys)
    assert code == 2 and re.fullmatch(
        rf"error: cannot write {re.escape(str(folder))}/(best|checkpoint)\.pt: "
        rf"{re.escape(failure)} \(disk full\?\)", error_line(err))
    after = snapshot(folder)                               # the last good checkpoint is intact
    assert after["checkpoint.pt"] == before["checkpoint.pt"] and after["best.pt"] == before["best.pt"]
    assert not tmp_files(folder) and not (folder / ".lock").exists()


def test_atomic_write_failures_name_the_path_and_leave_the_old_file(tmp_path, monkeypatch):
    path = write_bytes(tmp_path / "history.csv", b"old\n")

    def no_space(tmp: Path):
        tmp.write_bytes(b"ne")
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(WriteError, match=re.escape(f"cannot write {path}: No space left on device")):
        atomic_write(path, no_space)
    assert path.read_bytes() == b"old\n" and not tmp_files(tmp_path)

    def read_only(*_):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    monkeypatch.setattr(common.io.os, "replace", read_only)
    with pytest.raises(WriteError, match=re.escape(f"cannot write {path}: Read-only file system")):
        write_bytes(path, b"new\n")
    assert path.read_bytes() == b"old\n" and not tmp_files(tmp_path)


def test_files_and_folders_get_the_umask(tmp_path, monkeypatch):
    """common.io reads the umask once, at import (mkstemp would make files 0600)."""
    assert common.io.UMASK == common.io._umask()
    old = os.umask(0o027)
    try:
        monkeypatch.setattr(common.io, "UMASK", common.io._umask())
        path = write_bytes(tmp_path / "new" / "summary.json", b"{}\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o750


def test_remove_orphans_deletes_only_dead_writers_files(tmp_path, live_pid):
    dead = tmp_path / f".x.{dead_pid()}.abc.tmp"
    alive = tmp_path / f".x.{live_pid}.abc.tmp"
    mine = tmp_path / f".y.{os.getpid()}.k9.tmp"
    other = tmp_path / ".notes.tmp"                        # not a writer's temporary file
    for f in (dead, alive, mine, other):
        f.write_bytes(b"x")
    assert remove_orphans(tmp_path) == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f.name for f in (alive, mine, other))


def test_cache_path_that_is_a_folder_gives_one_line(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("PROJECT_CACHE", str(cache))
    path = cache_path(resolve_source("demo"))
    path.mkdir(parents=True)
    message = f"cache path {path} is a folder, not a file: remove it or {HINT}"
    with pytest.raises(CacheError, match=re.escape(message)):
        load_records(resolve_source("demo"))
    code, err = cli_run("q2_ecg.train", *Q2_TINY, *KFOLD0, "--results-root",
                        str(tmp_path / "results"), cache=cache)
    assert code == 2 and error_line(err) == f"error: {message}"
    assert path.is_dir() and not files_under(tmp_path / "results")


def test_unusable_cache_that_cannot_be_removed_gives_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PROJECT_CACHE", str(tmp_path))
    source = resolve_source("demo")
    path = cache_path(source)
    path.write_bytes(b"not a zip file")

    def refuse(self, missing_ok=False):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))
    monkeypatch.setattr(Path, "unlink", refuse)
    code, err = run_cli(lambda: load_records(source), capsys)
    assert f"notice: cache {path} is unusable (ValueError: " in err
    assert code == 2 and error_line(err) == (
        f"error: cache {path} is unusable and cannot be removed (Permission denied): delete it "
        f"by hand or {HINT}")


def test_cache_that_cannot_be_written_gives_one_line(tmp_path, capsys, monkeypatch):
    folder = ecg_folder(tmp_path / "ecg")
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("PROJECT_CACHE", str(cache))
    source = resolve_source(str(folder))
    # the folder probe passes, the cache file itself does not fit
    refuse_writes_under(monkeypatch, cache, errno.ENOSPC, calls=("mkstemp",))
    code, err = run_cli(lambda: load_records(source), capsys)
    assert code == 2 and error_line(err) == (
        f"error: cannot write {cache_path(source)}: No space left on device; {HINT}")
    assert not list(cache.iterdir())


# ---------------------------------------------------------------- 6. the other question's data

def test_mri_folder_is_refused_by_name_from_the_q2_command_line(tmp_path):
    mri = write_mri(tmp_path / "mri", train=["p1", "p2"], validation=["p3"]).path
    results = tmp_path / "results"
    code, err = cli_run("q2_ecg.train", "--data", str(mri), "--device", "cpu", *KFOLD0,
                        "--results-root", str(results), cache=tmp_path / "cache")
    assert code == 2 and error_line(err) == (
        f"error: {mri} holds MRI slices (Q1's schema: t1, t2, view), not ECG records; use it "
        "with make q1 / q1_mri")
    assert not files_under(results) and not files_under(tmp_path / "cache")


# ---------------------------------------------------------------- 7. Q2 flags and too few records

@pytest.mark.parametrize("flags,message", [
    (["--fold", "0", "--epochs", "0"], "argument --epochs: 0 is not an integer >= 1"),
    (["--fold", "0", "--batch-beats", "0"], "argument --batch-beats: 0 is not an integer >= 1"),
    (["--fold", "0", "--model", "context", "--batch-beats", "16"],
     "--batch-beats 16: the context model reads chunks of 32 beats, so a batch needs at least 32"),
    (["--fold", "0", "--lr", "-1"], "argument --lr: -1 is not a number > 0"),
    (["--fold", "0", "--seed", "-1"], "argument --seed: -1 is not an integer in 0..4294967295"),
    (["--fold", "0", "--folds", "1"], "--folds must be at least 2"),
    (["--split", "kfold"], "--split kfold needs --fold 0..4 (got None)"),
    (["--fold", "7", "--folds", "5"], "--split kfold needs --fold 0..4 (got 7)"),
    (["--split", "lodo", "--fold", "xyz"],
     "--split lodo needs --fold mitdb | svdb | incartdb (got xyz)"),
    (["--split", "beat", "--fold", "0"], "--split beat has a single fold: drop --fold"),
])
def test_bad_q2_flag_is_refused_before_any_data_is_loaded(flags, message, tmp_path, capsys,
                                                         monkeypatch):
    monkeypatch.setattr(q2_train, "resolve_source", no_data)
    monkeypatch.setattr(q2_train, "load_records", no_data)
    argv = ["--data", "demo", "--results-root", str(tmp_path), *flags]
    code, err = run_cli(lambda: q2_train.train(q2_train.parse_args(argv)), capsys)
    assert code == 2 and err.startswith("usage:") and error_line(err).endswith(message)
    assert not list(tmp_path.iterdir())


def test_bad_q2_flag_from_the_command_line():
    code, err = cli_run("q2_ecg.train", "--data", "demo", "--split", "lodo", "--fold", "xyz")
    assert code == 2 and error_line(err) == (
        "train.py: error: --split lodo needs --fold mitdb | svdb | incartdb (got xyz)")


def test_too_few_records_for_the_cross_validation(tmp_path, capsys):
    folder = ecg_folder(tmp_path / "three", n=3)
    results = tmp_path / "results"
    code, err = run_cli(lambda: q2_train.train(q2_train.parse_args(
        ["--data", str(folder), "--device", "cpu", "--split", "kfold", "--folds", "5", "--fold",
         "0", "--results-root", str(results)])), capsys)
    assert code == 2 and error_line(err) == (
        "error: a 5-fold cross-validation needs at least 10 persons (records), the data has 3")
    assert not files_under(results)


def test_leave_one_database_out_needs_two_databases(tmp_path, capsys):
    folder = ecg_folder(tmp_path / "svdb-only", db="svdb_npy")
    results = tmp_path / "results"
    code, err = run_cli(lambda: q2_train.train(q2_train.parse_args(
        ["--data", str(folder), "--device", "cpu", "--split", "lodo", "--fold", "mitdb",
         "--results-root", str(results)])), capsys)
    assert code == 2 and error_line(err) == (
        "error: leave-one-database-out needs records of at least 2 databases among "
        "['mitdb_npy', 'svdb_npy', 'incartdb_npy'], the data has ['svdb_npy']")
    assert not files_under(results)


def test_leaving_out_a_database_the_data_lacks_gives_one_line(tmp_path, capsys):
    folder = tmp_path / "two-dbs"
    rows = [_record(f"{db[:2]}{i}", n=2000, source_db=db, locs=tuple(range(100, 1900, 100)),
                    labels=tuple([0, 0, 1, 0, 2, 0] * 3))
            for db in ("svdb_npy", "mitdb_npy") for i in range(3)]
    _write_parquet(folder, rows)
    code, err = run_cli(lambda: q2_train.train(q2_train.parse_args(
        Q2_TINY + ["--data", str(folder), "--split", "lodo", "--fold", "incartdb",
                   "--results-root", str(tmp_path / "results")])), capsys)
    assert code == 2 and "incartdb" in error_line(err)


# ---------------------------------------------------------------- 8. evaluation before training

def test_q2_evaluation_before_training_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(q2_eval, "load_records", no_data)
    code, err = run_cli(lambda: q2_eval.main(q2_eval.parse_args(
        ["--data", "demo", "--results-root", str(tmp_path)])), capsys)
    assert code == 2 and error_line(err) == (
        f"error: no Q2 run with predictions in {tmp_path / DEMO}: run `make q2` (or python -m "
        "q2_ecg.train) first")
    assert not files_under(tmp_path)


def test_truncated_deployed_weights_give_one_line_at_inference(tmp_path):
    from common.io import file_digest

    root = tmp_path / "results"
    q2_train.train(q2_train.parse_args(Q2_TINY + [*Q2_KFOLD, "--fold", "0",
                                                  "--results-root", str(root)]))
    best = root / DEMO / "resnet-kfold2-fold0-seed0" / "best.pt"
    best.write_bytes(best.read_bytes()[:1000])
    write_json(root / DEMO / "final.json", {
        "model": "resnet", "seed": 0, "data_label": "demo", "adapt": False,
        "logit_bias": [0.0, 0.0, 0.0], "data_source": "demo", "git_commit": "x",
        "folds": {"fold0": [{"run": best.parent.name, "weights": f"{best.parent.name}/best.pt",
                             "sha256": file_digest(best)}]}})
    other = ecg_folder(tmp_path / "other", n=3)
    code, err = cli_run("q2_ecg.infer", "--data", str(other), "--trained-on", "demo", "--device",
                        "cpu", "--results-root", str(root), "--out", str(tmp_path / "p.npz"))
    line = error_line(err)
    assert code == 2 and line.startswith(f"error: cannot read {best} (") and line.endswith(
        "): retrain that run")
    assert not (tmp_path / "p.npz").exists()


# ---------------------------------------------------------------- 9. the Makefile quotes paths

@pytest.mark.parametrize("target,variable", [("q1", "DATA"), ("q2", "DATA"),
                                             ("q2-final", "Q2_DATA"), ("q2-curves", "DATA"),
                                             ("bench", "DATA")])
def test_makefile_quotes_data_paths(target, variable):
    done = subprocess.run(["make", "-n", target, f"{variable}=/tmp/a b/ecg"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = [x for x in done.stdout.splitlines() if re.search(r" -m (q1_mri|q2_ecg)\.", x)]
    assert lines and all('--data "/tmp/a b/ecg"' in x for x in lines), lines


@pytest.mark.parametrize("cached_hub, split", [(True, "official"), (False, "kfold")])
def test_make_q1_takes_the_official_split_wherever_auto_is_the_hub(tmp_path, cached_hub, split):
    """DATA=auto with a cached Hub copy is the Hub: its validation split is the test set, as
    with DATA=hub; without one (offline) auto falls back to demo and k-fold. The scripts are
    replaced by a stub that records their arguments (python -c runs for real)."""
    from common.datasource import DataSource
    from q1_mri.data import cache_path

    cache = tmp_path / "cache"
    cache.mkdir()
    env = {**os.environ, "PROJECT_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    if cached_hub:
        os.environ["PROJECT_CACHE"], saved = str(cache), os.environ["PROJECT_CACHE"]
        try:
            cache_path(DataSource("hub", None, "hub")).write_bytes(b"")
        finally:
            os.environ["PROJECT_CACHE"] = saved
    log = tmp_path / "calls"
    stub = tmp_path / "python"
    stub.write_text(f'#!/bin/sh\nif [ "$1" = "-c" ]; then exec {sys.executable} "$@"; fi\n'
                    f'echo "$@" >> {log}\n')
    stub.chmod(0o755)
    done = subprocess.run(["make", "-o", ".venv/.installed", "q1", "DATA=auto", "Q1_MODELS=unet",
                           f"PYTHON={stub}"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    train = [line for line in log.read_text().splitlines() if line.startswith("-m q1_mri.train")]
    assert train and all(f"--split {split}" in line for line in train)
    assert len(train) == (1 if split == "official" else 5)   # the official split: one fold


def test_resume_reads_the_checkpoint_to_the_cpu_and_a_bad_rng_state_is_one_line(
        tmp_path, monkeypatch, capsys):
    """On CUDA, a checkpoint mapped to the GPU held its RNG states as CUDA tensors, which
    torch.set_rng_state refuses with a TypeError traceback: resume now always reads to the CPU
    (weights move to the device when loaded), and a checkpoint whose RNG state still cannot be
    restored (here a 'meta' tensor, as a GPU-mapped state would be) ends in one line."""
    import common.loop

    args = Q2_TINY + KFOLD0 + ["--results-root", str(tmp_path), "--epochs", "1"]
    q2_train.train(q2_train.parse_args(args))
    seen = []
    real = common.loop.load_checkpoint

    def spy(path, map_location="cpu"):
        seen.append(str(map_location))
        ck = real(path, map_location)
        ck["rng"]["gen"] = torch.empty(ck["rng"]["gen"].shape, dtype=torch.uint8, device="meta")
        return ck
    monkeypatch.setattr(common.loop, "load_checkpoint", spy)
    code, err = run_cli(lambda: q2_train.train(q2_train.parse_args(
        args[:-1] + ["2", "--resume"])), capsys)
    assert seen and set(seen) == {"cpu"}   # finished_run looks first, then the run itself
    assert code == 2 and error_line(err).startswith(
        f"error: cannot resume from {tmp_path / DEMO / RUN / 'checkpoint.pt'} (")
