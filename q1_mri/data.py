"""Q1 data: load paired T1/T2 slices (Hub, local parquet folder or demo), cache them, normalise.

Every source ends up as the same `MRISplit` arrays; the Hub and a local folder go through the
same `datasets` code path, so the offline folder in ../shared/data/mri tests the Hub loader.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common import cache
from common.cli import DataError
from common.datasource import (
    DataSource,
    DataSourceError,
    cache_dir,
    require_hub,
    resolve,
)

REPO_ID = "dpelacani/mri-t1-t2-2D-sliced-64"
SPLITS = ("train", "validation")
VIEWS = ("axial", "coronal", "sagittal")
COLUMNS = ("patient_id", "view", "t1", "t2")
SHAPE = (1, 64, 64)
CACHE_VERSION = 1

PERCENTILE = 99.5
NORMALISATION = (f"per-volume: each patient's T1 and T2 divided by the {PERCENTILE}th percentile "
                 "of that patient's brain pixels (all views), clipped to [0, 1]; background = 0")
DATA_RANGE = 1.0   # of normalised images; used by PSNR and SSIM


@dataclass
class MRISplit:
    """Aligned arrays of one split. N slices, images (N, 1, 64, 64)."""
    t1: np.ndarray          # float16 raw intensities (scanner units)
    t2: np.ndarray          # float16 raw intensities
    patient_id: np.ndarray  # (N,) str
    view: np.ndarray        # (N,) str in VIEWS

    def __len__(self) -> int:
        return len(self.t1)

    @property
    def brain_mask(self) -> np.ndarray:
        """(N, 1, 64, 64) bool: pixels that are brain in either contrast (data are skull-stripped)."""
        return (self.t1 != 0) | (self.t2 != 0)

    @property
    def view_index(self) -> np.ndarray:
        """(N,) int64 index into VIEWS."""
        return np.searchsorted(np.array(VIEWS), self.view)


# ---------------------------------------------------------------- reading the sources

def _rows_to_arrays(table, split: str) -> dict[str, np.ndarray]:
    """Convert one `datasets` split to arrays, checking columns, shapes and values per row."""
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise DataError(f"{split}: missing column(s) {missing}; expected {list(COLUMNS)}")
    out = {"t1": [], "t2": [], "patient_id": [], "view": []}
    table = table.with_format("numpy", columns=list(COLUMNS))
    for start in range(0, len(table), 2048):
        rows = table[start:start + 2048]
        for name in ("t1", "t2"):
            images = rows[name]
            if images.dtype == object or images.shape[1:] != SHAPE:
                bad = next((i for i, im in enumerate(images) if np.shape(im) != SHAPE), 0)
                raise DataError(f"{split} row {start + bad}: {name} has shape "
                                f"{np.shape(images[bad])}, expected {SHAPE}")
            finite = np.isfinite(images).reshape(len(images), -1).all(1)
            if not finite.all():
                bad = int(np.flatnonzero(~finite)[0])
                raise DataError(f"{split} row {start + bad} (patient {rows['patient_id'][bad]}): "
                                f"{name} contains NaN or Inf")
            out[name].append(images.astype(np.float16))
        out["patient_id"].append(rows["patient_id"].astype(str))
        out["view"].append(rows["view"].astype(str))
    arrays = {k: np.concatenate(v) for k, v in out.items()}
    unknown = sorted(set(np.unique(arrays["view"])) - set(VIEWS))
    if unknown:
        raise DataError(f"{split}: unknown view value(s) {unknown}; expected {list(VIEWS)}")
    return arrays


def _load_datasets(source: DataSource):
    """The `datasets` DatasetDict for a hub or folder source (imported here: only these need it)."""
    import datasets

    datasets.disable_progress_bars()
    if source.kind == "hub":
        require_hub(REPO_ID)
        return datasets.load_dataset(REPO_ID)
    if (source.path / "dataset_dict.json").exists():
        return datasets.load_from_disk(str(source.path))
    if not any(source.path.rglob("*.parquet")):
        raise DataSourceError(f"{source.path}: no parquet files or save_to_disk folder found")
    try:
        return datasets.load_dataset("parquet", data_dir=str(source.path))
    except datasets.exceptions.DatasetGenerationError as e:  # e.g. files with different columns
        raise DataError(f"cannot read the parquet files in {source.path}: "
                        f"{str(e.__cause__ or e).splitlines()[0]}") from e


def _build(source: DataSource) -> dict[str, np.ndarray]:
    if source.kind == "demo":
        from q1_mri.demo import make_demo_mri
        raw = make_demo_mri()
        splits = {s: {k: raw[s][k] for k in ("t1", "t2", "patient_id", "view")} for s in SPLITS}
        for s in SPLITS:
            for k in ("t1", "t2"):
                splits[s][k] = splits[s][k].astype(np.float16)
    else:
        print(f"converting {source.label} to the cache (once) ...", file=sys.stderr)
        tables = _load_datasets(source)
        absent = [s for s in SPLITS if s not in tables]
        if absent:
            raise DataError(f"{source.label}: split(s) {absent} not found (have {list(tables)})")
        splits = {s: _rows_to_arrays(tables[s], s) for s in SPLITS}
    return {f"{s}/{k}": v for s, arrays in splits.items() for k, v in arrays.items()}


def _validate(arrays: dict[str, np.ndarray]) -> None:
    for s in SPLITS:
        n = len(arrays[f"{s}/t1"])
        assert n > 0, f"{s} is empty"
        assert arrays[f"{s}/t1"].shape == arrays[f"{s}/t2"].shape == (n, *SHAPE), f"{s} shapes"
        assert len(arrays[f"{s}/patient_id"]) == len(arrays[f"{s}/view"]) == n, f"{s} lengths"


def cache_path(source: DataSource) -> Path:
    from q1_mri import demo

    return cache_dir() / f"q1-{source.tag}-{source.fingerprint(demo.__file__)}.npz"


def resolve_source(spec: str) -> DataSource:
    """--data value -> DataSource; `auto` uses a cached Hub copy without touching the network."""
    return resolve(spec, hub_cached=cache_path(DataSource("hub", None, "hub")).exists())


def load_mri(source: DataSource) -> dict[str, MRISplit]:
    """Both splits of `source` as raw arrays, from the cache when possible."""
    arrays = cache.load_or_build(cache_path(source), lambda: _build(source), _validate,
                                 CACHE_VERSION)
    return {s: MRISplit(**{k: arrays[f"{s}/{k}"] for k in ("t1", "t2", "patient_id", "view")})
            for s in SPLITS}


def shared_patients(splits: dict[str, MRISplit]) -> list[str]:
    """Patient ids present in both train and validation (a leak; should be empty)."""
    return sorted(set(splits["train"].patient_id) & set(splits["validation"].patient_id))


# ---------------------------------------------------------------- normalisation

def volume_scales(images: np.ndarray, patient_id: np.ndarray) -> dict[str, float]:
    """Per patient: the PERCENTILE-th percentile of its brain (non-zero) pixels, all views."""
    scales = {}
    for pid in np.unique(patient_id):
        values = images[patient_id == pid].astype(np.float32)
        brain = values[values != 0]
        scales[pid] = float(np.percentile(brain, PERCENTILE)) if brain.size else 1.0
    return scales


def normalise(split: MRISplit) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply NORMALISATION. Returns t1, t2 (N, 1, 64, 64) float32 in [0, 1] and the brain mask."""
    out = []
    for images in (split.t1, split.t2):
        scales = volume_scales(images, split.patient_id)
        divisor = np.array([scales[p] for p in split.patient_id], np.float32)[:, None, None, None]
        out.append(np.clip(images.astype(np.float32) / divisor, 0.0, 1.0))
    return out[0], out[1], split.brain_mask


def to_device(split: MRISplit, device, max_slices: int | None = None, gen=None) -> dict:
    """Normalised split as device tensors (float16 images, as stored; cast per batch).

    Returns t1, t2 (N, 1, 64, 64) float16, mask (N, 1, 64, 64) bool, view (N,) int64 and
    index (N,) int64 rows of the split. `max_slices` keeps a random subset (drawn with `gen`).
    """
    import torch

    t1, t2, mask = normalise(split)
    index = np.arange(len(split))
    if max_slices is not None and max_slices < len(split):
        index = np.sort(torch.randperm(len(split), generator=gen)[:max_slices].numpy())
    as_tensor = lambda a, dtype: torch.from_numpy(np.ascontiguousarray(a[index])).to(device, dtype)  # noqa: E731
    return {"t1": as_tensor(t1, torch.float16), "t2": as_tensor(t2, torch.float16),
            "mask": as_tensor(mask, torch.bool), "view": as_tensor(split.view_index, torch.int64),
            "index": torch.from_numpy(index)}
