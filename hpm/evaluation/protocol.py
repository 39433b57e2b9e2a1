"""Evaluation: clean accuracy and the Mixed Surrogate Attack protocol (Sec. 3.7, supp. 6.3).

For each evaluation batch size the samples are split, in the given order, into consecutive batches.
Within a batch the deployed model first classifies the clean images; then every attack of the plan runs
on the samples still robust (``schedule="cumulative"``, AutoAttack's discipline) or on every clean-correct
sample (``"independent"``: standalone robust accuracy per attack). A sample is broken when some
adversarial batch of that size — every member inside its eps-ball, the not-attacked members clean —
makes the **deployed** model misclassify it. Robust accuracy is the per-sample worst case over attacks.

Per-sample outcomes are written to an ``.npz`` after every attack of every batch, so a killed run resumes at
the attack it was in, and runs over different batches (``shard``) merge into one.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..attacks import AttackSpec, BatchFeatures, default_plan, parse_attacks, run_attack
from ..defence import (
    PROBE_IMAGES,
    declare,
    evaluation_copy,
    model_fingerprint,
    probe_scores,
    same_scores,
    scores_problem,
)
from ..devices import resolve
from ..errors import HPMError
from ..model import HPMClassifier
from ..progress import on_terminal, progress_bar
from .config import AttackConfig
from .samples import SampleResults, config_key, read_run, save_results

if TYPE_CHECKING:
    from .expect import Expectation


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


def resolve_plan(model: nn.Module, config: AttackConfig) -> list[AttackSpec]:
    """The attacks to run: ``config.attacks`` validated against the model, else its default plan."""
    try:
        return parse_attacks(config.attacks, model) if config.attacks else default_plan(
            model, targeted=config.targeted)
    except ValueError as e:
        raise HPMError(str(e)) from None


def is_batch_dependent(model: nn.Module) -> bool:
    """True for a model whose predictions depend on the rest of the batch (as it declares:
    :class:`hpm.defence.Declared`)."""
    return bool(getattr(model, "batch_dependent", False))


@torch.no_grad()
def _clean_pass(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor | None]:
    """Deployed scores ``[b, k]`` on the clean batch and, for batch-dependent models, the clean features (an
    :class:`HPMClassifier`'s backbone features; any other model's images)."""
    if isinstance(model, HPMClassifier):
        z = model.forward_features(x)
        return model.forward_head(z, mode="hard"), (z if is_batch_dependent(model) else None)
    scores = model(x, mode="hard") if hasattr(model, "attack_targets") else model(x)
    return scores, (x if is_batch_dependent(model) else None)


def check_scores(scores, y: Tensor) -> None:
    """Raise :class:`HPMError` unless the deployed model's output on a batch of ``len(y)`` images is finite float
    scores ``[B, k]`` (:func:`hpm.defence.scores_problem`) with a score for every label in ``y``."""
    problem = scores_problem(scores, len(y))
    if problem:
        raise HPMError(f"the model returned {problem}")
    if int(y.max()) >= scores.shape[1]:
        raise HPMError(f"labels go up to {int(y.max())} but the model scores {scores.shape[1]} classes: another "
                       "dataset, or labels offset by one?")


def attack_batch(model: nn.Module, x: Tensor, y: Tensor, plan: list[AttackSpec], config: AttackConfig,
                 on_attack_done: Callable[[int, Tensor, Tensor, Tensor, float], None] | None = None, *,
                 finished: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor, np.ndarray]:
    """Run the protocol on one evaluation batch.

    ``on_attack_done(a, clean_correct, attacked_a, broken_a, seconds)`` is called after each attack of the plan
    with that attack's rows ``[b]``. ``finished = (attacked, broken)``, each ``[k, b]``: what the plan's first
    ``k`` attacks did in an interrupted run of this batch; they are not run again. Each attack is a pure function
    of its inputs and seed (:mod:`hpm.attacks`), so the result is the uninterrupted run's.

    Returns ``(clean_correct [b], attacked [A, b], broken [A, b], seconds [A])`` (no seconds for finished attacks).
    """
    scores, z_clean = _clean_pass(model, x)
    check_scores(scores, y)
    correct = scores.argmax(1) == y
    num_classes = scores.shape[1]
    attacked = torch.zeros(len(plan), len(y), dtype=torch.bool)
    broken = torch.zeros_like(attacked)
    k = 0 if finished is None else len(finished[0])
    if k:
        attacked[:k], broken[:k] = finished
    robust = correct & ~broken.to(correct.device).any(0)
    seconds = np.zeros(len(plan))
    for a, spec in enumerate(plan[k:], start=k):
        start = time.perf_counter()
        mask = robust if config.schedule == "cumulative" else correct
        idx = mask.nonzero().flatten()
        if len(idx):
            hit = _attack(model, spec, x, y, idx, mask, z_clean, num_classes, config)
            attacked[a, idx.cpu()] = True
            broken[a, idx.cpu()] = hit.cpu()
            robust[idx[hit]] = False
        seconds[a] = time.perf_counter() - start
        if on_attack_done is not None:
            on_attack_done(a, correct.cpu(), attacked[a], broken[a], seconds[a])
    return correct.cpu(), attacked, broken, seconds


def _attack(model: nn.Module, spec: AttackSpec, x: Tensor, y: Tensor, idx: Tensor, mask: Tensor,
            z_clean: Tensor | None, num_classes: int, config: AttackConfig) -> Tensor:
    """Which of the samples ``idx`` (the rows ``mask`` selects) the attack breaks.

    Normally only those rows are perturbed, the batch's other rows taking part clean (cached features). A
    whole-batch attack perturbs every row of the batch jointly, with the true labels, and a sample counts as
    broken when the perturbed batch makes the deployed model misclassify it, or (``config.batch_kappa`` set) when
    its own perturbation alone does, the batch's other rows clean.
    """
    if spec.whole_batch:
        clean = z_clean if config.batch_kappa is not None else None
        hit = run_attack(spec, BatchFeatures(model, None, clean_rows=clean), x, y, num_classes=num_classes,
                         **config.budget()).broken
        return hit[idx]
    batch = BatchFeatures(model, z_clean[~mask] if z_clean is not None else None, rows=mask)
    return run_attack(spec, batch, x[idx], y[idx], num_classes=num_classes, **config.budget()).broken


def batch_starts(n: int, batch_size: int, part: tuple[int, int] = (0, 1)) -> list[int]:
    """First rows of the evaluation batches that part ``(k, n_parts)`` evaluates: every ``n_parts``-th batch
    from the ``k``-th (a ``--shard``, or a torchrun rank's share)."""
    k, n_parts = part
    return [s for i, s in enumerate(range(0, n, batch_size)) if i % n_parts == k]


def _progress_bars(r: SampleResults, starts: list[int], n: int, progress: bool, below: int = 0) -> list[tqdm]:
    """One bar per attack, counting this part's images (those it ran on before a resume already counted),
    ``below`` bars down; in a log (no terminal) one bar for the batch size, shared by its attacks."""
    bs = r.batch_size
    total = sum(min(bs, n - s) for s in starts)
    if not on_terminal():
        done = sum(int(np.minimum(r.attacks_finished[s:s + bs], len(r.attack_names)).sum()) for s in starts)
        shared = progress_bar(total=total * len(r.attack_names), initial=done, disable=not progress,
                              desc=f"bs={bs}: {len(r.attack_names)} attacks", unit="image-attack")
        return [shared] * len(r.attack_names)
    return [progress_bar(total=total, initial=sum(int((r.attacks_finished[s:s + bs] > i).sum()) for s in starts),
                 desc=f"bs={bs} {name}", position=below + i, leave=True, disable=not progress,
                 unit="img", bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} img{postfix}")  # own time in the postfix
            for i, name in enumerate(r.attack_names)]


def _evaluate_batch_size(model: nn.Module, x: Tensor, y: Tensor, r: SampleResults, plan: list[AttackSpec],
                         attack: AttackConfig, starts: list[int], device: torch.device, save, progress: bool,
                         expect: Expectation | None = None) -> None:
    """Fill ``r`` for the batches starting at ``starts`` (skipping those already done, resuming a batch after the
    attacks an interrupted run finished); ``save()`` after each attack; the work done is reported to ``expect``."""
    bars = _progress_bars(r, starts, len(y), progress, below=int(expect is not None))  # its bar on top
    # Each pass gets its own copy of the batch: a model that writes its input changes neither the caller's images
    # nor the next pass's.
    for start in starts:
        sl = slice(start, min(start + r.batch_size, len(y)))
        if r.done[sl].all() and _stored_batch_holds(model, r, sl, x[sl].to(device, copy=True), y[sl].to(device)):
            continue
        finished = _finished_attacks(model, r, sl, x[sl].to(device, copy=True), y[sl].to(device))
        if finished is not None and expect is not None:
            expect.resume_batch(r.batch_size, sl.stop - sl.start, int(r.clean_correct[sl].sum()),
                                [int(n) for n in finished[0].sum(1)], [int(n) for n in finished[1].sum(1)])

        def record(a: int, correct: Tensor, attacked: Tensor, broken: Tensor, seconds: float,
                   _sl: slice = sl) -> None:
            """Store attack ``a``'s outcome on the batch and save; advance its bar, whose postfix shows the robust
            accuracy so far (done batches + this one) and the attack's own time."""
            r.clean_correct[_sl] = correct.numpy()
            r.attacked[a, _sl], r.broken[a, _sl] = attacked.numpy(), broken.numpy()
            r.seconds[a] += seconds
            r.attacks_finished[_sl] = a + 1
            save()
            if expect is not None:
                expect.attack_done(r.batch_size, _sl.stop - _sl.start, a, int(attacked.sum()), int(broken.sum()),
                                   seconds)
            standing = int((r.clean_correct[_sl] & ~r.broken[:a + 1, _sl].any(0)).sum())
            seen = int(r.done.sum()) + (_sl.stop - _sl.start)
            bars[a].set_postfix(robust=f"{100 * (int(r.robust.sum()) + standing) / seen:.1f}%",
                                own=f"{r.seconds[a]:.0f}s", refresh=False)
            bars[a].update(_sl.stop - _sl.start)  # redraws, with the postfix, when its interval has passed

        correct, _, _, _ = attack_batch(model, x[sl].to(device, copy=True), y[sl].to(device), plan, attack, record,
                                        finished=finished)
        r.clean_correct[sl], r.attacks_finished[sl], r.done[sl] = correct.numpy(), len(plan), True
        save()
        if expect is not None:
            expect.batch_done(r.batch_size, sl.stop - sl.start)
    for bar in {id(b): b for b in bars}.values():
        bar.close()


def _stored_batch_holds(model: nn.Module, r: SampleResults, sl: slice, x: Tensor, y: Tensor) -> bool:
    """True when the stored outcomes of the finished batch ``sl`` were made on these labels with a model that
    classifies these images as this one does; else (another model or data under the same --out, or another device
    or library) the batch is marked undone, with a warning, and evaluated again."""
    correct = (_clean_pass(model, x)[0].argmax(1) == y).cpu().numpy()
    if np.array_equal(r.labels[sl], y.cpu().numpy()) and np.array_equal(correct, r.clean_correct[sl]):
        return True
    warnings.warn(f"rows {sl.start}-{sl.stop - 1}: the stored results were made with other labels or a model that "
                  "classifies these images differently (another model under the same --out, or another device or "
                  "library), so this batch is evaluated again", stacklevel=2)
    r.done[sl], r.attacked[:, sl], r.broken[:, sl], r.attacks_finished[sl] = False, False, False, 0
    return False


def _finished_attacks(model: nn.Module, r: SampleResults, sl: slice, x: Tensor,
                      y: Tensor) -> tuple[Tensor, Tensor] | None:
    """``(attacked, broken)`` ``[k, b]`` of the plan's first ``k`` attacks that an interrupted run finished on the
    batch ``sl`` of images ``x``; None if it finished none, or if the model's clean predictions on the batch are no
    longer those the interrupted run saw (another device or library): the batch then starts over."""
    k = int(r.attacks_finished[sl].min())
    if k == 0:
        return None
    correct = (_clean_pass(model, x)[0].argmax(1) == y).cpu().numpy()
    if not np.array_equal(correct, r.clean_correct[sl]):
        warnings.warn(f"rows {sl.start}-{sl.stop - 1}: the clean predictions differ from those of the interrupted "
                      f"run, so its {k} finished attacks on this batch are run again", stacklevel=2)
        r.attacked[:, sl], r.broken[:, sl], r.attacks_finished[sl] = False, False, 0
        return None
    return torch.from_numpy(r.attacked[:k, sl].copy()), torch.from_numpy(r.broken[:k, sl].copy())


def run_protocol(model: nn.Module, x: Tensor, y: Tensor, *, attack: AttackConfig, batch_sizes: list[int],
                 indices: np.ndarray | None = None, model_id: str = "model", results_path: Path | None = None,
                 shard: tuple[int, int] = (0, 1), device: torch.device | str | None = None,
                 progress: bool = True,
                 expect: Expectation | None = None) -> tuple[list[AttackSpec], dict[int, SampleResults], str]:
    """Evaluate ``x, y`` (already the chosen subset, in order) at every batch size; resumable.

    Args:
        model: an :class:`HPMClassifier` (any head) or a plain classifier ``images -> logits``.
        attack: threat model and budget.
        batch_sizes: evaluation batch sizes; batch-independent models are evaluated once and the result
            is reported for each size.
        indices: dataset indices of the rows of ``x`` (recorded in the results).
        results_path: ``.npz`` of per-sample results: resumed from if it exists, updated after each attack.
        shard: ``(k, n)``: evaluate only batches whose number is ``k`` modulo ``n`` (merge shards later).
        expect: told the batches to run, then each attack's outcome and time (:mod:`.expect`).

    Returns:
        ``(plan, {batch size: per-sample results}, config key)``.
    """
    attack.validate()
    if not batch_sizes or min(batch_sizes) < 1:
        raise HPMError(f"batch sizes must be >= 1; got {batch_sizes}")
    if not 0 <= shard[0] < shard[1]:
        raise HPMError(f"shard must be K/N with 0 <= K < N; got {shard[0]}/{shard[1]}")
    device = resolve(device, model)
    model = evaluation_copy(declare(model), device)  # the caller's module stays as it was given
    plan = resolve_plan(model, attack)
    indices = np.arange(len(y)) if indices is None else np.asarray(indices)
    batch_sizes = sizes_that_differ(batch_sizes, len(y))
    key = config_key(model_id, attack, plan, indices, batch_sizes)
    fingerprint, scores = model_identity(model, x, device) if results_path is not None else (None, None)
    results = _resume(results_path, key, fingerprint, scores) or {
        bs: SampleResults(bs, [s.name for s in plan], indices, y.cpu().numpy()) for bs in batch_sizes}
    sizes_to_run = batch_sizes if is_batch_dependent(model) else batch_sizes[-1:]  # identical at every size

    def save() -> None:
        if results_path is not None:
            save_results(results_path, results, key, fingerprint, scores)

    if expect is not None:
        for bs in sizes_to_run:
            expect.add_batches(bs, [min(bs, len(y) - s) for s in batch_starts(len(y), bs, shard)
                                    if not results[bs].done[s:s + bs].all()])
    for bs in sizes_to_run:
        _evaluate_batch_size(model, x, y, results[bs], plan, attack, batch_starts(len(y), bs, shard), device, save,
                             progress, expect)
    for bs in batch_sizes:
        if bs not in sizes_to_run:  # batch-independent: identical outcomes at every size
            results[bs] = results[sizes_to_run[0]].with_batch_size(bs)
    return plan, results, key


def model_identity(model: nn.Module, x: Tensor, device: torch.device | str) -> tuple[str, Tensor | None]:
    """What a stored run records of the model it evaluated, for a resumed run to compare: its
    :func:`model_fingerprint` and its :func:`probe_scores` on the evaluation's first images."""
    return model_fingerprint(model), probe_scores(model, x[:PROBE_IMAGES].to(device))


def sizes_that_differ(batch_sizes, n: int) -> list[int]:
    """The evaluation batch sizes that are really run on ``n`` images: a size above ``n`` is one batch of all
    ``n`` images, the same run as batch size ``n``, so it is reported as ``n`` (once)."""
    return sorted({min(int(bs), n) for bs in batch_sizes})


def _resume(results_path: Path | None, key: str, fingerprint: str | None,
            scores: Tensor | None = None) -> dict[int, SampleResults] | None:
    """Stored per-sample results of the same evaluation of the same model (the same :func:`model_fingerprint` and,
    where the stored run recorded them, the same :func:`probe_scores` up to float rounding), or None; another
    evaluation's file is refused, and one of a model changed since under the same name is evaluated again from the
    start (with a warning)."""
    if results_path is None or not results_path.exists():
        return None
    stored = read_run(results_path)
    if stored.config_key != key:
        raise HPMError(f"{results_path} holds results of a different evaluation (model, attacks, subset or "
                       "batch sizes differ); choose another --out or delete it")
    if stored.fingerprint not in (None, fingerprint):  # None: written before fingerprints
        warnings.warn(f"{results_path} holds results of another model under the same name (its weights or constants "
                      "changed since, e.g. retrained or reselected): it is evaluated again from the start",
                      stacklevel=2)
        return None
    if stored.records_scores and not same_scores(scores, stored.scores):
        warnings.warn(f"{results_path} holds results of another model under the same name (its scores on the first "
                      "images differ from this one's, or only one of the two draws randomness of its own, though "
                      "their parameters agree: a function, or a module whose behaviour lives in plain attributes): "
                      "it is evaluated again from the start", stacklevel=2)
        return None
    return stored.results
