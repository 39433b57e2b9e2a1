"""A results figure written by a publishing script: its HTML and PNG, and one line saying what was written."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
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


def plot_sections(kind: str, figure: Callable[[Path, dict], go.Figure], *, description: str, width: int,
                  height: int, argv: list[str] | None = None) -> int:
    """A plotting script's ``main``: write the figure of every ``kind`` section of the results manifest that names
    one, as ``figure(root, section)`` draws it (``--manifest``; ``--no-png``: HTML only). Returns 0, or 1 when a PNG
    export failed."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--manifest", default="results/manifest.json")
    parser.add_argument("--no-png", action="store_true")
    args = parser.parse_args(argv)
    manifest = Path(args.manifest)
    root = manifest.resolve().parent.parent  # the manifest lies in ROOT/results/
    for section in json.loads(manifest.read_text())["sections"]:
        if section["kind"] != kind or not section.get("figure"):
            continue
        if publish_figure(figure(root, section), root / section["figure"], png=not args.no_png, width=width,
                          height=height, relative_to=root):
            return 1
    return 0
