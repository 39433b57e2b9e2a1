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
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import MixedCheckpointConfig, write_config, write_weights
from .devices import device_of
from .errors import HPMError
from .hub import push_folder
from .model_card import model_card
from .sources.zoo import BasicBlock, PreActBlock
from .stages import FeatureTaps, stage_outputs

MODES = ("hard", "standard", "robust", "lowest-alpha")  # "hard": the deployed mixture, as attack adapters call it


def log_mixture(log_standard: Tensor, log_robust: Tensor, log_alpha: Tensor, log_rest: Tensor) -> Tensor:
    """``log((1 - α) exp(log_standard) + α exp(log_robust))`` from ``log α`` and ``log(1 - α)`` (scalars or
    ``[B, 1]``), in log space: no probability underflows to an exact zero."""
    return torch.logsumexp(torch.stack(torch.broadcast_tensors(log_standard + log_rest, log_robust + log_alpha)), 0)


def sigmoid_saturation(gamma: Tensor) -> float:
    """The share of mixing logits ``γ`` whose sigmoid is exactly 0 or 1 in float32: there α passes no gradient
    through the mixing network (0 for none)."""
    sigmoid = torch.sigmoid(gamma.float())
    return float(((sigmoid == 0) | (sigmoid == 1)).float().mean()) if gamma.numel() else 0.0


def fixed_log_weights(alpha: float, device: torch.device | str) -> tuple[Tensor, Tensor]:
    """``log α`` and ``log(1 − α)`` of a fixed weight α in [0, 1], as scalars for :func:`log_mixture` (``-inf`` at
    the ends, never a ``log 0`` error)."""
    return (torch.tensor(math.log(alpha) if alpha > 0 else -math.inf, device=device),
            torch.tensor(math.log1p(-alpha) if alpha < 1 else -math.inf, device=device))


_BLOCKS = {"basic": BasicBlock, "preact": PreActBlock}


def _stage(in_ch: int, out_ch: int, blocks: int, block: str) -> nn.Module:
    """A strided stage of ``blocks`` residual blocks (the block itself when there is one)."""
    kind = _BLOCKS[block]
    layers = [kind(in_ch, out_ch, 2)] + [kind(out_ch, out_ch, 1) for _ in range(blocks - 1)]
    return layers[0] if blocks == 1 else nn.Sequential(*layers)


class MixingNetwork(nn.Module):
    """Adaptive smoothing's mixing network (Bai et al.): the mixing logit ``γ(x)`` from early feature maps of both
    branches.

    Like the authors' network, it concatenates the two branches' outputs of their first resolution stage, reduces
    them with strided residual blocks, adds the concatenation of their second-stage outputs (through a 1x1
    projection in the compact layout), and reduces the sum to one number with two more strided stages, global
    pooling and a linear layer. Two layouts:

    * the authors' (``width=None, blocks=2, block="preact"``): each stage two pre-activation blocks, the first
      stage as wide as both branches' second stages together, the next two twice and four times as wide
      (256/512/1024 for two CIFAR ResNet-18s), the second-stage maps added as they are;
    * hpm's compact one for a CPU budget (the defaults): one post-activation block (hpm's zoo ``BasicBlock``) per
      stage of width ``width, 2 width, 4 width``.

    ``γ = BN(raw) · scale + bias`` with an affine-free batch norm (momentum 0.01). In training the raw outputs
    are first clamped to the batch mean ± ``clamp`` batch standard deviations, ``(scale, bias)`` is
    ``train_gamma`` and ``α = sigmoid(γ)``; in evaluation ``(scale, bias)`` is ``eval_gamma`` and
    ``α = lo + (hi - lo) · sigmoid(γ)`` stays inside ``alpha_range``: the authors' CIFAR-10 adversarial-training
    configuration (train (2, 0.4), range [0.2, 0.95]). Their evaluation constants are chosen per model after
    training ((3, 20) in their CIFAR-10 configuration); hpm's default evaluates with the training ones.

    Args:
        taps: for the standard and the robust branch, the names of the modules (inside each branch's
            ``features``) whose outputs are its first- and second-stage feature maps.
        channels: the channels of those maps, ``[[standard first, standard second], [robust first, robust
            second]]``.
        width: the first reducing stage's width (a 1x1 projection brings the second-stage maps to it); None:
            both branches' second-stage channels together (no projection).
        blocks: residual blocks per stage.
        block: ``"basic"`` (post-activation) or ``"preact"`` (pre-activation) blocks.
    """

    def __init__(self, taps: Sequence[Sequence[str]], channels: Sequence[Sequence[int]], width: int | None = 32,
                 alpha_range: tuple[float, float] = (0.2, 0.95), train_gamma: tuple[float, float] = (2.0, 0.4),
                 eval_gamma: tuple[float, float] | None = None, clamp: float = 0.6, *, blocks: int = 1,
                 block: str = "basic"):
        super().__init__()
        lo, hi = alpha_range
        if not 0.0 < lo < hi < 1.0:
            raise ValueError(f"alpha_range must satisfy 0 < lo < hi < 1; got {alpha_range}")
        if [len(t) for t in taps] != [2, 2] or [len(c) for c in channels] != [2, 2]:
            raise ValueError(f"taps and channels name two feature maps of each branch; got {taps}, {channels}")
        if (width is not None and width < 1) or not clamp > 0 or blocks < 1 or block not in _BLOCKS:
            raise ValueError(f"width must be None or >= 1, clamp > 0, blocks >= 1 and block one of {sorted(_BLOCKS)}; "
                             f"got {width}, {clamp}, {blocks}, {block!r}")
        (first_standard, second_standard), (first_robust, second_robust) = channels
        self.taps = tuple(tuple(str(name) for name in names) for names in taps)
        self.channels = tuple(tuple(int(c) for c in pair) for pair in channels)
        second = second_standard + second_robust
        wide = second if width is None else width
        self.reduce_first = _stage(first_standard + first_robust, wide, blocks, block)
        self.project_second = nn.Identity() if width is None else nn.Conv2d(second, wide, 1, bias=False)
        self.body = nn.Sequential(_stage(wide, 2 * wide, blocks, block), _stage(2 * wide, 4 * wide, blocks, block))
        self.linear = nn.Linear(4 * wide, 1, bias=False)
        self.norm = nn.BatchNorm1d(1, affine=False, momentum=0.01)
        self.width, self.blocks, self.block, self.clamp = width, int(blocks), block, float(clamp)
        self.alpha_range = (float(lo), float(hi))
        self.train_gamma = tuple(float(v) for v in train_gamma)
        self.eval_gamma = self.train_gamma if eval_gamma is None else tuple(float(v) for v in eval_gamma)
        self.full_alpha = False  # in evaluation mode, α = sigmoid(γ) over all of (0, 1) (the training attack's view)

    @classmethod
    def for_branches(cls, standard: nn.Module, robust: nn.Module, **options) -> "MixingNetwork":
        """A mixing network reading the first two resolution stages of two hpm models (found by probing them)."""
        taps, channels = [], []
        for name, branch in (("standard", standard), ("robust", robust)):
            stages = stage_outputs(branch.features, branch.input_size or (3, 32, 32))
            if len(stages) < 2:
                raise HPMError(f"the {name} branch has {len(stages)} resolution stage; a mixing network reads two")
            taps.append([stage[0] for stage in stages[:2]])
            channels.append([stage[1] for stage in stages[:2]])
        return cls(taps, channels, **options)

    def gamma(self, standard_maps: Sequence[Tensor], robust_maps: Sequence[Tensor]) -> Tensor:
        """The mixing logit ``γ [B]`` from each branch's first- and second-stage feature maps."""
        first = self.reduce_first(torch.cat([standard_maps[0], robust_maps[0]], 1))
        second = self.project_second(torch.cat([standard_maps[1], robust_maps[1]], 1))
        raw = self.linear(F.adaptive_avg_pool2d(self.body(first + second), 1).flatten(1))  # [B, 1]
        if self.training:  # the authors' clamp, so that a few outliers do not set the batch statistics
            mean, std = raw.mean().detach(), raw.std().detach()
            raw = torch.clamp(raw, mean - self.clamp * std, mean + self.clamp * std)
        scale, bias = self.train_gamma if self.training else self.eval_gamma
        return self.norm(raw).squeeze(1) * scale + bias

    def alpha(self, gamma: Tensor) -> Tensor:
        """``α``: ``sigmoid(γ)`` in training (or with ``full_alpha``), ``lo + (hi - lo) · sigmoid(γ)`` in
        evaluation; shaped like ``γ``."""
        if self.training or self.full_alpha:
            return torch.sigmoid(gamma)
        lo, hi = self.alpha_range
        return lo + (hi - lo) * torch.sigmoid(gamma)

    def log_weights(self, gamma: Tensor) -> tuple[Tensor, Tensor]:
        """``log α`` and ``log(1 - α)`` as ``[B, 1]`` (unscaled through ``logsigmoid``, never ``log 0``)."""
        if self.training or self.full_alpha:
            return F.logsigmoid(gamma)[:, None], F.logsigmoid(-gamma)[:, None]
        alpha = self.alpha(gamma)[:, None]
        return alpha.log(), (-alpha).log1p()

    @contextmanager
    def attacked_in_training(self, full_alpha: bool = False) -> Iterator[None]:
        """Evaluation mode with the training constants: how the training attack sees the network (the
        evaluation constants are chosen for deployment, after training); ``full_alpha``: with α = sigmoid(γ) over
        all of (0, 1), not shrunk into ``alpha_range`` (the authors' training attack)."""
        was_training, eval_gamma, was_full = self.training, self.eval_gamma, self.full_alpha
        self.eval()
        self.eval_gamma, self.full_alpha = self.train_gamma, full_alpha
        try:
            yield
        finally:
            self.eval_gamma, self.full_alpha = eval_gamma, was_full
            self.train(was_training)

    def config(self) -> dict:
        """Constructor keywords, for ``config.json``."""
        return {"taps": [list(t) for t in self.taps], "channels": [list(c) for c in self.channels],
                "width": self.width, "blocks": self.blocks, "block": self.block, "alpha_range": list(self.alpha_range),
                "train_gamma": list(self.train_gamma),
                "eval_gamma": list(self.eval_gamma), "clamp": self.clamp}


def check_branches_agree(standard: nn.Module, robust: nn.Module) -> None:
    """Check that two classifiers can be mixed: where both declare their number of classes, class names, dataset or
    input size, these are the same (else their probabilities would add up different classes', or images').

    Raises:
        HPMError: naming what differs.
    """
    def declared(branch: nn.Module, name: str):
        value = getattr(branch, name, None)
        if isinstance(value, (list, tuple)):
            value = list(value)
            numbered = name == "classes" and value == [str(i) for i in range(len(value))]
            return None if numbered else value  # classes numbered by default name nothing
        return value

    for name in ("num_classes", "classes", "dataset", "input_size"):
        ours, theirs = declared(standard, name), declared(robust, name)
        if ours is not None and theirs is not None and ours != theirs:
            raise HPMError(f"the two branches differ in {name}: standard {ours!r}, robust {theirs!r}; mix two "
                           "classifiers of the same classes, in the same order, on the same images")


class MixedClassifier(nn.Module):
    """``standard`` and ``robust``: ``images -> logits`` classifiers over the same classes and inputs, mixed with a
    fixed ``alpha`` or, given a ``mixer``, with ``α(x)`` per input (adaptive smoothing; both branches must then be
    hpm models, whose stage feature maps the mixer reads).

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
            raise ValueError("a mixing network reads the branches' feature maps: mix two hpm models "
                             "(hpm.wrap / hpm.load)")
        check_branches_agree(standard, robust)
        self.standard, self.robust, self.mixer = standard, robust, mixer
        self._taps = None if mixer is None else (FeatureTaps(standard.features, mixer.taps[0]),
                                                 FeatureTaps(robust.features, mixer.taps[1]))
        if mixer is not None:
            self._check_taps()
        self.alpha = None if alpha is None else float(alpha)
        self.temperature = float(temperature)
        self.names = names  # what the two networks are (model ids), for reports
        self.dataset = getattr(robust, "dataset", None)  # inputs, classes and dataset: the robust branch's
        self.classes = getattr(robust, "classes", None)
        self.input_size = getattr(robust, "input_size", None)
        self.num_classes = getattr(robust, "num_classes", None)
        self.checkpoint_config: MixedCheckpointConfig | None = None  # set by hpm.load / save_pretrained

    @torch.no_grad()
    def _check_taps(self) -> None:
        """Raise HPMError unless each branch's tapped feature maps have the channels the mixing network reads."""
        for name, branch, taps, channels in zip(("standard", "robust"), (self.standard, self.robust), self._taps,
                                                self.mixer.channels):
            with taps.capture() as captured:
                branch.features(torch.rand(2, *(branch.input_size or (3, 32, 32)), device=device_of(branch)))
            found = tuple(m.shape[1] if m.ndim == 4 else None for m in taps.maps(captured))
            if found != channels:
                raise HPMError(f"the mixing network reads feature maps of {list(channels)} channels from the {name} "
                               f"branch's {list(taps.names)}; they have {list(found)}")

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
        rule = f"alpha {self.alpha:g}" if self.mixer is None else self.mixing_text.replace("α", "alpha") + \
            ", evaluation constants ({:g}, {:g})".format(*self.mixer.eval_gamma)
        return {"head": f"mixed classifier ({rule}, temperature {self.temperature:g})",
                "backbone": f"standard {self.names[0]} + robust {self.names[1]}", "dataset": self.dataset,
                "batch_dependent": False, "transfer_targets": ["standard", "robust"]}

    def standard_log_probs(self, x: Tensor) -> Tensor:
        """``log softmax(g(x))``."""
        return F.log_softmax(self.standard(x), -1)

    def robust_log_probs(self, x: Tensor) -> Tensor:
        """``log softmax(h(x) / T)``."""
        return F.log_softmax(self.robust(x) / self.temperature, -1)

    def mix(self, x: Tensor, lowest: bool = False) -> tuple[Tensor, Tensor | None]:
        """``log p(x)`` of the mixture and the mixing logit ``γ [B]`` (None for a fixed α); ``lowest``: at the
        mixer's lowest α instead of its own."""
        if self.mixer is None:
            log_standard, log_robust = self.standard_log_probs(x), self.robust_log_probs(x)
            log_alpha, log_rest = fixed_log_weights(self.alpha, x.device)
            return log_mixture(log_standard, log_robust, log_alpha.to(x), log_rest.to(x)), None
        standard_taps, robust_taps = self._taps
        with standard_taps.capture() as standard_maps:
            log_standard = self.standard_log_probs(x)
        with robust_taps.capture() as robust_maps:
            log_robust = self.robust_log_probs(x)
        gamma = self.mixer.gamma(standard_taps.maps(standard_maps), robust_taps.maps(robust_maps))
        log_alpha, log_rest = self.mixer.log_weights(torch.full_like(gamma, -math.inf) if lowest else gamma)
        return log_mixture(log_standard, log_robust, log_alpha, log_rest), gamma

    @torch.no_grad()
    def mixing_weight(self, x: Tensor) -> Tensor:
        """The robust branch's weight for each image of ``x``, ``[B]``: the fixed α, or the mixing network's α(x)
        (in the network's current mode: evaluation's range in ``eval()``)."""
        if self.mixer is None:
            return torch.full((len(x),), self.alpha, device=x.device)
        return self.mixer.alpha(self.mix(x)[1])

    def forward(self, x: Tensor, mode: str = "hard") -> Tensor:
        """``log p(x)`` of the mixture (``mode="hard"``), one branch's log-probabilities, or (adaptive) the
        mixture at its lowest α (``"lowest-alpha"``)."""
        if mode == "standard":
            return self.standard_log_probs(x)
        if mode == "robust":
            return self.robust_log_probs(x)
        if mode not in MODES or (mode == "lowest-alpha" and self.mixer is None):
            raise ValueError(f"unknown mode {mode!r}; one of {', '.join(MODES[:3 if self.mixer is None else 4])}")
        return self.mix(x, lowest=mode == "lowest-alpha")[0]

    @torch.no_grad()
    def robust_saturation(self, x: Tensor) -> float:
        """The share of ``x`` whose robust branch puts float32 probability exactly 1 on its top class: there the
        branch passes no gradient to an attacker, and its robustness in the mixture would be masked, not real."""
        return float((self.robust_log_probs(x).max(-1).values == 0).float().mean())

    def pitfall_checks(self, x: Tensor) -> list[tuple[str, bool, str]]:
        """``(name, passed, detail)`` checks an evaluation of this model runs on its check images ``x``: the robust
        branch's softmax must not saturate there (:meth:`robust_saturation`), or its robustness inside the mixture
        would be masked gradients, not robustness."""
        share = self.robust_saturation(x)
        checks = [("robust_branch_not_saturated", share == 0.0,
                   f"{100 * share:.1f}% of {len(x)} images have a robust-branch probability of exactly 1 in float32 "
                   f"(T = {self.temperature:g})")]
        if self.mixer is not None:  # a pinned sigmoid passes no gradient to the attacker through the mixer
            pinned = sigmoid_saturation(self.mix(x)[1])
            checks.append(("mixer_not_saturated", pinned == 0.0,
                           f"{100 * pinned:.1f}% of {len(x)} images have a mixing sigmoid of exactly 0 or 1 in "
                           "float32"))
        return checks

    # -- persistence -----------------------------------------------------------------------------
    def to_config(self, directory: str | Path | None = None) -> MixedCheckpointConfig:
        """The checkpoint configuration: both classifiers' own (they must be :class:`hpm.HPMClassifier`; saved to
        ``directory``), the mixing rule, and the metrics of the checkpoint this model was loaded from."""
        if not all(hasattr(branch, "to_config") for branch in (self.standard, self.robust)):
            raise HPMError("only a mixture of two hpm models (hpm.wrap / hpm.load) can be saved; wrap each "
                           "network with hpm.wrap(module, head='fc') first")
        previous = self.checkpoint_config
        return MixedCheckpointConfig(self.standard.to_config(directory), self.robust.to_config(directory),
                                     self.alpha, self.temperature, names=list(self.names),
                                     metrics=dict(previous.metrics) if previous else {},
                                     mixer=None if self.mixer is None else self.mixer.config(),
                                     training=previous.training if previous else None)

    def save_pretrained(self, directory: str | Path, *, metrics: dict | None = None,
                        training: dict | None = None) -> Path:
        """Write ``config.json``, ``model.safetensors`` (each branch's weights as its own checkpoint would hold
        them, under ``standard.`` and ``robust.``; a mixing network's under ``mixer.``) and a model card."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        config = self.to_config(out)
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
        """Save to a temporary directory and upload it to the Hugging Face Hub; returns the commit URL.

        Raises:
            HPMError: a branch names its backbone's checkpoint by a local path, which Hub users cannot load.
        """
        from .sources.reference import names_local_backbone

        for name in ("standard", "robust"):
            spec = getattr(getattr(self, name), "backbone_spec", None)
            if names_local_backbone(spec):
                raise HPMError(f"the {name} branch names its backbone checkpoint by the local path {spec.name!r}, "
                               "which Hub users cannot load: push that checkpoint first, and mix the branch loaded "
                               "from the Hub (or store the backbone: hpm mix --store-backbone)")
        return push_folder(lambda d: self.save_pretrained(d, **save_kwargs), repo_id, private=private, token=token,
                           commit_message=commit_message)

    def extra_repr(self) -> str:
        return f"{self.mixing_text}, temperature={self.temperature:g}"
