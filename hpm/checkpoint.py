"""Checkpoint files, Hugging Face style: ``config.json`` + ``model.safetensors`` + model card ``README.md``.

This module only reads and writes them: the config as a validated dataclass, the weights as safetensors
with strict key and shape checks. Nothing is ever unpickled. Building a model from a checkpoint is
:func:`hpm.load`'s job.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import CheckpointError
from .heads import HEADS
from .version import __version__

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
FORMAT_VERSION = 1
MIXED = "mixed"  # config.json "model_type" of a mixed classifier (an HPM checkpoint has none)
_PICKLE_NAMES = ("pytorch_model.bin", "model.pt", "model.pth", "model.ckpt")


@dataclass
class CheckpointConfig:
    """Everything ``config.json`` says about a checkpoint."""

    backbone: dict  # BackboneSpec.to_dict(): source, name, options
    head: dict  # {"type": "hpm", "num_features": d, "num_classes": k, **head options}
    input_size: list[int]  # [C, H, W] the backbone expects, images in [0, 1]
    classes: list[str]  # k class names in label order
    dataset: str | None = None  # dataset the head was fitted on
    threat_model: dict | None = None  # e.g. {"norm": "Linf", "eps": 0.0313725} for adversarial fine-tuning
    training: dict | None = None  # the fine-tuning recipe (CleanConfig / AdversarialConfig fields + data)
    metrics: dict = field(default_factory=dict)  # name -> {"value": ..., "protocol": ..., "n": ..., ...}
    backbone_weights_included: bool = False  # True when model.safetensors holds the backbone too
    hpm_version: str = __version__
    format_version: int = FORMAT_VERSION

    @classmethod
    def from_dict(cls, d: dict, where: str = CONFIG_NAME) -> "CheckpointConfig":
        known = {f.name for f in fields(cls)}
        missing = {"backbone", "head", "input_size", "classes"} - set(d)
        if missing:
            raise CheckpointError(f"{where}: missing keys {sorted(missing)}")
        unknown = set(d) - known
        if unknown:
            raise CheckpointError(f"{where}: unknown keys {sorted(unknown)}")
        if d.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise CheckpointError(f"{where}: format_version {d['format_version']} is newer than this hpm "
                                  f"({__version__}) understands; upgrade hpm")
        head = d["head"]
        if not isinstance(head, dict) or head.get("type") not in HEADS:
            raise CheckpointError(f"{where}: head.type must be one of {', '.join(HEADS)}")
        return cls(**d)

    @property
    def head_options(self) -> dict:
        """The head's constructor keywords beyond its type and shape."""
        return {k: v for k, v in self.head.items() if k not in ("type", "num_features", "num_classes")}


def _number_in(value, low: float, high: float) -> bool:
    """``value`` is a number (not a bool) in ``[low, high]``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high


_ROBUST_MAP_KEYS = {"scale", "power", "bias", "standard", "attack_alpha", "selection"}
HARD_MAX = "hard max"  # how a MixedNUTS mixture takes its standard branch, the only way hpm deploys it


def _check_robust_map(robust_map, alpha, temperature, where: str) -> None:
    """A MixedNUTS ``robust_map`` entry: finite numbers scale, power and bias (their ranges are
    :class:`hpm.nuts.RobustLogitMap`'s to check), the standard branch as a hard max, an optional attack_alpha in
    [0, 1], beside a fixed alpha and no temperature (the map replaces it)."""
    if not isinstance(robust_map, dict) or alpha is None or temperature != 1:
        raise CheckpointError(f"{where}: robust_map (MixedNUTS) must be an object beside a fixed alpha and "
                              f"temperature 1 (its map replaces the temperature); got alpha {alpha!r}, temperature "
                              f"{temperature!r}")
    unknown = set(robust_map) - _ROBUST_MAP_KEYS
    numbers = all(_number_in(robust_map.get(k), -math.inf, math.inf) and math.isfinite(robust_map[k])
                  for k in ("scale", "power", "bias"))
    attack_alpha, selection = robust_map.get("attack_alpha"), robust_map.get("selection")
    if unknown or not numbers or not (attack_alpha is None or _number_in(attack_alpha, 0, 1)) or not (
            selection is None or isinstance(selection, dict)):
        raise CheckpointError(f"{where}: robust_map (MixedNUTS) must hold finite numbers scale, power and bias "
                              f"(and optionally attack_alpha in [0, 1], standard, a selection object)"
                              + (f"; unknown {sorted(unknown)}" if unknown else "") + "; got "
                              f"{ {k: v for k, v in robust_map.items() if k != 'selection'}!r}")
    if robust_map.get("standard", HARD_MAX) != HARD_MAX:
        raise CheckpointError(f"{where}: robust_map.standard is {robust_map['standard']!r}; hpm deploys MixedNUTS' "
                              f"standard branch only as its authors do, as a {HARD_MAX!r}")


@dataclass
class MixedCheckpointConfig:
    """``config.json`` of a mixed classifier (:class:`hpm.mixed.MixedClassifier`): the configs of its two
    classifiers and how their probabilities are mixed. Its weights file holds each classifier's under the
    prefixes ``standard.`` and ``robust.``."""

    standard: CheckpointConfig  # the accurate classifier g
    robust: CheckpointConfig  # the robust classifier h
    alpha: float | None  # weight of the robust branch in [0, 1]; None: a mixing network predicts it per input
    temperature: float = 1.0  # T dividing the robust branch's logits
    names: list[str] = field(default_factory=lambda: ["standard", "robust"])  # where the two came from
    metrics: dict = field(default_factory=dict)  # as CheckpointConfig.metrics
    mixer: dict | None = None  # the mixing network's constructor keywords (adaptive smoothing)
    training: dict | None = None  # the mixing network's training recipe
    # MixedNUTS: the map of the robust branch's logits (scale, power, bias, and how they and alpha were selected);
    # the standard branch then enters as a hard max
    robust_map: dict | None = None
    model_type: str = MIXED
    hpm_version: str = __version__
    format_version: int = FORMAT_VERSION

    @classmethod
    def from_dict(cls, d: dict, where: str = CONFIG_NAME) -> "MixedCheckpointConfig":
        known = {f.name for f in fields(cls)}
        missing, unknown = {"standard", "robust", "alpha"} - set(d), set(d) - known
        if missing or unknown:
            raise CheckpointError(f"{where}: a mixed checkpoint needs keys standard, robust, alpha"
                                  + (f"; missing {sorted(missing)}" if missing else "")
                                  + (f"; unknown {sorted(unknown)}" if unknown else ""))
        if d.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise CheckpointError(f"{where}: format_version {d['format_version']} is newer than this hpm "
                                  f"({__version__}) understands; upgrade hpm")
        alpha, temperature, mixer = d["alpha"], d.get("temperature", 1.0), d.get("mixer")
        if (alpha is None) == (mixer is None) or not (mixer is None or isinstance(mixer, dict)):
            raise CheckpointError(f"{where}: give either alpha (a number) or mixer (an object), not both")
        if not (_number_in(alpha or 0, 0, 1) and _number_in(temperature, 0, math.inf) and temperature > 0):
            raise CheckpointError(f"{where}: alpha must be a number in [0, 1] and temperature one > 0; got "
                                  f"{alpha!r}, {temperature!r}")
        if d.get("robust_map") is not None:
            _check_robust_map(d["robust_map"], alpha, temperature, where)
        branches = {k: CheckpointConfig.from_dict(d[k], f"{where}: {k}") if isinstance(d[k], dict) else None
                    for k in ("standard", "robust")}
        if None in branches.values():
            raise CheckpointError(f"{where}: standard and robust must be checkpoint configs (JSON objects)")
        return cls(**{**d, **branches})

    @property
    def dataset(self) -> str | None:
        return self.robust.dataset

    @property
    def threat_model(self) -> dict | None:
        """The robust branch's: what the mixture is meant to withstand."""
        return self.robust.threat_model


def read_config(directory: Path) -> CheckpointConfig | MixedCheckpointConfig:
    """``directory/config.json`` as a validated :class:`CheckpointConfig`, or :class:`MixedCheckpointConfig` for a
    mixed classifier."""
    cfg_path = Path(directory) / CONFIG_NAME
    if not cfg_path.is_file():
        raise CheckpointError(f"{directory}: no {CONFIG_NAME}; not an hpm checkpoint")
    try:
        raw = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{cfg_path}: must hold a JSON object")
    if raw.get("model_type") == MIXED:
        return MixedCheckpointConfig.from_dict(raw, str(cfg_path))
    return CheckpointConfig.from_dict(raw, str(cfg_path))


def write_config(directory: Path, config: CheckpointConfig | MixedCheckpointConfig, card: str) -> None:
    """Write ``config.json`` and its model card ``README.md``."""
    (Path(directory) / CONFIG_NAME).write_text(json.dumps(asdict(config), indent=2) + "\n")
    (Path(directory) / CARD_NAME).write_text(card)


def write_weights(directory: Path, weights: dict[str, torch.Tensor]) -> None:
    """Write ``model.safetensors`` (tensors moved to the CPU and made contiguous)."""
    save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(Path(directory) / WEIGHTS_NAME),
              metadata={"format": "pt", "hpm_version": __version__})


def is_withheld(directory: Path) -> bool:
    """True for a checkpoint of an installed hpm (``hpm/checkpoints/NAME``) whose config the wheel carries but whose
    weights it leaves out, as it does for the largest (``exclude-package-data`` in pyproject.toml)."""
    directory = Path(directory)
    package = directory.parent.parent  # the installed package, not a clone that happens to be called hpm
    return (directory.parent.name == "checkpoints" and package.name == "hpm" and (package / "__init__.py").is_file()
            and (directory / CONFIG_NAME).is_file() and not (directory / WEIGHTS_NAME).is_file())


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """``model.safetensors`` of a checkpoint; pickled files are refused with a message saying why."""
    weights = Path(directory) / WEIGHTS_NAME
    if not weights.is_file():
        if is_withheld(directory):
            name = Path(directory).name
            raise CheckpointError(f"{name}: its weights are not in the installed hpm: the wheel leaves out the largest "
                                  f"checkpoints (PyPI takes no file over 100 MB). Load it from a clone of the "
                                  f"repository, hpm.load('CLONE/checkpoints/{name}'), or from its Hub copy, "
                                  f"hpm.load('OWNER/{name}')")
        pickles = [n for n in _PICKLE_NAMES if (Path(directory) / n).exists()]
        hint = f" (found {', '.join(pickles)}: hpm never unpickles files; convert to safetensors)" if pickles else ""
        raise CheckpointError(f"{directory}: no {WEIGHTS_NAME}{hint}")
    try:
        return load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights}: not a valid safetensors file ({e}); hpm never unpickles checkpoints, "
                              "so a pickled torch file renamed to .safetensors is refused") from None


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], expected: set[str], where: Path) -> None:
    """Load ``state`` into ``model``: exactly the keys ``expected``, every shape as the model's."""
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(f"{where}: weights do not match the config: missing {missing[:8]}, "
                              f"unexpected {unexpected[:8]}")
    current = model.state_dict()
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(current[k].shape)}"
             for k in expected if state[k].shape != current[k].shape]
    if wrong:
        raise CheckpointError(f"{where}: wrong shapes: " + "; ".join(wrong[:8]))
    model.load_state_dict({**current, **state}, strict=True)
