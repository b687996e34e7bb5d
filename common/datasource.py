"""Which data a run uses: DATA=auto|hub|demo|<folder>.

Every script takes `--data SPEC` and turns it into a `DataSource` here. The source's `tag` names
the results folder (results/<q>/<tag>/), so results of different sources never overwrite each
other, and its `label` is printed in every figure title and results file. A local folder's tag is
its name plus a fingerprint of its data files, so two folders that share a name but hold other
data never share a results folder (and a copy of the same data does).
"""
from __future__ import annotations

import hashlib
import os
import re
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
HUB_TIMEOUT_S = 10.0


class DataSourceError(RuntimeError):
    """The requested data cannot be used; the message says what to do instead."""


@dataclass(frozen=True)
class DataSource:
    kind: str            # "hub" | "demo" | "folder"
    path: Path | None    # the folder for kind == "folder"
    tag: str             # results sub-folder: "hub", "demo" or "local-<folder name>-<hash>"

    @property
    def label(self) -> str:
        """Human-readable name for titles and banners."""
        if self.kind == "demo":
            return "built-in DEMO data (synthetic)"
        if self.kind == "hub":
            return "Hugging Face Hub"
        return f"local folder {self.path.name}/"

    def fingerprint(self, generator: str | Path | None = None) -> str:
        """Short hash that changes when the data can change.

        Folder: its data files' names, sizes and contents (see `folder_fingerprint`).
        Demo: the source of its `generator` module, so editing the generator invalidates cached
        demo data. Hub: constant.
        """
        if self.kind == "demo" and generator is not None:
            return hashlib.sha1(Path(generator).read_bytes()).hexdigest()[:12]
        if self.kind != "folder":
            return self.kind
        return folder_fingerprint(self.path)


DATA_SUFFIXES = (".parquet", ".arrow", ".json", ".npz")
_CHUNK_BYTES = 1 << 22


def folder_fingerprint(folder: Path) -> str:
    """12 hex digits identifying the data files under `folder` by their whole content.

    Hashes each data file's relative path, size and every byte (streamed; about 1 s per
    500 MB), so an edit anywhere in a file changes it, even one that keeps the size. Other
    files (a README) and hidden ones do not count.
    """
    h = hashlib.sha1()
    for f in sorted(folder.rglob("*")):
        rel = f.relative_to(folder)
        if not f.is_file() or f.suffix not in DATA_SUFFIXES or any(
                part.startswith(".") for part in rel.parts):
            continue
        h.update(f"{rel}|{f.stat().st_size}|".encode())
        with open(f, "rb") as fh:
            while chunk := fh.read(_CHUNK_BYTES):
                h.update(chunk)
    return h.hexdigest()[:12]


def cache_dir() -> Path:
    """Where converted datasets are cached ($PROJECT_CACHE, default .cache/ in the project)."""
    return Path(os.environ.get("PROJECT_CACHE", PROJECT_ROOT / ".cache"))


def hub_reachable(timeout_s: float = HUB_TIMEOUT_S) -> tuple[bool, str]:
    """Quick check that the Hub answers at all, so offline runs fail in seconds, not minutes."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False, "HF_HUB_OFFLINE is set"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        urllib.request.urlopen(f"{endpoint}/api/status", timeout=timeout_s)
        return True, ""
    except urllib.error.HTTPError:
        return True, ""   # the server answered (even an error code means it is reachable)
    except Exception as e:  # DNS failure, refused connection, timeout, proxy error ...
        return False, f"{type(e).__name__}: {getattr(e, 'reason', e)}"


def hub_unavailable_message(dataset: str, reason: str) -> str:
    return (f"cannot reach the Hugging Face Hub for {dataset} ({reason}). "
            "Use DATA=demo (built-in synthetic data) or DATA=<folder> (a local copy in the "
            "hub's schema, e.g. DATA=../shared/data/...).")


def require_hub(dataset: str) -> None:
    """Raise DataSourceError within seconds when the Hub cannot be reached."""
    ok, reason = hub_reachable()
    if not ok:
        raise DataSourceError(hub_unavailable_message(dataset, reason))


def resolve(spec: str, hub_cached: bool) -> DataSource:
    """Turn a --data value into a DataSource.

    `hub_cached` says whether a converted hub copy is already in the cache; `auto` then uses it
    without touching the network. Otherwise `auto` tries the Hub and falls back to demo loudly.
    """
    if spec == "demo":
        return DataSource("demo", None, "demo")
    if spec == "hub":
        return DataSource("hub", None, "hub")
    if spec == "auto":
        if hub_cached:
            return DataSource("hub", None, "hub")
        ok, reason = hub_reachable()
        if ok:
            return DataSource("hub", None, "hub")
        print("\n" + "!" * 78 + f"\nWARNING: Hugging Face Hub unreachable ({reason}).\n"
              "Falling back to the built-in DEMO data: results are synthetic and land in the "
              "'demo' folder.\nUse DATA=<folder> for a local copy of the real data.\n"
              + "!" * 78 + "\n", file=sys.stderr)
        return DataSource("demo", None, "demo")
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise DataSourceError(f"--data {spec!r}: not 'auto', 'hub', 'demo' or an existing folder")
    path = path.resolve()
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", path.name) or "folder"
    try:
        return DataSource("folder", path, f"local-{name}-{folder_fingerprint(path)[:8]}")
    except OSError as e:
        raise DataSourceError(f"--data {spec!r}: cannot read {e.filename}: {e.strerror}") from e
