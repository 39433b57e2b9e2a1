"""Plot robust accuracy vs eps from sweep reports (``scripts/eps_sweep.sh``), as HTML (offline) and PNG.

    python scripts/plot_sweep.py "results/eval/sweep/resnet18-*.json" --out results/figures/resnet18-sweep

(``scripts/plot_sweep.py`` runs :func:`main`.)
"""
from __future__ import annotations

import argparse
import glob
import re
import sys
from pathlib import Path

from ..evaluation.report import EvalReport
from ..plots import robustness_curve_figure
from .figures import publish_figure
from .compare import comparison_rows, worst_case_rows
from .metrics import load_report

NAME = re.compile(r"^(?P<prefix>.+?)-(?P<model>[^-]+)-eps[\d.]+-(?P<protocol>\w+)\.json$")
FULL_SUFFIX = "-full.json"  # a sweep report of the full protocol
TARGETED_SUFFIX = "-targeted.json"  # the default plan's APGD-T runs on the samples of the full report beside it


def sweep_rows(paths: dict[str, list[Path]]) -> tuple[list[tuple[str, EvalReport]], list[dict]]:
    """The reports and table rows of an eps sweep (``scripts/eps_sweep.sh``), ``{label: report paths}``. A
    ``-targeted`` report (the default plan's APGD-T runs on the images of the ``-full`` report beside it) gives
    no row of its own: it joins its full report in a row of their per-sample worst case ("full + APGD-T")."""
    reports, rows = [], []
    for label, label_paths in paths.items():
        for path in label_paths:
            reports.append((label, load_report(path)))
            if path.name.endswith(TARGETED_SUFFIX):
                continue
            rows += [{**row, "path": path} for row in comparison_rows(reports[-1:])]
            extra = path.with_name(path.name.removesuffix(FULL_SUFFIX) + TARGETED_SUFFIX)
            if path.name.endswith(FULL_SUFFIX) and extra.is_file():
                rows += worst_case_rows(label, [path, extra])
    return reports, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pattern", help="glob of sweep reports, e.g. 'results/eval/sweep/resnet18-*.json'")
    parser.add_argument("--out", required=True,
                        help="output path without extension (.html with plotly.min.js beside it, and .png written)")
    parser.add_argument("--title", default=None)
    parser.add_argument("--no-png", action="store_true")
    args = parser.parse_args(argv)
    paths = sorted(glob.glob(args.pattern))
    if not paths:
        print(f"no reports match {args.pattern}", file=sys.stderr)
        return 1
    by_label: dict[str, list[Path]] = {}
    for p in paths:
        m = NAME.match(Path(p).name)
        by_label.setdefault(m["model"] if m else Path(p).stem, []).append(Path(p))
    _, rows = sweep_rows(by_label)
    title = args.title or f"Accuracy under attack vs ε ({Path(paths[0]).name.split('-')[0]})"
    fig = robustness_curve_figure(rows, title=title)
    return publish_figure(fig, Path(args.out), png=not args.no_png, width=1000, height=550)


if __name__ == "__main__":
    sys.exit(main())
