"""Selecting MixedNUTS' map and mixing weight (:mod:`hpm.nuts`) as its authors do, without training.

On images the evaluation will not use, the robust branch alone is attacked; two sets of its logits are kept: the
attacked images it still classifies correctly, and the clean images it misclassifies. For each map ``(s, p, c)`` of
a grid (8 × 8 × 8 by default: ``s`` log-spaced in [0.05, 5], ``c`` in [-1.1, 0], ``p`` in [1, 4]), the margins of
the mapped robust probabilities (top-1 minus top-2) are computed on both sets. The mixture keeps a robust prediction
where its margin is at least ``(1 − α) / α``; so the cutoff is put where ``beta`` percent of the attacked-correct
margins stay above it (their ``100 − beta`` percentile; the authors' ``target_rob_beta``, 98.5 on CIFAR-10), and the
map is the one that lets the fewest clean-misclassified margins reach that cutoff: those are the images where a
confident wrong robust prediction would overrule the standard branch. ``α = 1 / (1 + cutoff)``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from ..attacks import BatchFeatures, margin, parse_attacks, run_attack
from ..nuts import RobustLogitMap, mapped_margins

BETA = 98.5  # percent of the attacked-correct robust predictions the mixture keeps


@dataclass(frozen=True)
class Grid:
    """The grid of maps searched: ``n`` values of each of scale (log-spaced), bias and power."""

    scale: tuple[float, float] = (0.05, 5.0)
    bias: tuple[float, float] = (-1.1, 0.0)
    power: tuple[float, float] = (1.0, 4.0)
    n: int = 8

    def values(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (np.logspace(np.log10(self.scale[0]), np.log10(self.scale[1]), self.n),
                np.linspace(*self.bias, self.n), np.linspace(*self.power, self.n))


@dataclass
class Selection:
    """The selected map and α, with the objective and the cutoff they came from."""

    scale: float
    power: float
    bias: float
    alpha: float
    cutoff: float  # (1 - alpha) / alpha: the mapped robust margin above which the robust branch decides
    objective: float  # share of clean-misclassified margins at or above the cutoff (minimised)
    beta: float
    n_attacked_correct: int
    n_clean_incorrect: int
    grid: dict = field(default_factory=dict)

    def robust_map(self) -> RobustLogitMap:
        return RobustLogitMap(self.scale, self.power, self.bias)

    def record(self) -> dict:
        """What a checkpoint records about the selection (the caller adds the images and the attack)."""
        return asdict(self)


def select_map(attacked_correct: Tensor, clean_incorrect: Tensor, beta: float = BETA, grid: Grid = Grid()) -> Selection:
    """The authors' grid search over maps (module docstring) on the robust branch's logits of attacked images it
    classifies correctly (``[N1, k]``) and of clean images it misclassifies (``[N2, k]``). Ties go to the first
    map in (scale, bias, power) order."""
    if not len(attacked_correct) or not len(clean_incorrect):
        raise ValueError("selection needs attacked images the robust branch gets right and clean images it gets wrong")
    best = None
    for s in grid.values()[0]:
        for c in grid.values()[1]:
            for p in grid.values()[2]:
                robust_map = RobustLogitMap(float(s), float(p), float(c))
                cutoff = float(np.percentile(mapped_margins(attacked_correct, robust_map).numpy(), 100 - beta))
                cutoff = min(cutoff, 1 - 1e-9)  # as the authors: just below 1 (margins of 1 are saturated ones)
                objective = float((mapped_margins(clean_incorrect, robust_map) >= cutoff).double().mean())
                if best is None or objective < best[0]:
                    best = (objective, float(s), float(p), float(c), cutoff)
    objective, s, p, c, cutoff = best
    return Selection(s, p, c, 1 / (1 + cutoff), cutoff, objective, beta, len(attacked_correct), len(clean_incorrect),
                     asdict(grid))


def attacked_logits(robust: nn.Module, x: Tensor, y: Tensor, *, eps: float, n_iter: int, target_classes: int,
                    batch_size: int, seed: int = 0, on_batch=None) -> tuple[Tensor, Tensor, Tensor]:
    """The robust branch's logits on its hardest adversarial image found per sample (APGD-CE, then APGD-T towards
    ``target_classes`` classes; per sample the iterate of lowest true-class margin, as MixedNUTS' adaptive AutoAttack
    keeps) and on the clean images, with the labels: ``(adversarial [N, k], clean [N, k], y)``."""
    specs = parse_attacks(["apgd-ce/deployed", "apgd-t/deployed"], robust)
    adv_logits, clean_logits = [], []
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        batch = BatchFeatures(robust, None)
        with torch.no_grad():
            clean = robust(xb)
        worst, worst_margin = clean, margin(clean, yb)  # C&W margin: the higher, the worse for the true class
        for spec in specs:
            out = run_attack(spec, batch, xb, yb, norm="Linf", eps=eps, n_iter=n_iter, n_target_classes=target_classes,
                             seed=seed, num_classes=clean.shape[1])
            with torch.no_grad():
                logits = robust(out.x_adv)
            found = margin(logits, yb)
            worst = torch.where((found > worst_margin)[:, None], logits, worst)
            worst_margin = torch.maximum(worst_margin, found)
        adv_logits.append(worst.cpu())
        clean_logits.append(clean.cpu())
        if on_batch is not None:
            on_batch(start + len(xb), len(x))
    return torch.cat(adv_logits), torch.cat(clean_logits), y.cpu()
