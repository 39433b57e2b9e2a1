"""The mixed classifier of Bai et al. ("Improving the accuracy-robustness trade-off of classifiers via adaptive
smoothing"): the output probabilities of an accurate standard classifier ``g`` and a robust classifier ``h``
mixed as

    p(x) = (1 − α) · softmax(g(x)) + α · softmax(h(x) / T),

with a fixed α, or with α(x) predicted per input by a mixing network (their "adaptive smoothing", trained by
:mod:`hpm.train.mixer`).

The model returns ``log p(x)``, computed in log space (``logsumexp``) so that no probability underflows to an exact
zero: its argmax is the mixture's prediction, cross-entropy on it is the mixture's negative log-likelihood, and
gradients flow through both networks, so APGD attacks the mixture end to end. The model declares its attack
targets like a head does: the mixture itself (``deployed``) and each branch alone (``standard``, ``robust``:
transfer attacks, judged on the mixture); an adaptive mixture also at its lowest α (``lowest-alpha``).
"""
from __future__ import annotations

import math
from pathlib import Path
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import MixedCheckpointConfig, write_config, write_weights
from .errors import HPMError
from .hub import push_folder
from .model_card import model_card

MODES = ("hard", "standard", "robust", "lowest-alpha")  # "hard": the deployed mixture, as attack adapters call it


def log_mixture(log_standard: Tensor, log_robust: Tensor, log_alpha: Tensor, log_rest: Tensor) -> Tensor:
    """``log((1 - α) exp(log_standard) + α exp(log_robust))`` from ``log α`` and ``log(1 - α)`` (scalars or
    ``[B, 1]``), in log space: no probability underflows to an exact zero."""
    return torch.logsumexp(torch.stack(torch.broadcast_tensors(log_standard + log_rest, log_robust + log_alpha)), 0)


class MixingNetwork(nn.Module):
    """Adaptive smoothing's mixing network (Bai et al.): ``α(x)`` from both branches' penultimate features.

    ``γ = BN(MLP(standardise([z_g, z_h]))) · gamma_scale + gamma_bias`` and ``α = lo + (hi - lo) · sigmoid(γ)``.
    The authors feed early convolutional stages of both networks to a small CNN; hpm feeds the features every
    hpm model exposes (``forward_features``), so that any two models can be mixed. The affine-free batch norm of
    ``γ`` and the range ``[lo, hi]`` are theirs (CIFAR-10 adversarial-training config: scale 2, bias 0.4 in
    training, ``α`` in [0.2, 0.95]).
    """

    def __init__(self, standard_features: int, robust_features: int, hidden: int = 256,
                 alpha_range: tuple[float, float] = (0.2, 0.95), gamma_scale: float = 2.0, gamma_bias: float = 0.4):
        super().__init__()
        lo, hi = alpha_range
        if not 0.0 < lo < hi < 1.0:
            raise ValueError(f"alpha_range must satisfy 0 < lo < hi < 1; got {alpha_range}")
        width = standard_features + robust_features
        self.standardise = nn.BatchNorm1d(width, affine=False)  # features of two networks on one scale
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 1))
        self.norm = nn.BatchNorm1d(1, affine=False, momentum=0.01)
        self.sizes, self.hidden = (standard_features, robust_features), hidden
        self.alpha_range = (float(lo), float(hi))
        self.gamma_scale, self.gamma_bias = float(gamma_scale), float(gamma_bias)

    def gamma(self, z_standard: Tensor, z_robust: Tensor) -> Tensor:
        """The mixing logit ``γ [B]``."""
        raw = self.mlp(self.standardise(torch.cat([z_standard, z_robust], 1)))  # [B, 1]
        return self.norm(raw).squeeze(1) * self.gamma_scale + self.gamma_bias

    def alpha(self, gamma: Tensor) -> Tensor:
        """``α = lo + (hi - lo) · sigmoid(γ)``, shaped like ``γ``."""
        lo, hi = self.alpha_range
        return lo + (hi - lo) * torch.sigmoid(gamma)

    def log_weights(self, gamma: Tensor) -> tuple[Tensor, Tensor]:
        """``log α`` and ``log(1 - α)`` as ``[B, 1]``: finite, since ``α`` stays inside ``(lo, hi)``."""
        alpha = self.alpha(gamma)[:, None]
        return alpha.log(), (-alpha).log1p()

    def config(self) -> dict:
        """Constructor keywords, for ``config.json``."""
        return {"standard_features": self.sizes[0], "robust_features": self.sizes[1], "hidden": self.hidden,
                "alpha_range": list(self.alpha_range), "gamma_scale": self.gamma_scale, "gamma_bias": self.gamma_bias}


class MixedClassifier(nn.Module):
    """``standard`` and ``robust``: ``images -> logits`` classifiers over the same classes and inputs, mixed with a
    fixed ``alpha`` or, given a ``mixer``, with ``α(x)`` per input (adaptive smoothing; both branches must then be
    hpm models, whose features the mixer reads).

    Args:
        alpha: the robust branch's weight α in [0, 1] (0: the standard classifier alone, 1: the robust one).
        temperature: T > 0 dividing the robust branch's logits before its softmax (below 1 sharpens it; a very
            small T saturates it, which starves gradient attacks: check ``robust_saturation``).
        mixer: a :class:`MixingNetwork` instead of ``alpha``.
    """

    FIXED_TARGETS = MappingProxyType({"deployed": ("hard",), "standard": ("standard",), "robust": ("robust",)})
    ADAPTIVE_TARGETS = MappingProxyType({**FIXED_TARGETS, "lowest-alpha": ("lowest-alpha",)})
    target_descriptions = MappingProxyType({
        "deployed": "the mixed classifier end to end (gradients through both networks and the mixing network)",
        "standard": "the standard branch alone (transfer to the mixture)",
        "robust": "the robust branch alone (transfer to the mixture)",
        "lowest-alpha": "the mixture at its lowest alpha, leaning most on the standard branch (transfer)"})
    batch_dependent = False

    def __init__(self, standard: nn.Module, robust: nn.Module, alpha: float | None = None, temperature: float = 1.0,
                 *, mixer: MixingNetwork | None = None, names: tuple[str, str] = ("standard", "robust")):
        super().__init__()
        if (alpha is None) == (mixer is None):
            raise ValueError("give either a fixed alpha or a mixing network")
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1]; got {alpha}")
        if not temperature > 0.0:
            raise ValueError(f"temperature must be > 0; got {temperature}")
        if mixer is not None and not all(hasattr(b, "forward_head") for b in (standard, robust)):
            raise ValueError("a mixing network reads the branches' features: mix two hpm models (hpm.wrap / hpm.load)")
        self.standard, self.robust, self.mixer = standard, robust, mixer
        self.alpha = None if alpha is None else float(alpha)
        self.temperature = float(temperature)
        self.names = names  # what the two networks are (model ids), for reports
        self.dataset = getattr(robust, "dataset", None)  # inputs, classes and dataset: the robust branch's
        self.classes = getattr(robust, "classes", None)
        self.input_size = getattr(robust, "input_size", None)
        self.num_classes = getattr(robust, "num_classes", None)
        self.checkpoint_config: MixedCheckpointConfig | None = None  # set by hpm.load / save_pretrained

    @property
    def attack_targets(self) -> MappingProxyType:
        """The mixture and each branch; an adaptive mixture also at its lowest α."""
        return self.FIXED_TARGETS if self.mixer is None else self.ADAPTIVE_TARGETS

    @property
    def mixing_text(self) -> str:
        """``α = 0.8``, or ``adaptive α in [0.2, 0.95]``."""
        if self.mixer is None:
            return f"α = {self.alpha:g}"
        return "adaptive α in [{:g}, {:g}]".format(*self.mixer.alpha_range)

    def describe(self) -> dict:
        """What an evaluation report records about the model."""
        rule = f"alpha {self.alpha:g}" if self.mixer is None else self.mixing_text.replace("α", "alpha")
        return {"head": f"mixed classifier ({rule}, temperature {self.temperature:g})",
                "backbone": f"standard {self.names[0]} + robust {self.names[1]}", "dataset": self.dataset,
                "batch_dependent": False}

    def branch_log_probs(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``log softmax(g(x))`` and ``log softmax(h(x) / T)``."""
        return F.log_softmax(self.standard(x), -1), F.log_softmax(self.robust(x) / self.temperature, -1)

    def mix(self, x: Tensor, lowest: bool = False) -> tuple[Tensor, Tensor | None]:
        """``log p(x)`` of the mixture and the mixing logit ``γ [B]`` (None for a fixed α); ``lowest``: at the
        mixer's lowest α instead of its own."""
        if self.mixer is None:
            log_standard, log_robust = self.branch_log_probs(x)
            log_alpha = torch.tensor(math.log(self.alpha) if self.alpha > 0 else -math.inf)
            log_rest = torch.tensor(math.log1p(-self.alpha) if self.alpha < 1 else -math.inf)
            return log_mixture(log_standard, log_robust, log_alpha.to(x), log_rest.to(x)), None
        z_standard, z_robust = self.standard.forward_features(x), self.robust.forward_features(x)
        log_standard = F.log_softmax(self.standard.forward_head(z_standard), -1)
        log_robust = F.log_softmax(self.robust.forward_head(z_robust) / self.temperature, -1)
        gamma = self.mixer.gamma(z_standard, z_robust)
        log_alpha, log_rest = self.mixer.log_weights(torch.full_like(gamma, -math.inf) if lowest else gamma)
        return log_mixture(log_standard, log_robust, log_alpha, log_rest), gamma

    def forward(self, x: Tensor, mode: str = "hard") -> Tensor:
        """``log p(x)`` of the mixture (``mode="hard"``), one branch's log-probabilities, or (adaptive) the
        mixture at its lowest α (``"lowest-alpha"``)."""
        if mode == "standard":
            return F.log_softmax(self.standard(x), -1)
        if mode == "robust":
            return F.log_softmax(self.robust(x) / self.temperature, -1)
        if mode not in MODES or (mode == "lowest-alpha" and self.mixer is None):
            raise ValueError(f"unknown mode {mode!r}; one of {', '.join(MODES[:3 if self.mixer is None else 4])}")
        return self.mix(x, lowest=mode == "lowest-alpha")[0]

    @torch.no_grad()
    def robust_saturation(self, x: Tensor) -> float:
        """The share of ``x`` whose robust branch puts float32 probability exactly 1 on its top class: there the
        branch passes no gradient to an attacker, and its robustness in the mixture would be masked, not real."""
        _, log_robust = self.branch_log_probs(x)
        return float((log_robust.max(-1).values == 0).float().mean())

    def pitfall_checks(self, x: Tensor) -> list[tuple[str, bool, str]]:
        """``(name, passed, detail)`` checks an evaluation of this model runs on its check images ``x``: the robust
        branch's softmax must not saturate there (:meth:`robust_saturation`), or its robustness inside the mixture
        would be masked gradients, not robustness."""
        share = self.robust_saturation(x)
        checks = [("robust_branch_not_saturated", share == 0.0,
                   f"{100 * share:.1f}% of {len(x)} images have a robust-branch probability of exactly 1 in float32 "
                   f"(T = {self.temperature:g})")]
        if self.mixer is not None:  # a pinned sigmoid passes no gradient to the attacker through the mixer
            pinned = float((torch.sigmoid(self.mix(x)[1]) % 1 == 0).float().mean())
            checks.append(("mixer_not_saturated", pinned == 0.0,
                           f"{100 * pinned:.1f}% of {len(x)} images have a mixing sigmoid of exactly 0 or 1 in "
                           "float32"))
        return checks

    # -- persistence -----------------------------------------------------------------------------
    def to_config(self) -> MixedCheckpointConfig:
        """The checkpoint configuration: both classifiers' own (they must be :class:`hpm.HPMClassifier`), the
        mixing rule, and the metrics of the checkpoint this model was loaded from."""
        if not all(hasattr(branch, "to_config") for branch in (self.standard, self.robust)):
            raise HPMError("only a mixture of two hpm models (hpm.wrap / hpm.load) can be saved; wrap each "
                           "network with hpm.wrap(module, head='fc') first")
        previous = self.checkpoint_config
        return MixedCheckpointConfig(self.standard.to_config(), self.robust.to_config(), self.alpha, self.temperature,
                                     names=list(self.names), metrics=dict(previous.metrics) if previous else {},
                                     mixer=None if self.mixer is None else self.mixer.config(),
                                     training=previous.training if previous else None)

    def save_pretrained(self, directory: str | Path, *, metrics: dict | None = None,
                        training: dict | None = None) -> Path:
        """Write ``config.json``, ``model.safetensors`` (each branch's weights as its own checkpoint would hold
        them, under ``standard.`` and ``robust.``; a mixing network's under ``mixer.``) and a model card."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        config = self.to_config()
        config.metrics = dict(metrics) if metrics is not None else config.metrics
        config.training = training if training is not None else config.training
        weights = {} if self.mixer is None else {f"mixer.{k}": v for k, v in self.mixer.state_dict().items()}
        for name, branch_config in (("standard", config.standard), ("robust", config.robust)):
            weights |= {f"{name}.{key}": value for key, value in getattr(self, name).state_dict().items()
                        if branch_config.backbone_weights_included or not key.startswith("features.")}
        write_weights(out, weights)
        write_config(out, config, model_card(config))
        self.checkpoint_config = config
        return out

    def push_to_hub(self, repo_id: str, *, private: bool = False, token: str | None = None,
                    commit_message: str = "Upload mixed classifier", **save_kwargs) -> str:
        """Save to a temporary directory and upload it to the Hugging Face Hub; returns the commit URL."""
        return push_folder(lambda d: self.save_pretrained(d, **save_kwargs), repo_id, private=private, token=token,
                           commit_message=commit_message)

    def extra_repr(self) -> str:
        return f"{self.mixing_text}, temperature={self.temperature:g}"
