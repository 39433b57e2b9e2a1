"""Backbones that live in another checkpoint: a head names the checkpoint that stores its backbone instead of
storing the backbone again.

A backbone trained by hpm exists only as weights inside a checkpoint (``backbone_weights_included``). Every head
fine-tuned on it would otherwise carry a copy (45 MB for a PreAct ResNet-18). Such a head's ``config.json`` says
instead ``{"source": "checkpoint", "name": REF, "options": {"features_sha256": DIGEST}}``, where ``REF`` is

- the name of a checkpoint shipped with hpm (``cifar10-resnet20w32-fgsmrs-20ep-fc``), found in a clone and in an
  installed wheel alike,
- a Hub repo id, best pinned to a commit (``owner/name@REVISION``), downloaded like any checkpoint, or
- a path relative to the referencing checkpoint's directory (``../my-fc``), for checkpoints kept side by side.

Loading reads the backbone's ``features.*`` weights from ``REF`` and refuses them unless their digest is
``DIGEST``: a moved branch or a retrained backbone cannot silently change what a head's numbers were measured on.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Iterable, TypeVar

import torch
from torch import Tensor

from ..checkpoint import CheckpointConfig, load_strict, read_config, read_weights
from ..errors import CheckpointError
from ..hub import (download_checkpoint, is_repo_id, resolve_checkpoint, shipped_checkpoints, shipped_root,
                   split_revision)

T = TypeVar("T")
SOURCE = "checkpoint"
FEATURES = "features."


def features_digest(state: dict[str, Tensor]) -> str:
    """SHA-256 over the backbone tensors (``features.*``) of a checkpoint's weights: names, dtypes, shapes, bytes."""
    digest = hashlib.sha256()
    for key in sorted(k for k in state if k.startswith(FEATURES)):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def reference_name(checkpoint: str | Path, relative_to: str | Path) -> str:
    """How a checkpoint written to ``relative_to`` names the backbone checkpoint ``checkpoint``: its name when hpm
    ships it, the Hub id as given, else its path relative to ``relative_to``."""
    path = Path(checkpoint).expanduser()
    if not path.is_dir():
        if is_repo_id(split_revision(str(checkpoint))[0]) or (shipped_root() and (shipped_root() / str(checkpoint)
                                                                                    ).is_dir()):
            return str(checkpoint)
        raise CheckpointError(f"{checkpoint}: no such checkpoint directory (and not a Hub repo id)")
    root = shipped_root()
    if root is not None and path.resolve().parent == root.resolve():
        return path.name
    return os.path.relpath(path.resolve(), Path(relative_to).expanduser().resolve())


def is_portable(name: str) -> bool:
    """True for a reference that resolves on any machine with hpm: a Hub id or a shipped checkpoint's name."""
    root = shipped_root()
    return is_repo_id(split_revision(name)[0]) or (root is not None and "/" not in name and (root / name).is_dir())


def names_local_backbone(spec) -> bool:
    """True for a backbone spec (an :class:`hpm.sources.BackboneSpec`, or None) that names its checkpoint by a path
    of this machine, which a Hub user cannot load."""
    return spec is not None and spec.source == SOURCE and not is_portable(str(spec.name))


def _in_hub_cache(directory: Path) -> bool:
    """True for a folder inside the Hugging Face Hub cache (a downloaded checkpoint's snapshot)."""
    from huggingface_hub import constants

    return Path(directory).resolve().is_relative_to(Path(constants.HF_HUB_CACHE).expanduser().resolve())


def resolve_reference(name: str, base_dir: str | Path | None = None) -> Path:
    """The directory of a referenced backbone checkpoint.

    Named by a checkpoint in ``base_dir`` (the referencing checkpoint's folder): a path relative to it, else a
    shipped checkpoint's name, else a Hub id (downloaded, never read as a local path). A checkpoint downloaded from
    the Hub may name only a shipped checkpoint or a Hub id, so that it cannot point at a folder of this machine.
    Without ``base_dir`` (a name the user gave): anything :func:`hpm.hub.resolve_checkpoint` takes.
    """
    if base_dir is None:
        return resolve_checkpoint(name)
    if is_repo_id(split_revision(name)[0]):
        return download_checkpoint(name)
    shipped = shipped_checkpoints().get(name)
    if Path(name).is_absolute() or (shipped is None and _in_hub_cache(Path(base_dir))):
        raise CheckpointError(f"{base_dir}: names its backbone checkpoint by the path {name!r}; a checkpoint names "
                              "one beside it by a relative path, or a shipped checkpoint or a Hub id (from the Hub: "
                              "only those)")
    local = Path(base_dir) / name
    if local.is_dir() and not _in_hub_cache(Path(base_dir)):
        return local
    if shipped is not None:
        return shipped
    raise CheckpointError(f"{base_dir}: names its backbone checkpoint {name!r}, which is neither beside it "
                          f"({local} does not exist) nor a checkpoint shipped with hpm")


def stored_backbones(directories: Iterable[Path]) -> dict[str, list[tuple[Path, str]]]:
    """The backbone weights that the checkpoints ``directories`` store, by digest (:func:`features_digest`): each
    as ``(checkpoint, part)``, ``part`` being ``""`` for a classifier, ``"standard"`` or ``"robust"`` for a branch
    of a mixed classifier. Two entries under one digest are one backbone stored twice."""
    found: dict[str, list[tuple[Path, str]]] = {}
    for directory in directories:
        config = read_config(directory)
        parts = {"": config} if isinstance(config, CheckpointConfig) else {"standard": config.standard,
                                                                            "robust": config.robust}
        state = None
        for part, branch in parts.items():
            if branch.backbone_weights_included:
                state = read_weights(directory) if state is None else state
                prefix = f"{part}." if part else ""
                digest = features_digest({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
                found.setdefault(digest, []).append((directory, part))
    return found


def backbone_config(directory: Path) -> CheckpointConfig:
    """The config of a checkpoint that can lend its backbone: one that stores the backbone weights itself."""
    config = read_config(directory)
    if not isinstance(config, CheckpointConfig) or not config.backbone_weights_included:
        raise CheckpointError(f"{directory}: does not store its backbone weights, so no head can name it as its "
                              "backbone (name the checkpoint that does, or the backbone's own source)")
    return config


def load_split(name: str, digest: str | None, base_dir: str | Path | None, build: Callable[[dict, tuple], T]) -> T:
    """The referenced checkpoint's backbone, built by ``build(backbone_entry, input_size)`` from that checkpoint's
    own config (a split model with ``features`` and ``fc``), its ``features`` weights loaded and checked against
    ``digest``."""
    if not digest:
        raise CheckpointError(f"{base_dir}: names the backbone checkpoint {name!r} without the digest of its weights "
                              "(features_sha256), so what it was measured on cannot be checked")
    directory = resolve_reference(name, base_dir)
    config = backbone_config(directory)
    if config.backbone.get("source") == SOURCE:
        raise CheckpointError(f"{directory}: names yet another checkpoint as its backbone; a head names the "
                              "checkpoint that stores the weights")
    state = read_weights(directory)
    found = features_digest(state)
    if found != digest:
        raise CheckpointError(f"{directory}: its backbone weights are not the ones this head was trained on "
                              f"(features_sha256 {found[:12]}..., expected {digest[:12]}...); pin the backbone "
                              "checkpoint's revision")
    split = build(config.backbone, tuple(config.input_size))
    weights = {k[len(FEATURES):]: v for k, v in state.items() if k.startswith(FEATURES)}
    load_strict(split.features, weights, set(split.features.state_dict()), directory)
    return split
