"""common/: atomic I/O, checkpoints, the cache, schedules, bootstrap, data-source selection."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from common import cache
from common.checkpoint import KEYS, CheckpointError, load_checkpoint, save_checkpoint
from common.datasource import DataSourceError, resolve
from common.ema import ModelEMA
from common.io import atomic_write, read_csv, read_json, write_csv, write_json
from common.schedule import warmup_cosine
from common.stats import bootstrap_additive, patient_bootstrap


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "a.json"
    write_json(target, {"v": 1})

    def broken(p):
        p.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert read_json(target) == {"v": 1}
    assert [f.name for f in tmp_path.iterdir()] == ["a.json"]   # no temporary left behind


def test_json_and_csv_round_trip(tmp_path):
    write_json(tmp_path / "m.json", {"x": np.float32(0.5), "arr": np.arange(3), "nan": float("nan")})
    back = read_json(tmp_path / "m.json")
    assert back["x"] == 0.5 and back["arr"] == [0, 1, 2] and np.isnan(back["nan"])
    rows = [{"epoch": 1, "loss": 0.25}, {"epoch": 2, "loss": 0.125, "extra": "a"}]
    write_csv(tmp_path / "h.csv", rows)
    back = read_csv(tmp_path / "h.csv")
    assert back[1]["loss"] == 0.125 and back[1]["extra"] == "a" and back[0]["extra"] == ""


def test_checkpoint_round_trip_and_errors(tmp_path):
    model = torch.nn.Linear(3, 2)
    state = {k: None for k in KEYS} | {"model": model.state_dict(), "epoch": 3, "history": []}
    save_checkpoint(tmp_path / "c.pt", **state)
    back = load_checkpoint(tmp_path / "c.pt")
    assert back["epoch"] == 3
    assert torch.equal(back["model"]["weight"], model.weight.detach())
    with pytest.raises(ValueError):
        save_checkpoint(tmp_path / "d.pt", model=model.state_dict())
    with pytest.raises(CheckpointError, match="train first"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "bad.pt")
    cut = tmp_path / "cut.pt"                                 # a checkpoint cut short
    cut.write_bytes((tmp_path / "c.pt").read_bytes()[:200])
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(cut)
    assert str(e.value) == (f"cannot read checkpoint {cut} (RuntimeError: PytorchStreamReader "
                            "failed reading zip archive: failed finding central directory)")


def _validate(arrays):
    assert arrays["x"].shape == (100,)


def test_cache_is_rebuilt_when_corrupt_or_outdated(tmp_path, capsys):
    path = tmp_path / "c.npz"
    calls = []

    def build():
        calls.append(1)
        return {"x": np.arange(100.0)}

    cache.load_or_build(path, build, _validate, version=1)
    assert np.array_equal(cache.load_or_build(path, build, _validate, version=1)["x"],
                          np.arange(100.0))
    assert len(calls) == 1                               # second call read the cache
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])   # truncate
    out = cache.load_or_build(path, build, _validate, version=1)
    assert len(calls) == 2 and np.array_equal(out["x"], np.arange(100.0))
    assert "rebuilding" in capsys.readouterr().err
    cache.load_or_build(path, build, _validate, version=2)
    assert len(calls) == 3


def test_warmup_cosine_shape():
    values = [warmup_cosine(s, 100, 10) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[10:], values[11:]))     # decays monotonically
    assert values[-1] == pytest.approx(0.02, abs=0.01)


def test_ema_tracks_weights():
    model = torch.nn.Linear(2, 1, bias=False)
    ema = ModelEMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    before = ema.shadow.weight.clone()
    ema.update(model)                      # first update: d = min(0.5, 2/11)
    expected = before + (1 - 2 / 11) * (1.0 - before)
    assert torch.allclose(ema.shadow.weight, expected)


def test_bootstrap_additive_matches_index_bootstrap():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(20), rng.integers(5, 30, 20))
    values = rng.normal(groups * 0.1, 1.0)
    per_patient = np.stack([np.bincount(groups, values), np.bincount(groups)], 1)
    fast = bootstrap_additive(per_patient, lambda t: t[..., 0] / t[..., 1], n_boot=2000)
    slow = patient_bootstrap(groups, lambda idx: values[idx].mean(), n_boot=2000)
    assert fast[0] == pytest.approx(values.mean())
    assert fast[1] < fast[0] < fast[2]
    assert fast[1] == pytest.approx(slow[1], abs=0.05) and fast[2] == pytest.approx(slow[2], abs=0.05)


def test_resolve_sources(tmp_path, capsys):
    assert resolve("demo", hub_cached=False).tag == "demo"
    folder = resolve(str(tmp_path), hub_cached=False)
    assert folder.kind == "folder" and folder.tag.startswith(f"local-{tmp_path.name}-")
    with pytest.raises(DataSourceError, match="existing folder"):
        resolve(str(tmp_path / "nope"), hub_cached=False)
    assert resolve("auto", hub_cached=True).kind == "hub"
    assert resolve("auto", hub_cached=False).kind == "demo"    # HF_HUB_OFFLINE=1 in tests
    assert "DEMO" in capsys.readouterr().err


def test_notebooks_show_local_results_only_where_their_data_is(tmp_path, monkeypatch):
    from common.report import choose_source

    monkeypatch.setenv("RESULTS_ROOT", str(tmp_path))
    monkeypatch.delenv("NOTEBOOK_DATA", raising=False)
    data = tmp_path / "mri"
    data.mkdir()
    for tag, path in (("demo", None), ("local-mri", str(data))):
        write_json(tmp_path / "q1" / tag / "metrics.json", {"data_path": path})
    assert choose_source("q1") == (str(data), tmp_path / "q1" / "local-mri")
    data.rmdir()                                   # a clone without the data: fall back to demo
    assert choose_source("q1") == ("demo", tmp_path / "q1" / "demo")
    assert choose_source("q1", "demo")[1] == tmp_path / "q1" / "demo"


@pytest.mark.parametrize("question", ["q1", "q2"])
def test_hub_unreachable_fails_fast_with_a_clear_message(monkeypatch, question):
    from common.datasource import DataSource
    from q1_mri.data import load_mri
    from q2_ecg.data import load_records

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")     # discard port: refused at once
    load = {"q1": load_mri, "q2": load_records}[question]
    with pytest.raises(DataSourceError) as err:
        load(DataSource("hub", None, "hub"))
    message = str(err.value)
    assert "cannot reach the Hugging Face Hub" in message
    assert "DATA=demo" in message and "DATA=<folder>" in message
