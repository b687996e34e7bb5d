"""Synthetic lead-II Holter records with the schema of `dpelacani/ecg-led2-cleaned`.

Each beat is a sum of five Gaussian waves P, Q, R, S, T (the ECGSYN idea of McSharry et al. 2003,
rendered directly in time). A sinus rhythm with heart-rate variability is interrupted by premature
supraventricular (SVEB, label 1) and ventricular (VEB, label 2) beats at a per-patient rate; a few
normal beats are distorted and marked unknown (label 3). Baseline wander, white noise, motion
artefacts and a per-record gain (the R amplitude, 0.8-2.5 mV) are added on top.
"""
from __future__ import annotations

import numpy as np
from scipy.special import ndtri

SOURCE_DBS = ("mitdb_npy", "svdb_npy", "incartdb_npy")
SAMPLING_RATE = 128  # Hz

EDGE_S = 0.3  # no beat closer than this to either end of a record
WINDOW_S = (-0.45, 0.75)  # extent of one rendered beat around its R peak
SVEB_PER_CYCLE, VEB_PER_CYCLE = 0.052, 0.075  # cohort means of the per-cycle ectopic chances
UNK_RATE = 0.0012  # chance that a normal beat is distorted and labelled unknown


def _patient(rng: np.random.Generator) -> dict:
    """Draw one patient: normal and ventricular wave templates (5, 3), rows P, Q, R, S, T of
    (offset_s, amplitude, width_s) relative to an R amplitude of 1 at RR = 1 s, plus rhythm,
    heart-rate variability and gain_mv (the R amplitude in mV).
    """
    u = rng.uniform
    normal = np.array([
        [-u(0.16, 0.22), u(0.08, 0.20), u(0.018, 0.030)],
        [-u(0.025, 0.035), -u(0.03, 0.15), u(0.008, 0.012)],
        [0.0, 1.0, u(0.009, 0.014)],
        [u(0.025, 0.040), -u(0.08, 0.30), u(0.008, 0.014)],
        [u(0.24, 0.30), u(0.15, 0.40), u(0.04, 0.06)],
    ])
    polarity = rng.choice([-1.0, 1.0])  # of the VEB focus's main deflection
    ventricular = np.array([
        [0.0, 0.0, 0.02],
        [-0.04, 0.0, 0.01],
        [0.0, polarity * u(1.2, 1.8), normal[2, 2] * u(2.0, 3.0)],
        [u(0.05, 0.07), -polarity * u(0.15, 0.35), u(0.02, 0.03)],
        [u(0.28, 0.34), -polarity * u(0.35, 0.6), u(0.06, 0.08)],
    ])
    hrv = np.array([[u(0.02, 0.05), u(0.2, 0.3)], [u(0.02, 0.05), u(0.04, 0.12)]])  # RSA, LF
    return {
        "normal": normal, "ventricular": ventricular, "sveb_p_factor": u(-0.8, 0.4),
        "rr_s": 60.0 / u(55, 95), "hrv": np.column_stack([hrv, u(0, 2 * np.pi, 2)]),
        "jitter_s": u(0.005, 0.015), "gain_mv": u(0.8, 2.5),
        "p_bigeminy": 0.1 * (rng.random() < 0.2),
    }


def _cohort_rates(rng: np.random.Generator, n_records: int) -> np.ndarray:
    """Per-record chance of an SVEB and a VEB per sinus cycle, shape (n_records, 2).

    Log-normal multipliers mix a shared and a per-class stratified normal quantile (so a record with
    few SVEBs tends to have few VEBs) and are scaled to mean 1: most records have few ectopic beats,
    a few have many, and the cohort mean stays near the target even for few records.
    """
    strata = np.stack([rng.permutation(n_records) for _ in range(3)], axis=1)
    z = ndtri((strata + rng.random((n_records, 3))) / n_records)
    multiplier = np.exp(0.8 * z[:, :1] + 0.6 * z[:, 1:])
    multiplier /= multiplier.mean(axis=0)
    return np.minimum(multiplier * [SVEB_PER_CYCLE, VEB_PER_CYCLE], 0.3)


def _sinus_rr(rng: np.random.Generator, patient: dict, t_s: float) -> float:
    """Sinus RR interval (s) following a beat at t_s: the mean RR modulated by respiratory sinus
    arrhythmia and a slow LF wave, plus Gaussian jitter.
    """
    amp, freq_hz, phase = patient["hrv"].T
    modulation = np.sum(amp * np.sin(2 * np.pi * freq_hz * t_s + phase))
    return patient["rr_s"] * (1 + modulation) + patient["jitter_s"] * rng.standard_normal()


def _rhythm(rng: np.random.Generator, patient: dict, rates: np.ndarray,
            duration_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Beat times_s (m,) and int64 labels (m,) in {0, 1, 2}, given per-cycle (SVEB, VEB) rates (2,).

    An SVEB comes at 60-80 % of the sinus RR and resets the sinus node; a VEB comes at 55-75 % and
    is followed by a full compensatory pause. Bigeminy runs alternate normal beats and VEBs.
    """
    margin_s = EDGE_S + 1 / SAMPLING_RATE  # so that beats stay EDGE_S inside after rounding
    times, labels = [margin_s + rng.uniform(0, patient["rr_s"])], [0]
    bigeminy_left = 0
    while True:
        t, rr, draw = times[-1], _sinus_rr(rng, patient, times[-1]), rng.random()
        if bigeminy_left > 0 or draw < rates[1]:
            restart = bigeminy_left == 0 and rng.random() < patient["p_bigeminy"]
            bigeminy_left = int(rng.integers(3, 15)) if restart else max(bigeminy_left - 1, 0)
            new = [(t + rr * rng.uniform(0.55, 0.75), 2), (t + 2 * rr, 0)]
        elif draw < rates[0] + rates[1]:
            ectopic = t + rr * rng.uniform(0.6, 0.8)
            new = [(ectopic, 1), (ectopic + rr * rng.uniform(1.0, 1.1), 0)]
        else:
            new = [(t + rr, 0)]
        for time_s, label in new:
            if time_s > duration_s - margin_s:
                return np.array(times), np.array(labels, dtype=np.int64)
            times.append(time_s)
            labels.append(label)


def _beat_waves(rng: np.random.Generator, patient: dict, labels: np.ndarray,
                rr_prev_s: np.ndarray) -> np.ndarray:
    """Per-beat waves (m, 5, 3) of (offset_s, amplitude, width_s) for labels (m,) and preceding
    RR intervals rr_prev_s (m,). T offset and width scale with sqrt(RR) (Bazett).
    """
    m = len(labels)
    waves = np.repeat(patient["normal"][None], m, axis=0)
    sveb, veb, unk = labels == 1, labels == 2, labels == 3
    waves[sveb, 0] *= [rng.uniform(0.7, 0.9), patient["sveb_p_factor"], 1.0]
    waves[veb] = patient["ventricular"]
    waves[unk, :, 2] *= rng.uniform(1.3, 1.8, (unk.sum(), 1))
    waves[unk, 2:, 1] *= rng.uniform(0.3, 0.6, (unk.sum(), 1))
    waves[:, :, 1] *= 1 + 0.03 * rng.standard_normal((m, 5))
    waves[:, 4, ::2] *= np.sqrt(np.clip(rr_prev_s, 0.3, 2.0))[:, None]
    return waves


def _render(locs: np.ndarray, waves: np.ndarray, n: int) -> np.ndarray:
    """Clean trace (n,), relative units: each beat's Gaussians (waves (m, 5, 3)) summed around its
    R-peak sample in locs (m,).
    """
    k = np.arange(round(WINDOW_S[0] * SAMPLING_RATE), round(WINDOW_S[1] * SAMPLING_RATE) + 1)
    offset_s, amp, width_s = (a[:, :, None] for a in np.moveaxis(waves, -1, 0))
    values = (amp * np.exp(-0.5 * ((k / SAMPLING_RATE - offset_s) / width_s) ** 2)).sum(axis=1)
    index = locs[:, None] + k
    inside = (index >= 0) & (index < n)
    return np.bincount(index[inside], weights=values[inside], minlength=n)


def _noise(rng: np.random.Generator, n: int, unk_locs: np.ndarray) -> np.ndarray:
    """Noise (n,) in mV: baseline wander below 0.5 Hz, white noise, motion artefacts in about a
    third of the records, and a heavy noise burst around each unknown beat (unk_locs, samples).
    """
    t_s = np.arange(n) / SAMPLING_RATE
    amp, freq_hz, phase = rng.uniform([[0.03], [0.05], [0]], [[0.1], [0.45], [2 * np.pi]], (3, 3))
    noise = (amp[:, None] * np.sin(2 * np.pi * freq_hz[:, None] * t_s + phase[:, None])).sum(0)
    noise += rng.uniform(0.02, 0.05) * rng.standard_normal(n)
    n_artefacts = rng.integers(1, 4) if rng.random() < 0.35 else 0
    for _ in range(n_artefacts):
        length = int(rng.uniform(0.5, 2.0) * SAMPLING_RATE)
        start = rng.integers(0, n - length)
        wobble = np.sin(2 * np.pi * rng.uniform(1, 4) * t_s[:length] + rng.uniform(0, 2 * np.pi))
        burst = wobble + 0.3 * rng.standard_normal(length)
        noise[start:start + length] += rng.uniform(0.2, 0.6) * np.hanning(length) * burst
    half = int(0.25 * SAMPLING_RATE)
    for loc in unk_locs:
        lo, hi = max(loc - half, 0), min(loc + half, n)
        noise[lo:hi] += rng.uniform(0.1, 0.2) * rng.standard_normal(hi - lo)
    return noise


def _record(rng: np.random.Generator, rates: np.ndarray, minutes: float) -> dict:
    """One record's signal (mV), beat_locs and beat_labels (see make_demo_ecg)."""
    n = round(minutes * 60 * SAMPLING_RATE)
    patient = _patient(rng)
    times_s, labels = _rhythm(rng, patient, rates, n / SAMPLING_RATE)
    labels[(labels == 0) & (rng.random(len(labels)) < UNK_RATE)] = 3
    locs = np.round(times_s * SAMPLING_RATE).astype(np.int64)
    rr_prev_s = np.diff(times_s, prepend=times_s[0] - patient["rr_s"])
    clean = _render(locs, _beat_waves(rng, patient, labels, rr_prev_s), n)
    signal = patient["gain_mv"] * clean + _noise(rng, n, locs[labels == 3])
    return {"signal": signal.astype(np.float32), "beat_locs": locs, "beat_labels": labels}


def make_demo_ecg(n_records: int = 24, minutes: float = 5.0, seed: int = 0) -> list[dict]:
    """Synthetic cohort, one dict per record with keys patient_id str ("d000", ...), source_db str
    (cycled over SOURCE_DBS), sampling_rate int (128), signal float32 (n,) in mV, beat_locs int64
    (m,) strictly increasing R-peak samples and beat_labels int64 (m,) in {0, 1, 2, 3}.

    Deterministic in (n_records, minutes, seed); each record draws from its own child generator.
    """
    if minutes * 60 < 5:
        raise ValueError(f"records must last at least 5 s, got minutes={minutes}")
    cohort_seq, *record_seqs = np.random.SeedSequence(seed).spawn(n_records + 1)
    rates = _cohort_rates(np.random.default_rng(cohort_seq), n_records)
    records = []
    for i, seq in enumerate(record_seqs):
        record = _record(np.random.default_rng(seq), rates[i], minutes)
        records.append({"patient_id": f"d{i:03d}", "source_db": SOURCE_DBS[i % len(SOURCE_DBS)],
                        "sampling_rate": SAMPLING_RATE, **record})
    return records
