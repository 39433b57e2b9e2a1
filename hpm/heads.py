"""Classifier heads behind one interface: FC, l2 nearest-class-mean, cosine prototypes and HPM.

Every head maps backbone features ``z [B, d]`` and the original FC logits ``fc_logits [B, k]`` to
class scores ``[B, k]``::

    scores = head(z, fc_logits, mode="hard", labels=None)

A batch-dependent head (HPM) computes one sample's scores from every row of ``z``: to classify samples
inside a fixed context, :class:`hpm.HPMClassifier` appends the context's features as extra rows.

``mode`` selects one of the three forward passes of the paper's evaluation protocol (Sec. 3.7):
``"hard"`` is the deployed model, ``"soft"`` the soft-hybrid surrogate and ``"fc"`` the FC oracle.
Heads without a straight-through estimator treat ``"soft"`` like ``"hard"``. Prototype buffers are
updated by EMA only in training mode and only when ``labels`` are given, so evaluation is
deterministic (AutoAttack's randomness check).
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Callable, Literal, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Mode = Literal["hard", "soft", "fc"]
MODES: tuple[str, ...] = ("hard", "soft", "fc")
MIXERS = ("linear", "mean")  # HPM's mixer: Eq. 17's parameterised one, or the ablation's average
SCORES = ("l2", "dot")  # HPM's scores: Eq. 18's -l2 distance, or the ablation's inner product


def check_mode(mode: str) -> Mode:
    """Return ``mode`` if it is one of :data:`MODES`, else raise a ValueError naming the options."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    return mode  # type: ignore[return-value]


def neg_l2_distance(z: Tensor, centres: Tensor, eps: float = 1e-12) -> Tensor:
    """``-||z_i - c_j||_2`` for every pair (Eq. 18; not squared). ``z [B, d]``, ``centres [k, d]`` -> ``[B, k]``.

    Uses the expansion ``|z|^2 - 2 z.c + |c|^2`` (memory O(Bk), not O(Bkd)) and clamps before the
    square root so the gradient stays finite when a feature coincides with a centre.
    """
    sq = (z * z).sum(1, keepdim=True) - 2.0 * z @ centres.t() + (centres * centres).sum(1)[None]
    return -sq.clamp_min(eps).sqrt()


def class_means(z: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Per-class mean of ``z [B, d]`` over ``labels [B]``. Returns ``(means [k, d], present [k] bool)``.

    Rows of absent classes are zero and flagged ``False`` in ``present``.
    """
    onehot = F.one_hot(labels.long(), num_classes).to(z.dtype)  # [B, k]
    counts = onehot.sum(0)  # [k]
    means = onehot.t() @ z / counts.clamp_min(1.0)[:, None]  # [k, d]
    return means, counts > 0


def straight_through_assignment(fc_logits: Tensor, hard: bool = True) -> Tensor:
    """Class-assignment matrix ``P [B, k]`` from FC logits (Eq. 15-16).

    ``hard=True`` gives ``P_ste = P_soft + stopgrad(P_hard - P_soft)``: its forward value is the one-hot
    ``argmax`` and its gradient is that of ``P_soft = softmax(L)``. ``hard=False`` gives ``P_soft``.
    """
    p_soft = fc_logits.softmax(dim=1)
    if not hard:
        return p_soft
    p_hard = F.one_hot(fc_logits.argmax(dim=1), fc_logits.shape[1]).to(p_soft.dtype)
    return p_soft + (p_hard - p_soft).detach()


def batch_prototypes(z: Tensor, assignment: Tensor, eps: float = 1e-8) -> Tensor:
    """``C_batch = (P^T Z) / (colsum(P) + eps)`` (Eq. 16). ``z [B, d]``, ``assignment [B, k]`` -> ``[k, d]``.

    With a one-hot assignment each row is the mean feature of the samples predicted as that class;
    rows of classes nobody is predicted as are zero, as the paper defines.
    """
    return assignment.t() @ z / (assignment.sum(0)[:, None] + eps)


class Head(nn.Module):
    """Base class: a head scores features ``z`` given the original FC logits.

    A head declares what it is, and the rest of the library asks it rather than its name:

    Attributes:
        num_features: feature width ``d``.
        num_classes: number of classes ``k``.
        head_type: the registry name written to ``config.json``.
        label: how tables and the app name the deployed head.
        description: one line for model cards.
        batch_dependent: True when one sample's scores depend on the other samples of the batch.
        attack_targets: what APGD attacks on this head (MSA, Sec. 3.7): target name -> the forward modes
            whose summed loss it follows (``"hard"`` through a straight-through estimator is BPDA).
        target_descriptions: one line per attack target, for the app and the CLI.
        deployed_modes: the forward modes whose scores are the deployed head's (APGD-CE on any of them
            alone is "APGD-CE on the deployed model").
        fine_tuned: False when fine-tuning leaves the head and the original FC layer as they are.
        has_prototypes: True when the head scores against l2 class prototypes (``self.prototypes``).
        with_own_backbone: True when the head exists only with the backbone it was trained with, so that it
            cannot be put on another model's features (``hpm train --head``).
    """

    head_type: str = "base"
    label: str = "base"
    description: str = ""
    batch_dependent: bool = False
    attack_targets: Mapping[str, tuple[str, ...]] = MappingProxyType({"deployed": ("hard",)})
    target_descriptions: Mapping[str, str] = MappingProxyType({"deployed": "the deployed head itself"})
    deployed_modes: tuple[str, ...] = ("hard", "soft")
    fine_tuned: bool = True
    has_prototypes: bool = False
    with_own_backbone: bool = False

    def __init__(self, num_features: int, num_classes: int):
        super().__init__()
        if num_features < 1 or num_classes < 2:
            raise ValueError(f"need num_features >= 1 and num_classes >= 2; got {num_features}, {num_classes}")
        self.num_features = num_features
        self.num_classes = num_classes

    def forward(
        self,
        z: Tensor,
        fc_logits: Tensor,
        mode: Mode = "hard",
        labels: Tensor | None = None,
    ) -> Tensor:
        """Scores ``[B, k]``; a batch-dependent head computes them from the whole batch ``z``."""
        check_mode(mode)
        if mode == "fc":
            return fc_logits
        scores = self.scores(z, fc_logits, mode)
        if self.training and labels is not None:
            self.update_prototypes(z.detach(), labels)
        return scores

    def scores(self, z: Tensor, fc_logits: Tensor, mode: Mode) -> Tensor:
        raise NotImplementedError

    def update_prototypes(self, z: Tensor, labels: Tensor) -> None:
        """EMA update of prototype buffers from labelled features (no-op for heads without any)."""

    def init_prototypes(self, z: Tensor, labels: Tensor) -> None:
        """Set prototype buffers to the class means of ``z`` (no-op for heads without any)."""

    def extra_config(self) -> dict:
        """Head-specific constructor arguments, saved in ``config.json``."""
        return {}


class FCHead(Head):
    """The original fully connected classifier: scores are the FC logits."""

    head_type = "fc"
    label = "FC"
    description = "the original fully connected classifier"
    deployed_modes = ("hard", "soft", "fc")
    fine_tuned = False

    def scores(self, z, fc_logits, mode):
        return fc_logits


class DPNPHead(FCHead):
    """Adv-DPNP's unified prototypes (Zarei Sabzevar et al. 2025): the final linear layer *is* the class
    prototypes, ``W = C`` with every ``|c_j| = r`` and no bias, so the FC logits ``z . c_j`` equal
    ``-|z - c_j|^2 / 2`` up to a per-sample constant. Trained with its backbone (``hpm train-backbone
    --classifier dpnp``); deployed, its scores are those logits."""

    head_type = "dpnp"
    label = "Adv-DPNP"
    description = ("positive-negative prototypes (Adv-DPNP as hpm reads its abstract: every formula the paper leaves "
                   "open is hpm's choice, documented in `hpm.train.losses.dpnp_loss`): class prototypes on a sphere "
                   "that are also the classifier weights, scores z . c_j")
    with_own_backbone = True


class _PrototypeHead(Head):
    """A head with dataset-level class prototypes ``prototypes [k, d]`` kept by EMA (Eq. 14).

    Its discontinuity-free scores are attacked directly, and through the FC oracle (MSA surrogate 1).
    """

    attack_targets = MappingProxyType({"fc": ("fc",), "deployed": ("hard",)})
    target_descriptions = MappingProxyType({"fc": "the FC oracle (surrogate 1)",
                                            "deployed": "the deployed head itself"})
    has_prototypes = True

    def __init__(self, num_features: int, num_classes: int, momentum: float = 0.98):
        super().__init__(num_features, num_classes)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum (EMA lambda) must be in [0, 1); got {momentum}")
        self.momentum = momentum
        self.register_buffer("prototypes", torch.zeros(num_classes, num_features))

    def prototype_features(self, z: Tensor) -> Tensor:
        """The feature transform the prototypes live in (identity for l2 heads)."""
        return z

    @torch.no_grad()
    def update_prototypes(self, z: Tensor, labels: Tensor) -> None:
        # Eq. 14 over present classes only: absent rows would otherwise be dragged toward zero.
        means, present = class_means(self.prototype_features(z), labels, self.num_classes)
        lam = self.momentum
        self.prototypes[present] = lam * self.prototypes[present] + (1.0 - lam) * means[present]

    @torch.no_grad()
    def init_prototypes(self, z: Tensor, labels: Tensor) -> None:
        means, present = class_means(self.prototype_features(z), labels, self.num_classes)
        if not bool(present.all()):
            missing = (~present).nonzero().flatten().tolist()
            raise ValueError(f"cannot initialise prototypes: no samples of classes {missing}")
        self.prototypes.copy_(means)

    def extra_config(self) -> dict:
        return {"momentum": self.momentum}


class NCMHead(_PrototypeHead):
    """Plain l2 nearest-class-mean head (DeepNCM-like): ``-||z - c_j||`` to EMA class means."""

    head_type = "ncm"
    label = "l2 (NCM)"
    description = "l2 nearest-class-mean head (EMA class means, scores = -l2 distance)"

    def scores(self, z, fc_logits, mode):
        return neg_l2_distance(z, self.prototypes)


class CosineHead(_PrototypeHead):
    """Cosine-prototype head (DNC-like): layer-normalised, l2-normalised features and prototypes.

    Scores are ``scale * cos(LN(z), c_j)`` with a learnable ``scale``; prototypes are EMA means of the
    normalised features.
    """

    head_type = "cosine"
    label = "cosine"
    description = "cosine-prototype head (layer-normalised, l2-normalised features and EMA prototypes)"

    def __init__(self, num_features: int, num_classes: int, momentum: float = 0.98, scale: float = 16.0):
        super().__init__(num_features, num_classes, momentum)
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    def prototype_features(self, z: Tensor) -> Tensor:
        return F.normalize(F.layer_norm(z, z.shape[-1:]), dim=1)

    def scores(self, z, fc_logits, mode):
        return self.scale * self.prototype_features(z) @ F.normalize(self.prototypes, dim=1).t()

    def extra_config(self) -> dict:
        return {"momentum": self.momentum, "scale": float(self.scale.detach())}


class HPMHead(_PrototypeHead):
    """Hybrid Prototype Mixing (Sec. 3.6, Eq. 14-18).

    - ``prototypes`` is ``C_global [k, d]``: dataset-level class means, EMA-updated in training (Eq. 14).
    - ``C_batch [k, d]``: batch-level prototypes from the FC prediction through a straight-through
      estimator (Eq. 15-16), computed over every row of the batch.
    - ``mixer``: ``C_hybrid = [C_global, C_batch] W_m + b_m`` (Eq. 17), initialised to ``W_m = [I; 0]``,
      ``b_m = 0`` so the untrained head is the l2 nearest-class-mean classifier.
    - scores: ``-||z_i - C_hybrid[j]||_2`` (Eq. 18).

    Modes: ``"hard"`` (deployed) uses ``P_ste``; ``"soft"`` (soft-hybrid surrogate) uses ``P_soft`` in
    the forward pass; ``"fc"`` returns the FC logits (FC oracle).

    The paper's ablations (Sec. 4.4; its supplement gives no further detail, so the replacements are ours):

    - ``batch_prototypes=False``: dataset-level prototypes only, ``C_hybrid = C_global W_g + b`` (the mixer
      keeps its global half, initialised to the identity); the head is then per-sample.
    - ``mixer="mean"``: no parameterised mixer; ``C_hybrid = (C_global + C_batch) / 2``, with ``C_global``
      standing in for ``C_batch`` in the rows of classes no sample of the batch is assigned to.
    - ``score="dot"``: inner-product scores ``z_i . C_hybrid[j]`` instead of the negative l2 distance.
    """

    head_type = "hpm"
    label = "HPM"
    description = ("Hybrid Prototype Mixing (HPM) l2 re-classifier: EMA dataset-level prototypes mixed with "
                   "straight-through batch-level prototypes, scores = -l2 distance (Eq. 14-18)")
    batch_dependent = True
    # MSA (Sec. 3.7): the FC oracle, the soft-hybrid surrogate, their ensemble, and BPDA through the STE.
    attack_targets = MappingProxyType({"fc": ("fc",), "soft": ("soft",), "ensemble": ("fc", "soft"),
                                       "bpda": ("hard",)})
    target_descriptions = MappingProxyType({
        "fc": "the FC oracle (surrogate 1)", "soft": "the soft-hybrid surrogate (surrogate 2)",
        "ensemble": "FC oracle + soft hybrid (MSA ensemble)",
        "bpda": "the deployed model through its straight-through gradient (BPDA)",
        "deployed": "the deployed model through its straight-through gradient (BPDA)"})
    deployed_modes = ("hard",)

    def __init__(self, num_features: int, num_classes: int, momentum: float = 0.98, eps: float = 1e-8, *,
                 batch_prototypes: bool = True, mixer: str = "linear", score: str = "l2"):
        super().__init__(num_features, num_classes, momentum)
        if mixer not in MIXERS or score not in SCORES:
            raise ValueError(f"mixer must be one of {', '.join(MIXERS)} and score one of {', '.join(SCORES)}; "
                             f"got {mixer!r}, {score!r}")
        if mixer == "mean" and not batch_prototypes:
            raise ValueError("mixer='mean' averages global and batch prototypes: it needs batch_prototypes=True")
        self.eps, self.use_batch, self.mixer_kind, self.score = eps, batch_prototypes, mixer, score
        if mixer == "linear":
            self.mixer = nn.Linear((2 if batch_prototypes else 1) * num_features, num_features)
            self.reset_mixer()
        if not batch_prototypes:  # a per-sample head: attacked like the other prototype heads
            self.batch_dependent = False
            self.attack_targets, self.target_descriptions = _PrototypeHead.attack_targets, \
                _PrototypeHead.target_descriptions
            self.deployed_modes = Head.deployed_modes
        ablated = [(name, what) for name, what, on in (
            ("w/o C_batch", "no batch-level prototypes, C_hybrid = C_global W_g + b (per-sample)", not batch_prototypes),
            ("mean mixer", "C_hybrid = (C_global + C_batch) / 2 instead of the learned mixer", mixer == "mean"),
            ("dot score", "inner-product scores z . C_hybrid instead of the -l2 distance", score == "dot")) if on]
        if ablated:
            self.label = f"HPM ({', '.join(name for name, _ in ablated)})"
            self.description = (f"Hybrid Prototype Mixing (HPM, Eq. 14-18) with the paper's ablation "
                                f"(Sec. 4.4): {'; '.join(what for _, what in ablated)}")

    @torch.no_grad()
    def reset_mixer(self) -> None:
        """``W_m = [I; 0]``, ``b_m = 0``: C_hybrid = C_global, i.e. the l2 NCM head."""
        d = self.num_features
        self.mixer.weight.zero_()
        self.mixer.weight[:, :d] = torch.eye(d)
        self.mixer.bias.zero_()

    def hybrid_prototypes(self, z: Tensor, fc_logits: Tensor, mode: Mode) -> Tensor:
        """``C_hybrid [k, d]`` for this batch (Eq. 15-17)."""
        if not self.use_batch:
            return self.mixer(self.prototypes.clone())  # [k, d]; a copy: training updates the buffer in place
        assignment = straight_through_assignment(fc_logits, hard=(mode == "hard"))  # [B, k]
        c_batch = batch_prototypes(z, assignment, self.eps)  # [k, d]
        if self.mixer_kind == "mean":
            present = (assignment.detach().sum(0) > 0)[:, None]  # [k, 1]
            return (self.prototypes + torch.where(present, c_batch, self.prototypes)) / 2
        return self.mixer(torch.cat([self.prototypes, c_batch], 1))  # Eq. 17: [k, d]

    def scores(self, z, fc_logits, mode):
        prototypes = self.hybrid_prototypes(z, fc_logits, mode)
        return z @ prototypes.t() if self.score == "dot" else neg_l2_distance(z, prototypes)

    def extra_config(self) -> dict:
        ablations = {"batch_prototypes": self.use_batch, "mixer": self.mixer_kind, "score": self.score}
        defaults = {"batch_prototypes": True, "mixer": "linear", "score": "l2"}
        return {"momentum": self.momentum, "eps": self.eps,
                **{k: v for k, v in ablations.items() if v != defaults[k]}}  # shipped configs stay as they were


HEADS: dict[str, Callable[..., Head]] = {
    FCHead.head_type: FCHead,
    NCMHead.head_type: NCMHead,
    CosineHead.head_type: CosineHead,
    HPMHead.head_type: HPMHead,
    DPNPHead.head_type: DPNPHead,
}


def create_head(head_type: str, num_features: int, num_classes: int, **kwargs) -> Head:
    """Build a registered head by name (``fc``, ``ncm``, ``cosine``, ``hpm``, ``dpnp``)."""
    if head_type not in HEADS:
        raise ValueError(f"unknown head {head_type!r}; choose one of {', '.join(HEADS)}")
    return HEADS[head_type](num_features, num_classes, **kwargs)
