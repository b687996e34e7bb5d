"""Q2 data: load ECG records (Hub, local parquet folder or demo), check them, cache them, and
cut them into beats.

Every source becomes one `ECGRecords`: all signals concatenated, with offsets per record. The
Hub and a local folder go through the same `datasets` code path.
"""
from __future__ import annotations

import json
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

REPO_ID = "dpelacani/ecg-led2-cleaned"
CLASS_MAPPING = {0: "NOR", 1: "SVEB", 2: "VEB", 3: "UNK"}
CLASSES = ("NOR", "SVEB", "VEB")         # what the classifiers predict; UNK (3) is dropped
UNKNOWN = 3
SAMPLING_RATE = 128                      # Hz; every source is at this rate
MIN_BEAT, MAX_BEAT = 32, 256             # samples, inclusive: 240 bpm .. 30 bpm
COLUMNS = ("patient_id", "source_db", "sampling_rate", "signal", "beat_locs", "beat_labels")
MRI_COLUMNS = ("t1", "t2", "view")       # Q1's schema, refused by name
CACHE_VERSION = 1


@dataclass
class ECGRecords:
    """R records, S samples in all, B annotated beats in all."""
    patient_id: np.ndarray      # (R,) str, the record name
    source_db: np.ndarray       # (R,) str, e.g. "mitdb_npy"
    signal: np.ndarray          # (S,) float16 mV, records one after another
    signal_offsets: np.ndarray  # (R + 1,) int64: record r is signal[off[r]:off[r + 1]]
    beat_locs: np.ndarray       # (B,) int64 sample index in its record (R peak)
    beat_labels: np.ndarray     # (B,) int64 in CLASS_MAPPING
    beat_offsets: np.ndarray    # (R + 1,) int64: record r's beats are [off[r]:off[r + 1]]
    skipped: np.ndarray         # (K,) str: "record: reason" for each record left out

    def __len__(self) -> int:
        return len(self.patient_id)

    def record(self, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Signal (n,) float32 mV, beat locations (m,) and labels (m,) of record `r`."""
        s, b = self.signal_offsets, self.beat_offsets
        return (self.signal[s[r]:s[r + 1]].astype(np.float32), self.beat_locs[b[r]:b[r + 1]],
                self.beat_labels[b[r]:b[r + 1]])

    @property
    def beat_record(self) -> np.ndarray:
        """(B,) int64: the record of each beat."""
        return np.repeat(np.arange(len(self)), np.diff(self.beat_offsets))


# ---------------------------------------------------------------- the template's beat cutting

def split_by_beat(signal: np.ndarray, beat_locs: np.ndarray) -> list[np.ndarray]:
    """One segment per annotation: from the previous annotation (or sample 0) up to this one.

    Same semantics as the coursework template's helper. Since annotations sit on R peaks, a
    segment ends at its own beat's R peak and mostly holds the previous beat's ST-T wave.
    """
    starts = np.concatenate([[0], beat_locs[:-1]])
    return [signal[a:b] for a, b in zip(starts, beat_locs)]


def keep_by_length(lengths: np.ndarray) -> np.ndarray:
    """(B,) bool: segments of MIN_BEAT..MAX_BEAT samples, bounds included."""
    return (lengths >= MIN_BEAT) & (lengths <= MAX_BEAT)


def segment_lengths(records: ECGRecords) -> np.ndarray:
    """(B,) int64 length of every beat's split_by_beat segment, without building the segments.

    Like the slicing in split_by_beat, an annotation past the end of its signal gives a segment
    cut at the end.
    """
    n = np.diff(records.signal_offsets)[records.beat_record]      # (B,) length of own record
    prev = np.concatenate([[0], records.beat_locs[:-1]])
    prev[records.beat_offsets[:-1]] = 0              # each record's first segment starts at 0
    return np.maximum(np.minimum(records.beat_locs, n) - np.minimum(prev, n), 0)


def inside_signal(records: ECGRecords) -> np.ndarray:
    """(B,) bool: the annotation lies on a sample of its record (a few sit one past the end)."""
    return records.beat_locs < np.diff(records.signal_offsets)[records.beat_record]


def beat_dataset(records: ECGRecords) -> tuple[list[np.ndarray], list[int]]:
    """Part 2.A's beat-level dataset: split_by_beat segments and their labels, two aligned lists."""
    segments, labels = [], []
    for r in range(len(records)):
        signal, locs, beat_labels = records.record(r)
        segments += split_by_beat(signal, locs)
        labels += beat_labels.tolist()
    return segments, labels


# ---------------------------------------------------------------- reading and checking

def check_record(name: str, signal: np.ndarray, locs: np.ndarray, labels: np.ndarray,
                 rate: int) -> str | None:
    """Why a record cannot be used, or None when it is fine."""
    if len(signal) == 0 or len(locs) == 0:
        return "empty record (no samples or no beats)"
    if rate != SAMPLING_RATE:
        return f"sampling rate {rate} Hz, expected {SAMPLING_RATE}"
    if len(locs) != len(labels):
        return f"{len(locs)} beat_locs but {len(labels)} beat_labels"
    if not np.isfinite(signal).all():
        return f"{int((~np.isfinite(signal)).sum())} NaN/Inf samples"
    if locs.min() < 0:
        return f"negative beat_locs ({int((locs < 0).sum())})"
    if (np.diff(locs) <= 0).any():
        return f"beat_locs not increasing at beat {int(np.argmax(np.diff(locs) <= 0)) + 1}"
    bad = sorted(set(np.unique(labels).tolist()) - set(CLASS_MAPPING))
    if bad:
        return f"label value(s) {bad} outside the class mapping {CLASS_MAPPING}"
    return None


def assemble(rows) -> dict[str, np.ndarray]:
    """Check each record (a dict in the hub schema) and concatenate the good ones.

    Bad records are skipped with a notice and listed in `skipped`, never silently used.
    """
    keep, skipped = [], []
    for row in rows:
        name = str(row["patient_id"])
        signal = np.asarray(row["signal"], dtype=np.float32)
        locs = np.asarray(row["beat_locs"], dtype=np.int64)
        labels = np.asarray(row["beat_labels"], dtype=np.int64)
        reason = check_record(name, signal, locs, labels, int(row["sampling_rate"]))
        if reason:
            print(f"notice: skipping record {name}: {reason}", file=sys.stderr)
            skipped.append(f"{name}: {reason}")
            continue
        keep.append((name, str(row["source_db"]), signal, locs, labels))
    if not keep:
        raise DataError("no usable record: " + "; ".join(skipped[:5]))
    lengths = lambda i: np.array([0] + [len(k[i]) for k in keep])  # noqa: E731
    # A power-of-two factor where samples exceed float16's range (they would become inf). No
    # model input or score changes: each record is divided by its own R amplitude before use
    # (only the EDA's mV figures show the factor).
    signal, _ = cache.to_float16(np.concatenate([k[2] for k in keep]), "ECG signal samples (mV)")
    return {"patient_id": np.array([k[0] for k in keep]), "source_db": np.array([k[1] for k in keep]),
            "signal": signal,
            "signal_offsets": np.cumsum(lengths(2)), "beat_locs": np.concatenate([k[3] for k in keep]),
            "beat_labels": np.concatenate([k[4] for k in keep]),
            "beat_offsets": np.cumsum(lengths(3)), "skipped": np.array(skipped, dtype=str)}


def _check_mapping(mapping: dict) -> None:
    if {int(k): v for k, v in mapping.items()} != CLASS_MAPPING:
        raise DataError(f"class_mapping.json is {mapping}, expected {CLASS_MAPPING}")


def parquet_files(folder: Path) -> list[str]:
    """The folder's *.parquet files (a README, notes or JSON beside them are never read as
    data); hidden files and folders are skipped, as the data fingerprint skips them."""
    return sorted(str(f) for f in folder.rglob("*.parquet")
                  if not any(part.startswith(".") for part in f.relative_to(folder).parts))


def _load_rows(source: DataSource):
    """Records of a hub or folder source as a `datasets.Dataset` (datasets imported only here)."""
    import datasets

    datasets.disable_progress_bars()
    if source.kind == "hub":
        require_hub(REPO_ID)
        from huggingface_hub import hf_hub_download
        mapping = hf_hub_download(REPO_ID, "class_mapping.json", repo_type="dataset")
        _check_mapping(json.loads(Path(mapping).read_text()))
        return datasets.load_dataset(REPO_ID, split="train")
    if (source.path / "class_mapping.json").exists():
        _check_mapping(json.loads((source.path / "class_mapping.json").read_text()))
    files = parquet_files(source.path)
    if not files:
        raise DataSourceError(f"{source.path}: no parquet files found")
    check_schema(source.path, files, COLUMNS, MRI_COLUMNS, f"holds MRI slices (Q1's schema: "
                 f"{', '.join(MRI_COLUMNS)}), not ECG records; use it with make q1 / q1_mri")
    try:
        table = datasets.load_dataset("parquet", data_files={"train": files}, split="train")
    except datasets.exceptions.DatasetGenerationError as e:
        raise DataError(f"cannot read the parquet files in {source.path}: "
                        f"{str(e.__cause__ or e).splitlines()[0]}") from e
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise DataError(f"{source.path}: missing column(s) {missing}; expected {list(COLUMNS)}")
    return table.with_format("numpy")


def _build(source: DataSource) -> dict[str, np.ndarray]:
    if source.kind == "demo":
        from q2_ecg.demo import make_demo_ecg
        return assemble(make_demo_ecg())
    print(f"converting {source.label} to the cache (once) ...", file=sys.stderr)
    return assemble(_load_rows(source))


def _validate(a: dict[str, np.ndarray]) -> None:
    r = len(a["patient_id"])
    assert len(a["source_db"]) == r and len(a["signal_offsets"]) == len(a["beat_offsets"]) == r + 1
    assert a["signal_offsets"][-1] == len(a["signal"]), "signal length"
    assert a["beat_offsets"][-1] == len(a["beat_locs"]) == len(a["beat_labels"]), "beat count"


def cache_path(source: DataSource) -> Path:
    from q2_ecg import demo

    return cache_dir() / f"q2-{source.tag}-{source.fingerprint(demo.__file__)}.npz"


def resolve_source(spec: str) -> DataSource:
    """--data value -> DataSource; `auto` uses a cached Hub copy without touching the network."""
    return resolve(spec, hub_cached=cache_path(DataSource("hub", None, "hub")).exists())


def load_records(source: DataSource) -> ECGRecords:
    """All usable records of `source`, from the cache when possible."""
    arrays = cache.load_or_build(cache_path(source), lambda: _build(source), _validate,
                                 CACHE_VERSION)
    return ECGRecords(**arrays)
