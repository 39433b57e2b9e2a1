"""Splitting a classifier into ``(feature extractor, final nn.Linear)``, and the modules that wrap sources."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..devices import device_of
from ..errors import HPMError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` for models trained on normalised inputs."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class _TimmFeatures(nn.Module):
    """``forward_head(forward_features(x), pre_logits=True)`` of a timm model: pooled features."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def _set_submodule(root: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


@torch.no_grad()
def split_classifier(model: nn.Module, input_size: tuple[int, int, int]) -> tuple[nn.Module, nn.Linear]:
    """Split ``model`` into ``(features, fc)`` with ``fc(features(x)) == model(x)``.

    timm models are split through their own API (``forward_head(..., pre_logits=True)`` and
    ``get_classifier()``). Any other module is probed with a random input: the last ``nn.Linear``
    called is taken as the classifier if and only if its output *is* the model's output; it is then
    replaced by ``nn.Identity`` in ``model`` itself (like timm's ``reset_classifier``: pass a copy to keep
    the original, as :func:`hpm.wrap` does), and the split is verified numerically.

    Raises:
        HPMError: when the model's output is not produced by a final ``nn.Linear``.
    """
    was_training = model.training
    model.eval()
    try:
        probe = torch.rand(2, *input_size, device=device_of(model))
        expected = _first_output(model, probe)
        if hasattr(model, "forward_head") and hasattr(model, "get_classifier"):
            fc = model.get_classifier()
            if not isinstance(fc, nn.Linear):
                raise HPMError(f"the timm model's classifier is {type(fc).__name__}, not nn.Linear")
            features: nn.Module = _TimmFeatures(model)
        else:
            fc_name = _final_linear(model, probe, expected)
            fc = model.get_submodule(fc_name)
            _set_submodule(model, fc_name, nn.Identity())
            features = model
        _verify_split(model, features, fc, probe, expected)
        return features, fc
    finally:
        model.train(was_training)


def _first_output(model: nn.Module, probe: Tensor) -> Tensor:
    """``model(probe)``, or an :class:`HPMError` that names what the split needs: a float32 model on images of
    ``input_size`` that returns one tensor of scores."""
    name = type(model).__name__
    try:
        out = model(probe)
    except Exception as e:  # the caller's model: say what the split tried, keep its traceback
        raise HPMError(f"{name} failed on float32 images of shape {tuple(probe.shape)} ({type(e).__name__}: {e}); "
                       "hpm splits a model by one forward pass on random images of its input size: give "
                       "input_size=(C, H, W) for another size, and call .float() on a model in another "
                       "precision") from e
    if not isinstance(out, Tensor):
        raise HPMError(f"{name} returned a {type(out).__name__}, not a tensor of scores [B, k]: hpm needs a forward "
                       "that returns the logits of a final nn.Linear (wrap it in a module whose forward returns "
                       "that tensor, e.g. model(x).logits)")
    return out


def _final_linear(model: nn.Module, probe: Tensor, expected: Tensor) -> str:
    """The name of the ``nn.Linear`` whose output is the model's output (the last one called)."""
    calls: list[tuple[str, Tensor]] = []
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=name: calls.append((n, out)))
             for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    try:
        model(probe)
    finally:
        for h in hooks:
            h.remove()
    if not calls or calls[-1][1].shape != expected.shape or not torch.equal(calls[-1][1], expected):
        raise HPMError(
            f"{type(model).__name__}: its output is not the output of a final nn.Linear, so it cannot "
            "be split into features + FC. Pass a model whose forward ends in nn.Linear, or build "
            "hpm.HPMClassifier(features, fc, head) yourself")
    return calls[-1][0]


def _verify_split(model: nn.Module, features: nn.Module, fc: nn.Linear, probe: Tensor, expected: Tensor) -> None:
    try:
        z = features(probe)
    except Exception as e:  # the caller's forward, with its final linear layer replaced by nn.Identity
        raise HPMError(f"{type(model).__name__}: with its final nn.Linear replaced by nn.Identity its forward fails "
                       f"({type(e).__name__}: {e}); probably something after that layer uses its output (a bias "
                       "added, a skip): end the forward in the nn.Linear, folding what follows into the layer") from e
    if z.ndim != 2 or z.shape[1] != fc.in_features:
        raise HPMError(f"features have shape {tuple(z.shape)}, expected [B, {fc.in_features}]")
    if not torch.allclose(fc(z), expected, rtol=1e-4, atol=1e-5):
        raise HPMError(f"{type(model).__name__}: fc(features(x)) differs from model(x); the final linear "
                       "layer is not applied last")


class TimmWithNormalize(nn.Module):
    """``model(norm(x))`` that still exposes the timm API of ``model`` on normalised inputs."""

    def __init__(self, norm: nn.Module, model: nn.Module):
        super().__init__()
        self.norm, self.model = norm, model

    def forward_features(self, x: Tensor) -> Tensor:
        return self.model.forward_features(self.norm(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self.model.forward_head(x, pre_logits=pre_logits)

    def get_classifier(self) -> nn.Module:
        return self.model.get_classifier()

    def forward(self, x: Tensor) -> Tensor:
        return self.model(self.norm(x))
