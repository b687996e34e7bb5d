"""The write-up: structure and hygiene of the committed notebooks, the discussions' word counts
and numbers, and `make notebooks` on demo results."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import nbformat
import pytest

from common.datasource import PROJECT_ROOT

NOTEBOOKS = {"q1": "Assessment_Q1.ipynb", "q2": "Assessment_Q2.ipynb"}
HEADINGS = {
    "q1": ["# Question 1", "## 1.A)", "### 1.", "### 2.", "### 3.", "## 1.B)", "## 1.C)"],
    "q2": ["# Question 2", "## 2.A)", "### 1.", "### 2.", "### 3.", "### 4.", "## 2.B)",
           "## 2.C)"],
}
NUMBER = re.compile(r"(?<![\w.,\-])(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)(\s?%)?"
                    r"(?![\w\-]|[.,]\d)")


def load(q: str) -> nbformat.NotebookNode:
    return nbformat.read(PROJECT_ROOT / NOTEBOOKS[q], as_version=4)


def discussion(nb) -> str:
    """The markdown cell after the discussion heading (1.C / 2.C)."""
    cells = nb.cells
    i = next(k for k, c in enumerate(cells) if c.cell_type == "markdown"
             and re.search(r"^## [12]\.C\)", c.source, re.M))
    return cells[i + 1].source


DISPLAYED = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def displayed_values(nb) -> list[float]:
    """Every number the executed notebook shows: its tables, printed lines and code listings
    (not its prose, and not numbers drawn inside figures)."""
    texts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                texts.append(out.text)
            data = out.get("data", {})
            texts.append(data.get("text/markdown") or data.get("text/plain") or "")
    return [float(t.replace(",", "")) for text in texts for t in DISPLAYED.findall(text)]


def quoted_numbers(text: str) -> list[tuple[str, bool]]:
    """Numbers in prose (thousands separators dropped), with whether they carry a % sign
    (words like T1, 2-D, L1 excluded)."""
    return [(m.group(1).replace(",", ""), bool(m.group(2))) for m in NUMBER.finditer(text)]


def appears(token: str, percent: bool, values: list[float]) -> bool:
    """`token` equals some value rounded to the token's own number of decimals."""
    decimals = len(token.split(".")[1]) if "." in token else 0
    target = float(token)
    scale = 100 if percent else 1
    return any(round(v * s, decimals) == target for v in values
               for s in ({scale} | ({100} if decimals == 0 and not percent else set())))


MAX_FIGURES, MAX_TABLES, MAX_MINUTES = 8, 6, 15     # what a marker reads in one sitting


def figures(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def tables(nb) -> int:
    return sum("|---" in o.get("data", {}).get("text/markdown", "")
               for c in nb.cells for o in c.get("outputs", []))


def reading_minutes(nb) -> float:
    """Prose at 230 words a minute, code and printed lines (listings, logs) at 100 lines a
    minute, half a minute per figure or table."""
    words = sum(len(c.source.split()) for c in nb.cells if c.cell_type == "markdown")
    code = sum(len(c.source.splitlines()) for c in nb.cells if c.cell_type == "code")
    printed = sum(len((o.get("text") or o.get("data", {}).get("text/plain", "")).splitlines())
                  for c in nb.cells for o in c.get("outputs", [])
                  if not {"image/png", "text/markdown"} & set(o.get("data", {})))
    return words / 230 + (code + printed) / 100 + 0.5 * (figures(nb) + tables(nb))


@pytest.mark.parametrize("q", NOTEBOOKS)
def test_the_notebook_reads_in_one_sitting(q):
    nb = load(q)
    assert figures(nb) <= MAX_FIGURES and tables(nb) <= MAX_TABLES, (figures(nb), tables(nb))
    assert reading_minutes(nb) <= MAX_MINUTES, f"{reading_minutes(nb):.1f} minutes to read"


@pytest.mark.parametrize("q", NOTEBOOKS)
def test_structure_follows_the_template(q):
    text = [c.source for c in load(q).cells if c.cell_type == "markdown"]
    positions = []
    for heading in HEADINGS[q]:
        start = positions[-1] if positions else 0
        found = next(i for i in range(start, len(text)) if heading in text[i])
        positions.append(found)
    assert positions == sorted(positions)


@pytest.mark.parametrize("q", NOTEBOOKS)
def test_every_code_cell_ran_cleanly_and_is_introduced(q):
    cells = load(q).cells
    for k, cell in enumerate(cells):
        if cell.cell_type != "code":
            continue
        assert cell.execution_count is not None, f"cell {k} was not executed"
        assert not [o for o in cell.outputs if o.output_type == "error"], f"cell {k} errored"
        text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
        assert text.count("\n") <= 40, f"cell {k} prints a wall of text"
        assert "%|" not in text, f"cell {k} shows a progress bar"
        assert cells[k - 1].cell_type == "markdown", f"cell {k} has no sentence above it"


@pytest.mark.parametrize("q", NOTEBOOKS)
def test_discussion_is_short_and_quotes_only_displayed_numbers(q):
    nb = load(q)
    text = discussion(nb)
    assert "PLACEHOLDER" not in text
    assert len(re.findall(r"\b[\w'’-]+\b", text)) <= 250
    values = displayed_values(nb)
    missing = [t for t, pct in quoted_numbers(text) if not appears(t, pct, values)]
    assert not missing, f"numbers quoted in the discussion but shown nowhere above: {missing}"


@pytest.mark.parametrize("q", NOTEBOOKS)
def test_results_prose_quotes_only_displayed_numbers(q):
    """Decimal numbers in any markdown cell (results, percentages of a metric) must be shown by
    some output; whole numbers in the prose are facts of the data or design (64x64, 5 folds)."""
    nb = load(q)
    values = displayed_values(nb)
    prose = [c.source for c in nb.cells if c.cell_type == "markdown"]
    missing = [(t, k) for k, text in enumerate(prose) for t, pct in quoted_numbers(text)
               if "." in t and not appears(t, pct, values)]
    assert not missing, f"decimals in the prose that no output shows: {missing}"


@pytest.mark.parametrize("q", NOTEBOOKS)
def test_the_notebook_shows_one_committed_results_folder(q):
    outputs = json.dumps([o for c in load(q).cells for o in c.get("outputs", [])])
    shown = [p for p in sorted((PROJECT_ROOT / "results" / q).glob("*/metrics.json"))
             if json.loads(p.read_text())["data_label"] in outputs]
    assert len(shown) == 1, "the notebook must show exactly one committed results folder"


TEMPLATE_CODE = {   # what the template's own cells do, in order, before the first part
    "q1": ["from datasets import load_dataset", "hf_hub_download",
           'load_dataset("dpelacani/mri-t1-t2-2D-sliced-64"', "with_transform"],
    "q2": ["from datasets import load_dataset", "from collections import Counter",
           'load_dataset("dpelacani/ecg-led2-cleaned")', "hf_hub_download(repo_id"],
}


@pytest.mark.parametrize("q", NOTEBOOKS)
def test_template_cells_come_first_and_in_order(q):
    cells = load(q).cells
    first_part = next(k for k, c in enumerate(cells) if c.cell_type == "markdown"
                      and re.search(r"^## [12]\.A\)", c.source, re.M))
    code = [c.source for c in cells[:first_part] if c.cell_type == "code"]
    assert "load_dataset" in code[0] and "import torch" in code[0], "the template's imports first"
    found = [next(k for k, src in enumerate(code) if needle in src) for needle in TEMPLATE_CODE[q]]
    assert found == sorted(found)


@pytest.mark.parametrize("q", NOTEBOOKS)
def test_the_graded_code_is_shown_from_the_modules(q):
    """Model, loss, training step and metric are displayed (show_code), in the solution part."""
    cells = load(q).cells
    part_b = next(k for k, c in enumerate(cells) if c.cell_type == "markdown"
                  and re.search(r"^## [12]\.B\)", c.source, re.M))
    shown = " ".join(o.get("data", {}).get("text/plain", "") for c in cells[part_b:]
                     for o in c.get("outputs", []))
    needles = {"q1": ["class UNet", "def translation_loss", "def train_step", "def ssim_map"],
               "q2": ["class BeatClassifier", "def train_step", "cross_entropy", "def one_vs_rest"]}
    assert all(n in shown for n in needles[q]), [n for n in needles[q] if n not in shown]


def test_number_matching_rules():
    assert quoted_numbers("SSIM 0.79, 20.4 dB, 93 % of beats, T1 and 2-D, L1") == [
        ("0.79", False), ("20.4", False), ("93", True)]
    assert quoted_numbers("from 3,194 to 12,224.5 (0.1, 2)") == [
        ("3194", False), ("12224.5", False), ("0.1", False), ("2", False)]
    assert appears("0.79", False, [0.7912]) and not appears("0.80", False, [0.7912])
    assert appears("93", True, [0.9312]) and appears("93", False, [0.9312])


# the protocol the demo fixtures trained (conftest Q1_TINY / Q2_TINY), as `make notebooks` passes it
DEMO_PROTOCOL = {
    "Q1_FOLDS": "2", "Q1_SPLIT": "kfold", "Q1_MODELS": "unet unet25d plain", "Q1_ABLATIONS": "",
    "Q1_ARGS": "--device cpu --epochs 2 --batch-size 16 --base-channels 4 --max-train-slices 64 "
               "--monitor-slices 32 --precision fp32",
    "Q2_FOLDS": "2", "Q2_MODELS": "resnet context", "Q2_LODO": "svdb", "Q2_LEAKY": "resnet",
    "Q2_RR_SETS": "", "Q2_CURVE_EPOCHS": "0",
    "Q2_ARGS": "--device cpu --epochs 2 --beats-per-epoch 1024 --batch-beats 256 --channels 8 8 16",
}


def test_the_notebooks_run_the_stages_and_read_back_finished_runs(q1_evaluated, q2_evaluated,
                                                                  tmp_path):
    """`make notebooks` after `make q1 q2`: the notebooks call the stages themselves, read every
    finished run back (nothing is trained again), show the demo warning and stay within the
    limits of one sitting."""
    root = tmp_path / "results"
    for evaluated, _ in (q1_evaluated, q2_evaluated):
        shutil.copytree(evaluated, root, dirs_exist_ok=True)
    done = subprocess.run([sys.executable, "tools/run_notebooks.py", "--data", "demo",
                           "--results-root", str(root), "--out-dir", str(tmp_path)],
                          cwd=PROJECT_ROOT, capture_output=True, text=True,
                          env={**os.environ, **DEMO_PROTOCOL, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    for name in NOTEBOOKS.values():
        nb = nbformat.read(tmp_path / name, as_version=4)
        outputs = json.dumps([o for c in nb.cells for o in c.get("outputs", [])])
        assert "DEMO DATA" in outputs
        assert all(c.execution_count for c in nb.cells if c.cell_type == "code")
        trained = [int(n) for n in re.findall(r"\((\d+) trained now", outputs)]
        assert trained and not any(trained), f"{name} trained runs that had finished: {trained}"
        assert figures(nb) <= MAX_FIGURES and tables(nb) <= MAX_TABLES
