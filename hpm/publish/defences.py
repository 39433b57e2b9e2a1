"""One comparison of defences on one backbone under one protocol: clean and robust accuracy with exact 95%
intervals, and exact McNemar tests against a baseline on the same images.

A ``defences`` section of ``results/manifest.json`` lists its rows::

    {"kind": "defences", "title": ..., "text": ..., "figure": "results/figures/defences",
     "entries": [{"label": "FC", "reports": ["results/eval/robust/fc.json"]},        # the first: the baseline
                 {"label": "mixed, alpha 0.8", "group": "mixed classifier", "point": "α = 0.8", "reports": [...]},
                 {"label": "Adv-DPNP", "missing": "why it has no numbers yet"}]}

A section may also set its mixtures beside their authors' published trade-off (:mod:`.tradeoff`).

A row's robust accuracy is the per-sample worst case over its reports (one model, the same images). Every
measured row must share the baseline's images, radius and attack budget, or the comparison refuses to be drawn.

    python scripts/plot_defences.py      # writes each defences section's figure (.html, plotly.min.js, .png)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import HPMError
from ..evaluation.report import EvalReport, clopper_pearson
from ..units import eps_text
from .compare import check_same_evaluation, combined_robust, mcnemar_exact, sample_results
from .metrics import load_report, protocol_text


@dataclass
class DefenceRow:
    """One measured defence: its accuracies over ``n`` images and its paired tests against the baseline."""

    label: str
    group: str  # rows of one group (an alpha sweep) are drawn as one curve
    point: str  # the row's name on that curve (its label where it has no group)
    n: int
    batch_size: int
    clean: float
    clean_ci: list[float]
    robust: float
    robust_ci: list[float]
    clean_test: dict  # mcnemar_exact(this, baseline) on per-sample clean correctness
    robust_test: dict  # the same on per-sample robustness
    reports: list[str]


def _budget(report: EvalReport) -> dict:
    a = report.config.attack
    return {"norm": a.norm, "eps": a.eps, "APGD iterations": a.n_iter, "restarts": a.n_restarts,
            "Square queries": a.square_queries, "APGD-T target classes": a.n_target_classes,
            "data": report.config.data.get("source"), "evaluation order seed": report.config.order_seed}


def _clean(path: Path, batch_size: int) -> dict[int, bool]:
    r = sample_results(path, batch_size)
    return {int(i): bool(c) for i, c, done in zip(r.indices, r.clean_correct, r.done) if done}


def defence_rows(root: Path, entries: list[dict], batch_size: int | None = None) -> list[DefenceRow]:
    """The measured rows of a ``defences`` section (entries marked ``missing`` are skipped), the first entry the
    baseline every other is tested against, at evaluation ``batch_size`` (default: the baseline report's, when it
    has one).

    Raises:
        HPMError: when a row's reports cover other images, another radius or another attack budget than the
            baseline's, or have no complete results at ``batch_size``.
    """
    measured = [e for e in entries if "missing" not in e]
    if not measured:
        return []
    base_paths = [root / p for p in measured[0]["reports"]]
    base_report = load_report(base_paths[0])
    if batch_size is None:
        if len(base_report.results) != 1:
            raise HPMError(f"{base_paths[0]}: evaluated at batch sizes {', '.join(base_report.results)}; name one")
        batch_size = int(next(iter(base_report.results)))
    base_budget = _budget(base_report)
    base_clean, base_robust = _clean(base_paths[0], batch_size), combined_robust(base_paths, batch_size)
    rows = []
    for entry in measured:
        paths = [root / p for p in entry["reports"]]
        reports = {path: load_report(path) for path in paths}
        check_same_evaluation(reports, f"{entry['label']}: ")  # a row's reports join per sample
        budget = _budget(reports[paths[0]])
        if budget != base_budget:
            differs = {k: (v, base_budget[k]) for k, v in budget.items() if v != base_budget[k]}
            raise HPMError(f"{entry['label']}: not the baseline's protocol ({differs}; this vs baseline)")
        clean, robust = _clean(paths[0], batch_size), combined_robust(paths, batch_size)
        if clean.keys() != base_clean.keys():
            raise HPMError(f"{entry['label']}: evaluated on other images than the baseline")
        n, k_clean, k_robust = len(clean), sum(clean.values()), sum(robust.values())
        rows.append(DefenceRow(entry["label"], entry.get("group", entry["label"]), entry.get("point", entry["label"]),
                               n, batch_size, k_clean / n,
                               clopper_pearson(k_clean, n), k_robust / n, clopper_pearson(k_robust, n),
                               mcnemar_exact(clean, base_clean), mcnemar_exact(robust, base_robust),
                               list(entry["reports"])))
    return rows


def _interval(value: float, ci: list[float]) -> str:
    return f"{100 * value:.1f} ({100 * ci[0]:.1f}–{100 * ci[1]:.1f})"


def _test(test: dict, baseline: str) -> str:
    return f"{test['p_value']:.2g} ({test['a_only']} here only, {test['b_only']} {baseline} only)"


def defences_table(root: Path, section: dict, rows: list[DefenceRow] | None = None) -> list[str]:
    """The README lines of a ``defences`` section: the table, the rows not measured and why, the protocol
    (``rows``: its :func:`defence_rows`, when the caller has them)."""
    rows = defence_rows(root, section["entries"], section.get("batch_size")) if rows is None else rows
    if not rows:
        return ["_No defence measured yet._"]
    base = rows[0]
    lines = [f"| defence | n | eval bs | clean % (95% CI) | robust % (95% CI) | Δ robust vs {base.label} | "
             f"McNemar p, clean vs {base.label} | McNemar p, robust vs {base.label} |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        paired = ["–"] * 3 if r is base else [f"{100 * (r.robust - base.robust):+.1f}",
                                             _test(r.clean_test, base.label), _test(r.robust_test, base.label)]
        lines.append(f"| {r.label} | {r.n} | {r.batch_size} | {_interval(r.clean, r.clean_ci)} | "
                     f"{_interval(r.robust, r.robust_ci)} | " + " | ".join(paired) + " |")
    for e in section["entries"]:
        if "missing" in e:
            lines.append(f"| {e['label']} | – | – | not measured | not measured | – | – | – |")
    config = load_report(root / base.reports[0]).config
    order = "dataset order" if config.order_seed is None else f"the order of seed {config.order_seed}"
    lines += ["", f"Same {base.n} lossless test images for every row, ε = {eps_text(config.attack.eps)}, "
                  f"evaluation batch size {base.batch_size} in {order}; robust = per-sample worst case over every "
                  "attack of the row's reports; intervals are exact (Clopper–Pearson); p-values are exact McNemar "
                  f"tests on the same images against {base.label}."]
    if section.get("figure"):
        lines.append(f"Figure: [{section['figure']}.png]({section['figure']}.png) "
                     f"([interactive]({section['figure']}.html)).")
    missing = [e for e in section["entries"] if "missing" in e]
    if missing:
        lines += ["", "Not measured yet:", ""] + [f"- **{e['label']}**: {e['missing']}" for e in missing]
    lines += ["", "Protocols, as the reports record them:", ""]
    lines += [f"- {r.label}: {'; '.join(protocol_text(load_report(root / p)) for p in r.reports)} "
              f"(`{'`, `'.join(r.reports)}`)" for r in rows]
    return lines


def main(argv: list[str] | None = None) -> int:
    """Write the figure of every ``defences`` section of the manifest (``--no-png``: HTML only)."""
    from dataclasses import asdict

    from ..plots import defences_figure
    from .figures import plot_sections

    def figure(root: Path, section: dict):
        rows = defence_rows(root, section["entries"], section.get("batch_size"))
        return defences_figure([asdict(r) for r in rows], title=section["title"])

    return plot_sections("defences", figure, description="Plot clean vs robust accuracy of each defences section of "
                         "the results manifest.", width=1000, height=700, argv=argv)
