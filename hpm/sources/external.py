"""Backbones from other libraries: the pyautoattack ResNet-18, RobustBench's zoo, timm and torchvision.

Each loader takes ``(name, options)`` and returns ``(model, input_size)``: a classifier on images in [0, 1]
(normalisation prepended where the library expects normalised inputs) ending in ``nn.Linear``.
"""
from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .. import network
from ..devices import CPU
from ..errors import HPMError, OfflineError
from .split import IMAGENET_MEAN, IMAGENET_STD, Normalize, TimmWithNormalize

CIFAR_INPUT = (3, 32, 32)
IMAGENET_INPUT = (3, 224, 224)


def _pyautoattack_resnet18(name: str | None, options: dict) -> tuple[nn.Module, tuple[int, int, int]]:
    from pyautoattack.examples.resnet import (
        ResNet18,  # the architecture the weights belong to
    )

    weights = importlib.resources.files("pyautoattack") / "examples" / "model_test.pt"
    model = ResNet18()
    with importlib.resources.as_file(weights) as path:
        state = torch.load(path, map_location=CPU, weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval(), CIFAR_INPUT


def robustbench_checkpoint_path(name: str, model_dir: str | Path, dataset: str, threat_model: str) -> Path:
    """Where ``robustbench.utils.load_model`` looks for (and downloads) ``name``'s weights."""
    return Path(model_dir) / dataset / threat_model / f"{name}.pt"


def _robustbench(name: str | None, options: dict) -> tuple[nn.Module, tuple[int, int, int]]:
    from .._compat import import_robustbench_utils

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
    if not path.is_file() and not network.network_available("drive.google.com"):
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
    return TimmWithNormalize(norm, model).eval(), size  # type: ignore[return-value]


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


LOADERS: dict[str, Callable[[str | None, dict], tuple[nn.Module, tuple[int, int, int]]]] = {
    "pyautoattack": _pyautoattack_resnet18,
    "robustbench": _robustbench,
    "timm": _timm,
    "torchvision": _torchvision,
}
