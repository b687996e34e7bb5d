"""Q2 figures on tiny synthetic inputs: titles, labelled axes, the log ROC axis, the PR
prevalence line, integer epoch ticks, and excerpt labels that are letters and never collide."""
from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from q2_ecg import eda, figures  # noqa: E402
from q2_ecg.beats import WINDOW  # noqa: E402
from q2_ecg.data import SAMPLING_RATE, ECGRecords, assemble  # noqa: E402

RATE = SAMPLING_RATE


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _record(name: str, db: str, rng, crowded: bool) -> dict:
    """~70 beats at 0.8 s, every third one abnormal; `crowded`: every abnormal beat also gets a
    second annotation 4 samples later (doubled annotations), so neighbouring letters would
    overlap if they shared a row."""
    locs, labels = [], []
    for k in range(70):
        loc = RATE + int(0.8 * RATE * k)
        label = (0, 1, 2)[k % 3] if k % 3 else 0
        locs.append(loc)
        labels.append(label)
        if crowded and label:
            locs.append(loc + 4)
            labels.append(3 - label)
    n = locs[-1] + RATE
    signal = 0.05 * rng.standard_normal(n)
    signal[np.array(locs)] += 1.0
    return {"patient_id": name, "source_db": db, "sampling_rate": RATE,
            "signal": signal.astype(np.float32), "beat_locs": np.array(locs),
            "beat_labels": np.array(labels)}


@pytest.fixture(scope="module")
def records() -> ECGRecords:
    rng = np.random.default_rng(0)
    rows = [_record(f"r{i}", db, rng, crowded=i % 2 == 0)
            for i, db in enumerate(("mitdb_npy", "svdb_npy", "incartdb_npy", "mitdb_npy",
                                    "svdb_npy"))]
    return ECGRecords(**assemble(rows))


def _oof(rng, n: int = 600, dbs=("mitdb_npy", "svdb_npy")) -> dict:
    y = rng.choice(3, n, p=(0.8, 0.1, 0.1))
    p_abn = np.clip(0.6 * (y > 0) + 0.5 * rng.random(n), 0, 1)
    pred = np.where(p_abn > 0.5, np.where(rng.random(n) < 0.5, 1, 2), 0)
    return {"y": y, "pred": pred, "p_abnormal": p_abn, "record": rng.choice(["a", "b", "c"], n),
            "db": rng.choice(list(dbs), n), "beat_loc": rng.integers(0, 10_000, n),
            "fold": rng.integers(0, 2, n)}


def _signal_of(i: int) -> dict:
    t = np.arange(WINDOW)
    return {"window": np.sin(t / 9.0), "template": np.cos(t / 9.0), "rr_prev_s": 0.45,
            "rr_next_s": 1.2, "rr_sinus_s": 0.8}


def _histories() -> dict:
    rows = lambda s: [{"epoch": float(e), "beats_seen": 30_000.0 * e, "train_loss": 1 / e + s,  # noqa: E731
                       "val_mitdb_SVEB_f1": 0.3 + s, "val_mitdb_VEB_f1": 0.8,
                       "val_svdb_SVEB_f1": 0.6, "val_svdb_VEB_f1": 0.7 - s,
                       "val_incartdb_SVEB_f1": float("nan"), "val_incartdb_VEB_f1": 0.9}
                      for e in (1, 2, 3)]
    return {"resnet": {"fold0": rows(0), "fold1": rows(0.1)}, "context": {"fold0": rows(0.2)}}


def _has_data(ax) -> bool:
    """Axes that show data (a colour bar is the legend of another axes)."""
    return ax.get_label() != "<colorbar>" and bool(ax.lines or ax.images or ax.patches
                                                    or ax.collections)


def _label(ax, which: str) -> str:
    """The axes' x or y label, else that of an axes sharing the axis (a shared column's label
    sits on its bottom panel only)."""
    get = lambda a: getattr(a, f"get_{which}label")()  # noqa: E731
    shared = getattr(ax, f"get_shared_{which}_axes")().get_siblings(ax)
    return get(ax) or next((get(a) for a in shared if get(a)), "")


def assert_titled_and_labelled(fig: plt.Figure, name: str) -> None:
    """A suptitle, and on every axes holding data a title and labelled x and y axes (on the
    axes, on one sharing the axis, or as the figure's supxlabel / supylabel)."""
    assert fig._suptitle is not None and fig._suptitle.get_text().strip(), name
    supx = fig._supxlabel.get_text() if fig._supxlabel else ""
    supy = fig._supylabel.get_text() if fig._supylabel else ""
    axes = [ax for ax in fig.axes if _has_data(ax)]
    assert axes
    for ax in axes:
        assert ax.get_title().strip(), f"{name}: an axes without a title"
        assert (_label(ax, "x") or supx).strip(), f"{name}, {ax.get_title()}: no x label"
        assert (_label(ax, "y") or supy).strip(), f"{name}, {ax.get_title()}: no y label"


def all_figures(records) -> dict[str, plt.Figure]:
    rng = np.random.default_rng(1)
    kfold = {"resnet": _oof(rng), "rr-logistic": _oof(rng)}
    lengths = rng.integers(10, 400, 500)
    labels = rng.choice(4, 500, p=(0.85, 0.05, 0.08, 0.02))
    return {
        "excerpts": eda.plot_excerpts(records, eda.pick_excerpts(records)),
        "summary": eda.plot_summary(lengths, labels, (lengths >= 32) & (lengths <= 256)),
        "curves": figures.plot_curves(_histories(), ["incartdb", "mitdb", "svdb"]),
        "bias_grid": figures.plot_bias_grid(rng.random((17, 17)).tolist(), [0, -0.5, 1.0],
                                            "resnet"),
        "confusion": figures.plot_confusions({"resnet": np.eye(3, dtype=int).tolist()},
                                             ["resnet"]),
        "roc_pr": figures.plot_roc_pr(kfold, list(kfold)),
        "lodo": figures.plot_scheme_contrast(kfold, {"resnet": _oof(rng, dbs=("svdb_npy",)),
                                                     "rr-logistic": _oof(rng)}, "lodo"),
        "leaky": figures.plot_scheme_contrast(kfold, {"resnet": _oof(rng)}, "beat"),
        "examples": figures.plot_examples(_signal_of, kfold["resnet"], n_per_cell=2),
    }


def test_every_figure_has_a_title_and_labelled_axes(records):
    for name, fig in all_figures(records).items():
        assert_titled_and_labelled(fig, name)


def test_roc_axes_are_log_and_pr_axes_show_the_prevalence():
    rng = np.random.default_rng(2)
    preds = {"resnet": _oof(rng), "context": _oof(rng)}
    prevalence = float(np.mean(preds["resnet"]["y"] > 0))
    figs = [figures.plot_roc_pr(preds, list(preds)),
            figures.plot_scheme_contrast(preds, {"resnet": _oof(rng)}, "beat")]
    for fig in figs:
        roc, pr = fig.axes[:2]
        assert roc.get_xscale() == "log" and roc.get_xlim()[0] <= 1e-3
        assert "false-positive rate" in roc.get_xlabel()
        lines = [ln for ln in pr.lines if "prevalence" in ln.get_label()]
        assert len(lines) == 1 and lines[0].get_linestyle() == "--"
        np.testing.assert_allclose(lines[0].get_ydata(), prevalence)


def test_curves_show_each_database_with_the_fold_mean_and_range():
    fig = figures.plot_curves(_histories(), ["incartdb", "mitdb", "svdb"])
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    mitdb_sveb = next(ax for t, ax in panels.items() if t.startswith("SVEB") and "MIT-BIH Arr" in t)
    resnet = next(ln for ln in mitdb_sveb.lines if ln.get_label() == "resnet")
    np.testing.assert_allclose(resnet.get_ydata(), 0.35)          # mean of folds 0.3 and 0.4
    np.testing.assert_allclose(resnet.get_xdata(), [0.03, 0.06, 0.09])   # millions of beats
    incart_sveb = next(ax for t, ax in panels.items() if t.startswith("SVEB") and "INCART" in t)
    assert not incart_sveb.lines                                  # no SVEB there: nothing drawn


def test_excerpt_labels_are_letters_that_never_collide(records):
    fig = eda.plot_excerpts(records, eda.pick_excerpts(records))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    crowded = False
    for ax in fig.axes:
        texts = ax.texts
        assert texts and all(t.get_text() in {"S", "V", "Q"} for t in texts)
        assert not any("SVEB" in t.get_text() or "VEB" in t.get_text() for t in texts)
        boxes = [t.get_window_extent(renderer) for t in texts]
        for a, b in itertools.combinations(boxes, 2):
            assert not a.overlaps(b), "two beat labels overlap"
        x = np.sort([t.get_position()[0] for t in texts])
        crowded |= bool((np.diff(x) < 0.05).any())        # doubled annotations were labelled
        assert ax.get_xlabel() == "time in record (s)" and "(mV)" in ax.get_ylabel()
        title = ax.get_title()
        assert title.startswith("record r") and ("MIT-BIH" in title or "INCART" in title)
    assert crowded, "the synthetic excerpts should hold labels closer than their width"
    legend_text = " ".join(t.get_text() for leg in fig.legends for t in leg.get_texts())
    assert "S: SVEB" in legend_text and "V: VEB" in legend_text


def test_label_levels_stagger_close_neighbours():
    levels = eda.label_levels(np.array([0.0, 0.05, 0.1, 1.0, 1.02]), min_gap=0.2)
    assert levels.tolist() == [0, 1, 2, 0, 1]


def test_examples_show_rr_context_and_both_classes():
    rng = np.random.default_rng(3)
    fig = figures.plot_examples(_signal_of, _oof(rng), n_per_cell=2)
    panels = [ax for ax in fig.axes if len(ax.lines) > 2]
    assert panels
    for ax in panels:
        assert "true" in ax.get_title() and "predicted" in ax.get_title()
        assert any("RR prev/next 0.45/1.20 s" in t.get_text() and "sinus 0.80 s" in t.get_text()
                   for t in ax.texts)
