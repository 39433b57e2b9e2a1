"""Adaptive smoothing's training attack as its authors run it (Bai et al., ``attacks.py`` of their code):
AutoAttack's APGD end to end through the whole mixture, on a loss that also tries to fool the mixing network.

Per clean batch it makes ``1 + target_classes`` adversarial batches: one APGD run on cross-entropy and one
targeted-DLR run towards each of the mixture's ``target_classes`` next most likely classes, each run ascending
per sample

    (1 − w) · L(log p(x), y) + w · BCE(γ(x), 1),    w ~ U(0, bce_max),

(the second term pushes α towards the standard branch) at a radius ``eps · U(radius_range)`` drawn per sample,
for ``round(χ²(iters_df))`` iterations drawn per run. Each run keeps, as the authors' code does, the iterate that
fooled the mixture where one did and the random start otherwise. The APGD is ``pyautoattack``'s, unchanged: its
loss hook receives the mixture's log-probabilities and reads ``γ`` from the forward pass just made.
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


@dataclass(frozen=True)
class RandomizedAttack:
    """The authors' CIFAR-10 values (``configs/cifar10_at_apgd.yaml``) unless said otherwise."""

    eps: float = 8 / 255  # l_inf radius before the per-sample factor
    target_classes: int = 9  # targeted-DLR runs after the cross-entropy run
    radius_range: tuple[float, float] = (0.4, 1.1)  # per-sample factor on eps, uniform
    iters_df: float = 75.0  # degrees of freedom of the chi-squared number of APGD iterations per run
    bce_max: float = 0.4  # the per-sample weight on fooling the mixing network, uniform in [0, bce_max]

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
        if self.y_target is None:
            base = F.cross_entropy(x, y, reduction="none")
        else:
            base = APGDAttack_targeted.dlr_loss_targeted(self, x, y)
        gamma = self.model.gamma
        fool_mixer = F.binary_cross_entropy_with_logits(gamma, torch.ones_like(gamma), reduction="none")
        return (1 - self.weight) * base + self.weight * fool_mixer


def randomized_apgd(model: MixedClassifier, x: Tensor, y: Tensor, attack: RandomizedAttack,
                    generator: torch.Generator) -> list[Tensor]:
    """The ``1 + target_classes`` adversarial batches of ``x`` (module docstring); the mixer in evaluation mode,
    as deployed. Every random draw comes from ``generator`` (APGD's own random start too), so a run repeats."""
    target = _RecordsGamma(model)
    with torch.no_grad():
        ranked = model.mix(x)[0].argsort(1, descending=True)
    numbers = np.random.default_rng(int(torch.randint(2**31, (1,), generator=generator)))
    batches = []
    for run in range(1 + attack.target_classes):
        lo, hi = attack.radius_range
        eps = (lo + (hi - lo) * torch.rand(len(x), generator=generator)) * attack.eps
        weight = torch.rand(len(x), generator=generator) * attack.bce_max
        iters = max(1, int(np.rint(chi2.rvs(attack.iters_df, random_state=numbers))))
        apgd = _CompositeAPGD(target, weight.to(x.device), n_iter=iters, norm="Linf", eps=eps.view(-1, 1, 1, 1).to(x),
                              device=x.device)
        apgd.y_target = None if run == 0 else ranked[:, run]
        apgd.init_hyperparam(x)
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []), warnings.catch_warnings():
            torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
            warnings.simplefilter("ignore")  # APGD's zero-gradient notice: a training attack has no verdict to flag
            batches.append(apgd.attack_single_run(x, y)[3].detach())
    return batches

