"""A training run's identity: its folder name, one writer at a time, and what --resume accepts.

A run folder is results/<question>/<source tag>/<run name>, where the run name holds everything
that makes it a different run (model, fold or split, seed, an optional name). A lock file stops a
second process from writing the same folder; a resumed run must have been made from the same
data with the same configuration, except for settings that do not change what is trained.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common.io import file_digest, pid_alive, remove_orphans, require_writable

# flags that change how a run is executed, not what it trains; epochs may grow on --resume
NOT_IDENTITY = frozenset({"epochs", "resume", "device", "compile", "dry_run", "results_root",
                          "data", "channels_last", "workers"})


class RunError(RuntimeError):
    """A run folder is in use, or a checkpoint belongs to another run; the message says which."""


def run_name(*parts: Any) -> str:
    """'resnet', 'fold2', 'seed0' ... joined by '-', skipping empty parts."""
    return "-".join(str(p) for p in parts if p not in (None, ""))


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[Path]:
    """Hold `folder/.lock` while a run writes the folder; refuse if another run holds it.

    The lock is an exclusive flock on the file (the kernel drops it when its process dies, so
    two processes can never both hold it), and the file names the holder's pid, host and process
    start time for the message and for runs on another machine sharing the folder. A file left
    by a killed run on this host is cleared with a notice, and so are that run's temporary files;
    so is one whose pid now belongs to another process (same pid, other start time).
    """
    require_writable(folder, "results")
    lock = folder / ".lock"
    fd = _acquire(lock, folder)
    try:
        owner = os.read(fd, 200).decode(errors="replace").strip()
        if owner:
            print(f"notice: clearing the stale lock of a run that no longer exists in {folder}",
                  file=sys.stderr)
        os.ftruncate(fd, 0)
        os.pwrite(fd, _owner_line().encode(), 0)
        remove_orphans(folder)
        yield folder
    finally:
        lock.unlink(missing_ok=True)      # while still holding it: see _acquire
        os.close(fd)


def _acquire(lock: Path, folder: Path) -> int:
    """An fd of `lock` holding its flock, refusing a live holder (here or on another host)."""
    busy = (f"{folder} is being written by another run (pid {{}}); wait for it to finish, "
            "stop it, or choose another --name/--seed")
    for _ in range(20):
        fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _lock_owner(lock)
            os.close(fd)
            raise RunError(busy.format(pid if pid is not None else "unknown")) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if not same:          # the holder removed this file as we opened it: take the new one
            os.close(fd)
            continue
        pid = _lock_owner(lock)
        if pid is not None:   # a pid file of a live run that holds no flock (another host ...)
            os.close(fd)
            raise RunError(busy.format(pid))
        return fd
    raise RunError(f"cannot lock {folder}: {lock} keeps being replaced")


def _lock_owner(lock: Path) -> int | None:
    """The pid a lock file names if that run may be alive (alive here, or on another host),
    else None (empty, unreadable, a dead process of this host, or a live one that started at
    another time than the lock's writer: the pid was reused).

    The file holds "pid host start" (start: process_start), or "pid host" as older code wrote it.
    """
    try:
        fields = lock.read_text().split()
        pid, host = int(fields[0]), fields[1]
        start = int(fields[2]) if len(fields) > 2 else None
    except (OSError, ValueError, IndexError):
        return None
    if host != socket.gethostname():
        return pid            # another machine's run: cannot check, so respect it
    if not pid_alive(pid) or pid == os.getpid():
        return None
    now = process_start(pid)
    return None if start is not None and now is not None and now != start else pid


def _owner_line() -> str:
    """"pid host start" of this process (start left out where unknown), read by _lock_owner."""
    start = process_start(os.getpid())
    return f"{os.getpid()} {socket.gethostname()}" + ("" if start is None else f" {start}")


def process_start(pid: int) -> int | None:
    """When process `pid` started, in clock ticks after boot (Linux: field 22 of /proc/<pid>/stat);
    with the pid it names a process for good, since pids are reused. None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        # fields after the command name, which may itself hold spaces and ')': state is field 3
        return int(stat[stat.rindex(")") + 2:].split()[22 - 3])
    except (OSError, ValueError, IndexError):
        return None


def check_finished_files(folder: Path, summary: dict) -> None:
    """Refuse, in one line, a finished run whose prediction file is missing, damaged or not the
    one its summary.json names (SHA-256, common.loop.RunBook.finish): evaluation would score it,
    and --resume read it back, as if it were the run's. Runs without recorded digests pass."""
    path = folder / "predictions.npz"
    recorded = summary.get("files", {}).get("predictions.npz")
    if recorded and (not path.exists() or file_digest(path) != recorded):
        raise RunError(f"{path} is missing, damaged or not the file {folder / 'summary.json'} was "
                       "finished with (changed since, or the folder mixes two runs): retrain "
                       "that run without --resume")


def identity(config: dict) -> dict:
    """The part of a run's configuration that decides what it trains."""
    return {k: v for k, v in config.items() if k not in NOT_IDENTITY}


def check_resume(saved: dict, now: dict, done_epochs: int, folder: Path) -> None:
    """Refuse, in one line, to continue a checkpoint made from other data or settings.

    `saved` / `now`: the checkpoint's config and this run's (both including the data
    fingerprint). Epochs may grow, but not shrink below what was already trained.
    """
    old, new = identity(saved), identity(now)
    diff = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)]
    if diff:
        raise RunError(f"--resume: {folder / 'checkpoint.pt'} was trained with other settings "
                       f"or data ({'; '.join(diff[:4])}); drop --resume, or use another "
                       "--name/--seed")
    if now["epochs"] < done_epochs:
        raise RunError(f"--resume: {folder} has already trained {done_epochs} epochs, more than "
                       f"--epochs {now['epochs']}")
