"""Q2 data: the template's beat cutting, record checks, the parquet path, real-data counts."""
from __future__ import annotations

import re

import numpy as np
import pytest

from common.datasource import DataSource
from q2_ecg.data import (
    assemble,
    beat_dataset,
    check_record,
    inside_signal,
    keep_by_length,
    load_records,
    segment_lengths,
    split_by_beat,
)
from tests.conftest import shared_data


def template_split_by_beat(signal, beat_locs):
    """The coursework template's helper, written out as plainly as it was given."""
    beats, prev = [], 0
    for loc in beat_locs:
        beats.append(signal[prev:loc])
        prev = loc
    return beats


def _record(name="r1", n=1000, locs=(100, 200, 300, 420), labels=(0, 1, 0, 2), **override):
    row = {"patient_id": name, "source_db": "mitdb_npy", "sampling_rate": 128,
           "signal": np.sin(np.arange(n) / 5).astype(np.float32),
           "beat_locs": np.array(locs), "beat_labels": np.array(labels)}
    return {**row, **override}


def test_split_by_beat_has_the_template_semantics():
    signal = np.arange(50.0)
    locs = np.array([5, 12, 30, 49])
    ours = split_by_beat(signal, locs)
    assert [list(a) for a in ours] == [list(b) for b in template_split_by_beat(signal, locs)]
    assert list(ours[1]) == list(range(5, 12))         # previous annotation .. this one, exclusive


def test_length_filter_is_inclusive():
    assert list(keep_by_length(np.array([31, 32, 100, 256, 257]))) == [False, True, True, True,
                                                                         False]


@pytest.mark.parametrize("override,reason", [
    ({"signal": np.array([], np.float32)}, "empty"),
    ({"beat_labels": np.array([0, 1, 0])}, "4 beat_locs but 3 beat_labels"),
    ({"signal": np.r_[np.zeros(10), np.nan, np.zeros(989)].astype(np.float32)}, "1 NaN/Inf"),
    ({"beat_locs": np.array([100, 90, 300, 420])}, "not increasing at beat 1"),
    ({"beat_locs": np.array([-5, 200, 300, 420])}, "negative"),
    ({"beat_labels": np.array([0, 1, 7, 2])}, r"label value\(s\) \[7\]"),
    ({"sampling_rate": 360}, "sampling rate 360"),
])
def test_bad_records_are_skipped_with_a_reason(override, reason):
    row = _record(**override)
    assert check_record("r1", np.asarray(row["signal"]), row["beat_locs"], row["beat_labels"],
                        row["sampling_rate"]) is not None
    arrays = assemble([_record("good"), _record("bad", **override)])
    assert list(arrays["patient_id"]) == ["good"]
    assert arrays["skipped"][0].startswith("bad: ")
    assert re.search(reason, arrays["skipped"][0])


def test_annotation_past_the_end_is_kept_like_the_template():
    arrays = assemble([_record(n=420, locs=(100, 200, 300, 420))])
    from q2_ecg.data import ECGRecords
    rec = ECGRecords(**arrays)
    lengths = segment_lengths(rec)
    signal, locs, _ = rec.record(0)
    assert list(lengths) == [len(s) for s in template_split_by_beat(signal, locs)]
    assert list(inside_signal(rec)) == [True, True, True, False]


def _write_parquet(folder, rows):
    import datasets
    folder.mkdir()
    datasets.Dataset.from_list(rows).to_parquet(str(folder / "part.parquet"))
    return DataSource("folder", folder, f"local-{folder.name}")


def test_parquet_folder_and_cache(tmp_path):
    rows = [_record("a"), _record("b", labels=(0, 0, 2, 3)),
            _record("bad", beat_labels=np.array([0, 1]))]
    records = load_records(_write_parquet(tmp_path / "ecg", rows))
    assert list(records.patient_id) == ["a", "b"] and len(records.skipped) == 1
    assert records.beat_offsets.tolist() == [0, 4, 8]
    signal, locs, labels = records.record(1)
    assert signal.shape == (1000,) and list(labels) == [0, 0, 2, 3]


def test_real_records_follow_the_template_counts():
    """On the local copy of the hub set, our vectorised cutting agrees with the template's
    helper beat for beat, and the class counts match the data README's grouping."""
    records = load_records(DataSource("folder", shared_data("ecg"), "local-ecg"))
    assert len(records) == 175 and len(records.skipped) == 0
    segments, labels = beat_dataset(records)
    lengths = np.array([len(s) for s in segments])
    template = np.concatenate([[len(s) for s in template_split_by_beat(*records.record(r)[:2])]
                               for r in range(len(records))])
    assert np.array_equal(lengths, template) and np.array_equal(lengths, segment_lengths(records))
    labels = np.array(labels)
    keep = keep_by_length(lengths)
    assert len(labels) == 411_504
    assert np.bincount(labels[keep]).tolist() == [361_566, 15_251, 34_392, 89]


def test_annotation_offsets_from_the_qrs_peak():
    from q2_ecg.data import ECGRecords
    from q2_ecg.eda import alignment_stats, annotation_offsets

    peaks = np.arange(100, 1000, 100)
    signal = np.zeros(1000, np.float32)
    signal[peaks] = 1.0
    on_peak = _record("on", signal=signal, locs=peaks, labels=np.zeros(len(peaks), int))
    early = _record("early", source_db="svdb_npy", signal=signal, locs=peaks - 3,
                    labels=np.zeros(len(peaks), int))
    rec = ECGRecords(**assemble([on_peak, early]))
    assert annotation_offsets(rec).tolist() == [0] * len(peaks) + [3] * len(peaks)
    stats = alignment_stats(rec)
    assert stats["mitdb_npy"]["median_abs_offset_ms"] == 0 and stats["mitdb_npy"]["within_2_samples"] == 1
    assert stats["svdb_npy"]["median_abs_offset_ms"] == pytest.approx(3 * 1000 / 128)
    assert stats["svdb_npy"]["within_2_samples"] == 0


# ---------------------------------------------------------------- folders of other files (issue 7)

def _write_mri_parquet(folder):
    """A one-slice parquet file in Q1's schema (patient_id, split, view, t1, t2)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True)
    image = [[[0.0] * 4] * 4]
    pq.write_table(pa.table({"patient_id": ["p1"], "split": ["train"], "view": ["axial"],
                             "t1": [image], "t2": [image]}), folder / "train.parquet")
    return folder


def _refused_by_name(folder):
    return re.escape(f"{folder} holds MRI slices (Q1's schema: t1, t2, view), not ECG records; "
                     "use it with make q1 / q1_mri")


def test_mri_folder_is_refused_by_name_before_rows_are_read(tmp_path, monkeypatch):
    import datasets

    from common.cli import DataError
    from q2_ecg.data import resolve_source

    def no_rows(*_, **__):
        raise AssertionError("datasets read the rows")
    monkeypatch.setattr(datasets, "load_dataset", no_rows)
    folder = _write_mri_parquet(tmp_path / "mri")
    with pytest.raises(DataError, match=_refused_by_name(folder)):
        load_records(resolve_source(str(folder)))


def test_real_mri_folder_is_refused_by_name():
    from common.cli import DataError

    folder = shared_data("mri")
    with pytest.raises(DataError, match=_refused_by_name(folder)):
        load_records(DataSource("folder", folder, "local-mri"))


def test_parquet_of_another_schema_is_refused_by_file_name(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from common.cli import DataError

    folder = tmp_path / "ecg"
    _write_parquet(folder, [_record("a")])
    pq.write_table(pa.table({"patient_id": ["b"], "signal": [[0.1, 0.2]]}), folder / "extra.parquet")
    with pytest.raises(DataError, match=re.escape(
            f"{folder / 'extra.parquet'}: missing column(s) ['source_db', 'sampling_rate', "
            "'beat_locs', 'beat_labels']")):
        load_records(DataSource("folder", folder, "local-ecg-mixed"))
    (folder / "extra.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=re.escape(f"{folder / 'extra.parquet'}: not a readable "
                                                  "parquet file")):
        load_records(DataSource("folder", folder, "local-ecg-broken"))


def test_non_parquet_and_hidden_files_in_an_ecg_folder_are_ignored(tmp_path):
    from q2_ecg.data import resolve_source

    folder = tmp_path / "ecg"
    _write_parquet(folder, [_record("a"), _record("b")])
    tag = resolve_source(str(folder)).tag
    (folder / "README.md").write_text("# ECG records\n")
    (folder / "notes.txt").write_text("downloaded from the hub")
    _write_parquet(folder / ".trash", [_record("old")])       # hidden: not data, not hashed
    source = resolve_source(str(folder))
    assert source.tag == tag
    assert list(load_records(source).patient_id) == ["a", "b"]
