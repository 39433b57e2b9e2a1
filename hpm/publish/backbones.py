"""HPM against FC on every robust backbone the project has: one point per backbone, paired differences.

A ``backbones`` section of ``results/manifest.json`` lists one entry per backbone::

    {"kind": "backbones", "title": ..., "text": ..., "figure": "results/figures/backbones",
     "entries": [{"name": "ResNet-20 w32, 20 ep",                                  # short: the plot's label
                  "fc": ["results/eval/robust/e20-fc-full.json"],                  # one report or several
                  "hpm": ["results/eval/robust/e20-hpm-full.json", "results/eval/robust/e20-hpm-wholebatch.json"],
                  "diagnosis": "results/diagnosis/e20.json",                       # optional: the NCM - FC gap
                  "protocol": "full + APGD-T + whole-batch"}]}                     # optional: the attacks' name

A head's robust outcome on an image is the per-sample worst case over its reports (as ``hpm card --worst-case``
records it); its clean outcome is the same in every one of them. Each backbone is described by its FC robust
accuracy and by the clean-accuracy gap between the l2 nearest-class-mean head and FC on it (from the diagnosis,
:mod:`hpm.evaluation.diagnosis`); each gets HPM - FC in clean and in robust accuracy on the same images, with a
95% interval for a paired difference of proportions and the exact McNemar test. The feature width and the
architecture are read from the HPM checkpoint's ``config.json`` (an entry may give ``features`` and
``architecture`` for a checkpoint that is not a local folder); ``batch_size`` picks the evaluation batch size when
the HPM report has several.

    python scripts/plot_backbones.py     # writes each backbones section's figure (.html, plotly.min.js, .png)
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import binomtest, spearmanr

from ..checkpoint import read_config
from ..errors import HPMError
from ..evaluation.report import EvalReport
from ..sources.reference import SOURCE as REFERENCE, resolve_reference
from ..units import eps_text
from .compare import check_same_evaluation, combined_robust, mcnemar_exact, sample_results
from .metrics import load_report, pct, points, protocol_name, protocol_text, worst_case_protocol_name

DIAGNOSIS_FC, DIAGNOSIS_NCM = "fc", "ncm (clean class means)"  # the diagnosis rows of the NCM - FC gap


def newcombe_paired_ci(both: int, a_only: int, b_only: int, neither: int, level: float = 0.95) -> list[float]:
    """Confidence interval of ``p_a - p_b`` for two proportions measured on the same ``n`` items (paired).

    Newcombe's hybrid score interval for paired data (method 10 of R. G. Newcombe, "Improved confidence intervals
    for the difference between binomial proportions based on paired data", Statistics in Medicine 17:2635-2650,
    1998), as recommended and written out by M. W. Fagerland, S. Lydersen and P. Laake, "Recommended tests and
    confidence intervals for paired binomial proportions", Statistics in Medicine 33:2850-2875, 2014 (the
    "Newcombe square-and-add" interval). With Wilson score intervals ``[l_a, u_a]`` of ``p_a`` and ``[l_b, u_b]``
    of ``p_b`` and the estimated correlation ``phi`` of the two outcomes::

        lower = d - sqrt((p_a - l_a)^2 - 2 phi (p_a - l_a)(u_b - p_b) + (u_b - p_b)^2)
        upper = d + sqrt((u_a - p_a)^2 - 2 phi (u_a - p_a)(p_b - l_b) + (p_b - l_b)^2)

    where ``phi`` has numerator ``A = both * neither - a_only * b_only`` shrunk towards 0 by ``n / 2`` when
    positive (``A - n/2`` if ``A > n/2``, 0 if ``0 <= A <= n/2``, ``A`` if ``A < 0``) and is 0 when a margin is
    empty. The interval has no overshoot past [-1, 1] and is well defined when ``a_only = b_only = 0``.

    Args:
        both: items right under both; a_only / b_only: right under one only; neither: right under neither.
        level: confidence level.

    Returns:
        ``[lower, upper]``.

    Example:
        >>> [round(v, 4) for v in newcombe_paired_ci(0, 0, 0, 10)]
        [-0.2775, 0.2775]
    """
    counts = (both, a_only, b_only, neither)
    if min(counts) < 0 or sum(counts) == 0:
        raise HPMError(f"paired counts must be >= 0 with a positive total; got {counts}")
    n = sum(counts)
    k_a, k_b = both + a_only, both + b_only
    p_a, p_b = k_a / n, k_b / n
    (l_a, u_a), (l_b, u_b) = _wilson(k_a, n, level), _wilson(k_b, n, level)
    margins = (k_a, n - k_a, k_b, n - k_b)
    phi = 0.0
    if min(margins) > 0:
        a = both * neither - a_only * b_only
        phi = (a - n / 2 if a > n / 2 else 0.0 if a >= 0 else a) / math.sqrt(math.prod(margins))
    d = p_a - p_b
    lower = d - math.sqrt(max((p_a - l_a) ** 2 - 2 * phi * (p_a - l_a) * (u_b - p_b) + (u_b - p_b) ** 2, 0.0))
    upper = d + math.sqrt(max((u_a - p_a) ** 2 - 2 * phi * (u_a - p_a) * (p_b - l_b) + (p_b - l_b) ** 2, 0.0))
    return [lower, upper]


def _wilson(k: int, n: int, level: float) -> tuple[float, float]:
    ci = binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def paired_difference(a: dict[int, bool], b: dict[int, bool], level: float = 0.95) -> dict:
    """``a - b`` of two per-sample outcome maps ``{dataset index: correct}`` on the same samples: the estimate, its
    :func:`newcombe_paired_ci` interval and the exact McNemar test (:func:`hpm.publish.compare.mcnemar_exact`).

    Raises:
        HPMError: when the two cover different samples.
    """
    test = mcnemar_exact(a, b)  # refuses different samples
    both = sum(a[i] and b[i] for i in a)
    n = len(a)
    return {"delta": (test["a_only"] - test["b_only"]) / n, "ci": newcombe_paired_ci(
        both, test["a_only"], test["b_only"], n - both - test["a_only"] - test["b_only"], level), "test": test}


@dataclass
class BackboneRow:
    """One backbone: FC and HPM on the same ``n`` images, HPM's evaluation batch size ``batch_size``."""

    name: str
    architecture: str
    features: int  # d, the backbone's feature width
    dataset: str
    norm: str
    eps: float
    n: int
    batch_size: int
    order_seed: int | None  # HPM's evaluation order: None for dataset order
    protocol: str  # the entry's name for the attacks both heads faced, else HPM's reports' protocol name
    fc_clean: float
    fc_robust: float
    hpm_clean: float
    hpm_robust: float
    clean: dict  # paired_difference(HPM, FC) on clean correctness: delta, ci, test
    robust: dict  # the same on per-sample robustness
    ncm_gap: float | None  # NCM - FC clean accuracy from the diagnosis (None: no diagnosis)
    ncm_gap_n: int | None  # images of the diagnosis
    protocols: dict  # head -> (protocol name, [protocol line per report])
    fc_reports: list[str]
    hpm_reports: list[str]
    diagnosis: str | None


def _paths(entry: dict, key: str) -> list[str]:
    if key not in entry:
        raise HPMError(f"backbone {entry.get('name')!r}: no {key!r} report(s) given")
    return entry[key] if isinstance(entry[key], list) else [entry[key]]


def _head_outcomes(root: Path, name: str, head: str, paths: list[str], batch_size: int) -> tuple[dict, dict]:
    """``(clean, robust)`` per-sample outcomes of one head's reports at ``batch_size``: clean correctness (the same
    in every report) and the per-sample worst case over them."""
    check_same_evaluation({p: load_report(root / p) for p in paths}, f"backbone {name!r}, {head} reports: ")
    cleans = []
    for path in paths:
        r = sample_results(root / path, batch_size)
        cleans.append({int(i): bool(c) for i, c, done in zip(r.indices, r.clean_correct, r.done) if done})
    if any(c != cleans[0] for c in cleans):
        raise HPMError(f"backbone {name!r}: the {head} reports disagree on which images are classified correctly: "
                       "not the same model on the same images")
    return cleans[0], combined_robust([root / p for p in paths], batch_size)


def _batch_size(name: str, hpm: EvalReport, fc: EvalReport, fc_path: Path, wanted: int | None) -> tuple[int, int]:
    """HPM's evaluation batch size and the one FC's per-sample results are read at (any, for a per-sample FC)."""
    if wanted is None:
        if len(hpm.results) != 1:
            raise HPMError(f"backbone {name!r}: the HPM report has batch sizes {', '.join(hpm.results)}; "
                           "give the entry a batch_size")
        wanted = int(next(iter(hpm.results)))
    if str(wanted) not in hpm.results:
        raise HPMError(f"backbone {name!r}: the HPM report has no batch size {wanted} ({', '.join(hpm.results)})")
    if str(wanted) in fc.results:
        return wanted, wanted
    if fc.model_info.get("batch_dependent", True):
        raise HPMError(f"backbone {name!r}: {fc_path} has no results at batch size {wanted} and its model may "
                       "depend on the batch")
    return wanted, int(next(iter(fc.results)))


def _check_same_protocol(name: str, fc: EvalReport, hpm: EvalReport) -> None:
    """FC and HPM faced the same radius, data, order and attack budget (refuses otherwise)."""
    def budget(r: EvalReport) -> dict:
        a = r.config.attack
        return {"norm": a.norm, "eps": a.eps, "data": r.config.data.get("source"),
                "evaluation order seed": r.config.order_seed, "APGD iterations": a.n_iter,
                "restarts": a.n_restarts, "Square queries": a.square_queries}

    mine, theirs = budget(hpm), budget(fc)
    differs = {k: (v, theirs[k]) for k, v in mine.items() if v != theirs[k]}
    if differs:
        raise HPMError(f"backbone {name!r}: FC and HPM were not evaluated alike ({differs}; HPM vs FC)")


def _describe(root: Path, entry: dict, hpm: EvalReport) -> tuple[str, int]:
    """The architecture and feature width d, from the entry or the HPM checkpoint's ``config.json``."""
    if "features" in entry and "architecture" in entry:
        return entry["architecture"], int(entry["features"])
    folder = root / hpm.model
    if not (folder / "config.json").is_file():
        raise HPMError(f"backbone {entry['name']!r}: {hpm.model} is not a checkpoint folder here; give the entry "
                       "'features' and 'architecture'")
    config = read_config(folder)
    spec = config.backbone
    if spec.get("source") == REFERENCE:  # the head names the checkpoint that stores its backbone: describe that one
        beside = folder.parent / spec["name"]  # a shipped name, read from this root's checkpoints first
        spec = read_config(beside if beside.is_dir() else resolve_reference(spec["name"], folder)).backbone
    options = ", ".join(f"{k} {v}" for k, v in spec.get("options", {}).items() if k not in ("num_classes",
                                                                                             "classifier"))
    return (entry.get("architecture") or f"{spec['source']}:{spec['name']}" + (f" ({options})" if options else ""),
            int(entry.get("features") or config.head["num_features"]))


def ncm_gap(root: Path, path: str, fc_model: str) -> tuple[float, int]:
    """NCM - FC clean accuracy of a diagnosis file and its number of images; refuses a diagnosis of another
    backbone than ``fc_model`` (the FC report's model)."""
    file = root / path
    if not file.is_file():
        raise HPMError(f"{path}: no such diagnosis file")
    data = json.loads(file.read_text())
    if Path(data["backbone"]) != Path(fc_model):
        raise HPMError(f"{path}: a diagnosis of {data['backbone']}, not of the FC report's {fc_model}")
    models = data["models"]
    for key in (DIAGNOSIS_FC, DIAGNOSIS_NCM):
        if key not in models or models[key]["batch_dependent"]:
            raise HPMError(f"{path}: no per-sample {key!r} row")
    largest = str(data["batch_sizes"][-1])
    accuracy = {k: models[k]["curve"][largest]["accuracy"] for k in (DIAGNOSIS_FC, DIAGNOSIS_NCM)}
    return accuracy[DIAGNOSIS_NCM] - accuracy[DIAGNOSIS_FC], int(data["test"]["n"])


def backbone_row(root: Path, entry: dict) -> BackboneRow:
    """One manifest entry's row (see the module docstring).

    Raises:
        HPMError: when FC and HPM cover other images, another radius or budget, a head's reports are not of one
            model on the same images, or the diagnosis is of another backbone.
    """
    name = entry["name"]
    fc_paths, hpm_paths = _paths(entry, "fc"), _paths(entry, "hpm")
    fc_reports = [load_report(root / p) for p in fc_paths]
    hpm_reports = [load_report(root / p) for p in hpm_paths]
    _check_same_protocol(name, fc_reports[0], hpm_reports[0])
    bs, fc_bs = _batch_size(name, hpm_reports[0], fc_reports[0], root / fc_paths[0], entry.get("batch_size"))
    fc_clean, fc_robust = _head_outcomes(root, name, "FC", fc_paths, fc_bs)
    hpm_clean, hpm_robust = _head_outcomes(root, name, "HPM", hpm_paths, bs)
    if hpm_clean.keys() != fc_clean.keys():
        raise HPMError(f"backbone {name!r}: FC and HPM were evaluated on other images ({len(fc_clean)} vs "
                       f"{len(hpm_clean)} images, {len(fc_clean.keys() & hpm_clean.keys())} in common)")
    gap, gap_n = ncm_gap(root, entry["diagnosis"], fc_reports[0].model) if entry.get("diagnosis") else (None, None)
    architecture, features = _describe(root, entry, hpm_reports[0])
    attack, protocols = hpm_reports[0].config.attack, {"FC": _protocol(fc_reports), "HPM": _protocol(hpm_reports)}
    share = {k: sum(v.values()) / len(v) for k, v in (("fc_clean", fc_clean), ("fc_robust", fc_robust),
                                                       ("hpm_clean", hpm_clean), ("hpm_robust", hpm_robust))}
    config = hpm_reports[0].config
    return BackboneRow(name, architecture, features, config.data.get("dataset", ""), attack.norm, attack.eps,
                       len(fc_clean), bs, config.order_seed, entry.get("protocol") or protocols["HPM"][0], **share,
                       clean=paired_difference(hpm_clean, fc_clean), robust=paired_difference(hpm_robust, fc_robust),
                       ncm_gap=gap, ncm_gap_n=gap_n, protocols=protocols, fc_reports=list(fc_paths),
                       hpm_reports=list(hpm_paths), diagnosis=entry.get("diagnosis"))


def _protocol(reports: list[EvalReport]) -> tuple[str, list[str]]:
    name = worst_case_protocol_name(reports) if len(reports) > 1 else protocol_name(reports[0])
    return name, [protocol_text(r) for r in reports]


def backbone_rows(root: Path, entries: list[dict]) -> list[BackboneRow]:
    """The rows of a ``backbones`` section, in the manifest's order; every backbone under one radius and norm."""
    rows = [backbone_row(root, e) for e in entries]
    radii = {(r.norm, r.eps) for r in rows}
    if len(radii) > 1:
        raise HPMError(f"backbones evaluated under different threat models ({sorted(radii)}): one section, one radius")
    return rows


def _delta(d: dict) -> str:
    return f"{points(d['delta'])} [{points(d['ci'][0])}, {points(d['ci'][1])}]"


def _p(test: dict) -> str:
    return f"{test['p_value']:.2g} ({test['a_only']} HPM only, {test['b_only']} FC only)"


def backbones_table(rows: list[BackboneRow]) -> list[str]:
    """The table: one row per backbone, differences HPM - FC in points with their paired intervals."""
    lines = ["| backbone | architecture | d | protocol | n | eval bs (HPM) | FC clean % | FC robust % "
             "| NCM − FC clean (diagnosis) | HPM − FC clean [95% CI] | McNemar p, clean "
             "| HPM − FC robust [95% CI] | McNemar p, robust |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        gap = "not measured" if r.ncm_gap is None else f"{points(r.ncm_gap)} (n {r.ncm_gap_n})"
        order = "" if r.order_seed is None else f" (order seed {r.order_seed})"
        lines.append(f"| {r.name} | {r.architecture} | {r.features} | {r.protocol} | {r.n} | {r.batch_size}{order} | "
                     f"{pct(r.fc_clean)} | {pct(r.fc_robust)} | {gap} | {_delta(r.clean)} | "
                     f"{_p(r.clean['test'])} | {_delta(r.robust)} | {_p(r.robust['test'])} |")
    return lines


def _names(names: list[str], total: int) -> str:
    if len(names) == total:
        return {1: "the one backbone", 2: "both backbones"}.get(total, f"all {total} backbones")
    return " and ".join(f"{n}" for n in names)


def _verdicts(rows: list[BackboneRow], key: str) -> str:
    """Where HPM - FC in ``key`` accuracy lies, by whether each 95% interval excludes zero."""
    groups: dict[str, list[str]] = {}
    for r in rows:
        lo, hi = getattr(r, key)["ci"]
        groups.setdefault("below" if hi < 0 else "above" if lo > 0 else "zero", []).append(r.name)
    texts = {"below": "below FC's on {} (95% interval below zero)",
             "above": "above FC's on {} (95% interval above zero)",
             "zero": "not distinguishable from FC's on {} (95% interval includes zero)"}
    return "; ".join(texts[v].format(_names(names, len(rows))) for v, names in groups.items())


def _count(k: int) -> str:
    return dict(enumerate("zero one two three four five six seven eight nine".split())).get(k, str(k))


def _architectures(rows: list[BackboneRow]) -> str:
    archs = list(dict.fromkeys(r.architecture for r in rows))
    if len(archs) == 1:
        return f"one architecture, {archs[0]}"
    return f"{_count(len(archs))} architectures ({'; '.join(archs)})"


def _trend(rows: list[BackboneRow]) -> str:
    """What the points say about a trend of the robust difference with the backbone's FC robust accuracy."""
    ordered = sorted(rows, key=lambda r: r.fc_robust)
    if len(rows) == 1:
        return "One backbone is one point: it says nothing about a trend with backbone robustness."
    smallest_p = 2 / math.factorial(len(rows))  # two-sided exact permutation test: a perfect rank order
    if smallest_p >= 0.05:
        overlap = max(r.robust["ci"][0] for r in rows) <= min(r.robust["ci"][1] for r in rows)
        return (f"{_count(len(rows)).capitalize()} backbones are too few to test a trend with backbone robustness "
                f"(even a perfect rank order would have permutation p = {smallest_p:.2g}): HPM − FC robust is "
                + ", ".join(f"{points(r.robust['delta'])} points at FC robust {pct(r.fc_robust)}% ({r.name})"
                            for r in ordered)
                + (", and their 95% intervals overlap." if overlap
                   else ", and not all their 95% intervals overlap, yet so few points still make no trend."))
    x = np.array([r.fc_robust for r in rows])
    y = np.array([r.robust["delta"] for r in rows])
    rho, p = rank_correlation_test(x, y)
    return (f"Over the {len(rows)} backbones the rank correlation of HPM − FC robust with FC robust accuracy is "
            f"ρ = {rho:+.2f} (permutation p = {p:.2g}, on the point estimates alone): "
            + ("a monotone trend at the 5% level." if p < 0.05 else "no monotone trend at the 5% level."))


def rank_correlation_test(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Spearman's rank correlation of ``x`` and ``y`` and its two-sided permutation p-value: exact (every pairing)
    up to 8 points, else 9,999 random pairings (seed 0) with the observed one counted in."""
    rho = float(spearmanr(x, y)[0])
    if len(x) <= 8:
        stats = [spearmanr(x, np.array(perm))[0] for perm in itertools.permutations(y)]
    else:
        rng = np.random.default_rng(0)
        stats = [rho] + [spearmanr(x, rng.permutation(y))[0] for _ in range(9999)]
    return rho, float(np.mean(np.abs(stats) >= abs(rho) - 1e-12))


def finding_lines(rows: list[BackboneRow]) -> list[str]:
    """Plain sentences generated from the rows: what they support, and what they do not."""
    dataset = ", ".join(dict.fromkeys(r.dataset.upper().replace("CIFAR", "CIFAR-") for r in rows))
    threat = f"{rows[0].norm} ε = {eps_text(rows[0].eps)}"
    low, high = min(r.fc_robust for r in rows), max(r.fc_robust for r in rows)
    span = f"{pct(low)}%" if low == high else f"{pct(low)}–{pct(high)}%"
    archs = len({r.architecture for r in rows})
    gaps = [r for r in rows if r.ncm_gap is not None]
    supported = (f"**What these numbers support.** On {_count(len(rows))} backbone{'s' * (len(rows) > 1)} of "
                 f"{_architectures(rows)}, {dataset}, {threat}: HPM's clean accuracy is {_verdicts(rows, 'clean')}; "
                 f"its robust accuracy is {_verdicts(rows, 'robust')}.")
    if gaps:
        signs = {"below": [r for r in gaps if r.ncm_gap < 0],
                 "above or level with": [r for r in gaps if r.ncm_gap >= 0]}
        supported += (" In the diagnoses (on their own images), the l2 nearest-class-mean head's clean accuracy is "
                       + "; ".join(f"{where} FC's on {_names([r.name for r in rs], len(rows))} ("
                                   + ", ".join(f"{points(r.ncm_gap)} points" for r in rs) + ")"
                                   for where, rs in signs.items() if rs) + ".")
    if len({r.protocol for r in rows}) > 1:
        supported += (" The backbones were not attacked alike (" + "; ".join(f"{r.name}: {r.protocol}" for r in rows)
                      + "), and more attacks can only lower a head's robust accuracy.")
    unsupported = (f"**What they do not support.** {_trend(rows)} Nothing here speaks for "
                   + ("other architectures" if archs == 1 else "architectures not listed")
                   + f", for backbones whose FC robust accuracy lies outside {span}, or for other datasets and radii.")
    return [supported, "", unsupported]


def backbones_lines(root: Path, section: dict) -> list[str]:
    """The lines of a ``backbones`` section: the table, how to read it, the figure, the findings, the protocols
    (``compact``: the figure and the findings only)."""
    rows = backbone_rows(root, section["entries"])
    if not rows:
        return ["_No backbone measured yet._"]
    png = f"{section['figure']}.png" if section.get("figure") else None
    figure = ([f"![HPM − FC in clean and robust accuracy against each backbone's FC robust accuracy]({png}) "
               f"([interactive]({section['figure']}.html))"] if png and (root / png).is_file() else [])
    if section.get("compact"):
        return figure + ["", *finding_lines(rows)]
    lines = backbones_table(rows) + [
        "", f"Accuracy in %, differences HPM − FC in percentage points, on the same n lossless test images per "
            f"backbone (FC and HPM), {rows[0].norm} ε = {eps_text(rows[0].eps)}; HPM at the evaluation batch size of "
            "its row, in dataset order unless the row names an order seed; robust = per-sample worst case over every "
            "attack of the head's reports. Intervals: Newcombe's hybrid score interval for a paired difference of "
            "proportions (95%); p: exact McNemar test on the same images. NCM − FC clean: the diagnosis's l2 "
            "nearest-class-mean head on the clean class means minus FC, on its own n test images."]
    if figure:
        lines += ["", *figure]
    lines += ["", *finding_lines(rows), "", "Protocols, as the reports record them:", ""]
    for r in rows:
        for head, paths in (("FC", r.fc_reports), ("HPM", r.hpm_reports)):
            lines.append(f"- {r.name}, {head}: {'; '.join(r.protocols[head][1])} (`{'`, `'.join(paths)}`)")
        if r.diagnosis:
            lines.append(f"- {r.name}, NCM − FC clean: `{r.diagnosis}`")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Write the figure of every ``backbones`` section of the manifest (``--no-png``: HTML only)."""
    from dataclasses import asdict

    from ..plots import backbones_figure
    from .figures import plot_sections

    def figure(root: Path, section: dict):
        return backbones_figure([asdict(r) for r in backbone_rows(root, section["entries"])], title=section["title"])

    return plot_sections("backbones", figure, description="Plot HPM − FC against each robust backbone of the results "
                         "manifest.", width=1200, height=560, argv=argv)
