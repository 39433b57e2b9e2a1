"""A results figure written by a publishing script: its HTML and PNG, and one line saying what was written."""
from __future__ import annotations

import sys
from pathlib import Path

import plotly.graph_objects as go

from ..plots import FigureExportError, write_figure


def publish_figure(fig: go.Figure, out: Path, *, png: bool, width: int, height: int,
                   relative_to: Path | None = None) -> int:
    """Write ``OUT.html`` and, with ``png``, ``OUT.png`` for a repository that commits them without plotly.js's
    4 MB bundle (the page loads the bundle written beside it, else plotly's CDN); print the files written (relative
    to ``relative_to``). Returns 0, or 1 after printing the failed PNG export's error."""
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        written = write_figure(fig, out, png=png, width=width, height=height, html_only="pass --no-png",
                               cdn_fallback=True)
    except FigureExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("wrote " + ", ".join(str(p.relative_to(relative_to) if relative_to else p) for p in written))
    return 0
