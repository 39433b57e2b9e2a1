"""The evaluation report: typed dataclasses, written as JSON (validated when read) and as Markdown."""
from __future__ import annotations

import json
import platform
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import binomtest

from ..attacks import AttackSpec
from ..errors import HPMError
from ..version import __version__
from .config import AttackConfig
from .samples import SampleResults

FORMAT_VERSION = 2  # 1: before per_target was one key for both schedules (hpm reads both)
ORDER_NOTE = ("samples in subset order, split into consecutive batches of the evaluation batch size; in each "
              "batch the attacked samples share every forward pass with the batch's other samples (clean)")


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "hpm": __version__}  # installed as hybrid-prototype-mixing
    for name in ("torch", "torchvision", "pyautoattack", "robustbench", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def clopper_pearson(k: int, n: int, level: float = 0.95) -> list[float]:
    """Exact binomial confidence interval of a proportion ``k / n`` (scipy)."""
    if n == 0:
        return [0.0, 1.0]
    ci = binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
    return [float(ci.low), float(ci.high)]


def _build(cls, data: Any, where: str):
    """``cls(**data)`` after checking that ``data`` is an object with exactly ``cls``'s required/known keys."""
    if not isinstance(data, dict):
        raise HPMError(f"{where}: expected an object, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
    if set(data) - known or required - set(data):
        raise HPMError(f"{where}: unknown keys {sorted(set(data) - known)}, "
                       f"missing keys {sorted(required - set(data))}")
    return cls(**data)


@dataclass
class Check:
    """One sanity check of an evaluation (:mod:`hpm.evaluation.checks`)."""

    name: str
    passed: bool | None  # None: not applicable / skipped
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class AttackSummary:
    """What one attack of the plan did at one evaluation batch size."""

    name: str  # e.g. "apgd-ce/ensemble"
    kind: str  # "apgd" or "square"
    surrogates: list[str]  # forward modes whose summed loss APGD followed
    attacked: int  # samples the attack ran on
    broken: int  # of those, samples it made the deployed model misclassify
    first_broken: int  # samples no earlier attack of the plan had broken
    seconds: float  # wall time
    robust_accuracy_after: float  # robust accuracy after this attack and every earlier one
    robust_accuracy_alone: float | None = None  # this attack alone (independent schedule only)


@dataclass
class BatchSizeResult:
    """The numbers of one evaluation batch size, computed from per-sample outcomes."""

    batch_size: int
    n: int  # samples evaluated
    n_planned: int  # samples in the subset
    clean_accuracy: float
    robust_accuracy: float  # per-sample worst case over every attack
    robust_ci95: list[float]  # Clopper-Pearson interval of robust_accuracy
    per_attack: list[AttackSummary]
    # robust accuracy against each target's attacks (Square: "square"): under the independent schedule each
    # target's attacks alone; under the cumulative one, on the samples earlier attacks of the plan left
    per_target: dict[str, float]
    broken_only_by_black_box: int  # samples Square broke that no gradient attack did
    # samples an attack on a transfer target (a mixture's branch alone) broke, that end-to-end gradient attacks ran
    # on and missed; None without transfer attacks (and in reports older than this count)
    broken_only_by_transfer: int | None = None

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "BatchSizeResult":
        result = _build(cls, d, where)
        result.per_attack = [_build(AttackSummary, a, f"{where}.per_attack[{i}]")
                             for i, a in enumerate(d["per_attack"])]
        return result


@dataclass
class EvalConfig:
    """How the evaluation was run."""

    attack: AttackConfig
    batch_sizes: list[int]
    data: dict  # dataset, split, source, n, subset
    device: str

    @property
    def order_seed(self) -> int | None:
        """The seed of the shuffled evaluation order, or None for the subset's own order."""
        subset = self.data.get("subset")
        return subset.get("order_seed") if isinstance(subset, dict) else None

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "EvalConfig":
        config = _build(cls, d, where)
        attack = d["attack"]
        if isinstance(attack, dict):  # settings a report lacks predate them: APGD-T in the default plan, and the
            attack = {"targeted": False, "batch_kappa": None} | attack  # clamped, twice-judged whole-batch attack
        config.attack = _build(AttackConfig, attack, f"{where}.attack")
        return config


WRONG_NUMBER_CHECKS = (  # checks whose failure means wrong numbers
    "clean_matches_card", "batch_independent", "input_convention", "randomness_averaged", "stateless_forward")


@dataclass
class EvalReport:
    """Everything an evaluation measured and how: config, versions, per-batch-size results, checks."""

    model: str  # checkpoint path, Hub id or source string
    model_info: dict  # head type, backbone, dataset, batch dependence
    config: EvalConfig
    plan: list[AttackSpec]  # the attacks in order
    results: dict[str, BatchSizeResult]  # evaluation batch size -> its numbers
    checks: list[Check] = field(default_factory=list)  # sanity checks
    command: str | None = None  # the command line that produced the report, when run from the CLI
    versions: dict = field(default_factory=package_versions)
    evaluation_order: str = ORDER_NOTE
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    format_version: int = FORMAT_VERSION

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(asdict(self), indent=2) + "\n"
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls, d: dict, where: str = "report") -> "EvalReport":
        """A report from its JSON object, validated; reports of format 1 are read too."""
        d = _upgrade(d) if isinstance(d, dict) else d
        if isinstance(d, dict) and d.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise HPMError(f"{where}: report format {d['format_version']} is newer than this hpm reads; upgrade hpm")
        report = _build(cls, d, where)
        report.checks = [_build(Check, c, f"{where}.checks[{i}]") for i, c in enumerate(d.get("checks", []))]
        report.config = EvalConfig.from_dict(d["config"], f"{where}.config")
        report.plan = [AttackSpec(p["name"], p["kind"], p["loss"], tuple(p["surrogates"]),
                                  p.get("whole_batch", p["name"].startswith("batch:"))) for p in d["plan"]]
        report.results = {str(bs): BatchSizeResult.from_dict(r, f"{where}.results[{bs}]")
                          for bs, r in d["results"].items()}
        return report

    @classmethod
    def from_json(cls, path: str | Path) -> "EvalReport":
        """Read and validate a report; a file that is not one raises :class:`hpm.HPMError`."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise HPMError(f"{path}: no such evaluation report") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise HPMError(f"{path}: not an hpm evaluation report ({e})") from None
        try:
            return cls.from_dict(data, str(path))
        except HPMError as e:
            raise HPMError(f"not an hpm evaluation report: {e}") from None
        except (KeyError, TypeError, AttributeError) as e:
            raise HPMError(f"{path}: not an hpm evaluation report ({type(e).__name__}: {e})") from None

    def worst_case(self) -> dict[int, float]:
        """Robust accuracy per evaluation batch size."""
        return {int(bs): r.robust_accuracy for bs, r in self.results.items()}

    def to_markdown(self) -> str:
        """The report as a Markdown page: settings, results per batch size, attacks, checks, versions."""
        lines = self._markdown_header()
        for bs, r in self.results.items():
            lines += _attack_table(bs, r)
        if self.checks:
            lines += ["", "## Sanity checks", "", "| check | result | detail |", "| --- | --- | --- |"]
            for ch in self.checks:
                verdict = {True: "pass", False: "**FLAG**", None: "skipped"}[ch.passed]
                lines.append(f"| {ch.name} | {verdict} | {ch.detail} |")
        if self.command:
            lines += ["", f"Command: `{self.command}`"]
        lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in self.versions.items()), ""]
        return "\n".join(lines)

    @property
    def wrong_number_checks(self) -> list[Check]:
        """The failed checks that say the numbers are wrong, not weak (:data:`WRONG_NUMBER_CHECKS`)."""
        return [c for c in self.checks if c.passed is False and c.name.startswith(WRONG_NUMBER_CHECKS)]

    def _markdown_header(self) -> list[str]:
        a, data = self.config.attack, self.config.data
        lines = [f"# Robustness report: `{self.model}`", "",
                 *(f"**These numbers are probably wrong: check {c.name} failed: {c.detail}.**\n"
                   for c in self.wrong_number_checks),
                 f"- head: **{self.model_info.get('head', 'n/a')}**, "
                 f"backbone: {self.model_info.get('backbone', 'n/a')}",
                 f"- data: {data.get('source', 'tensors passed by the caller')}, subset {data.get('subset', 'all')}, "
                 f"n = {data.get('n', next(iter(self.results.values())).n_planned if self.results else 0)}",
                 f"- threat model: {a.norm}, eps = {a.eps:.6g} ({a.eps * 255:.3g}/255); APGD {a.n_iter} iterations x "
                 f"{a.n_restarts} restart(s)"
                 + (f", each step's gradient averaged over {a.eot_iter} passes (EOT)" if a.eot_iter > 1 else "")
                 + f"; Square {a.square_queries} queries; schedule: {a.schedule}; seed {a.seed}"
                 + (f"; batch: attacks clamped per row at margin {a.batch_kappa:g} and judged both ways"
                    if a.batch_kappa is not None and any(p.whole_batch for p in self.plan) else ""),
                 *self._declaration_note(),
                 f"- evaluation order: {self.evaluation_order}", *self._batch_dependence_note(), "",
                 "| eval batch size | n | clean | robust (worst case) | 95% CI |", "| --- | --- | --- | --- | --- |"]
        for bs, r in self.results.items():
            lo, hi = r.robust_ci95
            lines.append(f"| {bs} | {r.n} | {100 * r.clean_accuracy:.1f}% | {100 * r.robust_accuracy:.1f}% "
                         f"| {100 * lo:.1f}–{100 * hi:.1f}% |")
        return lines

    def _declaration_note(self) -> list[str]:
        """What the caller declared about a model hpm does not know (:class:`hpm.Defence`)."""
        declared = self.model_info.get("declared")
        if not declared:
            return []
        surrogates = ", ".join(declared.get("surrogates") or []) or "none"
        deployed = "attacked end to end by APGD" if declared.get("deployed_attacked_by_gradient") else \
            "no input gradient: attacked through the surrogates and by Square"
        return [f"- declared: batch-dependent {'yes' if declared.get('batch_dependent') else 'no'}; surrogates: "
                f"{surrogates}; deployed model: {deployed}; every adversarial batch judged on the deployed model"]

    def _batch_dependence_note(self) -> list[str]:
        """A batch-dependent head's report says that its numbers hold for its batch sizes and order only."""
        if not self.model_info.get("batch_dependent"):
            return []
        seed = self.config.order_seed
        order = "dataset order" if seed is None else f"an order shuffled with seed {seed}"
        sizes = ", ".join(self.results)
        return [f"- **batch-dependent model**: every number below holds for its evaluation batch size ({sizes}) and "
                f"{order} only" + (": one batch size measured, not a curve" if len(self.results) == 1 else "")]


def _attack_table(bs: str, r: BatchSizeResult) -> list[str]:
    alone = bool(r.per_attack) and r.per_attack[0].robust_accuracy_alone is not None
    lines = ["", f"## Attacks at batch size {bs}", "",
             "| attack | attacked | broken | first broken | robust after" + (" | robust alone" if alone else "")
             + " | time (s) |", "| --- | --- | --- | --- | --- |" + (" --- |" if alone else "") + " --- |"]
    for a in r.per_attack:
        lines.append(f"| {a.name} | {a.attacked} | {a.broken} | {a.first_broken} | "
                     f"{100 * a.robust_accuracy_after:.1f}% |"
                     + (f" {100 * a.robust_accuracy_alone:.1f}% |" if alone else "") + f" {a.seconds:.1f} |")
    return lines


def _upgrade(d: dict) -> dict:
    """A format-1 report object in format 2: ``per_target_cumulative`` was the cumulative schedule's name for
    ``per_target``; ``robust_accuracy_alone`` was left out rather than null; ``model_info`` had a context size."""
    if d.get("format_version", 1) != 1:
        return d
    d = json.loads(json.dumps(d))  # a deep copy
    d.get("model_info", {}).pop("context_size", None)
    for r in (d.get("results") or {}).values():
        if isinstance(r, dict) and "per_target_cumulative" in r:
            r["per_target"] = r.pop("per_target_cumulative")
        for a in r.get("per_attack", []) if isinstance(r, dict) else []:
            a.setdefault("robust_accuracy_alone", None)
    d["format_version"] = FORMAT_VERSION
    return d


def summarise(r: SampleResults, plan: list[AttackSpec], schedule: str,
              transfer_targets: tuple[str, ...] | list[str] = ()) -> BatchSizeResult:
    """The numbers of one batch size, computed from per-sample outcomes (done samples only); attacks on
    ``transfer_targets`` (a mixture's branches alone) are transfer attacks, the other gradient attacks end to end."""
    done, n = r.done, int(r.done.sum())
    correct = r.clean_correct & done
    first = r.first_broken_by()

    def accuracy(mask: np.ndarray) -> float:
        return float(mask.sum() / max(n, 1))

    per_attack = [AttackSummary(
        name=spec.name, kind=spec.kind, surrogates=list(spec.surrogates), attacked=int((r.attacked[a] & done).sum()),
        broken=int((r.broken[a] & done).sum()), first_broken=int(((first == a) & done).sum()),
        seconds=round(float(r.seconds[a]), 3), robust_accuracy_after=accuracy(correct & ~r.broken[: a + 1].any(0)),
        robust_accuracy_alone=accuracy(correct & ~r.broken[a]) if schedule == "independent" else None)
        for a, spec in enumerate(plan)]
    targets: dict[str, list[int]] = {}
    for a, spec in enumerate(plan):
        target = spec.name.split("/", 1)[-1]
        targets.setdefault(f"batch:{target}" if spec.whole_batch else target, []).append(a)
    white = [a for a, s in enumerate(plan) if s.white_box]
    black = [a for a, s in enumerate(plan) if not s.white_box]
    black_only = (r.broken[black].any(0) & ~r.broken[white].any(0) & done) if black and white else np.zeros_like(done)
    transfer = [a for a in white if plan[a].name.split("/", 1)[-1] in transfer_targets]
    end_to_end = [a for a in white if a not in transfer]
    transfer_only = int((r.broken[transfer].any(0) & r.attacked[end_to_end].any(0) & ~r.broken[end_to_end].any(0)
                         & done).sum()) if transfer and end_to_end else None
    k = int(r.robust.sum())
    return BatchSizeResult(
        batch_size=r.batch_size, n=n, n_planned=int(len(done)), clean_accuracy=accuracy(correct),
        robust_accuracy=float(k / max(n, 1)), robust_ci95=clopper_pearson(k, n), per_attack=per_attack,
        per_target={t: accuracy(correct & ~r.broken[idx].any(0)) for t, idx in targets.items()},
        broken_only_by_black_box=int(black_only.sum()), broken_only_by_transfer=transfer_only)
