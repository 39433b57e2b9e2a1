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
from pathlib import Path
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import MixedCheckpointConfig, write_config, write_weights
from .errors import HPMError
from .hub import push_folder
from .model_card import model_card

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
        self.num_classes = getattr(robust, "num_classes", None)
        self.checkpoint_config: MixedCheckpointConfig | None = None  # set by hpm.load / save_pretrained

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

    def pitfall_checks(self, x: Tensor) -> list[tuple[str, bool, str]]:
        """``(name, passed, detail)`` checks an evaluation of this model runs on its check images ``x``: the robust
        branch's softmax must not saturate there (:meth:`robust_saturation`), or its robustness inside the mixture
        would be masked gradients, not robustness."""
        share = self.robust_saturation(x)
        return [("robust_branch_not_saturated", share == 0.0,
                 f"{100 * share:.1f}% of {len(x)} images have a robust-branch probability of exactly 1 in float32 "
                 f"(T = {self.temperature:g})")]

    # -- persistence -----------------------------------------------------------------------------
    def to_config(self) -> MixedCheckpointConfig:
        """The checkpoint configuration: both classifiers' own (they must be :class:`hpm.HPMClassifier`), the
        mixing rule, and the metrics of the checkpoint this model was loaded from."""
        if not all(hasattr(branch, "to_config") for branch in (self.standard, self.robust)):
            raise HPMError("only a mixture of two hpm models (hpm.wrap / hpm.load) can be saved; wrap each "
                           "network with hpm.wrap(module, head='fc') first")
        previous = self.checkpoint_config
        return MixedCheckpointConfig(self.standard.to_config(), self.robust.to_config(), self.alpha, self.temperature,
                                     names=list(self.names), metrics=dict(previous.metrics) if previous else {})

    def save_pretrained(self, directory: str | Path, *, metrics: dict | None = None) -> Path:
        """Write ``config.json``, ``model.safetensors`` (each branch's weights as its own checkpoint would hold
        them, under ``standard.`` and ``robust.``) and a model card to ``directory``."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        config = self.to_config()
        config.metrics = dict(metrics) if metrics is not None else config.metrics
        weights = {}
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
        return f"alpha={self.alpha:g}, temperature={self.temperature:g}"
