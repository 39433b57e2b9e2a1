"""Evaluation: clean accuracy and the Mixed Surrogate Attack protocol (Sec. 3.7, supp. 6.3).

For each evaluation batch size the samples are split, in the given order, into consecutive batches.
Within a batch the deployed model first classifies the clean images; then every attack of the plan runs
on the samples still robust (``schedule="cumulative"``, AutoAttack's discipline) or on every clean-correct
sample (``"independent"``: standalone robust accuracy per attack). A sample is broken when some
adversarial batch of that size — every member inside its eps-ball, the not-attacked members clean —
makes the **deployed** model misclassify it. Robust accuracy is the per-sample worst case over attacks.

Per-sample outcomes are written to an ``.npz`` after every batch, so a killed run resumes where it
stopped, and runs over different batches (``shard``) merge into one.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .attacks import NORMS, AttackSpec, BatchFeatures, default_plan, parse_attacks, run_apgd, run_square
from .errors import HPMError
from .model import HPMClassifier

SCHEDULES = ("cumulative", "independent")


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, *, batch_size: int = 256, mode: str | None = None,
            device: torch.device | str | None = None) -> Tensor:
    """Predicted labels ``[N]`` of images ``x``, evaluated in consecutive batches of ``batch_size``.

    For batch-dependent heads (HPM) the batch size and order are part of the result.
    """
    device = torch.device(device or next(model.parameters()).device)
    was = model.training
    model.eval()
    out = []
    for chunk in x.split(batch_size):
        scores = model(chunk.to(device), mode=mode) if mode is not None else model(chunk.to(device))
        out.append(scores.argmax(1).cpu())
    model.train(was)
    return torch.cat(out)


def clean_accuracy(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 256, mode: str | None = None,
                   device: torch.device | str | None = None) -> float:
    """Fraction of ``x`` classified as ``y`` (batches of ``batch_size`` in the given order)."""
    correct = predict(model, x, batch_size=batch_size, mode=mode, device=device) == y.cpu()
    return int(correct.sum()) / len(correct)


@dataclass
class AttackConfig:
    """Threat model and attack budget; the paper's settings are the defaults except ``n_iter`` (AutoAttack 100)."""

    norm: str = "Linf"  # "Linf" or "L2"
    eps: float = 8 / 255  # radius of the perturbation ball
    n_iter: int = 40  # APGD iterations (paper: 40; AutoAttack: 100)
    n_restarts: int = 1  # APGD restarts
    square_queries: int = 5000  # Square's query budget per sample (AutoAttack's default)
    attacks: list[str] | None = None  # attack names (None: the default plan for the model)
    schedule: str = "cumulative"  # "cumulative" (attack survivors) or "independent" (every attack on all)
    seed: int = 0  # APGD and Square seeds

    def validate(self) -> None:
        if self.norm not in NORMS:
            raise HPMError(f"norm must be one of {', '.join(NORMS)}; got {self.norm!r}")
        if not (isinstance(self.eps, (int, float)) and 0 < self.eps < float("inf")):
            raise HPMError(f"eps must be a positive number; got {self.eps!r}")
        if self.norm == "Linf" and self.eps > 1:
            raise HPMError(f"Linf eps must be <= 1 for images in [0, 1]; got {self.eps}")
        if self.n_iter < 1 or self.n_restarts < 1 or self.square_queries < 1:
            raise HPMError("n_iter, n_restarts and square_queries must all be >= 1")
        if self.schedule not in SCHEDULES:
            raise HPMError(f"schedule must be one of {', '.join(SCHEDULES)}; got {self.schedule!r}")


def resolve_plan(model: nn.Module, config: AttackConfig) -> list[AttackSpec]:
    try:
        return parse_attacks(config.attacks, model) if config.attacks else default_plan(model)
    except ValueError as e:
        raise HPMError(str(e)) from None


def is_batch_dependent(model: nn.Module) -> bool:
    return isinstance(model, HPMClassifier) and model.head.batch_dependent


@dataclass
class SampleResults:
    """Per-sample outcomes of one evaluation batch size. ``A`` attacks, ``N`` samples."""

    batch_size: int
    attack_names: list[str]
    indices: np.ndarray  # [N] dataset indices, in evaluation order
    labels: np.ndarray  # [N]
    done: np.ndarray = field(default=None)  # [N] bool: evaluated
    clean_correct: np.ndarray = field(default=None)  # [N] bool
    attacked: np.ndarray = field(default=None)  # [A, N] bool: the attack ran on the sample
    broken: np.ndarray = field(default=None)  # [A, N] bool: the attack made the deployed model miss it
    seconds: np.ndarray = field(default=None)  # [A] wall time spent per attack

    def __post_init__(self):
        n, a = len(self.indices), len(self.attack_names)
        for name, shape in (("done", (n,)), ("clean_correct", (n,)), ("attacked", (a, n)), ("broken", (a, n))):
            if getattr(self, name) is None:
                setattr(self, name, np.zeros(shape, dtype=bool))
        if self.seconds is None:
            self.seconds = np.zeros(a)

    @property
    def robust(self) -> np.ndarray:
        """Per-sample worst case: clean-correct and broken by no attack (undone samples are False)."""
        return self.done & self.clean_correct & ~self.broken.any(0)

    def first_broken_by(self) -> np.ndarray:
        """Index of the first attack (plan order) that broke each sample; -1 if none."""
        hit = self.broken.any(0)
        return np.where(hit, self.broken.argmax(0), -1)


def save_results(path: Path, results: dict[int, SampleResults], config_key: str) -> None:
    """Atomically write all batch sizes' per-sample results to ``path`` (.npz)."""
    arrays: dict[str, np.ndarray] = {"config_key": np.array(config_key)}
    for bs, r in results.items():
        p = f"bs{bs}_"
        arrays.update({p + "indices": r.indices, p + "labels": r.labels, p + "done": r.done,
                       p + "clean_correct": r.clean_correct, p + "attacked": r.attacked, p + "broken": r.broken,
                       p + "seconds": r.seconds, p + "attack_names": np.array(r.attack_names)})
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def load_results(path: Path) -> tuple[str, dict[int, SampleResults]]:
    """Read per-sample results written by :func:`save_results`."""
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise HPMError(f"{path}: not a per-sample results file ({e})") from None
    if "config_key" not in data:
        raise HPMError(f"{path}: not a per-sample results file (no config_key)")
    results = {}
    for key in data:
        if key.startswith("bs") and key.endswith("_done"):
            bs = int(key[2:-5])
            p = f"bs{bs}_"
            results[bs] = SampleResults(bs, [str(n) for n in data[p + "attack_names"]], data[p + "indices"],
                                        data[p + "labels"], data[p + "done"], data[p + "clean_correct"],
                                        data[p + "attacked"], data[p + "broken"], data[p + "seconds"])
    return str(data["config_key"]), results


def merge_results(a: dict[int, SampleResults], b: dict[int, SampleResults]) -> dict[int, SampleResults]:
    """Union of two runs of the same configuration (e.g. two shards); overlapping samples must agree."""
    if set(a) != set(b):
        raise HPMError(f"runs cover different batch sizes: {sorted(a)} vs {sorted(b)}")
    merged = {}
    for bs in a:
        x, y = a[bs], b[bs]
        if not np.array_equal(x.indices, y.indices) or x.attack_names != y.attack_names:
            raise HPMError(f"batch size {bs}: the runs evaluated different samples or attacks")
        both = x.done & y.done
        if both.any() and not (np.array_equal(x.broken[:, both], y.broken[:, both])
                               and np.array_equal(x.clean_correct[both], y.clean_correct[both])):
            raise HPMError(f"batch size {bs}: the runs disagree on samples both evaluated")
        take = y.done & ~x.done
        merged[bs] = SampleResults(bs, x.attack_names, x.indices, x.labels, x.done | y.done,
                                   np.where(take, y.clean_correct, x.clean_correct),
                                   np.where(take, y.attacked, x.attacked), np.where(take, y.broken, x.broken),
                                   x.seconds + y.seconds)
    return merged


def config_key(model_id: str, attack: AttackConfig, plan: list[AttackSpec], indices: np.ndarray,
               batch_sizes: list[int]) -> str:
    """A digest of everything that determines the per-sample results (for resume and merge).

    Square's query budget is left out when the plan has no Square, so it cannot invalidate such runs.
    """
    settings = asdict(attack)
    if not any(s.kind == "square" for s in plan):
        del settings["square_queries"]
    payload = json.dumps({"model": model_id, "attack": settings, "plan": [s.name for s in plan],
                          "indices": hashlib.sha256(indices.astype(np.int64).tobytes()).hexdigest(),
                          "batch_sizes": sorted(batch_sizes)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


@torch.no_grad()
def _clean_pass(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor | None]:
    """Deployed scores ``[b, k]`` on the clean batch and, for batch-dependent heads, the clean features."""
    if isinstance(model, HPMClassifier):
        z = model.forward_features(x)
        return model.forward_head(z, mode="hard"), (z if is_batch_dependent(model) else None)
    return model(x), None


def attack_batch(model: nn.Module, x: Tensor, y: Tensor, plan: list[AttackSpec], config: AttackConfig,
                 on_attack_done=None) -> tuple[Tensor, Tensor, Tensor, np.ndarray]:
    """Run the protocol on one evaluation batch.

    Returns ``(clean_correct [b], attacked [A, b], broken [A, b], seconds [A])``.
    """
    scores, z_clean = _clean_pass(model, x)
    correct = scores.argmax(1) == y
    num_classes = scores.shape[1]
    robust = correct.clone()
    attacked = torch.zeros(len(plan), len(y), dtype=torch.bool)
    broken = torch.zeros_like(attacked)
    seconds = np.zeros(len(plan))
    for a, spec in enumerate(plan):
        start = time.perf_counter()
        mask = robust if config.schedule == "cumulative" else correct
        idx = mask.nonzero().flatten()
        if len(idx):
            fixed = z_clean[~mask] if z_clean is not None else None
            batch = BatchFeatures(model, fixed)
            if spec.kind == "apgd":
                hit = run_apgd(spec, batch, x[idx], y[idx], norm=config.norm, eps=config.eps, n_iter=config.n_iter,
                               n_restarts=config.n_restarts, seed=config.seed, num_classes=num_classes).broken
            else:
                hit = run_square(batch, x[idx], y[idx], norm=config.norm, eps=config.eps,
                                 n_queries=config.square_queries, seed=config.seed).broken
            attacked[a, idx.cpu()] = True
            broken[a, idx.cpu()] = hit.cpu()
            robust[idx[hit]] = False
        seconds[a] = time.perf_counter() - start
        if on_attack_done is not None:
            on_attack_done(a, len(idx), robust)
    return correct.cpu(), attacked, broken, seconds


def run_protocol(model: nn.Module, x: Tensor, y: Tensor, *, attack: AttackConfig, batch_sizes: list[int],
                 indices: np.ndarray | None = None, model_id: str = "model", results_path: Path | None = None,
                 shard: tuple[int, int] = (0, 1), device: torch.device | str | None = None,
                 progress: bool = True) -> tuple[list[AttackSpec], dict[int, SampleResults], str]:
    """Evaluate ``x, y`` (already the chosen subset, in order) at every batch size; resumable.

    Args:
        model: an :class:`HPMClassifier` (any head) or a plain classifier ``images -> logits``.
        attack: threat model and budget.
        batch_sizes: evaluation batch sizes; batch-independent models are evaluated once and the result
            is reported for each size.
        indices: dataset indices of the rows of ``x`` (recorded in the results).
        results_path: ``.npz`` of per-sample results: resumed from if it exists, updated after each batch.
        shard: ``(k, n)``: evaluate only batches whose number is ``k`` modulo ``n`` (merge shards later).
    """
    attack.validate()
    if not batch_sizes or min(batch_sizes) < 1:
        raise HPMError(f"batch sizes must be >= 1; got {batch_sizes}")
    k, n_shards = shard
    if not 0 <= k < n_shards:
        raise HPMError(f"shard must be K/N with 0 <= K < N; got {k}/{n_shards}")
    device = torch.device(device or (next(model.parameters()).device if any(True for _ in model.parameters())
                                     else "cpu"))
    model.eval().to(device)
    plan = resolve_plan(model, attack)
    indices = np.arange(len(y)) if indices is None else np.asarray(indices)
    batch_sizes = sorted(set(batch_sizes))
    key = config_key(model_id, attack, plan, indices, batch_sizes)
    names = [s.name for s in plan]
    results = {bs: SampleResults(bs, names, indices, y.cpu().numpy()) for bs in batch_sizes}
    if results_path is not None and results_path.exists():
        stored_key, stored = load_results(results_path)
        if stored_key != key:
            raise HPMError(f"{results_path} holds results of a different evaluation (model, attacks, subset or "
                           "batch sizes differ); choose another --out or delete it")
        results = stored
    sizes_to_run = batch_sizes if is_batch_dependent(model) else batch_sizes[-1:]  # identical at every size
    for bs in sizes_to_run:
        r = results[bs]
        starts = [s for i, s in enumerate(range(0, len(y), bs)) if i % n_shards == k]
        shard_size = sum(min(bs, len(y) - s) for s in starts)
        already = sum(int(r.done[s:s + bs].sum()) for s in starts)
        bars = [tqdm(total=shard_size, initial=already, desc=f"bs={bs} {name}", position=i, leave=True,
                     disable=not progress, unit="img") for i, name in enumerate(names)]
        for start in starts:
            sl = slice(start, min(start + bs, len(y)))
            if r.done[sl].all():
                continue
            xb, yb = x[sl].to(device), y[sl].to(device)

            def show(a: int, n_attacked: int, robust_now: Tensor, _sl: slice = sl, _r: SampleResults = r,
                     _bars: list = bars) -> None:
                """Advance attack ``a``'s bar; postfix: robust accuracy so far (done batches + this one)."""
                seen = int(_r.done.sum()) + (_sl.stop - _sl.start)
                _bars[a].update(_sl.stop - _sl.start)
                _bars[a].set_postfix(robust=f"{100 * (int(_r.robust.sum()) + int(robust_now.sum())) / seen:.1f}%")

            correct, attacked, broken, seconds = attack_batch(model, xb, yb, plan, attack, show)
            r.clean_correct[sl], r.attacked[:, sl], r.broken[:, sl] = correct.numpy(), attacked.numpy(), broken.numpy()
            r.seconds += seconds
            r.done[sl] = True
            if results_path is not None:
                save_results(results_path, results, key)
        for bar in bars:
            bar.close()
    for bs in batch_sizes:
        if bs not in sizes_to_run:  # batch-independent: identical outcomes at every size
            src = results[sizes_to_run[0]]
            results[bs] = SampleResults(bs, names, src.indices, src.labels, src.done.copy(), src.clean_correct.copy(),
                                        src.attacked.copy(), src.broken.copy(), src.seconds.copy())
    return plan, results, key
