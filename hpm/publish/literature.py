"""A backbone trained by hpm beside the published numbers of the recipe it follows, and what its training set costs.

A ``literature`` section of ``results/manifest.json``::

    {"kind": "literature", "title": ..., "text": ...,
     "file": "results/literature/preact-resnet18-fgsmrs.json",     # the published numbers, transcribed by hand
     "entries": [{"label": "hpm's run", "report": "results/eval/preact/pa18-fc-apgdt-n1000-eps8.json"}],
     "shift": ["results/literature/preact-jpeg-shift.json"],       # optional: scripts/jpeg_shift.py results
     "shift_labels": {"runs/x": "the same, another schedule"}}      # optional: a name beside a checkpoint's path

renders one table of the published rows and the measured ones (each measured report at one evaluation batch size:
the numbers of a batch-dependent head would need theirs), the differences measured minus published in points, and
the clean accuracy of each checkpoint of the ``shift`` files on the lossless test images, on their JPEG copies and
on the whole JPEG test set.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import HPMError
from .metrics import load_report, pct, points, protocol_text


def literature_lines(root: Path, section: dict) -> list[str]:
    """The lines of a ``literature`` section (see the module docstring).

    Raises:
        HPMError: a measured report holds more than one evaluation batch size.
    """
    published = json.loads((root / section["file"]).read_text())
    lines = ["| model | evaluation | clean | robust | 95% CI |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {p['source']} (published) | {p['evaluation']} | {pct(p['clean_accuracy'])} | "
              f"{pct(p['robust_accuracy'])} | |" for p in published["entries"]]
    measured = []
    for e in section["entries"]:
        report = load_report(root / e["report"])
        if len(report.results) != 1:
            raise HPMError(f"{e['report']}: {len(report.results)} evaluation batch sizes; a literature row holds "
                           "one (evaluate the published recipe's model at one batch size)")
        (bs, r), = report.results.items()
        measured.append((e["label"], r))
        lo, hi = r.robust_ci95
        lines.append(f"| {e['label']} | {protocol_text(report)}; {r.n} images of "
                     f"`{report.config.data['source'].split('/')[-1]}`, batch size {bs} | {pct(r.clean_accuracy)} | "
                     f"{pct(r.robust_accuracy)} | {pct(lo)}–{pct(hi)} |")
    lines += ["", f"Published numbers: `{section['file']}` ({published['recipe']}). Measured minus published, in "
                  "points:", ""]
    lines += [f"- {label} vs {p['source']}: clean {points(r.clean_accuracy - p['clean_accuracy'])}, "
              f"robust {points(r.robust_accuracy - p['robust_accuracy'])}"
              for label, r in measured for p in published["entries"]]
    return lines + _shift_lines(root, section.get("shift", []), section.get("shift_labels", {}))


def _shift_lines(root: Path, paths: list[str], labels: dict[str, str]) -> list[str]:
    """The JPEG-shift table of ``scripts/jpeg_shift.py`` results files, one row per checkpoint."""
    if not paths:
        return []
    shifts = {path: json.loads((root / path).read_text()) for path in paths}
    lines = ["", "| checkpoint | lossless test images | their JPEG copies | McNemar p | whole JPEG test set |",
             "| --- | --- | --- | --- | --- |"]
    for shift in shifts.values():
        for c in shift["checkpoints"]:
            name = f"`{c['checkpoint']}`" + (f" ({labels[c['checkpoint']]})" if c["checkpoint"] in labels else "")
            lines.append(f"| {name} | {pct(c['lossless_accuracy'])} (n {c['n']}) | {pct(c['jpeg_accuracy'])} | "
                         f"{c['mcnemar_exact_p']:.2g} | {pct(c['jpeg_test_set']['accuracy'])} "
                         f"(n {c['jpeg_test_set']['n']}) |")
    errors = "; ".join(f"{s['mean_absolute_pixel_error_255']:.2f}/255 in `{path}`" for path, s in shifts.items())
    return lines + ["", f"Clean accuracy in %. Mean absolute difference of a JPEG copy from its lossless image, per "
                        f"pixel: {errors}."]
