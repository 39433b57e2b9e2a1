"""A defence hpm does not know, evaluated twice: declared per-sample (the usual mistake) and declared batch-dependent
(:class:`hpm.Defence`), with what the whole-batch attacks add at each evaluation batch size."""
from __future__ import annotations

from pathlib import Path

from ..evaluation.report import BatchSizeResult, EvalReport
from ..units import eps_text
from .metrics import load_report, pct, points


def _per_sample_robust(r: BatchSizeResult) -> float:
    """Robust accuracy after the plan's per-sample attacks, before its whole-batch ones (cumulative schedule: the
    whole-batch attacks come last, so it is the robust accuracy after the last attack that is not ``batch:``)."""
    per_sample = [a for a in r.per_attack if not a.name.startswith("batch:")]
    return per_sample[-1].robust_accuracy_after if per_sample else r.clean_accuracy


def _check(report: EvalReport, name: str) -> str:
    found = [c for c in report.checks if c.name == name]
    if not found or found[0].passed is None:
        return "not run"
    return ("passed" if found[0].passed else "**failed**") + f": {found[0].detail}"


def declared_lines(root: Path, section: dict) -> list[str]:
    """A ``declared`` section: one row per report and batch size (clean, robust under the per-sample attacks, robust
    with the whole-batch attacks too, the interval of the latter) and the batch_independent check of each report."""
    reports = {label: load_report(root / path) for label, path in section["reports"].items()}
    lines = ["| declared | ε | n | eval bs | clean | robust, per-sample attacks | robust, + whole-batch attacks | "
             "whole-batch adds | 95% CI |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, rep in reports.items():
        whole_batch = any(p.whole_batch for p in rep.plan)
        for bs, r in rep.results.items():
            before, lo, hi = _per_sample_robust(r), *r.robust_ci95
            after = pct(r.robust_accuracy) if whole_batch else "not run"
            adds = points(r.robust_accuracy - before) if whole_batch else "–"
            lines.append(f"| {label} | {eps_text(rep.config.attack.eps)} | {r.n} | {bs} | {pct(r.clean_accuracy)} | "
                         f"{pct(before)} | {after} | {adds} | {pct(lo)}–{pct(hi)} |")
    lines += ["", "The `batch_independent` sanity check (scores of each image alone vs inside its batch):", ""]
    lines += [f"- {label}: {_check(rep, 'batch_independent')}" for label, rep in reports.items()]
    lines += ["", "Reports: " + ", ".join(f"`{path}`" for path in section["reports"].values()) + "."]
    return lines
