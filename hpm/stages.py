"""A network's intermediate feature maps: finding its resolution stages and capturing their outputs.

Adaptive smoothing's mixing network reads early feature maps of both branches of a mixed classifier. hpm finds
them in any feature extractor by probing it once (:func:`stage_outputs`: the module whose output is the last one
at each spatial resolution, which in a ResNet is the output of each stage) and captures them during the
branches' ordinary forward pass with forward hooks (:class:`FeatureTaps`), so features, logits and feature maps
come from one pass and gradients flow through all of them.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

from .devices import device_of
from .errors import HPMError


@torch.no_grad()
def stage_outputs(features: nn.Module, input_size: Sequence[int]) -> list[tuple[str, int]]:
    """``(module name, channels)`` of each resolution stage of ``features``, in forward order.

    A stage's output is the module whose ``[B, C, H, W]`` output is the last one computed at its resolution ``H``
    (the outermost module, when a block and its stage end together), found with one probe of ``input_size``.

    Raises:
        HPMError: when no submodule returns a feature map.
    """
    seen: list[tuple[str, Tensor]] = []
    hooks = [module.register_forward_hook(lambda mod, inp, out, n=name: seen.append((n, out)))
             for name, module in features.named_modules() if name]
    was_training = features.training
    features.eval()
    try:
        features(torch.rand(1, *input_size, device=device_of(features)))
    finally:
        features.train(was_training)
        for hook in hooks:
            hook.remove()
    last: dict[int, tuple[str, int]] = {}
    for name, out in seen:
        if isinstance(out, Tensor) and out.ndim == 4:
            last.pop(out.shape[-2], None)  # re-inserted: the dict keeps the order in which stages end
            last[out.shape[-2]] = (name, out.shape[1])
    if not last:
        raise HPMError(f"{type(features).__name__} has no submodule that returns a [B, C, H, W] feature map")
    return list(last.values())


class FeatureTaps:
    """Captures the outputs of named submodules of ``root`` while it runs inside :meth:`capture`.

    Captures are per thread (an app serves concurrent requests with one model); outside :meth:`capture` the hooks
    store nothing.
    """

    def __init__(self, root: nn.Module, names: Sequence[str]):
        modules = dict(root.named_modules())
        missing = [name for name in names if name not in modules or not name]
        if missing:
            raise HPMError(f"{type(root).__name__} has no submodules {missing}")
        self.names = tuple(names)
        self._local = threading.local()
        for name in self.names:
            modules[name].register_forward_hook(self._hook(name))

    def _hook(self, name: str):
        def store(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            captured = getattr(self._local, "captured", None)
            if captured is not None:
                captured[name] = output
        return store

    @contextmanager
    def capture(self) -> Iterator[dict[str, Tensor]]:
        """A dict that fills with the tapped outputs of the forward passes run inside the block."""
        self._local.captured = captured = {}
        try:
            yield captured
        finally:
            self._local.captured = None

    def maps(self, captured: dict[str, Tensor]) -> list[Tensor]:
        """The captured outputs in tap order."""
        missing = [name for name in self.names if name not in captured]
        if missing:
            raise HPMError(f"the forward pass never ran the tapped modules {missing}")
        return [captured[name] for name in self.names]

    def __deepcopy__(self, memo: dict) -> "FeatureTaps":
        return self  # deep copies of the network share the hook functions, which store into this object
