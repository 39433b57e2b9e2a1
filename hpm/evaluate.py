"""Evaluation: clean accuracy and the Mixed Surrogate Attack protocol (Sec. 3.7, supp. 6.3)."""
from __future__ import annotations

import torch
from torch import Tensor, nn


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, *, batch_size: int = 256, mode: str | None = None,
            device: torch.device | str | None = None) -> Tensor:
    """Predicted labels ``[N]`` of images ``x``, evaluated in consecutive batches of ``batch_size``.

    For batch-dependent heads (HPM) the batch size and order are part of the result.
    """
    device = torch.device(device or next(model.parameters()).device)
    was = model.training
    model.eval()
    out = []
    for chunk in x.split(batch_size):
        scores = model(chunk.to(device), mode=mode) if mode is not None else model(chunk.to(device))
        out.append(scores.argmax(1).cpu())
    model.train(was)
    return torch.cat(out)


def clean_accuracy(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 256, mode: str | None = None,
                   device: torch.device | str | None = None) -> float:
    """Fraction of ``x`` classified as ``y`` (batches of ``batch_size`` in the given order)."""
    correct = predict(model, x, batch_size=batch_size, mode=mode, device=device) == y.cpu()
    return int(correct.sum()) / len(correct)
