"""The evaluation report: one dataclass, written as JSON and as a Markdown table."""
from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import binomtest

from .attacks import AttackSpec
from .evaluate import SampleResults

ORDER_NOTE = ("samples in subset order, split into consecutive batches of the evaluation batch size; in each "
              "batch the attacked samples share every forward pass with the batch's other samples (clean)")


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("hpm", "torch", "torchvision", "pyautoattack", "robustbench", "numpy"):
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


def _target(name: str) -> str:
    return name.split("/", 1)[1] if "/" in name else name


def summarise(r: SampleResults, plan: list[AttackSpec], schedule: str) -> dict:
    """The numbers of one batch size, computed from per-sample outcomes (done samples only)."""
    done = r.done
    n = int(done.sum())
    correct = r.clean_correct & done
    robust = r.robust
    first = r.first_broken_by()
    per_attack = []
    for a, spec in enumerate(plan):
        entry = {"name": spec.name, "kind": spec.kind, "surrogates": list(spec.surrogates),
                 "attacked": int((r.attacked[a] & done).sum()), "broken": int((r.broken[a] & done).sum()),
                 "first_broken": int(((first == a) & done).sum()), "seconds": round(float(r.seconds[a]), 3),
                 "robust_accuracy_after": float((correct & ~r.broken[: a + 1].any(0)).sum() / max(n, 1))}
        if schedule == "independent":
            entry["robust_accuracy_alone"] = float((correct & ~r.broken[a]).sum() / max(n, 1))
        per_attack.append(entry)
    targets: dict[str, list[int]] = {}
    for a, spec in enumerate(plan):
        targets.setdefault(_target(spec.name), []).append(a)
    per_target = {t: float((correct & ~r.broken[idx].any(0)).sum() / max(n, 1)) for t, idx in targets.items()}
    white = [a for a, s in enumerate(plan) if s.white_box]
    black = [a for a, s in enumerate(plan) if not s.white_box]
    black_only = (r.broken[black].any(0) & ~r.broken[white].any(0) & done) if black and white else np.zeros_like(done)
    k = int(robust.sum())
    return {
        "batch_size": r.batch_size, "n": n, "n_planned": int(len(done)),
        "clean_accuracy": float(correct.sum() / max(n, 1)),
        "robust_accuracy": float(k / max(n, 1)), "robust_ci95": clopper_pearson(k, n),
        "per_attack": per_attack,
        "per_target" if schedule == "independent" else "per_target_cumulative": per_target,
        "broken_only_by_black_box": int(black_only.sum()),
    }


@dataclass
class EvalReport:
    """Everything an evaluation measured and how: config, versions, per-batch-size results, checks."""

    model: str  # checkpoint path, Hub id or source string
    model_info: dict  # head type, backbone, dataset
    config: dict  # attack config, data, subset, batch sizes, device
    plan: list[dict]  # the attacks in order
    results: dict[str, dict]  # batch size -> summary (see summarise)
    checks: list[dict] = field(default_factory=list)  # sanity checks: name, passed, detail
    command: str | None = None  # the command line that produced the report, when run from the CLI
    versions: dict = field(default_factory=package_versions)
    evaluation_order: str = ORDER_NOTE
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(asdict(self), indent=2) + "\n"
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, path: str | Path) -> "EvalReport":
        return cls(**json.loads(Path(path).read_text()))

    def worst_case(self) -> dict[int, float]:
        """Robust accuracy per evaluation batch size."""
        return {int(bs): r["robust_accuracy"] for bs, r in self.results.items()}

    def to_markdown(self) -> str:
        c = self.config
        eps = c["attack"]["eps"]
        lines = [f"# Robustness report: `{self.model}`", "",
                 f"- head: **{self.model_info.get('head', 'n/a')}**, backbone: {self.model_info.get('backbone', 'n/a')}",
                 f"- data: {c['data']['source']}, subset {c['data']['subset']}, n = {c['data']['n']}",
                 f"- threat model: {c['attack']['norm']}, eps = {eps:.6g} ({eps * 255:.3g}/255); APGD "
                 f"{c['attack']['n_iter']} iterations x {c['attack']['n_restarts']} restart(s); Square "
                 f"{c['attack']['square_queries']} queries; schedule: {c['attack']['schedule']}; seed {c['attack']['seed']}",
                 f"- evaluation order: {self.evaluation_order}", "",
                 "| eval batch size | n | clean | robust (worst case) | 95% CI |", "| --- | --- | --- | --- | --- |"]
        for bs, r in self.results.items():
            lo, hi = r["robust_ci95"]
            lines.append(f"| {bs} | {r['n']} | {100 * r['clean_accuracy']:.1f}% | {100 * r['robust_accuracy']:.1f}% "
                         f"| {100 * lo:.1f}–{100 * hi:.1f}% |")
        for bs, r in self.results.items():
            alone = "robust_accuracy_alone" in r["per_attack"][0] if r["per_attack"] else False
            lines += ["", f"## Attacks at batch size {bs}", "",
                      "| attack | attacked | broken | first broken | robust after" + (" | robust alone" if alone else "")
                      + " | time (s) |", "| --- | --- | --- | --- | --- |" + (" --- |" if alone else "") + " --- |"]
            for a in r["per_attack"]:
                lines.append(f"| {a['name']} | {a['attacked']} | {a['broken']} | {a['first_broken']} | "
                             f"{100 * a['robust_accuracy_after']:.1f}% |"
                             + (f" {100 * a['robust_accuracy_alone']:.1f}% |" if alone else "") + f" {a['seconds']:.1f} |")
        if self.checks:
            lines += ["", "## Sanity checks", "", "| check | result | detail |", "| --- | --- | --- |"]
            for ch in self.checks:
                verdict = {True: "pass", False: "**FLAG**", None: "skipped"}[ch["passed"]]
                lines.append(f"| {ch['name']} | {verdict} | {ch['detail']} |")
        if self.command:
            lines += ["", f"Command: `{self.command}`"]
        lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in self.versions.items()), ""]
        return "\n".join(lines)
