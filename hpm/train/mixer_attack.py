"""Adaptive smoothing's training attack as its authors run it (Bai et al.'s public code): AutoAttack's APGD end to
end through the whole mixture, on a loss that also tries to fool the mixing network.

Per clean batch it makes ``1 + target_classes`` adversarial batches: one APGD run on cross-entropy and one
targeted-DLR run towards each of the mixture's ``target_classes`` next most likely classes, each run ascending
per sample

    (1 − w) · L(log p(x), y) + w · BCE(γ(x), 1),    w ~ U(0, bce_max),

(the second term pushes α towards the standard branch) at a radius ``eps · U(radius_range)`` drawn per sample,
for ``round(χ²(iters_df))`` iterations drawn per run. Each run keeps, as the authors' code does, the iterate that
fooled the mixture where one did and the random start otherwise. The APGD is ``pyautoattack``'s, unchanged: its
loss hook receives the mixture's log-probabilities and reads ``γ`` from the forward pass just made; its step-size
checkpoints follow each run's own number of iterations.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
from scipy.stats import chi2
from torch import Tensor, nn

from ..mixed import MixedClassifier
from ..rng import seeded


@dataclass(frozen=True)
class RandomizedAttack:
    """The attack's randomisation; the defaults are the authors' CIFAR-10 values.

    Args:
        eps: l_inf radius before the per-sample factor.
        target_classes: targeted-DLR runs after the cross-entropy run (at most the number of classes - 1 run).
        radius_range: the per-sample factor on ``eps`` is uniform in this range.
        iters_df: each run's number of APGD iterations is ``round(χ²(iters_df))``, at least 1.
        bce_max: the per-sample weight on fooling the mixing network is uniform in ``[0, bce_max]``.
    """

    eps: float = 8 / 255
    target_classes: int = 9
    radius_range: tuple[float, float] = (0.4, 1.1)
    iters_df: float = 75.0
    bce_max: float = 0.4

    def __post_init__(self):
        lo, hi = self.radius_range
        if not (self.eps > 0 and 0 < lo <= hi and self.target_classes >= 0 and self.iters_df > 0
                and 0 <= self.bce_max <= 1):
            raise ValueError(f"need eps > 0, 0 < radius factors lo <= hi, target_classes >= 0, iters_df > 0 and "
                             f"bce_max in [0, 1]; got {self}")


class _RecordsGamma(nn.Module):
    """The mixture as APGD calls it: its log-probabilities, with the mixing logit of the same pass kept aside."""

    def __init__(self, model: MixedClassifier):
        super().__init__()
        self.model, self.gamma = model, None

    def forward(self, x: Tensor) -> Tensor:
        log_probs, self.gamma = self.model.mix(x)
        return log_probs


class _CompositeAPGD(APGDAttack):
    """AutoAttack's APGD on ``(1 − w) L + w BCE(γ, 1)``: ``attack_single_run`` with ``loss="dlr"`` calls
    ``dlr_loss`` right after the forward pass whose ``γ`` :class:`_RecordsGamma` kept; ``L`` is cross-entropy, or
    with ``y_target`` set, AutoAttack's targeted DLR loss."""

    def __init__(self, target: _RecordsGamma, weight: Tensor, **kwargs):
        super().__init__(target, loss="dlr", **kwargs)
        self.weight = weight

    def dlr_loss(self, x: Tensor, y: Tensor) -> Tensor:
        base = F.cross_entropy(x, y, reduction="none") if self.y_target is None else \
            APGDAttack_targeted.dlr_loss_targeted(self, x, y)
        return fooling_the_mixer(base, self.model.gamma, self.weight)


def fooling_the_mixer(loss: Tensor, gamma: Tensor, weight: Tensor) -> Tensor:
    """The training attack's per-sample objective ``(1 − w) · loss + w · BCE(γ, 1)`` (``[B]`` each): the second
    term grows as the mixing network leans on the standard branch."""
    return (1 - weight) * loss + weight * F.binary_cross_entropy_with_logits(gamma, torch.ones_like(gamma),
                                                                             reduction="none")


def randomized_apgd(model: MixedClassifier, x: Tensor, y: Tensor, attack: RandomizedAttack,
                    generator: torch.Generator) -> list[Tensor]:
    """The adversarial batches of ``x`` (module docstring), with the mixing network as the caller has set it.

    Args:
        model: an adaptive mixture (one with a mixing network).
        x, y: clean images ``[B, 3, H, W]`` in [0, 1] and their labels ``[B]``.
        attack: the randomisation.
        generator: every random draw comes from it (APGD's own random start too), so a run repeats.

    Returns:
        ``1 + min(target_classes, classes - 1)`` batches shaped like ``x``: the cross-entropy run's, then one per
        target class, from the mixture's second most likely class on.
    """
    target = _RecordsGamma(model)
    with torch.no_grad():
        ranked = model.mix(x)[0].argsort(1, descending=True)
    numbers = np.random.default_rng(int(torch.randint(2**31, (1,), generator=generator)))
    batches = []
    for run in range(1 + min(attack.target_classes, ranked.shape[1] - 1)):
        lo, hi = attack.radius_range
        eps = (lo + (hi - lo) * torch.rand(len(x), generator=generator)) * attack.eps
        weight = torch.rand(len(x), generator=generator) * attack.bce_max
        iters = max(1, int(np.rint(chi2.rvs(attack.iters_df, random_state=numbers))))
        apgd = _CompositeAPGD(target, weight.to(x.device), n_iter=iters, norm="Linf", eps=eps.view(-1, 1, 1, 1).to(x),
                              device=x.device)
        apgd.y_target = None if run == 0 else ranked[:, run]
        apgd.init_hyperparam(x)
        with seeded(int(torch.randint(2**31, (1,), generator=generator)), x.device), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # APGD's zero-gradient notice: a training attack has no verdict to flag
            batches.append(apgd.attack_single_run(x, y)[3].detach())
    return batches
