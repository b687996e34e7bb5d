"""Atomic file writes and the small result formats (JSON, CSV) every pipeline produces.

A file is written to a temporary sibling and renamed over the target, so a run killed mid-write
leaves either the old file or the new one, never half of one. The temporary name carries the
writer's pid, so a later run can tell an orphan of a killed writer from a live one's file.
Files get the user's umask (mkstemp alone would make them 0600).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch


class WriteError(RuntimeError):
    """A file could not be written (read-only folder, disk full ...); the message names it."""


class ReadError(RuntimeError):
    """A file exists but cannot be read back (truncated, binary, damaged); the message names it
    and says what to do, so a damaged result ends in one line instead of a parser's traceback."""


READ_HINT = "the file is damaged; remove it and rerun the step that wrote it"


def unreadable(path: str | Path, error: Exception, hint: str = READ_HINT) -> ReadError:
    """The one-line ReadError for `path`, naming the kind of failure (JSONDecodeError ...)."""
    return ReadError(f"cannot read {path} ({type(error).__name__}): {hint}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()
_TMP = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$")


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` and then rename the temporary file onto `path`.

    Any failure (no space, no permission, a writer's own error) removes the temporary file and
    raises WriteError naming `path`.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.",
                                   suffix=".tmp")
        os.close(fd)
        os.chmod(tmp, 0o666 & ~UMASK)
        write(Path(tmp))
        os.replace(tmp, path)
    except OSError as e:
        raise WriteError(f"cannot write {path}: {e.strerror or e}") from e
    except RuntimeError as e:   # torch.save reports a full disk as RuntimeError
        raise WriteError(f"cannot write {path}: {str(e).splitlines()[0]} (disk full?)") from e
    finally:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_orphans(folder: str | Path) -> list[Path]:
    """Delete temporary files left in `folder` by writers that no longer run (a SIGKILL)."""
    removed = []
    for f in Path(folder).glob(".*.tmp"):
        m = _TMP.match(f.name)
        if m and not pid_alive(int(m.group(1))):
            f.unlink(missing_ok=True)
            removed.append(f)
    return removed


def require_writable(folder: str | Path, what: str) -> Path:
    """Create `folder` if needed and check that files can be written there, before long work."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise WriteError(f"{what} folder {folder} is not writable: {e.strerror or e}") from e
    return folder


def write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda p: p.write_bytes(data))


def _to_builtin(obj: Any) -> Any:
    """JSON fallback for numpy scalars/arrays, tensors and paths."""
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: str | Path, obj: Any) -> Path:
    text = json.dumps(obj, indent=2, default=_to_builtin, allow_nan=True)
    return write_bytes(path, (text + "\n").encode())


def read_json(path: str | Path, hint: str = READ_HINT) -> Any:
    """The JSON value in `path`. A missing file raises FileNotFoundError, as callers that test
    for it expect; a file that is there but unreadable (truncated, binary) raises ReadError."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError, RecursionError) as e:  # ValueError: JSON and Unicode decoding
        raise unreadable(path, e, hint) from e


def write_csv(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Write `rows` (dicts sharing keys; later rows may add keys) as one CSV file."""
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_bytes(path, buf.getvalue().encode())


def read_csv(path: str | Path, hint: str = READ_HINT) -> list[dict[str, float | str]]:
    """Read a CSV written by `write_csv`; numeric cells come back as floats.

    A missing file raises FileNotFoundError. write_csv ends every line with a newline and fills
    every column, so a file that does not (cut off mid-line), or one that is not text, raises
    ReadError rather than handing back a shortened number or a None.
    """
    try:
        with open(path, newline="") as f:     # newline="": quoted cells keep their own
            text = f.read()
        if text and not text.endswith("\n"):
            raise ValueError("the last line is cut off")
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
        if any(None in row or None in row.values() for row in rows):
            raise ValueError("a row's cells do not match the header")
    except FileNotFoundError:
        raise
    except (OSError, ValueError, csv.Error) as e:   # ValueError: Unicode decoding, the above
        raise unreadable(path, e, hint) from e
    return [{k: _number_or_text(v) for k, v in row.items()} for row in rows]


def _number_or_text(cell: str) -> float | str:
    """A cell as a float where it is a number (epochs, losses), else as written (names)."""
    try:
        return float(cell)
    except ValueError:
        return cell


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's content (hex), read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def torch_save(path: str | Path, obj: Any) -> Path:
    return atomic_write(path, lambda p: torch.save(obj, p))


def savez(path: str | Path, **arrays: np.ndarray) -> Path:
    """np.savez (uncompressed: the arrays are already compact) written atomically."""
    def write(p: Path) -> None:
        with open(p, "wb") as f:
            np.savez(f, **arrays)
    return atomic_write(path, write)
