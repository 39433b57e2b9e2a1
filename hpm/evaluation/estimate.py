"""How long an evaluation will take at most, from a few timed attack steps on this device, said before it starts.

The bound assumes every attack runs on every image; :mod:`.expect` turns the same timings into an expectation
once the first images have been attacked.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..attacks import AttackSpec
from ..defence import declare, evaluation_copy
from .config import AttackConfig


def attack_passes(spec: AttackSpec, attack: AttackConfig, num_classes: int) -> int:
    """Forward passes one run of ``spec`` makes over the images it attacks: APGD ``n_iter + 1`` per restart (per
    target class for APGD-T; ``eot_iter`` each), whether or not an image is broken already; Square at most one
    query per round."""
    if spec.kind == "square":
        return attack.square_queries
    targets = min(attack.n_target_classes, num_classes - 1) if spec.loss == "dlr-targeted" else 1
    return (attack.n_iter + 1) * attack.eot_iter * attack.n_restarts * targets


def forward_passes_per_image(plan: list[AttackSpec], attack: AttackConfig, num_classes: int) -> tuple[int, int]:
    """``(gradient steps, forward-only queries)`` one image costs when every attack of ``plan`` runs on it."""
    steps = sum(attack_passes(s, attack, num_classes) for s in plan if s.kind != "square")
    queries = sum(attack_passes(s, attack, num_classes) for s in plan if s.kind == "square")
    return steps, queries


@dataclass
class PassTimes:
    """Seconds of one APGD step (forward + backward to the input) and of one Square query (forward) on ``m``
    images, timed on this device at a few batch sizes and interpolated linearly between them."""

    rows: list[int]  # batch sizes timed, ascending
    step: list[float]  # seconds of one step at each of ``rows``
    query: list[float]  # seconds of one query at each of ``rows``

    def at(self, kind: str, m: float) -> float:
        """Seconds of one pass of an attack of ``kind`` ("square": a query, else a step) on ``m`` images; an
        expected count below the smallest timed batch scales its time down, one above the largest extrapolates."""
        ys = self.query if kind == "square" else self.step
        if m <= 0:
            return 0.0
        if m <= self.rows[0] or len(self.rows) == 1:
            return ys[0] * m / self.rows[0]
        i = next((i for i in range(1, len(self.rows)) if m <= self.rows[i]), len(self.rows) - 1)
        (r0, r1), (y0, y1) = self.rows[i - 1:i + 1], ys[i - 1:i + 1]
        return max(y0 + (y1 - y0) * (m - r0) / (r1 - r0), 0.0)


@dataclass
class Timing:
    """The bound and what it was computed from."""

    bound: float  # seconds: every attack on every image at every batch size run
    basis: str  # the timings, in words
    times: PassTimes
    num_classes: int


def _seconds(fn, device: torch.device, repeats: int = 2) -> float:
    """Shortest wall time of ``fn()`` over ``repeats`` calls after a warm-up call, waiting for the device's queued
    work (the shortest: other processes only ever slow a call down; the expectation corrects for a busy machine
    from the attacks' measured times)."""
    def timed() -> float:
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start
    timed()
    return min(timed() for _ in range(repeats))


def _step_seconds(model: nn.Module, x: Tensor, mode: str | None = None) -> tuple[float, float]:
    """Seconds of one forward+backward (an APGD step through ``mode``, the model's default forward when None: the
    gradient to the input only, so the model's parameters keep no gradient) and of one forward (a Square query)
    on the batch ``x``."""
    def step():
        xg = x.clone().requires_grad_(True)
        out = model(xg) if mode is None else model(xg, mode=mode)
        torch.autograd.grad(out.sum(), xg)

    def query():
        with torch.no_grad():
            model(x)
    return _seconds(step, x.device), _seconds(query, x.device)


def sizes_run(batch_sizes: list[int], batch_dependent: bool) -> list[int]:
    """The evaluation batch sizes that are attack passes of their own: every one for a batch-dependent head, else
    only the largest (the outcomes hold at every size)."""
    return sorted(set(batch_sizes)) if batch_dependent else [max(batch_sizes)]


def time_passes(model: nn.Module, x: Tensor, rows: list[int], device: torch.device,
                mode: str | None = None) -> PassTimes:
    """Time one step (through ``mode``) and one query at each batch size of ``rows`` (at most ``len(x)``) on
    ``device``. A smaller batch never costs more than a larger one: a time above a larger batch's (another process
    held the device then) is lowered to it."""
    rows = sorted({min(r, len(x)) for r in rows})
    timed = [_step_seconds(model, x[:r].to(device), mode) for r in rows]

    def monotone(ts: list[float]) -> list[float]:
        return [min(ts[i:]) for i in range(len(ts))]
    return PassTimes(rows, monotone([t[0] for t in timed]), monotone([t[1] for t in timed]))


def bound_seconds(times: PassTimes, n: int, plan: list[AttackSpec], attack: AttackConfig, sizes: list[int],
                  num_classes: int) -> float:
    """Seconds of every attack of ``plan`` on every one of ``n`` images, in full batches of each size of ``sizes``."""
    steps, queries = forward_passes_per_image(plan, attack, num_classes)
    return sum(math.ceil(n / min(bs, n)) * (steps * times.at("apgd", min(bs, n))
                                            + queries * times.at("square", min(bs, n))) for bs in sizes)


def time_evaluation(model: nn.Module, x: Tensor, plan: list[AttackSpec], attack: AttackConfig,
                    batch_sizes: list[int], batch_dependent: bool, device: torch.device) -> Timing:
    """Time this device's passes (at one image and at each evaluation batch size run, where the model is put in
    eval mode, as the evaluation puts it) and bound the attacks' wall time: every attack on every image (the
    cumulative schedule attacks only the survivors)."""
    model = evaluation_copy(declare(model), device)
    n = len(x)
    sizes = sizes_run(batch_sizes, batch_dependent)
    mode = next((spec.surrogates[0] for spec in plan if spec.white_box), None)  # what a step differentiates
    times = time_passes(model, x, [1, *sizes], device, mode)
    with torch.no_grad():
        num_classes = model(x[:1].to(device)).shape[1]
    total = bound_seconds(times, n, plan, attack, sizes, num_classes)
    basis = "; ".join(f"batch {r}: step {s:.3g} s, query {q:.3g} s" for r, s, q in zip(times.rows, times.step,
                                                                                         times.query))
    return Timing(total, basis, times, num_classes)


def estimate_seconds(model: nn.Module, x: Tensor, plan: list[AttackSpec], attack: AttackConfig,
                     batch_sizes: list[int], batch_dependent: bool, device: torch.device) -> tuple[float, str]:
    """An upper bound of the attacks' wall time and how it was obtained (:func:`time_evaluation`)."""
    timing = time_evaluation(model, x, plan, attack, batch_sizes, batch_dependent, device)
    return timing.bound, timing.basis


def describe_estimate(seconds: float) -> str:
    """``"≈ 42 min"`` / ``"≈ 3.1 h"`` / ``"≈ 20 s"``."""
    if seconds >= 5400:
        return f"≈ {seconds / 3600:.1f} h"
    return f"≈ {seconds / 60:.0f} min" if seconds >= 90 else f"≈ {seconds:.0f} s"
