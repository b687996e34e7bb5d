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
from common.parquet import check_schema

REPO_ID = "dpelacani/mri-t1-t2-2D-sliced-64"
SPLITS = ("train", "validation")
VIEWS = ("axial", "coronal", "sagittal")
COLUMNS = ("patient_id", "view", "t1", "t2")
ECG_COLUMNS = ("signal", "beat_locs", "beat_labels")   # Q2's schema, refused by name
SHAPE = (1, 64, 64)
CACHE_VERSION = 3   # 3: each kept slice's row in its source split is stored (empty ones dropped)

PERCENTILE = 99.5
NORMALISE_CHUNK = 4096      # slices normalised at a time (float32 temporaries of 64 MB)
NORMALISATION = (f"per-volume: each patient's T1 and T2 divided by the {PERCENTILE}th percentile "
                 "of that patient's brain pixels (all views), clipped to [0, 1]; background = 0")
DATA_RANGE = 1.0   # of normalised images; used by PSNR and SSIM
# The units models are trained in and predictions are stored in (the name travels with every
# prediction file). Scores are computed per slice in metrics.SLICE_SCALE units.
UNITS = "volume-p995"
UNITS_TEXT = (f"T2 divided by the {PERCENTILE}th percentile of its patient's brain T2 pixels "
              "(all views), clipped to [0, 1]: the training targets' units, which a model "
              "predicts from T1 alone")
# Left-right is the row axis (-2) of axial and coronal slices (rows run right->left); a
# sagittal slice has no left-right axis in its plane, so it is never flipped.
LR_FLIP_VIEWS = ("axial", "coronal")


@dataclass
class MRISplit:
    """Aligned arrays of one split. N slices, images (N, 1, 64, 64)."""
    t1: np.ndarray          # float16 raw intensities (scanner units)
    t2: np.ndarray          # float16 raw intensities
    patient_id: np.ndarray  # (N,) str
    view: np.ndarray        # (N,) str in VIEWS
    skipped_empty: int = 0  # slices of the source dropped for an all-zero T1 or T2 (not in N)
    row: np.ndarray | None = None  # (N,) int64: each slice's row in the source split as read
    #                                (counting the dropped ones); default 0..N-1

    def __post_init__(self):
        if self.row is None:
            self.row = np.arange(len(self.t1), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.t1)

    @property
    def brain_mask(self) -> np.ndarray:
        """(N, 1, 64, 64) bool: pixels that are brain in either contrast (data are skull-stripped)."""
        return nonzero(self.t1) | nonzero(self.t2)

    @property
    def view_index(self) -> np.ndarray:
        """(N,) int64 index into VIEWS."""
        return np.searchsorted(np.array(VIEWS), self.view)


@dataclass
class Slices(MRISplit):
    """Slices of several source splits in one set, with where each came from (see `pool`)."""
    split: np.ndarray | None = None   # (N,) str: the source split of each slice

    def select(self, rows: np.ndarray) -> Slices:
        """The slices at integer indices `rows` (order kept)."""
        return Slices(self.t1[rows], self.t2[rows], self.patient_id[rows], self.view[rows], 0,
                      self.row[rows], self.split[rows])


def pool(splits: dict[str, MRISplit], names: list[str] | None = None) -> Slices:
    """The slices of `names` (default: every split the source holds, in SPLITS order) as one set.

    Patients are never shared between splits (load_mri refuses that), so pooling keeps every
    patient's slices together and in their row order.
    """
    names = [s for s in SPLITS if s in splits] if names is None else names
    parts = [splits[s] for s in names]
    return Slices(*(np.concatenate([getattr(p, f) for p in parts])
                    for f in ("t1", "t2", "patient_id", "view")),
                  skipped_empty=sum(p.skipped_empty for p in parts),
                  row=np.concatenate([p.row for p in parts]),
                  split=np.concatenate([np.full(len(p), s) for s, p in zip(names, parts)]))


# ---------------------------------------------------------------- reading the sources

def _rows_to_arrays(table, split: str) -> dict[str, np.ndarray]:
    """Convert one `datasets` split to arrays, checking columns, shapes and values per row."""
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise DataError(f"{split}: missing column(s) {missing}; expected {list(COLUMNS)}")
    if len(table) == 0:
        raise DataError(f"the {split} split has no rows")
    out = {"patient_id": [], "view": []}
    images16 = cache.Float16Arrays(f"{split} T1/T2 intensities")
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
            images16.add(name, images)
        out["patient_id"].append(rows["patient_id"].astype(str))
        out["view"].append(rows["view"].astype(str))
    # One power-of-two factor for the split's T1 and T2, so that intensities beyond float16's
    # range do not become inf. No model input or score changes: `normalise` divides every volume
    # by its own brain percentile (only the EDA's raw-unit figures show the factor).
    arrays = {**{k: np.concatenate(v) for k, v in out.items() if v}, **images16.arrays()}
    unknown = sorted(set(np.unique(arrays["view"])) - set(VIEWS))
    if unknown:
        raise DataError(f"{split}: unknown view value(s) {unknown}; expected {list(VIEWS)}")
    return arrays


def parquet_files(folder: Path) -> dict[str, list[str]]:
    """The parquet files of `folder` per split in SPLITS (only the splits that have files).

    Splits are inferred from the file names exactly as `datasets` does (train.parquet,
    validation-00000-of-00001.parquet, data/train/..., val*, dev* ...; no split name at all:
    every file is train), but only *.parquet files are kept, so a README or a JSON file next to
    them is never read as parquet. Other splits (test ...) are reported and ignored.
    """
    from datasets.data_files import DataFilesDict, get_data_patterns

    found = DataFilesDict.from_patterns(get_data_patterns(str(folder)), base_path=str(folder))
    files = {str(s): sorted(f for f in found[s] if f.endswith(".parquet")) for s in found}
    ignored = sorted(s for s in files if s not in SPLITS and files[s])
    if ignored:
        print(f"notice: {folder}: ignoring split(s) {ignored}; Q1 reads {list(SPLITS)}",
              file=sys.stderr)
    files = {s: files[s] for s in SPLITS if files.get(s)}
    if not files:
        raise DataSourceError(f"{folder}: no parquet file named by a {' or '.join(SPLITS)} "
                              "split (e.g. train.parquet, validation.parquet)")
    return files


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
    files = parquet_files(source.path)
    check_schema(source.path, (f for paths in files.values() for f in paths), COLUMNS,
                 ECG_COLUMNS, f"holds ECG records (Q2's schema: {', '.join(ECG_COLUMNS)}), not "
                 "T1/T2 slices; use it with make q2 / q2_ecg")
    try:
        return datasets.load_dataset("parquet", data_files=files)
    except datasets.exceptions.DatasetGenerationError as e:  # e.g. files with different types
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
        if not any(s in tables for s in SPLITS):
            raise DataError(f"{_name(source)}: no {' or '.join(SPLITS)} split "
                            f"(have {list(tables)})")
        splits = {s: _rows_to_arrays(tables[s], s) for s in SPLITS if s in tables}
    splits = {s: _drop_empty(arrays, s, source) for s, arrays in splits.items()}
    return {f"{s}/{k}": v for s, arrays in splits.items() for k, v in arrays.items()}


def _drop_empty(arrays: dict[str, np.ndarray], split: str, source: DataSource
                ) -> dict[str, np.ndarray]:
    """Drop slices whose T1 or T2 is entirely 0 and count them in `skipped_empty` (0-d int).

    Such a slice has no brain to translate or score: its brain-masked metrics would be NaN.
    A split with nothing left is refused.
    """
    n = len(arrays["t1"])
    has = {c: (arrays[c].reshape(n, -1) != 0).any(1) for c in ("t1", "t2")}
    keep = has["t1"] & has["t2"]
    if not keep.any():
        contrast = ("T1" if not has["t1"].any() else "T2" if not has["t2"].any()
                    else "T1 or T2")
        raise DataError(f"{_name(source)}: every {contrast} slice of {split} is empty "
                        "(all zero, no brain)")
    out = {k: v if keep.all() else v[keep] for k, v in arrays.items()}
    return {**out, "row": np.flatnonzero(keep).astype(np.int64),
            "skipped_empty": np.array(n - int(keep.sum()))}


def _name(source: DataSource) -> str:
    """The folder's path, or the source's label: how messages name a source."""
    return str(source.path) if source.path else source.label


def _present(arrays: dict[str, np.ndarray]) -> list[str]:
    """The splits held by cached arrays, in SPLITS order."""
    return [s for s in SPLITS if f"{s}/t1" in arrays]


def _validate(arrays: dict[str, np.ndarray]) -> None:
    assert _present(arrays), "no split"
    for s in _present(arrays):
        n = len(arrays[f"{s}/t1"])
        assert n > 0, f"{s} is empty"
        assert arrays[f"{s}/t1"].shape == arrays[f"{s}/t2"].shape == (n, *SHAPE), f"{s} shapes"
        assert len(arrays[f"{s}/patient_id"]) == len(arrays[f"{s}/view"]) == n, f"{s} lengths"
        assert arrays[f"{s}/skipped_empty"].shape == (), f"{s} skipped count"
        assert arrays[f"{s}/row"].shape == (n,), f"{s} rows"


def cache_path(source: DataSource) -> Path:
    from q1_mri import demo

    return cache_dir() / f"q1-{source.tag}-{source.fingerprint(demo.__file__)}.npz"


def resolve_source(spec: str) -> DataSource:
    """--data value -> DataSource; `auto` uses a cached Hub copy without touching the network."""
    return resolve(spec, hub_cached=cache_path(DataSource("hub", None, "hub")).exists())


class MRISplits(dict):
    """The splits a source holds, by name (a folder may hold only one of SPLITS).

    Asking for a split the source lacks raises a one-line DataError instead of a KeyError, so
    training on a folder that holds only a validation split is refused by name.
    """

    def __init__(self, name: str, splits: dict[str, MRISplit]):
        super().__init__(splits)
        self.name = name

    def __missing__(self, split: str):
        raise DataError(f"{self.name} has no {split} split (it holds only {', '.join(self)}): "
                        "--split official needs both train and validation; use --split kfold "
                        "or --split all, or evaluate it as an external set with "
                        "python -m q1_mri.eval --data <folder> --trained-on <source>")


def load_mri(source: DataSource) -> MRISplits:
    """The splits `source` holds as raw arrays, from the cache when possible.

    Slices with an empty T1 or T2 are already dropped (notice on stderr, count in
    `MRISplit.skipped_empty`); a patient found in both splits is refused (DataError).
    """
    arrays = cache.load_or_build(cache_path(source), lambda: _build(source), _validate,
                                 CACHE_VERSION)
    splits = MRISplits(_name(source), {
        s: MRISplit(**{k: arrays[f"{s}/{k}"] for k in ("t1", "t2", "patient_id", "view", "row")},
                    skipped_empty=int(arrays[f"{s}/skipped_empty"]))
        for s in _present(arrays)})
    skipped = {s: split.skipped_empty for s, split in splits.items()}
    if any(skipped.values()):
        print(f"notice: skipped {sum(skipped.values())} slices with an empty T1 or T2 ("
              + ", ".join(f"{s}: {n}" for s, n in skipped.items()) + ")", file=sys.stderr)
    leaked = shared_patients(splits)
    if leaked:
        raise DataError(f"{splits.name}: {len(leaked)} patient(s) in both the train and the "
                        f"validation split: {', '.join(leaked[:10])}"
                        f"{' ...' if len(leaked) > 10 else ''}; a patient's slices must all "
                        "sit in one split")
    return splits


def shared_patients(splits: dict[str, MRISplit]) -> list[str]:
    """Patient ids present in both train and validation (a leak); [] when a split is absent."""
    if not all(s in splits for s in SPLITS):
        return []
    return sorted(set(splits["train"].patient_id) & set(splits["validation"].patient_id))


# ---------------------------------------------------------------- normalisation

def nonzero(images: np.ndarray) -> np.ndarray:
    """images != 0, elementwise; for float16 read from the bit patterns (either zero's sign),
    several times faster than numpy's float16 comparison on large arrays."""
    if images.dtype == np.float16:
        return (images.view(np.uint16) & 0x7FFF) != 0
    return images != 0


def volume_scales(images: np.ndarray, patient_id: np.ndarray) -> dict[str, float]:
    """Per patient: the PERCENTILE-th percentile of its brain (non-zero) pixels, all views."""
    ids, inverse = np.unique(patient_id, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse, minlength=len(ids)))[:-1]
    scales = {}
    for pid, rows in zip(ids.tolist(), np.split(order, bounds)):
        values = images[rows]
        brain = values[nonzero(values)].astype(np.float32)
        scales[pid] = float(np.percentile(brain, PERCENTILE)) if brain.size else 1.0
    return scales


def normalise(split: MRISplit, dtype=np.float16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply NORMALISATION. Returns t1, t2 (N, 1, 64, 64) `dtype` in [0, 1] and the brain mask
    (N, 1, 64, 64) bool.

    float16 by default: one compact copy per contrast, what training keeps on the device
    (at the Hub's 155,000 slices, 1.3 GB each against 2.5 GB in float32); the division runs
    in float32, NORMALISE_CHUNK slices at a time (torch's casts: numpy's float16 ones are
    slow), so no full-size float32 copy is made.
    """
    import torch

    out, torch_dtype = [], getattr(torch, np.dtype(dtype).name)
    for images in (split.t1, split.t2):
        scales = volume_scales(images, split.patient_id)
        divisor = torch.tensor([scales[p] for p in split.patient_id.tolist()])[:, None, None, None]
        normed = np.empty(images.shape, dtype)
        for a in range(0, len(images), NORMALISE_CHUNK):
            b = a + NORMALISE_CHUNK
            chunk = torch.from_numpy(np.ascontiguousarray(images[a:b])).float()
            normed[a:b] = (chunk / divisor[a:b]).clamp_(0.0, 1.0).to(torch_dtype).numpy()
        out.append(normed)
    mask = np.empty(split.t1.shape, bool)
    for a in range(0, len(mask), NORMALISE_CHUNK):
        b = a + NORMALISE_CHUNK
        mask[a:b] = nonzero(split.t1[a:b]) | nonzero(split.t2[a:b])
    return out[0], out[1], mask


def to_device(split: MRISplit, device) -> dict:
    """Normalised split as device tensors: t1, t2 (N, 1, 64, 64) float16 (cast per batch),
    mask (N, 1, 64, 64) bool, view (N,) int64."""
    import torch

    t1, t2, mask = normalise(split)
    as_tensor = lambda a, dtype: torch.from_numpy(np.ascontiguousarray(a)).to(device, dtype)  # noqa: E731
    return {"t1": as_tensor(t1, torch.float16), "t2": as_tensor(t2, torch.float16),
            "mask": as_tensor(mask, torch.bool), "view": as_tensor(split.view_index, torch.int64)}
