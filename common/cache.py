"""Compact on-disk cache of a converted dataset: one uncompressed .npz per source.

Converting the Hub's nested lists to arrays takes minutes; reading the .npz back takes seconds.
A cache that cannot be read or fails its checks (truncated file, missing arrays, inconsistent
lengths, an older format) is reported, deleted and rebuilt, never trusted.
"""
from __future__ import annotations

import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from common.io import WriteError, remove_orphans, require_writable, savez

Arrays = dict[str, np.ndarray]
HINT = "set PROJECT_CACHE to a writable folder"
FLOAT16_LIMIT = 60000.0   # largest |value| cached as float16: its maximum, 65504, less rounding room


class CacheError(RuntimeError):
    """The cache file is in the way and cannot be replaced; the message says where and why."""


def load_or_build(path: Path, build: Callable[[], Arrays], validate: Callable[[Arrays], None],
                  version: int) -> Arrays:
    """Return the arrays cached at `path`, building and caching them first if needed.

    `validate(arrays)` raises (any exception) when the arrays are inconsistent. `version` is
    stored in the file; bumping it invalidates caches written by older code.
    """
    if path.is_dir():
        raise CacheError(f"cache path {path} is a folder, not a file: remove it or {HINT}")
    require_writable(path.parent, "cache")
    remove_orphans(path.parent)
    if path.exists():
        try:
            arrays = _read(path)
            if int(arrays.pop("cache_version")) != version:
                raise ValueError("written by another version of the code")
            validate(arrays)
            return arrays
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, AssertionError) as e:
            print(f"notice: cache {path} is unusable ({type(e).__name__}: {e}); rebuilding it",
                  file=sys.stderr)
            try:
                path.unlink()
            except OSError as err:
                raise CacheError(f"cache {path} is unusable and cannot be removed "
                                 f"({err.strerror or err}): delete it by hand or {HINT}") from err
    arrays = build()
    validate(arrays)
    try:
        savez(path, cache_version=np.array(version), **arrays)
    except WriteError as e:
        raise CacheError(f"{e}; {HINT}") from e
    return arrays


def _read(path: Path) -> Arrays:
    """Read every array now (np.load is lazy), so a damaged member fails here, not mid-training."""
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


class Float16Arrays:
    """float16 arrays built chunk by chunk (named parts, e.g. "t1" and "t2") under one shared
    power-of-two factor, so a source larger than memory in float32 never needs a float32 copy.

    When a chunk would overflow float16 at the current factor, the factor doubles as often as
    needed and the chunks already held are divided by the same ratio (exact for powers of two).
    """

    def __init__(self, what: str):
        self.what, self.factor, self.parts = what, 1.0, {}

    def add(self, name: str, values: np.ndarray) -> None:
        peak = max(float(values.max()), -float(values.min())) if values.size else 0.0
        factor = self.factor
        while peak / factor > FLOAT16_LIMIT:
            factor *= 2.0
        if factor != self.factor:
            ratio = self.factor / factor
            self.parts = {k: [(p * ratio).astype(np.float16) for p in parts]
                          for k, parts in self.parts.items()}
            self.factor = factor
        self.parts.setdefault(name, []).append((values / factor).astype(np.float16))

    def arrays(self) -> dict[str, np.ndarray]:
        """{name: the concatenated float16 array}, with one notice if values were scaled."""
        if self.factor != 1.0:
            print(f"notice: {self.what} exceed the float16 cache's range (+-65504): cached "
                  f"divided by {self.factor:g}", file=sys.stderr)
        return {k: np.concatenate(parts) for k, parts in self.parts.items()}


def to_float16(values: np.ndarray, what: str) -> tuple[np.ndarray, float]:
    """(`values` as float16, the power of two they were divided by): Float16Arrays for one
    array (1.0 where every |value| fits)."""
    holder = Float16Arrays(what)
    holder.add("values", values)
    return holder.arrays()["values"], holder.factor
