"""Training losses: IKL (Cui et al., NeurIPS 2024, "Decoupled Kullback-Leibler divergence loss") and the
average-margin regulariser (Wu & Yu 2019, "Understanding adversarial robustness: the trade-off between minimum
and average margin").

IKL follows their public code (``DKLv1/Adv-training-dkl/train_dkl_cifar10.py``). With
natural logits ``zn`` and adversarial logits ``za`` (``[B, k]``),

- ``wMSE = 1/(4B) sum_b sum_jk w^b_jk (dn_jk - da_jk)^2`` with ``d_jk = z_j - z_k`` (no stop-gradient on zn),
- ``sCE = -1/B sum_b sum_j stopgrad(softmax(zn))_j log softmax(za)_j``,
- ``w^b = s s^T`` with ``s = W[y_b]``, ``W`` the class-wise weights of :class:`ClassWeights`,
- training loss ``CE(zn, y) + beta * wMSE + alpha * sCE``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..devices import CPU


def weighted_pairwise_mse(zn: Tensor, za: Tensor, s: Tensor) -> Tensor:
    """``1/(4B) sum_b sum_jk s_j s_k ((zn_j - zn_k) - (za_j - za_k))^2`` with per-sample weights ``s [B, k]``.

    With ``e = zn - za`` the inner double sum equals ``2 (sum s)(sum s e^2) - 2 (sum s e)^2`` — O(k)
    instead of O(k^2) per sample, the same value (checked against the direct formula in the tests).
    """
    e = zn - za  # [B, k]
    total = s.sum(1) * (s * e * e).sum(1) - (s * e).sum(1) ** 2  # [B]
    return 2.0 * total.sum() / (4.0 * zn.shape[0])


def soft_cross_entropy(zn: Tensor, za: Tensor) -> Tensor:
    """``-1/B sum_b sum_j stopgrad(softmax(zn))_j log softmax(za)_j``."""
    return -(zn.detach().softmax(1) * za.log_softmax(1)).sum(1).mean()


class ClassWeights:
    """The "I" of IKL: per-class average of ``softmax(zn / T)`` over the previous epoch.

    In the first epoch every row is uniform ``1/k``. :meth:`accumulate` adds detached natural
    probabilities per true class during an epoch; :meth:`end_epoch` row-normalises them into the
    weights used in the next epoch.
    """

    def __init__(self, num_classes: int, temperature: float = 4.0, device: torch.device | str = CPU):
        self.num_classes, self.temperature = num_classes, temperature
        self.weights = torch.full((num_classes, num_classes), 1.0 / num_classes, device=device)
        self.running = torch.zeros(num_classes, num_classes, device=device)

    @torch.no_grad()
    def accumulate(self, zn: Tensor, labels: Tensor) -> None:
        probs = (zn.detach() / self.temperature).softmax(1)  # [B, k]
        self.running.index_add_(0, labels, probs.to(self.running))

    @torch.no_grad()
    def end_epoch(self) -> None:
        rows = self.running.sum(1, keepdim=True)
        seen = rows.squeeze(1) > 0
        self.weights[seen] = self.running[seen] / rows[seen]
        self.running.zero_()

    def for_labels(self, labels: Tensor) -> Tensor:
        """``s = W[y]`` per sample: ``[B, k]``."""
        return self.weights[labels]

    def state_dict(self) -> dict[str, Tensor]:
        return {"weights": self.weights.clone(), "running": self.running.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.weights.copy_(state["weights"])
        self.running.copy_(state["running"])


def ikl_loss(zn: Tensor, za: Tensor, labels: Tensor, class_weights: ClassWeights,
             alpha: float = 4.0, beta: float = 20.0) -> Tensor:
    """``CE(zn, y) + beta * wMSE(zn, za) + alpha * sCE(zn, za)`` (CIFAR-10 defaults alpha=4, beta=20)."""
    s = class_weights.for_labels(labels)
    return (F.cross_entropy(zn, labels) + beta * weighted_pairwise_mse(zn, za, s)
            + alpha * soft_cross_entropy(zn, za))


def logit_margin(logits: Tensor, labels: Tensor) -> Tensor:
    """``m = f_y - max_{j != y} f_j`` per sample (``[B]``): positive when the sample is classified correctly."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return true - others.max(1).values


def average_margin_penalty(logits: Tensor, labels: Tensor, tau: float = 1.0) -> Tensor:
    """Wu & Yu's average-margin regulariser, ``1/B sum_b min(max(-m_b, 0), tau)`` with ``m`` the logit margin.

    A truncated hinge: ``H_0(m) - H_{-tau}(m)`` with ``H_s(m) = max(0, s - m)``. Cross-entropy grows without bound
    on the worst samples and so trains the *minimum* margin; this term is bounded by ``tau`` per sample, so a
    sample far on the wrong side of the boundary stops pulling and the gradient goes to the samples within ``tau``
    of it (the *average* margin). The form is the authors' public code for their deep CIFAR network (their linear and
    MLP models use ``H_tau - H_0``, the same ramp shifted by ``tau``, optimised as a difference of convex
    functions); the paper's text beyond its abstract was not reachable.
    """
    return (-logit_margin(logits, labels)).clamp(0.0, tau).mean()


def dpnp_loss(z_clean: Tensor, z_adv: Tensor, prototypes: Tensor, labels: Tensor, *, align: float = 0.1,
              repel: float = 1.0, consistency: float = 1.0) -> tuple[Tensor, Tensor]:
    """Adv-DPNP's composite loss (Zarei Sabzevar et al. 2025) as hpm reads it; returns ``(loss, adversarial logits)``.

    Only the paper's abstract was reachable and it publishes no code, so every formula below is hpm's choice, made
    to do what the abstract says and nothing more. Scores are ``z . c_j`` against the prototypes ``C [k, d]``.

    - Dual branch: the clean branch scores against ``C`` itself, the adversarial branch against ``stopgrad(C)``, so
      the prototypes learn from clean data only while the feature extractor learns from both.
    - Cross-entropy on both branches.
    - Positive-prototype alignment: ``align * 1/2 |z - c_y|^2`` averaged over each branch.
    - Negative-prototype repulsion: ``repel * mean_j max_{k != j} cos(c_j, c_k)``, every prototype pushed from its
      nearest rival (DPNP's "rival neighbouring prototypes"; the prototypes have one norm, so only angles move).
    - Consistency: ``consistency * KL(stopgrad(p_clean) || p_adv)``, adversarial predictions pulled to clean ones.
    """
    frozen = prototypes.detach()
    logits_clean, logits_adv = z_clean @ prototypes.t(), z_adv @ frozen.t()  # [B, k] each
    cross_entropy = F.cross_entropy(logits_clean, labels) + F.cross_entropy(logits_adv, labels)
    alignment = 0.5 * ((z_clean - prototypes[labels]).pow(2).sum(1).mean()
                       + (z_adv - frozen[labels]).pow(2).sum(1).mean())
    directions = F.normalize(prototypes, dim=1)
    cosines = directions @ directions.t()  # [k, k]
    self_pairs = torch.eye(len(prototypes), dtype=torch.bool, device=prototypes.device)
    repulsion = cosines.masked_fill(self_pairs, float("-inf")).max(1).values.mean()
    agreement = F.kl_div(logits_adv.log_softmax(1), logits_clean.detach().log_softmax(1), log_target=True,
                         reduction="batchmean")
    return cross_entropy + align * alignment + repel * repulsion + consistency * agreement, logits_adv
