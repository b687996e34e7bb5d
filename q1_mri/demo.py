"""Synthetic T1/T2 brain slices in the schema of the hub set `dpelacani/mri-t1-t2-2D-sliced-64`.

Each patient is a skull-stripped 64^3 head phantom: a randomly deformed ellipsoidal brain with
white matter, a folded cortical ribbon and deep grey nuclei, CSF (outer layer, sulci, midline
fissure, lateral ventricles) and, in about 40 % of patients, a tumour (solid rim around a
necrotic core) inside a larger vasogenic oedema. Intensities follow the spin-echo signal
equation with 1.5 T relaxation times, then get partial-volume blur, a smooth bias field, Rician
noise and a per-patient gain (validation ~2x brighter, as in the hub data). This lets the
T1->T2 pipeline, its plots and metrics run offline on realistic contrast, small and deterministic.

Orientation as in the real data (../shared/data/mri/README.md, the BraTS array convention
+i = left, +j = posterior, +k = superior): axial slices vol[:, :, k] have rows running
right->left and columns anterior->posterior; coronal vol[:, k, :] rows right->left, columns
inferior->superior; sagittal vol[k, :, :] rows anterior->posterior, columns inferior->superior
(superior toward the right). Slices of each view are in slice order.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

VIEWS = ("axial", "coronal", "sagittal")
SLICE_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}   # of a volume in the BraTS convention
TISSUES = ("background", "wm", "gm", "csf", "oedema", "tumour", "necrosis")  # label = index
# Per-tissue T1 [ms], T2 [ms] and relative proton density at ~1.5 T (background: PD 0, no signal).
T1_MS = np.array([1.0, 600.0, 950.0, 4000.0, 1600.0, 1200.0, 2500.0])
T2_MS = np.array([1.0, 80.0, 100.0, 2000.0, 250.0, 140.0, 500.0])
PD = np.array([0.0, 0.70, 0.80, 1.00, 0.90, 0.85, 0.95])
SEQUENCES = {"t1": (500.0, 15.0), "t2": (4000.0, 100.0)}  # (TR, TE) in ms
GRID = 64  # voxels per axis; every slice is GRID x GRID
BASE_GAIN = 3000.0  # scanner gain of the training split; validation uses twice this
TUMOUR_FRACTION = 0.4  # share of patients with a tumour
MIN_BRAIN_FRACTION = 0.05  # slices with fewer brain pixels are never sampled


def _smooth_field(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    """`n` smooth random fields, shape (n, GRID, GRID, GRID), unit standard deviation each.

    White noise blurred by a Gaussian of `sigma` voxels (cut at 2 sigma for speed); sigma sets
    the wavelength.
    """
    noise = rng.standard_normal((n, GRID, GRID, GRID), dtype=np.float32)
    field = ndimage.gaussian_filter(noise, (0, sigma, sigma, sigma), truncate=2.0)
    return field / field.std(axis=(1, 2, 3), keepdims=True)


def _patient_coords(rng: np.random.Generator) -> np.ndarray:
    """Brain-frame coordinates (z, y, x) of every voxel, shape (3, GRID, GRID, GRID).

    Axis 0 runs superior->inferior, 1 anterior->posterior, 2 left->right, all in [-1, 1] before
    the per-patient shift, scale, small rotation and smooth elastic deformation.
    """
    axis = np.linspace(1.0, -1.0, GRID, dtype=np.float32)
    grid = np.stack(np.meshgrid(axis, axis, -axis, indexing="ij"))
    rotation = Rotation.from_rotvec(rng.normal(0.0, 0.06, 3)).as_matrix().astype(np.float32)
    shift = rng.normal(0.0, 0.03, 3).astype(np.float32)[:, None, None, None]
    scale = rng.uniform(0.92, 1.08, 3).astype(np.float32)[:, None, None, None]
    coords = np.einsum("ij,j...->i...", rotation, grid - shift) / scale
    return coords + 0.05 * _smooth_field(rng, 3, 8.0)


def _tumour_distance(rng: np.random.Generator, coords: np.ndarray) -> np.ndarray:
    """Irregular normalised distance to a random tumour centre (1 = core edge), (GRID,)*3."""
    direction = rng.normal(size=3)
    centre = direction / np.linalg.norm(direction) * rng.uniform(0.15, 0.7) * [0.6, 0.85, 0.7]
    dist = np.sqrt(((coords - centre[:, None, None, None].astype(np.float32)) ** 2).sum(0))
    return dist / rng.uniform(0.09, 0.17) + 0.25 * _smooth_field(rng, 1, 3.0)[0]


def _labels(rng: np.random.Generator, has_tumour: bool) -> np.ndarray:
    """Hard tissue labels (indices into TISSUES) of one patient, uint8 (GRID, GRID, GRID)."""
    z, y, x = coords = _patient_coords(rng)
    r = np.sqrt((x / 0.74) ** 2 + (y / 0.9) ** 2 + (z / np.where(z > 0, 0.72, 0.58)) ** 2)
    folds = _smooth_field(rng, 1, 2.5)[0]
    ventricle_size = rng.uniform(0.8, 1.4)
    brain = r < 1.0
    labels = brain.astype(np.uint8)  # white matter
    labels[brain & (r + 0.1 * folds > 0.7)] = 2  # folded cortical ribbon
    fissure = (np.abs(x) < 0.03) & ((y / 0.5) ** 2 + ((z - 0.05) / 0.3) ** 2 > 1.0)
    sulci = (r > 0.8) & (folds > 1.0)
    labels[brain & ((r > rng.uniform(0.93, 0.96)) | sulci | fissure)] = 3
    side = np.abs(x)  # deep structures are mirrored in both hemispheres
    deep_gm = ((side - 0.25) / 0.1) ** 2 + ((y + 0.02) / 0.2) ** 2 + ((z + 0.02) / 0.13) ** 2
    labels[deep_gm < 1.0] = 2
    arc = z - 0.1 + 0.6 * y**2  # lateral ventricles bend down at the front and back
    ventricle = ((side - 0.11) / 0.08) ** 2 + (y / 0.36) ** 2 + (arc / 0.12) ** 2
    labels[ventricle < ventricle_size**2] = 3
    if has_tumour:
        dist = _tumour_distance(rng, coords)
        labels[(dist < rng.uniform(1.8, 2.6)) & (labels == 1)] = 4  # oedema spreads in WM
        labels[brain & (dist < 1.0)] = 5
        labels[brain & (dist < rng.uniform(0.3, 0.6))] = 6
    return labels


def _tissue_signal(rng: np.random.Generator, tr_ms: float, te_ms: float) -> np.ndarray:
    """Spin-echo signal PD (1 - exp(-TR/T1)) exp(-TE/T2) per tissue, with ~5 % patient jitter."""
    t1, t2, pd = (p * np.exp(rng.normal(0.0, 0.05, p.shape)) for p in (T1_MS, T2_MS, PD))
    return pd * (1.0 - np.exp(-tr_ms / t1)) * np.exp(-te_ms / t2)


def _acquire(rng: np.random.Generator, labels: np.ndarray, gain: float) -> dict[str, np.ndarray]:
    """Simulated raw T1w and T2w volumes, float32 (GRID,)*3, exactly 0 outside the brain.

    Partial volume: the per-voxel signal is Gaussian-blurred and renormalised by the blurred
    brain mask, so tissue edges mix but the skull-stripping edge does not darken.
    """
    mask = labels > 0
    mask_weight = ndimage.gaussian_filter(mask.astype(np.float32), 0.6)
    volumes = {}
    for name, (tr_ms, te_ms) in SEQUENCES.items():
        signal = _tissue_signal(rng, tr_ms, te_ms).astype(np.float32)[labels]
        signal = ndimage.gaussian_filter(signal, 0.6) / np.maximum(mask_weight, 1e-6)
        bias = _smooth_field(rng, 1, 10.0)[0]
        bias = 1.0 + 0.15 * bias / np.abs(bias).max()
        signal *= bias * gain * rng.uniform(0.9, 1.1)  # per-patient, per-contrast gain
        sigma = rng.uniform(0.01, 0.03) * np.median(signal[mask])
        noise = rng.standard_normal((2, *labels.shape), dtype=np.float32) * sigma
        volumes[name] = np.where(mask, np.hypot(signal + noise[0], noise[1]), 0).astype(np.float32)
    return volumes


def _slice_indices(mask: np.ndarray, axis: int, n: int) -> np.ndarray:
    """`n` slice indices along `axis`, evenly spread over slices with >= 5 % brain pixels."""
    other = tuple(a for a in range(3) if a != axis)
    candidates = np.flatnonzero(mask.mean(axis=other) >= MIN_BRAIN_FRACTION)
    return candidates[np.linspace(0, len(candidates) - 1, n).round().astype(int)]


def to_brats(volume: np.ndarray) -> np.ndarray:
    """A phantom volume (axes superior->inferior, anterior->posterior, left->right) in the
    BraTS array convention (axes right->left, anterior->posterior, inferior->superior)."""
    return np.ascontiguousarray(volume.transpose(2, 1, 0)[::-1, :, ::-1])


def _patient_slices(
    rng: np.random.Generator, has_tumour: bool, gain: float, slices_per_view: int
) -> dict[str, np.ndarray]:
    """All slices of one patient: view (M,) str and t1, t2, labels (M, 1, GRID, GRID)."""
    labels = _labels(rng, has_tumour)
    volumes = {k: to_brats(v) for k, v in {**_acquire(rng, labels, gain), "labels": labels}.items()}
    columns: dict[str, list[np.ndarray]] = {"view": [], **{k: [] for k in volumes}}
    for view in VIEWS:
        axis = SLICE_AXIS[view]
        idx = _slice_indices(volumes["labels"] > 0, axis, slices_per_view)
        columns["view"].append(np.full(len(idx), view))
        for key, vol in volumes.items():
            columns[key].append(np.moveaxis(np.take(vol, idx, axis=axis), axis, 0)[:, None])
    return {k: np.concatenate(v) for k, v in columns.items()}


def make_demo_mri(
    n_train: int = 16,
    n_val: int = 4,
    slices_per_view: int = 20,
    seed: int = 0,
    with_labels: bool = False,
) -> dict[str, dict[str, np.ndarray]]:
    """Return {"train": split, "validation": split}; each split is a dict of aligned arrays:
    patient_id (N,) str (e.g. "demo-000"), split (N,) str, view (N,) str in VIEWS,
    t1 (N, 1, 64, 64) float32, t2 (N, 1, 64, 64) float32 -- RAW intensities (not normalised).

    N = patients * 3 * slices_per_view; both splits need at least one patient. With
    `with_labels` each split also carries the hard tissue map, labels (N, 1, 64, 64) uint8
    indexing TISSUES (0 = outside the brain), for tests and figures; it is not in the hub schema.
    """
    if n_train < 1 or n_val < 1:
        raise ValueError(f"need n_train >= 1 and n_val >= 1, got {n_train} and {n_val}")
    n_total = n_train + n_val
    rng = np.random.default_rng(seed)
    tumour = rng.permutation(n_total) < round(TUMOUR_FRACTION * n_total)
    patient_rngs = rng.spawn(n_total)
    splits = {}
    for split, ids in (("train", range(n_train)), ("validation", range(n_train, n_total))):
        gain = BASE_GAIN * (2.0 if split == "validation" else 1.0)
        parts = [_patient_slices(patient_rngs[i], tumour[i], gain, slices_per_view) for i in ids]
        n_slices = [len(p["view"]) for p in parts]
        data = {
            "patient_id": np.repeat([f"demo-{i:03d}" for i in ids], n_slices),
            "split": np.full(sum(n_slices), split),
            **{k: np.concatenate([p[k] for p in parts]) for k in parts[0]},
        }
        if not with_labels:
            del data["labels"]
        splits[split] = data
    return splits
