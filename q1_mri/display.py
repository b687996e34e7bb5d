"""How Q1 slices are drawn: turned to the radiological orientation for display only, with
direction letters, full patient ids and tick-free image panels. Used by the EDA and the result
figures alike; the arrays and the models never see the rotation."""
from __future__ import annotations

import re

import matplotlib.pyplot as plt
import numpy as np

# Stored arrays (../shared/data/mri/README.md, BraTS convention +i = left, +j = posterior,
# +k = superior): axial rows run right->left and columns anterior->posterior; coronal rows
# right->left, columns inferior->superior; sagittal rows anterior->posterior, columns
# inferior->superior. For display they are turned into the radiological convention: axial
# anterior up and the patient's right on the image's left; coronal superior up, right on the
# left; sagittal superior up, anterior on the left.
_DISPLAY = {"axial": np.transpose, "coronal": np.rot90, "sagittal": np.rot90}
EDGES = {"axial": ("A", "P", "R", "L"), "coronal": ("S", "I", "R", "L"),
         "sagittal": ("S", "I", "A", "P")}   # the image's top, bottom, left, right
ORIENTATION_NOTE = ("Shown rotated for display only (stored arrays: axial rows right-left, columns "
                    "anterior-posterior; coronal/sagittal superior toward the right, data README). "
                    "Displayed radiologically: axial anterior up, coronal and sagittal superior "
                    "up; patient's right on the image's left, sagittal anterior on the left. "
                    "Letters: A/P anterior/posterior, S/I superior/inferior, R/L right/left.")


def oriented(image: np.ndarray, view: str) -> np.ndarray:
    """A stored (H, W) slice of `view` turned to the display orientation (EDGES)."""
    return _DISPLAY.get(view, np.asarray)(image)


def mark_orientation(ax: plt.Axes, view: str) -> None:
    """Anatomical direction letters at the four edges of an image panel of `view`."""
    if view not in EDGES:
        return
    style = {"color": "yellow", "fontsize": 6, "transform": ax.transAxes}
    top, bottom, left, right = EDGES[view]
    ax.text(0.5, 0.98, top, ha="center", va="top", **style)
    ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)
    ax.text(0.02, 0.5, left, ha="left", va="center", **style)
    ax.text(0.98, 0.5, right, ha="right", va="center", **style)


def wrap_id(patient_id: str, width: int = 20) -> str:
    """The full patient id, broken into lines at '-' or '_' (never cut) when longer than `width`."""
    lines, line = [], ""
    for part in re.split(r"(?<=[-_])", str(patient_id)):
        if line and len(line) + len(part) > width:
            lines.append(line)
            line = ""
        line += part
    return "\n".join(lines + [line])


def image_panel(ax: plt.Axes, image: np.ndarray, title: str, **imshow) -> plt.Artist:
    """imshow without ticks or grid, with the panel's title."""
    im = ax.imshow(image, **imshow)
    ax.set_xticks([]), ax.set_yticks([])
    ax.grid(False)
    ax.set_title(title, fontsize=7)
    return im
