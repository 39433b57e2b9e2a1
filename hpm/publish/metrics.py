"""From evaluation reports to the numbers checkpoints, model cards and the README show.

Nothing here measures anything: it reads :class:`hpm.EvalReport` JSON files and turns them into
``config.json`` metrics (recorded by :mod:`.cards`), so every published number can be traced to a report and
the command that wrote it.
"""
from __future__ import annotations

from pathlib import Path

from ..attacks import TARGETED_ON
from ..evaluation.report import EvalReport
from ..heads import HEADS
from ..units import eps_text

APGD_CE_ONLY = "APGD-CE"
FULL = "full"  # the paper's MSA + Square: the default plan without APGD-T
FULL_TARGETED = "full + APGD-T"  # the default plan


def protocol_name(report: EvalReport) -> str:
    """``"APGD-CE"`` for a single APGD-CE on the deployed model (the paper's Fig. 1 setting), ``"full"`` for
    the paper's plan (MSA surrogates + Square), ``"full + APGD-T"`` for the default plan (the paper's plus
    APGD-T), else the attack names joined by ``+``."""
    head = HEADS.get(report.model_info.get("head"))
    deployed = head.deployed_modes if head is not None else ("hard",)  # a plain classifier: its only mode
    if len(report.plan) == 1 and report.plan[0].kind == "apgd" and report.plan[0].loss == "ce" \
            and set(report.plan[0].surrogates) <= set(deployed):
        return APGD_CE_ONLY
    if report.config.attack.attacks is None:
        return FULL_TARGETED if report.config.attack.targeted else FULL
    return "+".join(p.name for p in report.plan)


def pct(v: float) -> str:
    """An accuracy in percent, one decimal."""
    return f"{100 * v:.1f}"


def points(v: float) -> str:
    """A difference of two accuracies in percentage points, signed."""
    return f"{100 * v:+.1f}"


def protocol_text(report: EvalReport, *, with_eps: bool = True) -> str:
    """One line saying exactly what was run (``with_eps=False``: the same line without the radius)."""
    a = report.config.attack
    attacks = ", ".join(p.name for p in report.plan)
    square = f", Square {a.square_queries} queries" if any(p.kind == "square" for p in report.plan) else ""
    targeted = (f", APGD-T towards the {a.n_target_classes} top wrong classes"
                if any(p.loss == "dlr-targeted" for p in report.plan) else "")
    radius = f"{a.norm} eps {eps_text(a.eps)}: " if with_eps else f"{a.norm}: "
    return (f"{radius}{attacks} (APGD {a.n_iter} iterations x {a.n_restarts} "
            f"restart(s){targeted}{square}{whole_batch_text(report)}; per-sample worst case, {a.schedule} schedule)")


def whole_batch_text(report: EvalReport) -> str:
    """How a report's whole-batch attacks ran ("" when it has none)."""
    if not any(p.whole_batch for p in report.plan):
        return ""
    kappa = report.config.attack.batch_kappa
    if kappa is None:
        return "; batch: attacks with the summed loss, judged on the perturbed batch"
    return (f"; batch: attacks with each row's loss clamped at margin {kappa:g}, judged on the perturbed batch and "
            "with each row's perturbation alone")


def load_report(path: str | Path) -> EvalReport:
    """Read and validate a report written by ``hpm eval`` (:class:`hpm.HPMError` if it is not one)."""
    return EvalReport.from_json(path)


def report_metrics(report: EvalReport, source: str | Path | None = None) -> dict[str, dict]:
    """``config.json`` metric entries of one report: clean and robust accuracy per evaluation batch size (and
    the evaluation order, when the report shuffled it)."""
    a, data = report.config.attack, report.config.data
    proto = protocol_name(report)
    out: dict[str, dict] = {}
    order_seed = report.config.order_seed
    order = "" if order_seed is None else f", order seed {order_seed}"
    for bs, r in report.results.items():
        common = {"split": data.get("source"), "n": r.n, "batch_size": int(bs), "report": str(source or ""),
                  "command": report.command, **({} if order_seed is None else {"order_seed": order_seed})}
        out[f"clean_accuracy (n {r.n}, bs {bs}{order})"] = {"value": r.clean_accuracy, "protocol": "clean", **common}
        out[f"robust_accuracy ({a.norm} {eps_text(a.eps)}, {proto}, n {r.n}, bs {bs}{order})"] = {
            "value": r.robust_accuracy, "ci95": r.robust_ci95, "protocol": protocol_text(report),
            "norm": a.norm, "eps": a.eps, **common}
    return out


def worst_case_protocol_name(reports: list[EvalReport]) -> str:
    """The protocol of several reports' per-sample worst case: ``"full + APGD-T"`` for the paper's plan, then
    exactly the default plan's APGD-T runs on its targets (the default plan, in two reports); else the reports'
    protocol names joined by ``" + "``."""
    names = [protocol_name(r) for r in reports]
    targets = {p.name.partition("/")[2] for p in reports[0].plan if p.kind == "apgd"}
    default_targeted = {f"apgd-t/{t}" for t in TARGETED_ON if t in targets}
    if names[0] == FULL and {p.name for r in reports[1:] for p in r.plan} == default_targeted:
        return FULL_TARGETED
    return " + ".join(names)
