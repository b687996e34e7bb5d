"""Stages hand over files: no module imports one of a later stage (read from the source with
`ast`, so imports inside functions count too).

The table below is the project's stage order (README "Layout"). A module may import modules
of its own stage or an earlier one, and the shared modules; shared modules import only each
other and the data stage; common/ imports nothing of either question.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = {"q1_mri.metrics", "q1_mri.prediction_file", "q1_mri.patient_stats", "q1_mri.display",
          "q1_mri.truth", "q2_ecg.metrics", "q2_ecg.rules", "q2_ecg.prediction_file"}
STAGES = [   # in pipeline order
    ("data", {"q1_mri.data", "q1_mri.demo", "q2_ecg.data", "q2_ecg.demo"}),
    ("eda", {"q1_mri.eda", "q2_ecg.eda"}),
    ("representation", {"q1_mri.neighbours", "q2_ecg.beats", "q2_ecg.persons"}),
    ("split", {"q1_mri.splits", "q2_ecg.splits"}),
    ("model", {"q1_mri.model", "q1_mri.translate", "q2_ecg.model", "q2_ecg.classify",
               "q2_ecg.adapt"}),
    ("train", {"q1_mri.train", "q1_mri.baselines", "q2_ecg.train", "q2_ecg.baselines"}),
    ("combine", {"q2_ecg.ensemble"}),
    ("evaluate", {"q1_mri.eval", "q2_ecg.eval"}),
    ("final", {"q1_mri.final", "q2_ecg.final"}),
    ("infer", {"q1_mri.infer", "q2_ecg.infer"}),
    ("figures", {"q1_mri.figures", "q1_mri.report", "q2_ecg.figures", "q2_ecg.report"}),
    ("tools", {"q1_mri.bench", "q2_ecg.bench"}),
]
RANK = {m: k for k, (_, modules) in enumerate(STAGES) for m in modules}
PACKAGES = ("q1_mri", "q2_ecg", "common")


def project_modules() -> dict[str, str]:
    """{module name: source} of every module of the project's packages."""
    return {f"{pkg}.{f.stem}": f.read_text() for pkg in PACKAGES
            for f in sorted((ROOT / pkg).glob("*.py")) if f.stem != "__init__"}


def imported(source: str) -> set[str]:
    """Project modules a source imports anywhere (top level or inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}   # from q1_mri import eval
    return {m for m in out if m.split(".")[0] in PACKAGES and m.count(".") == 1}


def violations(modules: dict[str, str]) -> list[str]:
    """Every import that runs against the stage order, as 'a -> b (why)'."""
    out = []
    for name, source in modules.items():
        for target in sorted(imported(source) & set(modules)):
            if name.startswith("common."):
                if not target.startswith("common."):
                    out.append(f"{name} -> {target} (common/ knows no question)")
            elif target.startswith("common.") or target == name:
                continue
            elif name in SHARED:
                if target not in SHARED and RANK.get(target) != 0:
                    out.append(f"{name} -> {target} (a shared module imports a stage)")
            elif target in SHARED:
                continue
            elif RANK[target] > RANK[name]:
                out.append(f"{name} -> {target} (a later stage: {STAGES[RANK[target]][0]})")
    return out


def test_every_module_has_a_place_in_the_stage_table():
    missing = [m for m in project_modules() if not m.startswith("common.")
               and m not in RANK and m not in SHARED]
    assert not missing, f"put these in tests/test_stages.py's table: {missing}"


def test_no_module_imports_a_later_stage():
    assert violations(project_modules()) == []


@pytest.mark.parametrize("module, line", [
    ("q1_mri.eval", "from q1_mri import figures"),             # evaluation drawing its figures
    ("q2_ecg.eval", "def f():\n    from q2_ecg.infer import main"),  # evaluation running a model
    ("q1_mri.train", "import q1_mri.eval"),                    # training reading its own scores
    ("q2_ecg.metrics", "from q2_ecg.train import setup"),      # a shared module tied to a stage
    ("common.io", "from q1_mri.data import load_mri"),         # common/ knowing a question
])
def test_a_backward_import_is_caught(module, line):
    modules = project_modules()
    modules[module] += "\n" + line + "\n"
    assert [v for v in violations(modules) if v.startswith(module + " ->")]
