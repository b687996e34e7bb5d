"""Shared test set-up: a private cache folder, no progress bars, no network, real-data paths."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def isolated_environment(tmp_path_factory):
    """Caches go to a temporary folder; progress bars are off; the Hub counts as offline; every
    run trains on one thread (common.runtime.configure_threads honours OMP_NUM_THREADS): tiny
    models train fastest so, and on a busy machine two OpenMP threads per process run ~10x
    slower)."""
    os.environ["PROJECT_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["NO_PROGRESS"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    yield


def shared_data(name: str) -> Path:
    """../shared/data/<name>, or skip the test when this clone has no shared data."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data not available at {path}")
    return path


Q1_TINY = ["--data", "demo", "--device", "cpu", "--epochs", "2", "--batch-size", "16",
           "--base-channels", "4", "--max-train-slices", "64", "--monitor-slices", "32",
           "--precision", "fp32", "--split", "kfold", "--folds", "2"]
Q1_RUNS = [["--model", m, "--fold", str(f)] for m in ("unet", "unet25d", "plain")
           for f in range(2)]
Q2_TINY = ["--data", "demo", "--device", "cpu", "--epochs", "2", "--beats-per-epoch", "1024",
           "--batch-beats", "256", "--channels", "8", "8", "16"]
Q2_KFOLD = ["--split", "kfold", "--folds", "2"]
Q2_RUNS = ([["--model", m, *Q2_KFOLD, "--fold", str(f)]
            for m in ("resnet", "context") for f in range(2)]
           + [["--model", m, "--split", "lodo", "--fold", "svdb"] for m in ("resnet", "context")]
           + [["--model", "resnet", "--split", "beat"]])


@pytest.fixture(scope="session")
def q1_results(tmp_path_factory):
    """A results root with the Q1 protocol on demo data with tiny settings: a 2-fold
    cross-validation of the models (U-Net, 2.5-D U-Net, the plain reference) and of the
    baselines."""
    from q1_mri import baselines, train

    root = tmp_path_factory.mktemp("q1-results")
    for run in Q1_RUNS:
        train.train(train.parse_args(Q1_TINY + run + ["--results-root", str(root)]))
    baselines.main(baselines.parse_args(["--data", "demo", "--split", "kfold", "--folds", "2",
                                         "--results-root", str(root)]))
    return root


@pytest.fixture(scope="session")
def q2_results(tmp_path_factory):
    """A results root with every kind of Q2 run trained on demo data with tiny settings: a
    2-fold cross-validation of each model, the baselines and the ResNet + context ensemble, each
    model's LODO run without svdb and one leaky run."""
    from q2_ecg import baselines, ensemble, train

    root = tmp_path_factory.mktemp("q2-results")
    for run in Q2_RUNS:
        train.train(train.parse_args(Q2_TINY + run + ["--results-root", str(root)]))
    baselines.main(baselines.parse_args(["--data", "demo", *Q2_KFOLD,
                                         "--results-root", str(root)]))
    ensemble.main(ensemble.parse_args(["--data", "demo", "--results-root", str(root)]))
    return root


def interrupt_after_first_epoch(monkeypatch, train_module) -> None:
    """Raise KeyboardInterrupt right after epoch 1 is written (checkpoint and history), like a
    kill: through the training module's own `save`, or common.loop.RunBook.end_epoch."""
    if hasattr(train_module, "save"):
        real_save = train_module.save

        def save_then_die(r, args, epoch):
            real_save(r, args, epoch)
            if epoch == 1:
                raise KeyboardInterrupt
        monkeypatch.setattr(train_module, "save", save_then_die)
        return
    from common.loop import RunBook
    real_end = RunBook.end_epoch

    def end_then_die(self, row, state, weights):
        out = real_end(self, row, state, weights)
        if row["epoch"] == 1:
            raise KeyboardInterrupt
        return out
    monkeypatch.setattr(RunBook, "end_epoch", end_then_die)


@pytest.fixture(scope="session")
def q1_evaluated(q1_results):
    """(q1_results after q1_mri.eval wrote metrics.json and q1_mri.figures the figures,
    eval's result)."""
    from q1_mri import eval as q1_eval
    from q1_mri import figures

    flags = ["--data", "demo", "--results-root", str(q1_results)]
    result = q1_eval.main(q1_eval.parse_args(flags))
    figures.main(figures.parse_args(flags))
    return q1_results, result


@pytest.fixture(scope="session")
def q2_evaluated(q2_results):
    """(q2_results after q2_ecg.eval wrote metrics.json and q2_ecg.figures the figures,
    eval's result)."""
    from q2_ecg import eval as q2_eval
    from q2_ecg import figures

    flags = ["--data", "demo", "--results-root", str(q2_results)]
    result = q2_eval.main(q2_eval.parse_args(flags))
    figures.main(figures.parse_args(flags))
    return q2_results, result
