"""The one l_inf PGD loop of training: signed-gradient ascent, projected onto the eps-ball and [0, 1].

Training attacks are cheap and differentiate a training loss, which AutoAttack's APGD does not take; the
evaluation never uses this (it runs AutoAttack's own attacks, :mod:`hpm.attacks`). Three recipes share it:
IKL's inner maximisation (10 steps), FGSM-RS (one step of ``1.25 eps`` from a uniform random start) and
the catastrophic-overfitting guard of FGSM-RS (PGD with a random start).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def linf_pgd(loss_fn: Callable[[Tensor], Tensor], x: Tensor, x_start: Tensor, *, eps: float, step: float,
             steps: int) -> Tensor:
    """``steps`` ascent steps of ``loss_fn(x_adv)`` (a scalar) from ``x_start``; returns detached images.

    Each step: ``x_adv <- clip_[0,1](proj_{|x_adv - x|_inf <= eps}(x_adv + step * sign(grad)))``.
    """
    x_adv = x_start.detach()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(loss_fn(x_adv), [x_adv])
        x_adv = torch.min(torch.max(x_adv.detach() + step * grad.sign(), x - eps), x + eps).clamp(0, 1).detach()
    return x_adv


def uniform_start(x: Tensor, eps: float, generator: torch.Generator | None = None) -> Tensor:
    """A uniform random point of the eps-ball around ``x``, clipped to [0, 1] (noise drawn on the CPU)."""
    noise = (torch.rand(x.shape, generator=generator) * 2 - 1) * eps
    return (x + noise.to(x.device)).clamp(0, 1)
