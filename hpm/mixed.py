"""The mixed classifier of Bai et al. ("Improving the accuracy-robustness trade-off of classifiers via adaptive
smoothing"), fixed-α form: the output probabilities of an accurate standard classifier ``g`` and a robust
classifier ``h`` mixed as

    p(x) = (1 − α) · softmax(g(x)) + α · softmax(h(x) / T).

The model returns ``log p(x)``, computed in log space (``logsumexp``) so that no probability underflows to an exact
zero: its argmax is the mixture's prediction, cross-entropy on it is the mixture's negative log-likelihood, and
gradients flow through both networks, so APGD attacks the mixture end to end. The model declares its attack
targets like a head does: the mixture itself (``deployed``) and each branch alone (``standard``, ``robust``:
transfer attacks, judged on the mixture).
"""
from __future__ import annotations

import math
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MODES = ("hard", "standard", "robust")  # "hard": the deployed mixture, as the attack adapters call it


class MixedClassifier(nn.Module):
    """``standard`` and ``robust``: ``images -> logits`` classifiers over the same classes and inputs.

    Args:
        alpha: the robust branch's weight α in [0, 1] (0: the standard classifier alone, 1: the robust one).
        temperature: T > 0 dividing the robust branch's logits before its softmax (below 1 sharpens it; a very
            small T saturates it, which starves gradient attacks: check ``robust_saturation``).
    """

    attack_targets = MappingProxyType({"deployed": ("hard",), "standard": ("standard",), "robust": ("robust",)})
    target_descriptions = MappingProxyType({
        "deployed": "the mixed classifier end to end (gradients through both networks)",
        "standard": "the standard branch alone (transfer to the mixture)",
        "robust": "the robust branch alone (transfer to the mixture)"})
    batch_dependent = False

    def __init__(self, standard: nn.Module, robust: nn.Module, alpha: float, temperature: float = 1.0, *,
                 names: tuple[str, str] = ("standard", "robust")):
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1]; got {alpha}")
        if not temperature > 0.0:
            raise ValueError(f"temperature must be > 0; got {temperature}")
        self.standard, self.robust = standard, robust
        self.alpha, self.temperature = float(alpha), float(temperature)
        self.names = names  # what the two networks are (model ids), for reports
        self.dataset = getattr(robust, "dataset", None)  # inputs, classes and dataset: the robust branch's
        self.classes = getattr(robust, "classes", None)
        self.input_size = getattr(robust, "input_size", None)

    def describe(self) -> dict:
        """What an evaluation report records about the model."""
        return {"head": f"mixed classifier (alpha {self.alpha:g}, temperature {self.temperature:g})",
                "backbone": f"standard {self.names[0]} + robust {self.names[1]}", "dataset": self.dataset,
                "batch_dependent": False}

    def branch_log_probs(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``log softmax(g(x))`` and ``log softmax(h(x) / T)``."""
        return F.log_softmax(self.standard(x), -1), F.log_softmax(self.robust(x) / self.temperature, -1)

    def forward(self, x: Tensor, mode: str = "hard") -> Tensor:
        """``log p(x)`` of the mixture (``mode="hard"``), or one branch's log-probabilities."""
        if mode == "standard":
            return F.log_softmax(self.standard(x), -1)
        if mode == "robust":
            return F.log_softmax(self.robust(x) / self.temperature, -1)
        if mode != "hard":
            raise ValueError(f"unknown mode {mode!r}; one of {', '.join(MODES)}")
        log_standard, log_robust = self.branch_log_probs(x)
        weights = [math.log1p(-self.alpha) if self.alpha < 1 else -math.inf,
                   math.log(self.alpha) if self.alpha > 0 else -math.inf]
        return torch.logsumexp(torch.stack([log_standard + weights[0], log_robust + weights[1]]), 0)

    @torch.no_grad()
    def robust_saturation(self, x: Tensor) -> float:
        """The share of ``x`` whose robust branch puts float32 probability exactly 1 on its top class: there the
        branch passes no gradient to an attacker, and its robustness in the mixture would be masked, not real."""
        _, log_robust = self.branch_log_probs(x)
        return float((log_robust.max(-1).values == 0).float().mean())

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}, temperature={self.temperature:g}"
