"""Which patients train, tune and are tested in each Q1 run, decided once and written to a file.

Schemes (each a list of folds, one training run per fold):
  kfold     every patient of the source (its train and validation splits pooled) is in the
            test set of exactly one of K folds, so each patient is predicted once by a model
            that never saw it (the headline). Patients go to folds in a seeded random order,
            round robin, so fold sizes differ by at most one patient.
  official  the source's own validation split is the test set, its train split trains (the
            Hub's 369 patients); the two are checked to share no patient.
In every fold, INNER_FRACTION of the training patients (at least one, seeded) are the inner
validation ("val"): they choose the epoch of each run, and evaluation chooses the model, the
width and the test-time flip on them. The test patients are predicted once and choose nothing.

The split file, results/q1/<source>/splits/<kfold5-seed0 | official-seed0>.json, is written
once; later runs read it and refuse a file made from other data. Nothing re-derives a split.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from common.cli import DataError
from common.splitfile import load_or_write, split_id
from q1_mri.data import Slices

ROLES = ("train", "val", "test")
SCHEMES = ("kfold", "official")
INNER_FRACTION = 1 / 6


def patients_of(slices: Slices) -> dict[str, str]:
    """{patient id: its source split}, in first-seen order. A patient in two splits is refused."""
    out: dict[str, str] = {}
    for pid, split in dict.fromkeys(zip(slices.patient_id.tolist(), slices.split.tolist())):
        if out.setdefault(pid, split) != split:
            raise DataError(f"patient {pid} is in both the {out[pid]} and the {split} split; a "
                            "patient's slices must all sit in one split")
    return out


def assign(patients: dict[str, str], scheme: str, folds: int, seed: int
           ) -> dict[str, dict[str, str]]:
    """{fold name: {patient: role}} for a scheme (see the module docstring)."""
    ids = sorted(patients)
    if scheme == "official":
        held = [p for p in ids if patients[p] == "validation"]
        if not held or len(held) == len(ids):
            raise DataError("--split official needs patients in both the train and the "
                            f"validation split (this data: {sorted(set(patients.values()))})")
        outer = {"official": {p: "test" if patients[p] == "validation" else "train" for p in ids}}
    elif scheme == "kfold":
        if folds < 2 or len(ids) < 2 * folds:
            raise DataError(f"a {folds}-fold cross-validation with inner validation needs at "
                            f"least {2 * max(folds, 2)} patients and 2 folds; the data has "
                            f"{len(ids)} patient(s)")
        order = np.random.default_rng(seed).permutation(len(ids))
        fold_of = {ids[i]: k % folds for k, i in enumerate(order)}
        outer = {f"fold{f}": {p: "test" if fold_of[p] == f else "train" for p in ids}
                 for f in range(folds)}
    else:
        raise ValueError(f"unknown scheme {scheme}")
    return {name: inner_validation(roles, seed) for name, roles in outer.items()}


def inner_validation(roles: dict[str, str], seed: int) -> dict[str, str]:
    """The same roles with round(INNER_FRACTION x training patients) of them (at least 1, at
    most all but one; seeded) turned into inner validation ("val")."""
    train = sorted(p for p, r in roles.items() if r == "train")
    n = min(max(1, round(INNER_FRACTION * len(train))), len(train) - 1)
    chosen = set(np.random.default_rng(seed + 1).choice(train, n, replace=False).tolist())
    return {p: "val" if p in chosen else r for p, r in roles.items()}


def split_path(split_dir: Path, scheme: str, folds: int, seed: int) -> Path:
    return split_dir / (f"kfold{folds}-seed{seed}.json" if scheme == "kfold"
                        else f"{scheme}-seed{seed}.json")


def data_id(data_tag: str, slices: Slices) -> dict:
    """What ties a split file to its data: the source tag and the patient and slice counts."""
    return {"data": data_tag, "patients": len(np.unique(slices.patient_id)),
            "slices": len(slices)}


def open_split(root: Path, data_tag: str, slices: Slices, scheme: str, folds: int, seed: int
               ) -> tuple[dict, Path]:
    """The split file of (scheme, folds, seed) under root/splits/, written on first use."""
    patients = patients_of(slices)
    ident = data_id(data_tag, slices)
    path = split_path(root / "splits", scheme, folds, seed)

    def build() -> dict:
        return {"scheme": scheme, "folds_k": folds if scheme == "kfold" else 1, "seed": seed,
                "inner_fraction": INNER_FRACTION,
                **ident, "source_split": patients,
                "folds": {name: {"roles": roles}
                          for name, roles in assign(patients, scheme, folds, seed).items()}}
    return load_or_write(path, build, ident), path


def slice_roles(entry: dict, slices: Slices) -> np.ndarray:
    """(N,) role of every slice ("train" / "val" / "test") under one fold's {"roles": {patient:
    role}}.

    Refuses a fold that misses a patient of the data or gives a role outside ROLES, and checks
    that no patient ends up in two roles.
    """
    roles_of = entry["roles"]
    missing = sorted(set(slices.patient_id.tolist()) - set(roles_of))
    if missing:
        raise DataError(f"the split does not cover patient(s) {missing[:5]}: it was made from "
                        "other data; remove the split file to re-split")
    bad = sorted({r for r in roles_of.values() if r not in ROLES})
    if bad:
        raise DataError(f"the split file holds unknown role(s) {bad}")
    roles = np.array([roles_of[p] for p in slices.patient_id.tolist()], dtype="<U5")
    check_roles(slices.patient_id, roles)
    return roles


def check_roles(patient_id: np.ndarray, roles: np.ndarray) -> None:
    """Refuse (DataError) a patient whose slices sit in two roles."""
    seen: dict[str, str] = {}
    for pid, role in dict.fromkeys(zip(patient_id.tolist(), roles.tolist())):
        if seen.setdefault(pid, role) != role:
            raise DataError(f"patient {pid} is in both {seen[pid]} and {role}: a patient's "
                            "slices must all sit in one role")


def describe(slices: Slices, roles: np.ndarray) -> dict:
    """Patients and slices per role (for the log and summary.json)."""
    return {r: {"patients": int(len(np.unique(slices.patient_id[roles == r]))),
                "slices": int((roles == r).sum())} for r in ROLES}


def run_entry(split: dict, path: Path, fold: str) -> dict:
    """What a run folder's split.json holds: its fold's assignment and where it came from."""
    return {"split_file": path.name, "split_id": split_id(split, fold), "scheme": split["scheme"],
            "fold": fold, "data": split["data"], **split["folds"][fold]}
