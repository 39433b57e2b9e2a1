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
    if not found:
        return "not run"
    verdict = "not applicable" if found[0].passed is None else "passed" if found[0].passed else "**failed**"
    return f"{verdict}: {found[0].detail}"


def _findings(reports: dict[str, EvalReport]) -> list[str]:
    """Sentences read off the numbers: what the whole-batch attacks added per batch size, and how far a per-sample
    declaration's number lies from the batch-dependent evaluation's at the same batch size."""
    declared = [rep for rep in reports.values() if any(p.whole_batch for p in rep.plan)]
    plain = [rep for rep in reports.values() if rep not in declared]
    out = []
    for rep in declared:
        added = [f"{points(r.robust_accuracy - _per_sample_robust(r))} points at batch size {bs}"
                 for bs, r in rep.results.items()]
        out.append("The whole-batch attacks changed the robust accuracy by " + ", ".join(added) + ".")
        for other in plain:
            for bs, r in other.results.items():
                if bs in rep.results:
                    mine = rep.results[bs]
                    out.append(f"Declared per-sample, the network reads {pct(r.robust_accuracy)}% robust at "
                               f"batch size {bs}, {points(r.robust_accuracy - mine.robust_accuracy)} points from its "
                               f"batch-dependent evaluation at that size ({pct(mine.robust_accuracy)}%): each attack's "
                               "images were judged in a batch of their own, not in their evaluation batch, so that "
                               "number is the deployed model's at no batch size.")
    return out


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
    lines += ["", *_findings(reports)]
    lines += ["", "The `batch_independent` sanity check (scores of each image alone vs inside its batch):", ""]
    lines += [f"- {label}: {_check(rep, 'batch_independent')}" for label, rep in reports.items()]
    lines += ["", "Reports: " + ", ".join(f"`{path}`" for path in section["reports"].values()) + "."]
    return lines
