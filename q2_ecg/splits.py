"""Which records train, tune and test each run, decided once and written to a split file.

Schemes (each a list of "folds", one training run per fold):
  kfold  every record is in the test set of exactly one of K folds (the headline: each record is
         predicted once by a model that never saw its person); inside each fold's training
         persons, one of INNER_FOLDS groups is the inner validation set (early stopping, decision
         biases, model choice).
  lodo   leave one database out: fold d tests every record of database d, trains on the others.
  beat   the leaky contrast: beats assigned at random, so one person's beats sit on all sides.
Folds are grouped by person and balanced on (database, class) of the scored beats.

The split file, results/q2/<source>/splits/<scheme>-seed<s>.json, is written once; later runs
read it and refuse a file made from other data. Nothing re-derives a split from a seed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from common.cli import DataError
from common.splitfile import load_or_write, split_id
from q2_ecg.beats import BeatTable
from q2_ecg.data import ECGRecords
from q2_ecg.persons import group_persons

ROLES = ("train", "val", "test")
INNER_FOLDS = 6                 # inner validation = 1/6 of a fold's training persons
DATABASES = ("mitdb_npy", "svdb_npy", "incartdb_npy")
SCHEMES = ("kfold", "lodo", "beat")
PERSON_WEIGHT = 10              # balancing folds: a person against a database's class shares
_ROLE_CODE = {"train": "r", "val": "v", "test": "t"}


def _strata(records: ECGRecords, table: BeatTable) -> np.ndarray:
    """(B,) stratum of each beat: database x class (UNK counted as normal)."""
    db = np.searchsorted(np.array(DATABASES), records.source_db)[table.record]
    return db * 3 + np.where(table.label < 3, table.label, 0)


def _group_folds(records: ECGRecords, table: BeatTable, persons: np.ndarray, chosen: np.ndarray,
                 k: int, seed: int) -> np.ndarray:
    """(R,) fold 0..k-1 of each record in `chosen` (bool, (R,)), -1 elsewhere; folds by person.

    Database by database, persons are taken in a seeded random order and each goes to the fold
    where it least unbalances the folds' shares of that database's persons and of its SVEB,
    VEB and normal beats (the persons weigh PERSON_WEIGHT times as much). So every fold gets
    its share of each database's persons, whose inner validation can then judge it, and of its
    abnormal beats; and the seed really changes the split (sklearn's StratifiedGroupKFold
    barely depends on its seed).
    """
    who, inverse = np.unique(persons[chosen], return_inverse=True)
    rec_person = np.full(len(records), -1)
    rec_person[chosen] = inverse
    beats = table.scored & chosen[table.record]
    counts = np.zeros((len(who), len(DATABASES) * 3))
    np.add.at(counts, (rec_person[table.record[beats]], _strata(records, table)[beats]), 1)
    person_db = np.zeros(len(who), np.int64)
    person_db[inverse] = np.searchsorted(np.array(DATABASES), records.source_db[chosen])
    person_fold = np.zeros(len(who), np.int64)
    order = np.random.default_rng(seed).permutation(len(who))
    for d in range(len(DATABASES)):
        mine = order[person_db[order] == d]
        if not len(mine):
            continue
        block = np.c_[counts[mine, 3 * d:3 * d + 3], np.ones(len(mine))]
        share = block / block.sum(0).clip(1)
        share[:, -1] *= PERSON_WEIGHT
        totals = np.zeros((k, share.shape[1]))
        for p, row in zip(mine, share):
            person_fold[p] = np.argmin(((totals + row) ** 2 - totals ** 2).sum(1))
            totals[person_fold[p]] += row
    return np.where(chosen, person_fold[rec_person], -1)


def require_persons(n_persons: int, needed: int, what: str) -> None:
    if n_persons < needed:
        raise DataError(f"{what} needs at least {needed} persons (records), the data has "
                        f"{n_persons}")


def record_roles(records: ECGRecords, table: BeatTable, persons: np.ndarray, scheme: str,
                 folds: int, seed: int) -> tuple[list[str], list[np.ndarray]]:
    """Fold names and, per fold, the (R,) role of every record ("train" / "val" / "test")."""
    everyone = np.ones(len(records), bool)
    n_persons = len(np.unique(persons))
    if scheme == "kfold":
        require_persons(n_persons, 2 * folds, f"a {folds}-fold cross-validation")
        outer = _group_folds(records, table, persons, everyone, folds, seed)
        names, roles = [], []
        for f in range(folds):
            inner = _group_folds(records, table, persons, outer != f, INNER_FOLDS, seed)
            roles.append(np.select([outer == f, inner == 0], ["test", "val"], "train")
                         .astype("<U5"))
            names.append(f"fold{f}")
        return names, roles
    if scheme == "lodo":
        present = [db for db in DATABASES if (records.source_db == db).any()]
        if len(present) < 2:
            raise DataError(f"leave-one-database-out needs records of at least 2 databases "
                            f"among {list(DATABASES)}, the data has {present or 'none'}")
        names, roles = [], []
        for db in present:
            held = records.source_db == db
            require_persons(len(np.unique(persons[~held])), 2,
                            f"leave-out-{db} (training on the other databases)")
            inner = _group_folds(records, table, persons, ~held, INNER_FOLDS, seed)
            roles.append(np.select([held, inner == 0], ["test", "val"], "train").astype("<U5"))
            names.append(db.removesuffix("_npy"))
        return names, roles
    raise ValueError(f"record_roles: unknown scheme {scheme}")


def beat_roles(n_beats: int, seed: int) -> np.ndarray:
    """(B,) the leaky split: each beat test with p 1/7, val 1/7, train otherwise."""
    u = np.random.default_rng(seed).random(n_beats)
    return np.select([u < 1 / 7, u < 2 / 7], ["test", "val"], "train").astype("<U5")


def make_split_file(records: ECGRecords, table: BeatTable, persons: np.ndarray, grouping: str,
                    scheme: str, folds: int, seed: int, data_id: dict) -> dict:
    """Every fold of a scheme as a JSON-ready dict (see the module docstring)."""
    out = {"scheme": scheme, "seed": seed, **data_id, "grouping": grouping,
           "persons": dict(zip(records.patient_id.tolist(), persons.tolist()))}
    if scheme == "beat":
        roles = beat_roles(len(table.label), seed)
        out["folds"] = {"beat": {"beat_roles": "".join(_ROLE_CODE[r] for r in roles)}}
    else:
        names, roles = record_roles(records, table, persons, scheme, folds, seed)
        out["folds"] = {n: {"roles": dict(zip(records.patient_id.tolist(), r.tolist()))}
                        for n, r in zip(names, roles)}
    return out


def split_path(split_dir: Path, scheme: str, folds: int, seed: int) -> Path:
    name = f"kfold{folds}" if scheme == "kfold" else scheme
    return split_dir / f"{name}-seed{seed}.json"


def beat_role_array(split: dict, fold: str, records: ECGRecords, table: BeatTable) -> np.ndarray:
    """(B,) role of every beat in fold `fold` of a split file ("train" / "val" / "test")."""
    entry = split["folds"][fold]
    if "beat_roles" in entry:
        codes = np.frombuffer(entry["beat_roles"].encode(), dtype="S1")
        if len(codes) != len(table.label):
            raise DataError(f"the beat split has {len(codes)} beats, the data {len(table.label)}")
        roles = np.empty(len(codes), "<U5")
        for role, code in _ROLE_CODE.items():
            roles[codes == code.encode()] = role
        return roles
    missing = sorted(set(records.patient_id) - set(entry["roles"]))
    if missing:
        raise DataError(f"split fold {fold} does not cover record(s) {missing[:5]}")
    per_record = np.array([entry["roles"][p] for p in records.patient_id])
    return per_record[table.record]


def check_split(persons_of_beat: np.ndarray, roles: np.ndarray, labels: np.ndarray,
                scored: np.ndarray, record_level: bool = True) -> None:
    """Refuse a split where a person sits in two roles, or training lacks a class."""
    if record_level:
        seen: dict[str, str] = {}
        for who, role in set(zip(persons_of_beat.tolist(), roles.tolist())):
            if seen.setdefault(who, role) != role:
                raise AssertionError(f"person {who} is in both {seen[who]} and {role}")
    present = set(np.unique(labels[(roles == "train") & scored]).tolist())
    if not {0, 1, 2} <= present:
        raise DataError(f"the training records lack class(es) {sorted({0, 1, 2} - present)}; "
                        "too few records for this split")


def describe(records: ECGRecords, table: BeatTable, roles: np.ndarray) -> dict:
    """Records and scored beats per class in each role (for the log and summary.json)."""
    out = {}
    for s in ROLES:
        m = (roles == s) & table.scored
        out[s] = {"records": int(len(np.unique(table.record[roles == s]))), "beats": int(m.sum()),
                  **{c: int((table.label[m] == k).sum()) for k, c in enumerate(("NOR", "SVEB", "VEB"))}}
    return out


def open_split(root: Path, data_tag: str, records: ECGRecords, table: BeatTable, scheme: str,
               folds: int, seed: int) -> tuple[dict, Path, np.ndarray]:
    """The split file of (scheme, folds, seed) under root/splits/, written on first use.

    Returns (split, its path, (R,) person of each record)."""
    persons, grouping = group_persons(records, table)
    data_id = {"data": data_tag, "records": len(records)}
    path = split_path(root / "splits", scheme, folds, seed)
    split = load_or_write(path, lambda: make_split_file(
        records, table, persons, grouping, scheme, folds, seed, data_id), data_id)
    return split, path, persons


def run_entry(split: dict, path: Path, fold: str, records: ECGRecords, table: BeatTable) -> dict:
    """What a run folder's split.json holds: its fold's assignment, the person of every record
    (evaluation resamples persons) and where it came from."""
    has_beats = np.zeros(len(records), bool)
    has_beats[table.record[table.scored]] = True
    return {"split_file": path.name, "split_id": split_id(split, fold), "fold": fold,
            "grouping": split["grouping"], "persons": split["persons"],
            "records_without_scored_beats": records.patient_id[~has_beats].tolist(),
            **split["folds"][fold]}
