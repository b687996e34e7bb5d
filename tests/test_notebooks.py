"""The write-up: structure and hygiene of the committed notebooks, the discussions' word counts
and numbers, and `make notebooks` on demo results."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from common.datasource import PROJECT_ROOT

NOTEBOOKS = {"q1": "Assessment_Q1.ipynb", "q2": "Assessment_Q2.ipynb"}
HEADINGS = {
    "q1": ["# Question 1", "## 1.A)", "### 1.", "### 2.", "### 3.", "## 1.B)", "## 1.C)"],
    "q2": ["# Question 2", "## 2.A)", "### 1.", "### 2.", "### 3.", "### 4.", "## 2.B)",
           "## 2.C)"],
}
NUMBER = re.compile(r"(?<![\w.\-])(\d+(?:\.\d+)?)(\s?%)?(?![\w\-]|\.\d)")


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
    """Numbers in prose, with whether they carry a % sign (words like T1, 2-D, L1 excluded)."""
    return [(m.group(1), bool(m.group(2))) for m in NUMBER.finditer(text)]


def appears(token: str, percent: bool, values: list[float]) -> bool:
    """`token` equals some value rounded to the token's own number of decimals."""
    decimals = len(token.split(".")[1]) if "." in token else 0
    target = float(token)
    scale = 100 if percent else 1
    return any(round(v * s, decimals) == target for v in values
               for s in ({scale} | ({100} if decimals == 0 and not percent else set())))


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
        assert text.count("\n") <= 6, f"cell {k} prints a wall of text"
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
    "q1": ["from datasets import load_dataset", "hf_hub_download", "template_datasets",
           "with_transform"],
    "q2": ["from datasets import load_dataset", "hf_hub_download", "template_dataset",
           "show_code(plot_signal, split_by_beat)"],
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
    needles = {"q1": ["class UNet", "def generator_loss", "def train_step", "def ssim_map"],
               "q2": ["class BeatClassifier", "def train_step", "cross_entropy", "def one_vs_rest"]}
    assert all(n in shown for n in needles[q]), [n for n in needles[q] if n not in shown]


def test_number_matching_rules():
    assert quoted_numbers("SSIM 0.79, 20.4 dB, 93 % of beats, T1 and 2-D, L1") == [
        ("0.79", False), ("20.4", False), ("93", True)]
    assert appears("0.79", False, [0.7912]) and not appears("0.80", False, [0.7912])
    assert appears("93", True, [0.9312]) and appears("93", False, [0.9312])


def test_make_notebooks_runs_on_demo_results(q1_evaluated, q2_evaluated, tmp_path):
    from q1_mri import eda as q1_eda
    from q2_ecg import eda as q2_eda

    root = tmp_path / "results"
    for evaluated, _ in (q1_evaluated, q2_evaluated):      # metrics.json and figures included
        shutil.copytree(evaluated, root, dirs_exist_ok=True)
    for eda in (q1_eda, q2_eda):                            # the eda stats the notebooks read
        eda.main(["--data", "demo", "--results-root", str(root)])
    done = subprocess.run([sys.executable, "tools/run_notebooks.py", "--data", "demo",
                           "--results-root", str(root), "--out-dir", str(tmp_path)],
                          cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in NOTEBOOKS.values():
        nb = nbformat.read(tmp_path / name, as_version=4)
        outputs = json.dumps([o for c in nb.cells for o in c.get("outputs", [])])
        assert "DEMO DATA" in outputs
        assert all(c.execution_count for c in nb.cells if c.cell_type == "code")
    assert Path(PROJECT_ROOT / "References.md").exists()
