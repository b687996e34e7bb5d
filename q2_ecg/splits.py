"""Train / validation / test assignment of beats: by patient (honest), by beat (leaky, shown
once for comparison) and leave-one-database-out.

Validation picks the early-stopping epoch and the decision biases; test is touched only by the
final evaluation.
"""
from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from q2_ecg.beats import BeatTable
from q2_ecg.data import ECGRecords

SPLITS = ("train", "val", "test")
FOLDS = 7                                   # test = 1 fold, val = 1 fold, train = 5 folds (~70 %)
# mitdb 201 and 202 were recorded from one patient. INCART's 75 records come from 32 subjects,
# but the schema carries no subject id, so its records are grouped as if each were a person.
SAME_PERSON = {"202": "201"}
DATABASES = ("mitdb_npy", "svdb_npy", "incartdb_npy")


def person(records: ECGRecords) -> np.ndarray:
    """(R,) the person behind each record, merging records known to share one."""
    return np.array([SAME_PERSON.get(p, p) for p in records.patient_id])


def _stratified_person_folds(records: ECGRecords, table: BeatTable, beats: np.ndarray,
                             seed: int) -> np.ndarray:
    """(B,) fold 0..FOLDS-1 for `beats` (bool mask), -1 elsewhere; every fold disjoint by person.

    Folds are balanced on (database, class) of the scored beats, so each split gets its share of
    SVEB and VEB beats from every database.
    """
    groups = person(records)[table.record]
    db = np.searchsorted(np.array(DATABASES), records.source_db)[table.record]
    strata = db * 3 + np.where(table.label < 3, table.label, 0)
    chosen = np.flatnonzero(beats & table.scored)
    fold = np.full(len(table.label), -1)
    splitter = StratifiedGroupKFold(FOLDS, shuffle=True, random_state=seed)
    for k, (_, test_idx) in enumerate(splitter.split(chosen, strata[chosen], groups[chosen])):
        fold[chosen[test_idx]] = k
    # unscored beats (UNK, filtered) follow their record, so a record is never cut in two
    rec_fold = np.full(len(records), -1)
    rec_fold[table.record[chosen]] = fold[chosen]
    return np.where(beats, rec_fold[table.record], -1)


def patient_split(records: ECGRecords, table: BeatTable, seed: int = 0) -> np.ndarray:
    """(B,) split name per beat; test and validation each about 1/7 of the persons.

    sklearn's fold assignment barely depends on its random_state (it orders groups by their
    class mix), so the seed also rotates which folds are test and validation: seeds 0..6 give
    the seven folds of a patient-level cross-validation.
    """
    fold = _stratified_person_folds(records, table, np.ones(len(table.label), bool), seed)
    test, val = seed % FOLDS, (seed + 1) % FOLDS
    out = np.select([fold == test, fold == val], ["test", "val"], "train").astype("<U5")
    check_split(records, table, out)
    return out


def lodo_split(records: ECGRecords, table: BeatTable, held_out: str, seed: int = 0) -> np.ndarray:
    """(B,) split: every beat of database `held_out` is test; the rest split into train / val."""
    in_test = records.source_db[table.record] == held_out
    if not in_test.any():
        raise ValueError(f"no record of database {held_out}")
    fold = _stratified_person_folds(records, table, ~in_test, seed)
    out = np.where(in_test, "test", np.where(fold == seed % FOLDS, "val", "train")).astype("<U5")
    check_split(records, table, out)
    return out


def beat_split(table: BeatTable, seed: int = 0) -> np.ndarray:
    """(B,) the leaky split: beats assigned at random, so one patient's beats sit on all sides."""
    u = np.random.default_rng(seed).random(len(table.label))
    return np.select([u < 1 / FOLDS, u < 2 / FOLDS], ["test", "val"], "train").astype("<U5")


def check_split(records: ECGRecords, table: BeatTable, split: np.ndarray) -> None:
    """Assert that no person has beats in two splits and that each split has every class."""
    who = person(records)[table.record]
    sets = {s: set(who[split == s]) for s in SPLITS}
    for a in SPLITS:
        for b in SPLITS:
            if a < b and sets[a] & sets[b]:
                raise AssertionError(f"persons in both {a} and {b}: {sorted(sets[a] & sets[b])[:5]}")
    for s in SPLITS:
        present = set(np.unique(table.label[(split == s) & table.scored]))
        if not {0, 1, 2} <= present:
            raise AssertionError(f"split {s} lacks class(es) {sorted({0, 1, 2} - present)}")


def describe(records: ECGRecords, table: BeatTable, split: np.ndarray) -> dict:
    """Patients and scored beats per class in each split (for the log and metrics.json)."""
    out = {}
    for s in SPLITS:
        m = (split == s) & table.scored
        out[s] = {"patients": int(len(np.unique(table.record[split == s]))),
                  "beats": int(m.sum()),
                  **{c: int((table.label[m] == k).sum()) for k, c in enumerate(("NOR", "SVEB", "VEB"))}}
    return out
