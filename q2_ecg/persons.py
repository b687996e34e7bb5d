"""Which records come from one person, so that no person sits on both sides of a split.

The schema has no subject id. mitdb 201 and 202 are known to be one patient. INCART's 75
records were cut from 32 Holter recordings (PhysioNet's incartdb page), and a recording's
records evidently carry consecutive numbers, but which ones is not in the data. Records of one
Holter recording share the electrodes and the heart: their median beats are near-identical
and their R amplitudes alike, while a new person almost always changes one of the two. So,
within INCART, each record is compared with its NEIGHBOURS nearest records in record order,
and two records are linked when
  * their median beats correlate >= MIN_CORR (best over +-MAX_LAG samples of alignment, over
    the central +-SHAPE_HALF samples: QRS and T wave) and their R amplitudes differ by at most
    MAX_LOG_AMP in |log ratio| (0.5: a factor 1.65), or
  * the shapes still correlate >= RHYTHM_CORR, the amplitudes are within RHYTHM_LOG_AMP, and
    the rhythm agrees: median RR within MAX_LOG_RR and RR variability within MAX_LOG_RRV
    (|log ratios|).
Persons are the connected components of these links (union-find). Heart rate alone is weak
evidence (one Holter's 30-min excerpts range from night to exercise), hence only the second,
stricter path. Over-grouping is safe (a split gets a little coarser); under-grouping leaks, so
the thresholds are set loosely: on the local data they give 29 INCART groups (<= 32 subjects).
"""
from __future__ import annotations

import numpy as np

from q2_ecg.beats import HALF_WINDOW, BeatTable, amplitude_scale
from q2_ecg.data import SAMPLING_RATE, ECGRecords

SAME_PERSON = {"202": "201"}              # known from the databases' documentation
GROUPED_DATABASES = ("incartdb_npy",)     # several records per person, no subject id
NEIGHBOURS = 2                            # compare with records up to this far in record order
MAX_LAG = 8                               # samples of alignment tried (62 ms)
SHAPE_HALF = 64                           # compare the central +-0.5 s of the median beats
MIN_CORR, MAX_LOG_AMP = 0.8, 0.5
RHYTHM_CORR, RHYTHM_LOG_AMP, MAX_LOG_RR, MAX_LOG_RRV = 0.7, 0.7, 0.15, 0.5


def aligned_correlation(a: np.ndarray, b: np.ndarray, max_lag: int = MAX_LAG,
                        half: int = SHAPE_HALF) -> float:
    """Best Pearson correlation of two (WINDOW,) R-centred median beats over lags +-max_lag.

    Aligning first absorbs annotation offsets between records (a few samples) that would
    otherwise lower the correlation of two identical beats.
    """
    x = a[HALF_WINDOW - half:HALF_WINDOW + half]
    best = -1.0
    for lag in range(-max_lag, max_lag + 1):
        y = b[HALF_WINDOW - half + lag:HALF_WINDOW + half + lag]
        if x.std() > 0 and y.std() > 0:
            best = max(best, float(np.corrcoef(x, y)[0, 1]))
    return best


def record_stats(records: ECGRecords) -> dict[str, np.ndarray]:
    """Per record (R,): R amplitude (amplitude_scale of the raw signal, mV), median RR (s) and
    RR variability (median |successive RR difference| / median RR); NaN without 3 beats."""
    amp, median_rr, variability = (np.full(len(records), np.nan) for _ in range(3))
    for r in range(len(records)):
        signal, locs, _ = records.record(r)
        inside = locs[locs < len(signal)]
        if len(inside):
            amp[r] = amplitude_scale(signal, inside)
        rr = np.diff(locs) / SAMPLING_RATE
        if len(rr) >= 2:
            median_rr[r] = np.median(rr)
            variability[r] = np.median(np.abs(np.diff(rr))) / median_rr[r]
    return {"amplitude_mv": amp, "median_rr_s": median_rr, "rr_variability": variability}


def pair_evidence(records: ECGRecords, table: BeatTable) -> list[dict]:
    """The compared pairs of records (neighbours in record order within each GROUPED_DATABASES
    database) with their similarity values and whether they are linked."""
    stats = record_stats(records)
    ratio = lambda key, i, j: abs(float(np.log(stats[key][i] / stats[key][j])))  # noqa: E731
    pairs = []
    for db in GROUPED_DATABASES:
        members = np.flatnonzero(records.source_db == db)
        members = members[np.argsort(records.patient_id[members], kind="stable")]
        for a, i in enumerate(members):
            for j in members[a + 1:a + 1 + NEIGHBOURS]:
                e = {"records": (str(records.patient_id[i]), str(records.patient_id[j])),
                     "index": (int(i), int(j)),
                     "corr": aligned_correlation(table.template[i], table.template[j]),
                     "log_amp": ratio("amplitude_mv", i, j), "log_rr": ratio("median_rr_s", i, j),
                     "log_rrv": ratio("rr_variability", i, j)}
                e["linked"] = linked(e)
                pairs.append(e)
    return pairs


def linked(e: dict) -> bool:
    """The module docstring's rule on one pair's evidence (NaN evidence never links)."""
    shape = e["corr"] >= MIN_CORR and e["log_amp"] <= MAX_LOG_AMP
    rhythm = (e["corr"] >= RHYTHM_CORR and e["log_amp"] <= RHYTHM_LOG_AMP
              and e["log_rr"] <= MAX_LOG_RR and e["log_rrv"] <= MAX_LOG_RRV)
    return bool(shape or rhythm)


def components(n: int, edges: list[tuple[int, int]]) -> np.ndarray:
    """(n,) component label (its smallest member) of each node of an undirected graph."""
    parent = np.arange(n)

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x
    for i, j in edges:
        ri, rj = root(i), root(j)
        parent[max(ri, rj)] = min(ri, rj)
    return np.array([root(x) for x in range(n)])


def group_persons(records: ECGRecords, table: BeatTable) -> tuple[np.ndarray, str]:
    """(R,) person id per record (str: the first record name of the person's group) and a
    one-line description of the rule (for split files and metrics.json)."""
    names = list(records.patient_id)
    where = {p: k for k, p in enumerate(names)}
    edges = [(where[a], where[b]) for a, b in SAME_PERSON.items() if a in where and b in where]
    pairs = pair_evidence(records, table)
    edges += [e["index"] for e in pairs if e["linked"]]
    label = components(len(names), edges)
    first = {}
    for k in np.argsort(np.array(names), kind="stable"):
        first.setdefault(label[k], names[k])
    persons = np.array([first[label[k]] for k in range(len(names))])
    grouped = np.isin(records.source_db, GROUPED_DATABASES)
    description = (
        f"records grouped into persons: mitdb 201/202 known to be one patient; within "
        f"{', '.join(d.removesuffix('_npy') for d in GROUPED_DATABASES)}, each record is linked "
        f"to its {NEIGHBOURS} next records in record order when their median beats correlate "
        f">= {MIN_CORR} (aligned +-{MAX_LAG} samples) and R amplitudes differ <= "
        f"{np.exp(MAX_LOG_AMP):.2f}x, or correlate >= {RHYTHM_CORR} with amplitudes <= "
        f"{np.exp(RHYTHM_LOG_AMP):.2f}x and the same rhythm (median RR within "
        f"{np.exp(MAX_LOG_RR):.2f}x, RR variability within {np.exp(MAX_LOG_RRV):.2f}x); "
        f"persons = connected components: {len(np.unique(persons[grouped]))} persons for "
        f"{int(grouped.sum())} such records, {len(np.unique(persons))} in all")
    return persons, description
