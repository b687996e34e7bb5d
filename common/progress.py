"""Progress bars: tqdm on a terminal, silent where nobody watches (CI logs, notebooks)."""
from __future__ import annotations

import os
import sys

from tqdm import tqdm


def progress(iterable=None, **kwargs) -> tqdm:
    """A tqdm bar; disabled when stderr is not a terminal or NO_PROGRESS=1, unless forced."""
    quiet = os.environ.get("NO_PROGRESS", "0") == "1" or not sys.stderr.isatty()
    kwargs.setdefault("disable", quiet)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("mininterval", 0.5)
    return tqdm(iterable, **kwargs)
