"""How long an evaluation will take at most, from one timed attack step on this device, said before it starts."""
from __future__ import annotations

import math
import time

import torch
from torch import Tensor, nn

from ..attacks import AttackSpec
from .config import AttackConfig


def forward_passes_per_image(plan: list[AttackSpec], attack: AttackConfig, num_classes: int) -> tuple[int, int]:
    """``(gradient steps, forward-only queries)`` one image costs when every attack of ``plan`` runs on it:
    APGD ``n_iter + 1`` passes per restart (per target class for APGD-T), Square one query per round."""
    steps = queries = 0
    for spec in plan:
        if spec.kind == "square":
            queries += attack.square_queries
        else:
            targets = min(attack.n_target_classes, num_classes - 1) if spec.loss == "dlr-targeted" else 1
            steps += (attack.n_iter + 1) * attack.n_restarts * targets
    return steps, queries


def _seconds(fn, device: torch.device, repeats: int = 2) -> float:
    """Mean wall time of ``fn()`` after a warm-up call, waiting for the device's queued work."""
    def timed() -> None:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    timed()
    start = time.perf_counter()
    for _ in range(repeats):
        timed()
    return (time.perf_counter() - start) / repeats


def _step_seconds(model: nn.Module, x: Tensor) -> tuple[float, float]:
    """Seconds of one forward+backward (an APGD step: the gradient to the input only, so the model's parameters
    keep no gradient) and of one forward (a Square query) on the batch ``x``."""
    def step():
        xg = x.clone().requires_grad_(True)
        torch.autograd.grad(model(xg).sum(), xg)

    def query():
        with torch.no_grad():
            model(x)
    return _seconds(step, x.device), _seconds(query, x.device)


def estimate_seconds(model: nn.Module, x: Tensor, plan: list[AttackSpec], attack: AttackConfig,
                     batch_sizes: list[int], batch_dependent: bool, device: torch.device) -> tuple[float, str]:
    """An upper bound of the attacks' wall time (every attack on every image; the cumulative schedule attacks
    only the survivors), and how it was obtained. Each batch size's step is timed once on this device, where the
    model is put in eval mode, as the evaluation puts it."""
    model = model.eval().to(device)
    n, num_classes = len(x), None
    total, basis = 0.0, []
    for bs in (sorted(set(batch_sizes)) if batch_dependent else [max(batch_sizes)]):
        b = min(bs, n)
        batch = x[:b].to(device)
        step, query = _step_seconds(model, batch)
        if num_classes is None:
            with torch.no_grad():
                num_classes = model(batch[:1]).shape[1]
        steps, queries = forward_passes_per_image(plan, attack, num_classes)
        total += math.ceil(n / b) * (steps * step + queries * query)
        basis.append(f"batch {b}: step {step:.3g} s, query {query:.3g} s")
    return total, "; ".join(basis)


def describe_estimate(seconds: float) -> str:
    """``"≈ 42 min"`` / ``"≈ 3.1 h"`` / ``"≈ 20 s"``."""
    if seconds >= 5400:
        return f"≈ {seconds / 3600:.1f} h"
    return f"≈ {seconds / 60:.0f} min" if seconds >= 90 else f"≈ {seconds:.0f} s"
