"""Q1 figures (EDA and evaluation) on tiny synthetic data: titles and axis labels everywhere,
distinct patients in the pair grid, shared raw scales and the fixed normalised one, the
curves' inner-validation and training lines, the display orientation and the worst-slice
filter."""
from __future__ import annotations

from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from q1_mri import display, eda, figures  # noqa: E402
from q1_mri.data import VIEWS, Slices, normalise  # noqa: E402
from q1_mri.eval import summarise  # noqa: E402

SIZE = 24          # pixels per side of the synthetic slices
PER_VIEW = 4       # slices per patient and view
METRICS = ("masked_ssim", "masked_psnr", "masked_mae")


def synthetic(n_patients: int, seed: int = 0) -> Slices:
    """n_patients x 3 views x PER_VIEW slices: a disc of brain whose radius varies with the
    slice, raw intensities with a different gain per patient (T1 ~ 300 g, T2 ~ 600 g)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2
    t1, t2, pid, view = [], [], [], []
    for p in range(n_patients):
        gain = 1.0 + p
        for v in VIEWS:
            for k in range(PER_VIEW):
                disc = (np.hypot(yy, xx) < 3 + 2 * k).astype(np.float32)
                tissue = disc * (0.5 + 0.5 * rng.random((SIZE, SIZE)))
                t1.append(300 * gain * tissue)
                t2.append(600 * gain * tissue[::-1])
                pid.append(f"Very-Long_Patient-Identifier-{p:03d}")
                view.append(v)
    n = len(pid)
    return Slices(np.array(t1, np.float16)[:, None], np.array(t2, np.float16)[:, None],
                  np.array(pid), np.array(view), 0, np.arange(n), np.full(n, "train"))


def check_labelled(fig: plt.Figure) -> None:
    """A suptitle; image panels titled; colour bars labelled; every other axis with data has an
    x and a y label."""
    assert fig._suptitle is not None and fig._suptitle.get_text().strip()
    for ax in fig.axes:
        if not ax.axison:
            continue
        if hasattr(ax, "_colorbar"):
            assert (ax.get_ylabel() or ax.get_xlabel()).strip(), "unlabelled colour bar"
        elif ax.images:
            assert ax.get_title().strip(), "untitled image panel"
        else:
            assert ax.get_xlabel().strip() and ax.get_ylabel().strip(), ax.get_title()
            assert ax.get_title().strip()


def image_axes(fig: plt.Figure) -> list[plt.Axes]:
    return [ax for ax in fig.axes if ax.images and not hasattr(ax, "_colorbar")]


# ---------------------------------------------------------------- EDA

def test_pick_pairs_takes_distinct_patients_when_there_are_enough():
    split = synthetic(10)
    for view in VIEWS:
        chosen = eda.pick_pairs(split, view)
        assert len(chosen) == eda.N_PAIRS and (split.view[chosen] == view).all()
        assert len(set(split.patient_id[chosen])) == eda.N_PAIRS


def test_pick_pairs_with_few_patients_takes_each_before_repeating():
    split = synthetic(3)
    chosen = eda.pick_pairs(split, "coronal")
    assert len(chosen) == eda.N_PAIRS                            # 3 x 4 slices are enough
    assert len(set(chosen.tolist())) == len(chosen)              # no slice twice
    counts = np.unique(split.patient_id[chosen], return_counts=True)[1]
    assert len(counts) == 3 and counts.max() - counts.min() <= 1   # round robin over patients


def test_pick_pairs_prefers_well_filled_slices():
    split = synthetic(10)
    fill = split.brain_mask.reshape(len(split), -1).mean(1)
    chosen = eda.pick_pairs(split, "axial")
    for i in chosen:
        own = (split.patient_id == split.patient_id[i]) & (split.view == "axial")
        assert fill[i] >= np.median(fill[own])


def test_raw_grid_shares_one_scale_per_contrast_and_normalised_grid_is_zero_to_one():
    split = synthetic(10)
    picks = {v: eda.pick_pairs(split, v) for v in VIEWS}
    fig = eda.plot_pairs(split.t1, split.t2, split, picks, "raw scanner units")
    check_labelled(fig)
    clims = {"T1": set(), "T2": set()}
    for ax in image_axes(fig):
        contrast = "T1" if "T1" in ax.get_title() else "T2"
        clims[contrast].add(ax.images[0].get_clim())
    assert len(clims["T1"]) == 1 and len(clims["T2"]) == 1
    assert clims["T1"] != clims["T2"]                     # T2 runs on about twice the T1 scale
    assert all(c[0] == 0 and c[1] > 1 for s in clims.values() for c in s)
    bars = [ax.get_ylabel() for ax in fig.axes if hasattr(ax, "_colorbar")]
    assert len(bars) == 2 * len(VIEWS) and all("raw scanner units" in b for b in bars)
    # full patient ids in the titles (wrapped at '-' or '_', never cut)
    titles = " ".join(ax.get_title().replace("\n", "") for ax in image_axes(fig))
    assert all(p in titles for p in set(split.patient_id[np.concatenate(list(picks.values()))]))
    plt.close(fig)

    t1n, t2n, _ = normalise(split)
    fig = eda.plot_pairs(t1n, t2n, split, picks, normalised=True)
    check_labelled(fig)
    assert {ax.images[0].get_clim() for ax in image_axes(fig)} == {(0.0, 1.0)}
    bars = [ax.get_ylabel().replace("\n", " ") for ax in fig.axes if hasattr(ax, "_colorbar")]
    assert all("normalised (per-volume brain p99.5)" in b for b in bars)
    plt.close(fig)


@pytest.mark.parametrize("log_y", [True, False])
def test_histograms_show_the_full_range(log_y):
    split = synthetic(4)
    other = synthetic(2, seed=1)
    values = {(s, c): eda.brain_values(getattr(d, c.lower()), d.brain_mask)
              for s, d in (("train", split), ("validation", other)) for c in ("T1", "T2")}
    background = {"train": 0.7, "validation": 0.6}
    fig = eda.plot_histograms(values, background, "raw intensity (scanner units)", log_y=log_y)
    check_labelled(fig)
    for ax, contrast in zip(fig.axes, ("T1", "T2")):
        top = max(float(values[(s, contrast)].max()) for s in background)
        assert ax.get_xlim()[1] >= top
        assert ax.get_yscale() == ("log" if log_y else "linear")
        if not log_y:
            assert "exact zeros" in ax.get_title()
    plt.close(fig)


def test_brain_values_keeps_the_extremes_when_subsampling():
    images = np.arange(1000, dtype=np.float32).reshape(10, 1, 10, 10)
    values = eda.brain_values(images, images > 0, max_n=7)
    assert len(values) < 50 and values.max() == 999 and values.min() == 1


# ---------------------------------------------------------------- evaluation figures

@pytest.fixture(scope="module")
def evaluated():
    """A truth, the pooled out-of-fold rows of four methods and metrics.json's methods."""
    slices = synthetic(6)
    truth = SimpleNamespace(slices=slices, mask=slices.brain_mask)
    rng = np.random.default_rng(0)
    n = len(slices)
    idx = np.arange(n)
    history = {f"fold{f}": [{"epoch": float(e), "slices_seen": 500.0 * e, "train_loss": 1 / e,
                             **{f"{p}{k}": 0.5 + 0.05 * e for p in ("val_", "train_")
                                for k in METRICS}} for e in range(1, 6)] for f in range(2)}
    oof, methods = {}, {}
    t2 = slices.t2.astype(np.float32) / 1000
    for k, name in enumerate(("unet", "plain", "identity", "linear")):
        noise = (0.3 if name == "identity" else 0.05) * rng.random(t2.shape)
        scores = {"masked_ssim": 0.9 - 0.1 * k + 0.02 * rng.standard_normal(n),
                  "masked_psnr": 25 - k + rng.standard_normal(n),
                  "masked_mae": 0.05 + 0.01 * k + 0.001 * rng.random(n)}
        oof[name] = {"idx": idx, "pred": (t2 + noise).astype(np.float16), "scores": scores,
                     "history": history if name in ("unet", "plain") else {}}
        methods[name] = {**summarise(scores, slices.patient_id, slices.view), "problems": []}
    result = {"methods": methods, "paired": {"reference": "plain"}, "chosen_model": "unet"}
    return truth, oof, result


def test_write_all_figures_are_titled_and_labelled(q1_evaluated, monkeypatch):
    from common.io import read_json
    from q1_mri.data import load_mri, pool, resolve_source
    from q1_mri.truth import Truth

    root, _ = q1_evaluated
    saved = {}

    def capture(fig, path, title, source_label):
        assert title.strip()
        check_labelled(fig)
        saved[path.name] = title
        plt.close(fig)

    monkeypatch.setattr(figures, "save_figure", capture)
    demo = root / "q1" / "demo"
    figures.write_all(demo, Truth(pool(load_mri(resolve_source("demo")))),
                      read_json(demo / "metrics.json"), "demo")
    assert set(saved) == {"curves.png", "examples.png", "worst_slices.png", "per_patient.png"}
    assert f"{100 * figures.MIN_WORST_FILL:.0f} %" in saved["worst_slices.png"]


def test_curves_show_inner_validation_and_training_against_slices_seen(evaluated):
    _, oof, _ = evaluated
    fig = figures.plot_curves({"unet": oof["unet"]["history"]})
    check_labelled(fig)
    ssim_ax = fig.axes[1]
    styles = {ln.get_label(): ln.get_linestyle() for ln in ssim_ax.lines}
    assert styles == {"unet inner val.": "-", "unet train": "--"}
    np.testing.assert_allclose(ssim_ax.lines[0].get_xdata(), [0.5, 1.0, 1.5, 2.0, 2.5])
    assert "thousands" in ssim_ax.get_xlabel()
    plt.close(fig)


def test_example_rows_name_patient_view_and_each_models_ssim(evaluated):
    truth, oof, _ = evaluated
    rows = np.array([0, 5, len(truth.slices) - 1])
    models = ["unet", "linear"]
    scores = {m: oof[m]["scores"]["masked_ssim"][rows] for m in models}
    mask = truth.mask[rows]
    s = truth.slices
    fig = figures.plot_slices(s, rows, figures.scaled(s.t1[rows], mask),
                              figures.scaled(s.t2[rows], mask),
                              {m: figures.scaled(oof[m]["pred"][rows], mask) for m in models},
                              scores)
    fig.suptitle("examples")
    check_labelled(fig)
    grid = np.array(image_axes(fig)).reshape(len(rows), -1)
    assert [ax.get_title() for ax in grid[0]] == ["T1 (input)", "true T2", "unet", "|error| unet",
                                                  "linear", "|error| linear"]
    for r, i in enumerate(rows):
        label = grid[r, 0].get_ylabel()
        assert truth.slices.patient_id[i] in label.replace("\n", "")
        assert truth.slices.view[i] in label
        for m in models:
            assert f"{m} SSIM {scores[m][r]:.3f}" in label
    bars = [ax.get_ylabel() for ax in fig.axes if hasattr(ax, "_colorbar")]
    assert any("|prediction - true T2|" in b for b in bars)
    plt.close(fig)


def test_worst_slices_leave_out_near_empty_slices(evaluated):
    truth, oof, _ = evaluated
    rows = oof["unet"]["idx"]
    score = oof["unet"]["scores"]["masked_ssim"].copy()
    fill = truth.slices.brain_mask[rows].reshape(len(rows), -1).mean(1)
    score[fill < figures.MIN_WORST_FILL] = -1          # the emptiest slices score worst
    worst = figures.pick_worst(truth.slices, rows, score)
    assert len(worst) and (fill[worst] >= figures.MIN_WORST_FILL).all()
    assert (fill < figures.MIN_WORST_FILL).any()       # the filter had something to remove


def test_display_orientation_puts_superior_and_anterior_up():
    stored = np.zeros((4, 6))
    stored[:, -1] = 1                  # coronal/sagittal: last column = most superior
    for view in ("coronal", "sagittal"):
        shown = display.oriented(stored, view)
        assert (shown[0] == 1).all() and shown.sum() == stored.sum()
    axial = np.zeros((4, 6))
    axial[:, 0] = 1                    # axial: first column = most anterior
    assert (display.oriented(axial, "axial")[0] == 1).all()
    assert display.wrap_id("BrainLesion-preprocessed_case").replace("\n", "") == \
        "BrainLesion-preprocessed_case"
