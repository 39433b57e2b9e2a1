"""Backbone sources: turn a trained classifier into ``(feature extractor, final nn.Linear)``.

A source is named in ``config.json`` as ``{"source": ..., "name": ..., "options": {...}}`` (a
:class:`BackboneSpec`) so a checkpoint can rebuild its backbone without storing its weights:

=================  =====================================================================
``pyautoattack``   the standard CIFAR-10 ResNet-18 shipped inside PyPI's ``pyautoattack``
``robustbench``    a RobustBench zoo model via ``robustbench.utils.load_model`` (``model_dir``
                   honoured: a local file is used without any download)
``timm``           ``timm.create_model(name, pretrained=...)``, ImageNet normalisation prepended
``torchvision``    ``torchvision.models.get_model(name, weights=...)``, likewise
``hpm``            an architecture of :mod:`hpm.sources.zoo` that hpm trained itself (``hpm train-backbone``); the
                   spec rebuilds the architecture and the checkpoint stores the weights
``checkpoint``     the backbone another hpm checkpoint stores (its name, a Hub id or a relative path, and the
                   digest of its weights; :mod:`hpm.sources.reference`): heads on one backbone store it once
``module``         any ``nn.Module`` ending in ``nn.Linear``; not rebuildable from a name, so its
                   weights are saved with the checkpoint and it reloads via ``hpm.load(dir, backbone=m)``
=================  =====================================================================

Inputs are always images in [0, 1]; normalisation is part of the returned feature extractor. A new source
is one entry in :data:`hpm.sources.external.LOADERS`: ``name -> (model name, options) -> (model, input size)``.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import nn

from ..errors import CheckpointError, HPMError
from .external import CIFAR_INPUT, LOADERS, check_options
from .split import split_classifier

SOURCES = (*LOADERS, "hpm", "checkpoint", "module")
DATASET_OF_SOURCE = {"pyautoattack": "cifar10", "timm": "imagenet", "torchvision": "imagenet"}  # when not given


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


def load_backbone(spec: BackboneSpec, module: nn.Module | None = None,
                  input_size: tuple[int, int, int] | None = None, base_dir: str | Path | None = None) -> SplitModel:
    """Build and split the backbone a spec names; ``module`` supplies it for ``source="module"``; ``base_dir`` is
    the directory of the checkpoint being loaded (a ``checkpoint`` reference may be relative to it)."""
    if module is not None:  # the caller's module: split a copy, so that their model(x) still gives logits
        size = tuple(input_size or spec.options.get("input_size") or CIFAR_INPUT)
        features, fc = split_classifier(copy.deepcopy(module), size)  # type: ignore[arg-type]
        return SplitModel(features, fc, spec, size)  # type: ignore[arg-type]
    if spec.source == "checkpoint":
        from .reference import load_split

        def build(entry: dict, size: tuple) -> SplitModel:
            return load_backbone(BackboneSpec.from_dict(entry), input_size=size)

        split = load_split(str(spec.name), spec.options.get("features_sha256"), base_dir, build)
        return SplitModel(split.features, split.fc, spec, split.input_size)
    if spec.source == "hpm":
        from . import zoo

        features, fc = zoo.split(zoo.build(spec.name, spec.options))
        return SplitModel(features, fc, spec, tuple(input_size or CIFAR_INPUT))  # type: ignore[arg-type]
    if spec.source == "module":
        raise CheckpointError("this checkpoint's backbone is your own nn.Module, which the checkpoint cannot "
                              "rebuild: in Python, hpm.load(path, backbone=YourNet()); on the command line, name a "
                              "factory file instead of the checkpoint, e.g. hpm eval my_model.py:load, with "
                              "def load(): return hpm.load(PATH, backbone=YourNet())")
    if spec.source not in LOADERS:
        raise HPMError(f"unknown backbone source {spec.source!r}; choose one of {', '.join(SOURCES)}")
    check_options(spec.source, spec.options)
    model, size = LOADERS[spec.source](spec.name, spec.options)
    size = tuple(input_size or size)
    features, fc = split_classifier(model, size)  # type: ignore[arg-type]
    return SplitModel(features, fc, spec, size)  # type: ignore[arg-type]


def parse_source(name: str) -> BackboneSpec:
    """``"pyautoattack"``, ``"robustbench:NAME"``, ``"timm:NAME"``, ``"torchvision:NAME"`` -> spec."""
    source, _, model_name = name.partition(":")
    if source == "pyautoattack":
        return BackboneSpec("pyautoattack", "resnet18")
    if source in LOADERS and model_name:
        return BackboneSpec(source, model_name)
    raise HPMError(f"cannot parse model source {name!r}; use pyautoattack, robustbench:NAME, timm:NAME "
                   "or torchvision:NAME")
