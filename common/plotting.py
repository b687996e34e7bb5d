"""One plot style for every figure, and saving figures with their data source in the title."""
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:  # scripts write files over SSH; a notebook keeps its inline backend
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from common.io import atomic_write  # noqa: E402

STYLE = {
    "figure.dpi": 110,
    "figure.constrained_layout.use": True,
    "savefig.dpi": 130,
    "savefig.bbox": "tight",
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "font.size": 9,
    "axes.titlesize": 9,
    "figure.titlesize": 11,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "image.cmap": "gray",
}


def use_style() -> None:
    plt.rcParams.update(STYLE)


def save_figure(fig: plt.Figure, path: str | Path, title: str, source_label: str) -> Path:
    """Give `fig` a suptitle naming its data source, write it atomically as PNG, close it."""
    fig.suptitle(f"{title}\n[data: {source_label}]")
    path = atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
    return path


use_style()
