"""Plot robust accuracy vs eps from sweep reports (``scripts/eps_sweep.sh``), as HTML and PNG.

    python scripts/plot_sweep.py "results/eval/sweep/resnet18-*.json" --out results/figures/resnet18-sweep

(``scripts/plot_sweep.py`` runs :func:`main`.)
"""
from __future__ import annotations

import argparse
import glob
import re
import sys
from pathlib import Path

from ..plots import robustness_curve_figure, write_png
from .compare import comparison_rows
from .metrics import load_report

NAME = re.compile(r"^(?P<prefix>.+?)-(?P<model>[^-]+)-eps[\d.]+-(?P<protocol>\w+)\.json$")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pattern", help="glob of sweep reports, e.g. 'results/eval/sweep/resnet18-*.json'")
    parser.add_argument("--out", required=True, help="output path without extension (.html and .png written)")
    parser.add_argument("--title", default=None)
    parser.add_argument("--no-png", action="store_true")
    args = parser.parse_args(argv)
    paths = sorted(glob.glob(args.pattern))
    if not paths:
        print(f"no reports match {args.pattern}", file=sys.stderr)
        return 1
    reports = []
    for p in paths:
        m = NAME.match(Path(p).name)
        reports.append((m["model"] if m else Path(p).stem, load_report(p)))
    rows = comparison_rows(reports)
    title = args.title or f"Accuracy under attack vs ε ({Path(paths[0]).name.split('-')[0]})"
    fig = robustness_curve_figure(rows, title=title)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(out.with_suffix(".html")), include_plotlyjs="cdn")
    if not args.no_png:
        write_png(fig, out.with_suffix(".png"), width=1000, height=550)
    print(f"wrote {out}.html" + ("" if args.no_png else f" and {out}.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
