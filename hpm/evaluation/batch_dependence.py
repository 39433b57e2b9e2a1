"""How a batch-dependent head's predictions depend on the evaluation batch: its size and its order.

:func:`prediction_curve` classifies cached features at several evaluation batch sizes, in the given order
and in shuffled orders, and says how much the accuracy and the individual predictions move. The backbone is
per-sample, so the features are computed once and only the head runs per batch.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..model import HPMClassifier


@torch.no_grad()
def predictions(model: HPMClassifier, z: Tensor, batch_size: int, order: Tensor | None = None) -> Tensor:
    """Deployed predictions ``[N]`` of features ``z [N, d]`` classified in consecutive batches of ``batch_size``
    taken in ``order`` (a permutation of ``range(N)``; default: the given order), returned in the given order."""
    order = torch.arange(len(z)) if order is None else order
    out = torch.empty(len(z), dtype=torch.long)
    for chunk in order.split(batch_size):
        out[chunk] = model.forward_head(z[chunk], mode="hard").argmax(1).cpu()
    return out


def prediction_curve(model: HPMClassifier, z: Tensor, y: Tensor, batch_sizes: list[int], *, n_orders: int = 5,
                     seed: int = 0) -> dict[int, dict]:
    """Clean accuracy per evaluation batch size, in the given order and in ``n_orders`` shuffled orders.

    Returns, per batch size: ``accuracy`` (given order), ``accuracy_orders`` (each shuffled order), their
    ``min``/``max`` over all orders, and ``changed``: the fraction of samples whose prediction in some
    shuffled order differs from the given order's. A per-sample head gives the same numbers everywhere.
    """
    was = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    orders = [torch.randperm(len(z), generator=generator) for _ in range(n_orders)]
    curve = {}
    for bs in batch_sizes:
        given = predictions(model, z, bs)
        shuffled = [predictions(model, z, bs, order) for order in orders] if model.head.batch_dependent else \
            [given] * n_orders
        accuracies = [float((p == y).float().mean()) for p in shuffled]
        everything = [float((given == y).float().mean()), *accuracies]
        changed = torch.stack([p != given for p in shuffled]).any(0) if shuffled else torch.zeros(len(y), dtype=bool)
        curve[bs] = {"accuracy": everything[0], "accuracy_orders": accuracies, "min": min(everything),
                     "max": max(everything), "changed": float(changed.float().mean())}
    model.train(was)
    return curve
