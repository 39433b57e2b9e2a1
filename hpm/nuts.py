"""MixedNUTS (Bai et al., "MixedNUTS: Training-free accuracy-robustness balance via nonlinearly mixed
classifiers"): a standard classifier ``g`` and a robust classifier ``h`` mixed, without training, as

    p(x) = (1 − α) · onehot(argmax g(x)) + α · softmax(h̃(x)),
    h̃ = s · sign(u) · |u|^p,   u = GELU(ℓ̂ + c),   ℓ̂ = (ℓ − mean ℓ) / std ℓ   (over the classes),

ℓ being ``h``'s logits. The standard branch enters as a hard max, as its authors deploy it: its prediction, with
no confidence of its own, so the mixture follows the robust branch wherever its mapped margin (top-1 minus top-2
probability) reaches ``(1 − α) / α`` (a sufficient condition: below it the robust class may still win, when the
standard branch's class is not the robust runner-up). The map ``h̃`` (scale ``s``, power ``p``, bias ``c``) and α are
chosen by :func:`hpm.train.nuts.select_map` on images the evaluation does not use.

Gradients. The hard max passes none: attacked through the deployed output itself, the standard branch is masked
and the robust branch carries all the gradient. The attack targets therefore replace it by its softmax:
``adaptive`` is the authors' adaptive attack: the standard softmax mixed, with the attack's own weight
``attack_alpha``, with 0.9 of the raw robust softmax and 0.1 of the mapped one, end to end (every loss's gradient is
that of the blend, as theirs; their APGD also follows the deployed output's loss in its step-size control, hpm's the
blend's, while every iterate is judged on the deployed mixture). The authors take ``attack_alpha`` from the same
selection without the map (plain softmax margins, cutoff at their 95th percentile): the deployed α is so close to 1
that the standard branch would barely move the gradient. ``mapped`` is the mixture with the standard softmax and
the mapped robust branch at the deployed α (end to end); ``bpda`` the deployed output in the forward pass with the
``mapped`` gradient in the backward pass (a straight-through hard max); ``standard`` and ``robust`` each raw branch
alone (transfer). Every attack is judged on the deployed mixture.
"""
from __future__ import annotations

import math
import numbers
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import HARD_MAX
from .mixed import MixedClassifier, fixed_log_weights, log_mixture

RAW_SHARE = 0.9  # the authors' adaptive attack: the robust branch's share taken raw (the rest mapped)
# The map's constants, far beyond the authors' grid (s in [0.05, 5], p in [1, 4], c in [-1.1, 0]) yet inside what
# float64 holds: a standardised logit of k classes is at most sqrt(k - 1) in size, so for a thousand classes
# |h̃| stays below 1e30. A power below 1 has no gradient at u = 0.
MAX_SCALE, MAX_POWER, MAX_BIAS = 1e4, 16.0, 10.0


class _StraightThrough(torch.autograd.Function):
    """``value`` in the forward pass, the gradient of ``surrogate`` in the backward pass (BPDA)."""

    @staticmethod
    def forward(ctx, value: Tensor, surrogate: Tensor) -> Tensor:
        return value.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor]:
        return None, grad


def standardise(logits: Tensor) -> Tensor:
    """Each row of ``logits`` minus its mean, divided by its (unbiased) standard deviation over the classes."""
    return (logits - logits.mean(-1, keepdim=True)) / (logits.var(-1, keepdim=True) + 1e-8).sqrt()


class RobustLogitMap(nn.Module):
    """MixedNUTS' map of the robust branch's logits, ``h̃ = s · sign(u) · |u|^p`` with ``u = GELU(ℓ̂ + c)``,
    computed in float64 (a large power of a standardised logit overflows float32's softmax) and returned as
    ``log softmax(h̃)`` in the input's dtype."""

    def __init__(self, scale: float, power: float, bias: float):
        super().__init__()
        values = (scale, power, bias)
        if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values) or not (
                0 < scale <= MAX_SCALE and 1 <= power <= MAX_POWER and abs(bias) <= MAX_BIAS):
            raise ValueError(f"scale must be in (0, {MAX_SCALE:g}], power in [1, {MAX_POWER:g}] and bias in "
                             f"[-{MAX_BIAS:g}, {MAX_BIAS:g}]; got {scale!r}, {power!r}, {bias!r}")
        self.scale, self.power, self.bias = float(scale), float(power), float(bias)

    def mapped(self, logits: Tensor) -> Tensor:
        """``h̃`` of ``logits [B, k]``, float64."""
        u = F.gelu(standardise(logits.double()) + self.bias)
        return self.scale * u.sign() * u.abs().pow(self.power)

    def forward(self, logits: Tensor) -> Tensor:
        return F.log_softmax(self.mapped(logits), -1).to(logits.dtype)

    def config(self) -> dict:
        return {"scale": self.scale, "power": self.power, "bias": self.bias}

    def extra_repr(self) -> str:
        return f"scale={self.scale:.4g}, power={self.power:.4g}, bias={self.bias:.4g}"


def softmax_margins(scores: Tensor) -> Tensor:
    """Top-1 minus top-2 of ``softmax(scores)`` per row ``[N]``, in ``scores``' dtype."""
    top = scores.softmax(-1).topk(2, dim=-1).values
    return top[:, 0] - top[:, 1]


def mapped_margins(logits: Tensor, robust_map: RobustLogitMap) -> Tensor:
    """Top-1 minus top-2 of the mapped robust probabilities, float64 ``[N]``."""
    return softmax_margins(robust_map.mapped(logits))


class MixedNUTS(MixedClassifier):
    """A MixedNUTS mixture of ``standard`` and ``robust`` (``images -> logits`` classifiers over the same classes)
    with weight ``alpha`` on the mapped robust branch; its outputs are log-probabilities (``forward(x, mode)``).

    Args:
        robust_map: the map of the robust logits (:class:`RobustLogitMap`).
        attack_alpha: the weight of the robust branch in the ``adaptive`` attack's gradient (the authors' weight
            selected without the map); None: ``alpha`` itself.
        selection: how ``alpha`` and the map were chosen (images, attack, grid), recorded in the checkpoint.
    """

    TARGETS = MappingProxyType({"adaptive": ("adaptive",), "bpda": ("bpda",), "mapped": ("mapped",),
                                "standard": ("standard",), "robust": ("robust",)})
    MODES = ("hard", *TARGETS)
    targeted_on = ("adaptive", "bpda")  # APGD-T in the default plan: the authors' adaptive attack, and BPDA
    target_descriptions = MappingProxyType({
        "adaptive": "MixedNUTS' adaptive attack: the standard softmax mixed with 0.9 of the raw and 0.1 of the mapped "
                    "robust softmax at the attack's weight (end to end)",
        "bpda": "the deployed mixture, its hard max passed straight through (gradient of its softmax)",
        "mapped": "the mixture with the standard branch's softmax for its hard max (end to end)",
        "standard": "the standard branch alone (transfer to the mixture)",
        "robust": "the raw robust branch alone (transfer to the mixture)"})

    def __init__(self, standard: nn.Module, robust: nn.Module, alpha: float, robust_map: RobustLogitMap, *,
                 names: tuple[str, str] = ("standard", "robust"), attack_alpha: float | None = None,
                 selection: dict | None = None):
        super().__init__(standard, robust, alpha, names=names)
        if attack_alpha is not None and not 0 <= attack_alpha <= 1:
            raise ValueError(f"attack_alpha must be in [0, 1]; got {attack_alpha}")
        self.robust_map = robust_map
        self.attack_alpha = float(alpha if attack_alpha is None else attack_alpha)
        self.selection = selection

    @property
    def attack_targets(self) -> MappingProxyType:
        """Each surrogate of the hard max (``adaptive``, ``bpda``, ``mapped``) and each raw branch."""
        return self.TARGETS

    @property
    def mixing_text(self) -> str:
        m = self.robust_map
        return f"MixedNUTS, α = {self.alpha:.3g}, s = {m.scale:.3g}, p = {m.power:.3g}, c = {m.bias:.3g}"

    def describe(self) -> dict:
        m = self.robust_map
        return {**super().describe(), "head": f"MixedNUTS (alpha {self.alpha:.4g}, map scale {m.scale:.4g}, power "
                                              f"{m.power:.4g}, bias {m.bias:.4g}; standard branch as a hard max; "
                                              f"adaptive attack weight {self.attack_alpha:.4g})"}

    def forward(self, x: Tensor, mode: str = "hard") -> Tensor:
        """``log p(x)`` of the deployed mixture (``"hard"``) or of an attack surrogate (:attr:`TARGETS`)."""
        if mode not in self.MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {', '.join(self.MODES)}")
        if mode == "standard":  # each raw branch alone: only its network runs
            return F.log_softmax(self.standard(x), -1)
        if mode == "robust":
            return F.log_softmax(self.robust(x), -1)
        return self.combine(self.standard(x), self.robust(x), mode)

    def combine(self, g: Tensor, h: Tensor, mode: str = "hard") -> Tensor:
        """:meth:`forward` of a mixing mode from the two branches' logits ``g`` and ``h`` (``[B, k]``)."""
        log_alpha, log_rest = fixed_log_weights(self.alpha, h.device)
        mapped = self.robust_map(h)
        if mode == "adaptive":
            raw = log_mixture(mapped, F.log_softmax(h, -1), *fixed_log_weights(RAW_SHARE, h.device))  # 0.9 raw
            return log_mixture(F.log_softmax(g, -1), raw, *fixed_log_weights(self.attack_alpha, h.device))
        if mode != "hard":
            soft = log_mixture(F.log_softmax(g, -1), mapped, log_alpha, log_rest)
            if mode == "mapped":
                return soft
        hard_max = torch.where(F.one_hot(g.argmax(-1), g.shape[-1]).bool(), 0.0, -math.inf).to(g.dtype)
        hard = log_mixture(hard_max, mapped, log_alpha, log_rest)
        return hard if mode == "hard" else _StraightThrough.apply(hard.detach(), soft)

    @torch.no_grad()
    def mapped_saturation(self, x: Tensor) -> float:
        """The share of ``x`` whose mapped robust branch puts all its probability on its top class (log-probability
        exactly 0 in float32): there it passes no gradient (and its margin is 1 whatever the attack does to it)."""
        return float((self.robust_map(self.robust(x)).float().max(-1).values == 0).float().mean())

    def pitfall_checks(self, x: Tensor) -> list[tuple[str, bool, str]]:
        """The mapped robust softmax must not saturate on ``x``, and the adaptive attack's gradient must reach the
        input on every image and the standard branch's logits on every image: otherwise the attacks see masked
        gradients (of the whole mixture, or of its standard branch), not robustness."""
        share = self.mapped_saturation(x)
        x = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            out = self(x, "adaptive")
            grad, = torch.autograd.grad(F.nll_loss(out, out.argmax(-1), reduction="sum"), x)
            g = self.standard(x.detach()).detach().requires_grad_(True)
            out = self.combine(g, self.robust(x.detach()).detach(), "adaptive")
            grad_g, = torch.autograd.grad(F.nll_loss(out, out.argmax(-1), reduction="sum"), g)
        flat = float((grad.flatten(1).abs().amax(1) == 0).float().mean())
        flat_g = float((grad_g.abs().amax(1) == 0).float().mean())
        return [("mapped_robust_branch_not_saturated", share == 0.0,
                 f"{100 * share:.1f}% of {len(x)} images have a mapped robust probability of exactly 1 in float32"),
                ("adaptive_surrogate_has_gradient", flat == 0.0,
                 f"{100 * flat:.1f}% of {len(x)} images have an exactly zero input gradient through the adaptive "
                 "surrogate"),
                ("standard_branch_has_gradient", flat_g == 0.0,
                 f"{100 * flat_g:.1f}% of {len(x)} images have an exactly zero gradient of the adaptive surrogate's "
                 f"loss at the standard branch's logits (attack weight {self.attack_alpha:.4g})")]

    def mix(self, x: Tensor, lowest: bool = False):
        raise NotImplementedError("MixedNUTS mixes in forward(x, mode); MixedClassifier.mix is its plain mixture")

    def to_config(self, directory=None):
        config = super().to_config(directory)
        config.robust_map = {**self.robust_map.config(), "standard": HARD_MAX, "attack_alpha": self.attack_alpha,
                             **({"selection": self.selection} if self.selection else {})}
        return config

    def extra_repr(self) -> str:
        return self.mixing_text
