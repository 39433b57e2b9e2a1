"""From evaluation reports to the numbers checkpoints, model cards and the README show.

Nothing here measures anything: it reads :class:`hpm.report.EvalReport` JSON files and turns them into
``config.json`` metrics (``hpm card``) and Markdown tables, so every published number can be traced to
a report and the command that wrote it.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from fractions import Fraction
from pathlib import Path

import numpy as np

from .errors import HPMError
from .report import EvalReport

APGD_CE_ONLY = "APGD-CE"
FULL = "full"


def eps_text(eps: float) -> str:
    """``0.0313725`` -> ``"8/255"``; radii that are not k/255 (or k/510) print as decimals."""
    frac = Fraction(eps).limit_denominator(1020)
    if abs(float(frac) - eps) < 1e-9 and 255 * 4 % frac.denominator == 0:
        return f"{float(frac) * 255:g}/255"
    return f"{eps:.6g}"


def protocol_name(report: EvalReport) -> str:
    """``"APGD-CE"`` for a single APGD-CE on the deployed model (the paper's Fig. 1 setting), ``"full"`` for
    the model's default plan (MSA surrogates + Square), else the attack names joined by ``+``."""
    names = [p["name"] for p in report.plan]
    if names in (["apgd-ce/deployed"], ["apgd-ce/bpda"]) or (names == ["apgd-ce/fc"]
                                                            and report.model_info.get("head") == "fc"):
        return APGD_CE_ONLY
    if report.config["attack"].get("attacks") is None:
        return FULL
    return "+".join(names)


def protocol_text(report: EvalReport, *, with_eps: bool = True) -> str:
    """One line saying exactly what was run (``with_eps=False``: the same line without the radius)."""
    a = report.config["attack"]
    attacks = ", ".join(p["name"] for p in report.plan)
    square = f", Square {a['square_queries']} queries" if any(p["kind"] == "square" for p in report.plan) else ""
    radius = f"{a['norm']} eps {eps_text(a['eps'])}: " if with_eps else f"{a['norm']}: "
    return (f"{radius}{attacks} (APGD {a['n_iter']} iterations x {a['n_restarts']} "
            f"restart(s){square}; per-sample worst case, {a['schedule']} schedule)")


def load_report(path: str | Path) -> EvalReport:
    path = Path(path)
    try:
        return EvalReport.from_json(path)
    except FileNotFoundError:
        raise HPMError(f"{path}: no such evaluation report") from None
    except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as e:
        raise HPMError(f"{path}: not an hpm evaluation report ({e})") from None


def report_metrics(report: EvalReport, source: str | Path | None = None) -> dict[str, dict]:
    """``config.json`` metric entries of one report: clean and robust accuracy per evaluation batch size."""
    a, data = report.config["attack"], report.config["data"]
    proto = protocol_name(report)
    out: dict[str, dict] = {}
    for bs, r in report.results.items():
        common = {"split": data.get("source"), "n": r["n"], "batch_size": int(bs), "report": str(source or ""),
                  "command": report.command}
        out[f"clean_accuracy (n {r['n']}, bs {bs})"] = {"value": r["clean_accuracy"], "protocol": "clean", **common}
        out[f"robust_accuracy ({a['norm']} {eps_text(a['eps'])}, {proto}, n {r['n']}, bs {bs})"] = {
            "value": r["robust_accuracy"], "ci95": r["robust_ci95"], "protocol": protocol_text(report),
            "norm": a["norm"], "eps": a["eps"], **common}
    return out


def record_evaluations(checkpoint: str | Path, reports: list[str | Path], *,
                       command: str | None = None) -> dict[str, dict]:
    """Add the metrics of ``reports`` to a checkpoint's ``config.json`` and regenerate its model card.

    The weights are not touched. A metric of the same name is replaced (a rerun supersedes). ``command``
    (the ``hpm card`` call) is stored beside each new metric so the card can cite it. Returns the checkpoint's metrics after the update.
    """
    from .cards import model_card
    from .hub import CARD_NAME, CONFIG_NAME, read_config

    directory = Path(checkpoint)
    if not directory.is_dir():
        raise HPMError(f"{directory}: not a checkpoint directory")
    config = read_config(directory)
    for path in reports:
        report = load_report(path)
        for name, metric in report_metrics(report, path).items():
            config.metrics[name] = metric | ({"recorded_with": command} if command else {})
    (directory / CONFIG_NAME).write_text(json.dumps(asdict(config), indent=2) + "\n")
    (directory / CARD_NAME).write_text(model_card(config))
    return config.metrics


def comparison_rows(reports: list[tuple[str, EvalReport]]) -> list[dict]:
    """Flatten ``(label, report)`` pairs (a label may repeat, e.g. one model at several eps) into rows:
    label, protocol, eps, n, batch size, clean, robust, CI, and ``breaks``: the samples each attack broke
    first, in plan order (attacks that broke none left out)."""
    rows = []
    for label, rep in reports:
        for bs, r in rep.results.items():
            rows.append({"label": label, "protocol": protocol_name(rep), "eps": rep.config["attack"]["eps"],
                         "n": r["n"], "batch_size": int(bs), "clean": r["clean_accuracy"],
                         "robust": r["robust_accuracy"], "ci95": r["robust_ci95"],
                         "breaks": {a["name"]: a["first_broken"] for a in r["per_attack"] if a["first_broken"]}})
    return rows


def sample_results(report_json: str | Path, batch_size: int):
    """The per-sample results (:class:`hpm.evaluate.SampleResults`) at ``batch_size`` of one evaluation,
    from the ``.npz`` written beside its report."""
    from .evaluate import load_results

    _, results = load_results(Path(report_json).with_suffix(".npz"))
    if batch_size not in results:
        raise HPMError(f"{report_json}: no per-sample results at batch size {batch_size}")
    return results[batch_size]


def paired_robust(report_json: str | Path, batch_size: int) -> dict[int, bool]:
    """Per-sample worst-case outcomes of one evaluation, ``{dataset index: robust}``."""
    r = sample_results(report_json, batch_size)
    return {int(i): bool(v) for i, v, done in zip(r.indices, r.robust, r.done) if done}


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
    from scipy.stats import binomtest

    if a.keys() != b.keys():
        raise HPMError("paired test needs the same samples in both evaluations")
    a_only = sum(a[i] and not b[i] for i in a)
    b_only = sum(b[i] and not a[i] for i in a)
    p = binomtest(a_only, a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
    return {"n": len(a), "a_only": a_only, "b_only": b_only, "p_value": float(p)}


def protocol_gaps(rows: list[dict]) -> list[dict]:
    """Pair every APGD-CE-only row with the full-protocol row of the same label, eps, n and batch size.

    Each pair gives both robust accuracies, ``gap`` (how much APGD-CE alone overstates robustness), the
    full protocol's first ``breaks`` per attack, and the rows' report paths when they carry one (``path``),
    for :func:`missed_by_apgd_ce`.
    """
    full = {(r["label"], r["eps"], r["n"], r["batch_size"]): r for r in rows if r["protocol"] == FULL}
    gaps = []
    for r in rows:
        f = full.get((r["label"], r["eps"], r["n"], r["batch_size"]))
        if r["protocol"] == APGD_CE_ONLY and f is not None:
            gaps.append({"label": r["label"], "eps": r["eps"], "n": r["n"], "batch_size": r["batch_size"],
                         "apgd_ce": r["robust"], "full": f["robust"], "gap": r["robust"] - f["robust"],
                         "breaks": f["breaks"], "apgd_ce_path": r.get("path"), "full_path": f.get("path")})
    return gaps
