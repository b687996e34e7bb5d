"""Reading a run's prediction file: what both questions check before scoring one."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from common.cli import DataError
from common.io import unreadable


def read_predictions(path: Path, required: tuple[str, ...], split_id: str | None,
                     data_tag: str | None) -> dict[str, np.ndarray]:
    """All arrays of a predictions.npz, refusing an unreadable file, missing fields, or a file
    made on another split (`split_id`) or other data (`data_tag`) than the caller expects."""
    try:
        with np.load(path, allow_pickle=False) as f:
            a = {k: f[k] for k in f.files}
    # a truncated .npz is a BadZipFile; a damaged member a KeyError, EOFError or ValueError
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise unreadable(path, e, "rerun that run") from e
    missing = [k for k in required if k not in a]
    if missing:
        raise DataError(f"predictions {path} lack {missing}")
    if split_id is not None and str(a["split_id"]) != split_id:
        raise DataError(f"predictions {path} were made on split {a['split_id']}, but the run's "
                        f"split.json is {split_id}: rerun that run")
    if data_tag is not None and str(a["data_tag"]) != data_tag:
        raise DataError(f"predictions {path} come from data {a['data_tag']}, not {data_tag}")
    return a
