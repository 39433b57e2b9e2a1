"""Comparisons between evaluations: table rows, paired per-sample tests, what one protocol missed."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.stats import binomtest

from ..errors import HPMError
from ..evaluation.report import EvalReport, clopper_pearson
from ..evaluation.samples import SampleResults, load_results
from .metrics import APGD_CE_ONLY, FULL, FULL_TARGETED, load_report, protocol_name, worst_case_protocol_name


def comparison_rows(reports: list[tuple[str, EvalReport]]) -> list[dict]:
    """Flatten ``(label, report)`` pairs (a label may repeat, e.g. one model at several eps) into rows:
    label, protocol, eps, n, batch size, clean, robust, CI, and ``breaks``: the samples each attack broke
    first, in plan order (attacks that broke none left out)."""
    rows = []
    for label, rep in reports:
        for bs, r in rep.results.items():
            rows.append({"label": label, "protocol": protocol_name(rep), "eps": rep.config.attack.eps,
                         "n": r.n, "batch_size": int(bs), "clean": r.clean_accuracy,
                         "robust": r.robust_accuracy, "ci95": r.robust_ci95,
                         "breaks": {a.name: a.first_broken for a in r.per_attack if a.first_broken}})
    return rows


def sample_results(report_json: str | Path, batch_size: int) -> SampleResults:
    """The per-sample results at ``batch_size`` of one evaluation, from the ``.npz`` written beside its report."""
    _, results = load_results(Path(report_json).with_suffix(".npz"))
    if batch_size not in results:
        raise HPMError(f"{report_json}: no per-sample results at batch size {batch_size}")
    return results[batch_size]


def paired_robust(report_json: str | Path, batch_size: int) -> dict[int, bool]:
    """Per-sample worst-case outcomes of one evaluation, ``{dataset index: robust}``."""
    r = sample_results(report_json, batch_size)
    return {int(i): bool(v) for i, v, done in zip(r.indices, r.robust, r.done) if done}


def combined_robust(report_jsons: list[str | Path], batch_size: int) -> dict[int, bool]:
    """Per-sample worst case over several evaluations of one model on the same samples (e.g. the default
    plan and extra attacks run later): robust only where every evaluation left the sample robust."""
    outcomes = [paired_robust(path, batch_size) for path in report_jsons]
    if any(o.keys() != outcomes[0].keys() for o in outcomes):
        raise HPMError(f"{', '.join(map(str, report_jsons))} cover different samples")
    return {i: all(o[i] for o in outcomes) for i in outcomes[0]}


SAME_EVALUATION = {"model": lambda r: r.model, "norm": lambda r: r.config.attack.norm,
                   "eps": lambda r: r.config.attack.eps, "data": lambda r: r.config.data.get("source"),
                   "evaluation order": lambda r: r.config.order_seed}  # what reports joined per sample share


def check_same_evaluation(reports: dict, context: str = "") -> None:
    """Refuse reports (``{path: EvalReport}``) whose per-sample worst case would mean nothing: they must share
    everything in :data:`SAME_EVALUATION` with the first. ``context`` prefixes the error message."""
    (first, reference), *others = reports.items()
    for path, report in others:
        for what, value in SAME_EVALUATION.items():
            if value(report) != value(reference):
                raise HPMError(f"{context}{path} and {first} differ in {what} ({value(report)!r} vs "
                               f"{value(reference)!r}): their per-sample worst case would mean nothing")


def worst_case_rows(label: str, paths: list[Path]) -> list[dict]:
    """Rows (as :func:`comparison_rows`) of the per-sample worst case of several reports of one model on the same
    samples (two or more; same model, norm, eps, data and evaluation order), one per evaluation batch size that every
    one of them ran; ``paths`` are kept for paired tests. :class:`hpm.HPMError` for reports that do not share those
    or no batch size."""
    if len(paths) < 2:
        raise HPMError(f"a per-sample worst case needs two or more reports of the same samples; got {len(paths)}")
    reports = [load_report(p) for p in paths]
    check_same_evaluation(dict(zip(paths, reports)))
    shared = [bs for bs in reports[0].results if all(bs in rep.results for rep in reports[1:])]
    if not shared:
        raise HPMError(f"{', '.join(map(str, paths))} share no evaluation batch size")
    rows = []
    for bs in shared:
        r = reports[0].results[bs]
        robust = combined_robust(paths, int(bs))
        k, n = sum(robust.values()), len(robust)
        rows.append({"label": label, "protocol": worst_case_protocol_name(reports),
                     "eps": reports[0].config.attack.eps, "n": n, "batch_size": int(bs), "clean": r.clean_accuracy,
                     "robust": k / n, "ci95": clopper_pearson(k, n), "breaks": {}, "path": paths[0], "paths": paths})
    return rows


def missed_by_apgd_ce(apgd_ce_json: str | Path, full_json: str | Path, batch_size: int) -> dict[str, int]:
    """Samples that survived APGD-CE alone but not the full protocol, counted per full-protocol attack that
    broke them (a sample broken by several attacks counts for each), from the ``.npz`` beside each report."""
    ce, full = sample_results(apgd_ce_json, batch_size), sample_results(full_json, batch_size)
    if not np.array_equal(ce.indices, full.indices):
        raise HPMError(f"{apgd_ce_json} and {full_json} cover different samples")
    missed = ce.robust & full.done & full.clean_correct & ~full.robust
    counts = {name: int((full.broken[k] & missed).sum()) for k, name in enumerate(full.attack_names)}
    return {name: k for name, k in counts.items() if k}


def mcnemar_exact(a: dict[int, bool], b: dict[int, bool]) -> dict:
    """Exact (binomial) McNemar test of two classifiers' per-sample outcomes on the same samples.

    Only discordant samples count: ``a_only`` robust under ``a`` but not ``b``, ``b_only`` the reverse;
    under the null both are equally likely. Raises if the two evaluations cover different samples.
    """
    if a.keys() != b.keys():
        raise HPMError("paired test needs the same samples in both evaluations")
    a_only = sum(a[i] and not b[i] for i in a)
    b_only = sum(b[i] and not a[i] for i in a)
    p = binomtest(a_only, a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
    return {"n": len(a), "a_only": a_only, "b_only": b_only, "p_value": float(p)}


def protocol_gaps(rows: list[dict]) -> list[dict]:
    """Pair every APGD-CE-only row with the full-protocol row (with APGD-T where there is one) of the same
    label, eps, n and batch size.

    Each pair gives both robust accuracies, ``gap`` (how much APGD-CE alone overstates robustness), the
    full protocol's first ``breaks`` per attack, and the rows' report paths when they carry one (``path``),
    for :func:`missed_by_apgd_ce`.
    """
    full = {(r["label"], r["eps"], r["n"], r["batch_size"]): r  # the stronger wins; one report only (its .npz
            for protocol in (FULL, FULL_TARGETED) for r in rows  # says which attack broke each sample)
            if r["protocol"] == protocol and len(r.get("paths", [r.get("path")])) == 1}
    gaps = []
    for r in rows:
        f = full.get((r["label"], r["eps"], r["n"], r["batch_size"]))
        if r["protocol"] == APGD_CE_ONLY and f is not None:
            gaps.append({"label": r["label"], "eps": r["eps"], "n": r["n"], "batch_size": r["batch_size"],
                         "apgd_ce": r["robust"], "full": f["robust"], "gap": r["robust"] - f["robust"],
                         "breaks": f["breaks"], "apgd_ce_path": r.get("path"), "full_path": f.get("path")})
    return gaps
