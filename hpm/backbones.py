"""Backbone sources: turn a trained classifier into ``(feature extractor, final nn.Linear)``.

A source is named in ``config.json`` as ``{"source": ..., "name": ..., "options": {...}}`` (a
:class:`BackboneSpec`) so a checkpoint can rebuild its backbone without storing its weights:

=================  =====================================================================
``pyautoattack``   the standard CIFAR-10 ResNet-18 shipped inside PyPI's ``pyautoattack``
``robustbench``    a RobustBench zoo model via ``robustbench.utils.load_model`` (``model_dir``
                   honoured: a local file is used without any download)
``timm``           ``timm.create_model(name, pretrained=...)``, ImageNet normalisation prepended
``torchvision``    ``torchvision.models.get_model(name, weights=...)``, likewise
``hpm``            an architecture of :mod:`hpm.zoo` that hpm trained itself (``hpm train-backbone``); the
                   spec rebuilds the architecture and the checkpoint stores the weights
``module``         any ``nn.Module`` ending in ``nn.Linear``; not rebuildable from a name, so its
                   weights are saved with the checkpoint and it reloads via ``hpm.load(dir, backbone=m)``
=================  =====================================================================

Inputs are always images in [0, 1]; normalisation is part of the returned feature extractor.
"""
from __future__ import annotations

import importlib.resources
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from .errors import CheckpointError, HPMError, OfflineError

CIFAR_INPUT = (3, 32, 32)
IMAGENET_INPUT = (3, 224, 224)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class BackboneSpec:
    """Where a backbone comes from; serialised under ``"backbone"`` in ``config.json``."""

    source: str  # one of SOURCES
    name: str | None = None  # model name within the source (None for "module")
    options: dict = field(default_factory=dict)  # source-specific keywords, e.g. dataset, threat_model

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BackboneSpec":
        unknown = set(d) - {"source", "name", "options"}
        if unknown or "source" not in d:
            raise HPMError(f"backbone entry must have keys source, name, options; got {sorted(d)}")
        return cls(source=d["source"], name=d.get("name"), options=dict(d.get("options") or {}))

    @property
    def rebuildable(self) -> bool:
        """True when the backbone, weights included, can be rebuilt from this spec alone."""
        return self.source not in ("module", "hpm")


@dataclass
class SplitModel:
    """A classifier split into a feature extractor and its final linear layer."""

    features: nn.Module  # images [B, 3, H, W] in [0, 1] -> features [B, d]
    fc: nn.Linear  # features -> logits [B, k]
    spec: BackboneSpec
    input_size: tuple[int, int, int]


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
    replaced by ``nn.Identity`` (the model is modified in place, like timm's ``reset_classifier``), and
    the split is verified numerically.

    Raises:
        HPMError: when the model's output is not produced by a final ``nn.Linear``.
    """
    was_training = model.training
    model.eval()
    try:
        probe = torch.rand(2, *input_size, device=_device_of(model))
        expected = model(probe)
        if hasattr(model, "forward_head") and hasattr(model, "get_classifier"):
            fc = model.get_classifier()
            if not isinstance(fc, nn.Linear):
                raise HPMError(f"the timm model's classifier is {type(fc).__name__}, not nn.Linear")
            features: nn.Module = _TimmFeatures(model)
        else:
            calls: list[tuple[str, Tensor]] = []
            hooks = [
                m.register_forward_hook(lambda mod, inp, out, n=name: calls.append((n, out)))
                for name, m in model.named_modules() if isinstance(m, nn.Linear)
            ]
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
            fc_name = calls[-1][0]
            fc = model.get_submodule(fc_name)
            _set_submodule(model, fc_name, nn.Identity())
            features = model
        z = features(probe)
        if z.ndim != 2 or z.shape[1] != fc.in_features:
            raise HPMError(f"features have shape {tuple(z.shape)}, expected [B, {fc.in_features}]")
        if not torch.allclose(fc(z), expected, rtol=1e-4, atol=1e-5):
            raise HPMError(f"{type(model).__name__}: fc(features(x)) differs from model(x); the final linear "
                           "layer is not applied last")
        return features, fc
    finally:
        model.train(was_training)


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _pyautoattack_resnet18(name: str | None, options: dict) -> tuple[nn.Module, tuple[int, int, int]]:
    from pyautoattack.examples.resnet import ResNet18  # the architecture the weights belong to

    weights = importlib.resources.files("pyautoattack") / "examples" / "model_test.pt"
    model = ResNet18()
    with importlib.resources.as_file(weights) as path:
        state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval(), CIFAR_INPUT


def network_available(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """True when ``host:port`` accepts a TCP connection within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def robustbench_checkpoint_path(name: str, model_dir: str | Path, dataset: str, threat_model: str) -> Path:
    """Where ``robustbench.utils.load_model`` looks for (and downloads) ``name``'s weights."""
    return Path(model_dir) / dataset / threat_model / f"{name}.pt"


def _robustbench(name: str | None, options: dict) -> tuple[nn.Module, tuple[int, int, int]]:
    from ._compat import import_robustbench_utils

    if not name:
        raise HPMError("a robustbench backbone needs a model name, e.g. Cui2023Decoupled_WRN-28-10")
    dataset = options.get("dataset", "cifar10")
    threat_model = options.get("threat_model", "Linf")
    model_dir = options.get("model_dir", "./models")
    rb_utils = import_robustbench_utils()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    try:
        zoo = model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat_model)]
    except ValueError as e:
        raise HPMError(f"robustbench: {e}") from None
    if name not in zoo:
        raise HPMError(f"robustbench has no model {name!r} for {dataset}/{threat_model}")
    path = robustbench_checkpoint_path(name, model_dir, dataset, threat_model)
    if not path.is_file() and not network_available("drive.google.com"):
        raise OfflineError(f"robustbench model {name!r} is not at {path} and Google Drive is unreachable; "
                           f"download it on a networked machine and copy it there (or set model_dir)")
    model = rb_utils.load_model(name, model_dir=str(model_dir), dataset=dataset, threat_model=threat_model)
    return model.eval(), (IMAGENET_INPUT if dataset == "imagenet" else CIFAR_INPUT)


def _timm(name: str | None, options: dict) -> tuple[nn.Module, tuple[int, int, int]]:
    import timm

    pretrained = bool(options.get("pretrained", True))
    kwargs = {k: v for k, v in options.items() if k in ("num_classes",)}
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except RuntimeError as e:
        raise HPMError(f"timm: {e}") from None
    except OSError as e:
        raise OfflineError(f"timm could not fetch weights for {name!r} ({e}); pass pretrained=False or run online") from None
    cfg = model.pretrained_cfg
    size = tuple(cfg.get("input_size", IMAGENET_INPUT))
    norm = Normalize(cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD))
    return _Prepend(norm, model).eval(), size  # type: ignore[return-value]


def _torchvision(name: str | None, options: dict) -> tuple[nn.Module, tuple[int, int, int]]:
    import torchvision

    weights = options.get("weights", "DEFAULT")
    kwargs = {k: v for k, v in options.items() if k in ("num_classes",)}
    try:
        model = torchvision.models.get_model(name, weights=weights, **kwargs)
    except ValueError as e:
        raise HPMError(f"torchvision: {e}") from None
    except OSError as e:
        raise OfflineError(f"torchvision could not fetch weights for {name!r} ({e}); pass weights=None or run online") from None
    return nn.Sequential(Normalize(IMAGENET_MEAN, IMAGENET_STD), model).eval(), IMAGENET_INPUT


class _Prepend(nn.Module):
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


SOURCES: dict[str, Callable[[str | None, dict], tuple[nn.Module, tuple[int, int, int]]]] = {
    "pyautoattack": _pyautoattack_resnet18,
    "robustbench": _robustbench,
    "timm": _timm,
    "torchvision": _torchvision,
}


def load_backbone(spec: BackboneSpec, module: nn.Module | None = None,
                  input_size: tuple[int, int, int] | None = None) -> SplitModel:
    """Build and split the backbone a spec names; ``module`` supplies it for ``source="module"``."""
    if module is not None:
        size = tuple(input_size or spec.options.get("input_size") or CIFAR_INPUT)
        features, fc = split_classifier(module, size)  # type: ignore[arg-type]
        return SplitModel(features, fc, spec, size)  # type: ignore[arg-type]
    if spec.source == "hpm":
        from . import zoo

        features, fc = zoo.split(zoo.build(spec.name, spec.options))
        return SplitModel(features, fc, spec, tuple(input_size or CIFAR_INPUT))  # type: ignore[arg-type]
    if spec.source == "module":
        raise CheckpointError("this checkpoint's backbone is an arbitrary nn.Module with no loadable source; "
                       "pass it: hpm.load(path, backbone=your_module)")
    if spec.source not in SOURCES:
        raise HPMError(f"unknown backbone source {spec.source!r}; choose one of {', '.join(SOURCES)} or module")
    model, size = SOURCES[spec.source](spec.name, spec.options)
    size = tuple(input_size or size)
    features, fc = split_classifier(model, size)  # type: ignore[arg-type]
    return SplitModel(features, fc, spec, size)  # type: ignore[arg-type]


def parse_source(name: str) -> BackboneSpec:
    """``"pyautoattack"``, ``"robustbench:NAME"``, ``"timm:NAME"``, ``"torchvision:NAME"`` -> spec."""
    source, _, model_name = name.partition(":")
    if source == "pyautoattack":
        return BackboneSpec("pyautoattack", "resnet18")
    if source in SOURCES and model_name:
        return BackboneSpec(source, model_name)
    raise HPMError(f"cannot parse model source {name!r}; use pyautoattack, robustbench:NAME, timm:NAME "
                   "or torchvision:NAME")
