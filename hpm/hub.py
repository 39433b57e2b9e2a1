"""Checkpoints, Hugging Face style: ``config.json`` + ``model.safetensors`` + model card ``README.md``.

``model.safetensors`` holds the FC layer and the head (weights and buffers such as the EMA prototypes);
the backbone's weights are stored only when the backbone cannot be rebuilt from its source (an arbitrary
``nn.Module``). Loading checks keys and shapes strictly and never unpickles anything.
"""
from __future__ import annotations

import json
import re
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from . import __version__
from .backbones import BackboneSpec, load_backbone
from .errors import CheckpointError, HPMError, OfflineError
from .heads import HEADS, create_head
from .model import HPMClassifier

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
FORMAT_VERSION = 1
_PICKLE_NAMES = ("pytorch_model.bin", "model.pt", "model.pth", "model.ckpt")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


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


def config_of(model: HPMClassifier) -> CheckpointConfig:
    head = {"type": model.head_type, "num_features": model.num_features, "num_classes": model.num_classes,
            **model.head.extra_config()}
    return CheckpointConfig(backbone=model.backbone_spec.to_dict(), head=head, input_size=list(model.input_size),
                            classes=list(model.classes), dataset=model.dataset,
                            backbone_weights_included=not model.backbone_spec.rebuildable)


def _weights_to_save(model: HPMClassifier, include_backbone: bool) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    keep = {k: v for k, v in state.items() if include_backbone or not k.startswith("features.")}
    return {k: v.detach().cpu().contiguous() for k, v in keep.items()}


def save_pretrained(model: HPMClassifier, directory: str | Path, *, metrics: dict | None = None,
                    training: dict | None = None, threat_model: dict | None = None) -> Path:
    """Write the checkpoint directory; returns its path. Existing files of the same names are replaced."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    config = config_of(model)
    previous = getattr(model, "checkpoint_config", None)
    config.metrics = dict(metrics if metrics is not None else (previous.metrics if previous else {}))
    config.training = training if training is not None else (previous.training if previous else None)
    config.threat_model = threat_model if threat_model is not None else (previous.threat_model if previous else None)
    save_file(_weights_to_save(model, config.backbone_weights_included), str(out / WEIGHTS_NAME),
              metadata={"format": "pt", "hpm_version": __version__})
    (out / CONFIG_NAME).write_text(json.dumps(asdict(config), indent=2) + "\n")
    from .cards import model_card

    (out / CARD_NAME).write_text(model_card(config))
    model.checkpoint_config = config  # type: ignore[attr-defined]
    return out


def resolve_checkpoint(path_or_repo_id: str | Path, *, revision: str | None = None,
                       token: str | None = None) -> Path:
    """A local checkpoint directory, downloading ``owner/name`` from the Hub when it is not a local path."""
    path = Path(path_or_repo_id).expanduser()
    if path.is_dir():
        return path
    text = str(path_or_repo_id)
    if path.exists():
        raise CheckpointError(f"{text} is a file; a checkpoint is a directory with {CONFIG_NAME} and {WEIGHTS_NAME}")
    if not _REPO_ID.match(text) or text.startswith((".", "/", "~")):
        raise CheckpointError(f"{text}: no such checkpoint directory (and not a Hub repo id of the form owner/name)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(text, revision=revision, token=token, etag_timeout=5,
                                      allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME]))
    except RepositoryNotFoundError:
        raise CheckpointError(f"Hub repo {text!r} does not exist or is private (pass token=...); for a local "
                              f"checkpoint give a directory path such as ./checkpoints/NAME") from None
    except LocalEntryNotFoundError:
        raise OfflineError(f"cannot reach the Hugging Face Hub to download {text!r} and it is not in the local "
                           f"cache; pass a local checkpoint directory instead (e.g. ./checkpoints/NAME)") from None
    except (HfHubHTTPError, OSError) as e:
        raise OfflineError(f"downloading {text!r} from the Hub failed ({type(e).__name__}: {e}); pass a local "
                           f"checkpoint directory instead") from None


def read_config(directory: Path) -> CheckpointConfig:
    cfg_path = directory / CONFIG_NAME
    if not cfg_path.is_file():
        raise CheckpointError(f"{directory}: no {CONFIG_NAME}; not an hpm checkpoint")
    try:
        raw = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{cfg_path}: must hold a JSON object")
    return CheckpointConfig.from_dict(raw, str(cfg_path))


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        pickles = [n for n in _PICKLE_NAMES if (directory / n).exists()]
        hint = f" (found {', '.join(pickles)}: hpm never unpickles files; convert to safetensors)" if pickles else ""
        raise CheckpointError(f"{directory}: no {WEIGHTS_NAME}{hint}")
    try:
        return load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights}: not a valid safetensors file ({e}); hpm never unpickles checkpoints, "
                              "so a pickled torch file renamed to .safetensors is refused") from None


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], expected: set[str], where: Path) -> None:
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


def load(path_or_repo_id: str | Path, *, backbone: nn.Module | None = None, device: torch.device | str | None = None,
         revision: str | None = None, token: str | None = None) -> HPMClassifier:
    """Load an HPM checkpoint from a local directory or a Hub repo id.

    Args:
        path_or_repo_id: a directory written by ``save_pretrained`` or ``"owner/name"`` on the Hub.
        backbone: the architecture for checkpoints whose backbone is an arbitrary module (its weights
            come from the checkpoint); must end in the same ``nn.Linear`` shape as when it was saved.
        device: where to put the model (default CPU).

    Raises:
        CheckpointError: missing files, invalid JSON, wrong keys or shapes, non-safetensors weights.
        OfflineError: a Hub id while the Hub is unreachable (fails within seconds).
    """
    directory = resolve_checkpoint(path_or_repo_id, revision=revision, token=token)
    config = read_config(directory)
    state = _read_weights(directory)
    spec = BackboneSpec.from_dict(config.backbone)
    input_size = tuple(config.input_size)
    try:
        split = load_backbone(spec, module=backbone, input_size=input_size)  # type: ignore[arg-type]
        head_cfg = {k: v for k, v in config.head.items() if k not in ("type", "num_features", "num_classes")}
        head = create_head(config.head["type"], int(config.head["num_features"]), int(config.head["num_classes"]),
                           **head_cfg)
        model = HPMClassifier(split.features, split.fc, head, backbone_spec=spec, input_size=input_size,  # type: ignore[arg-type]
                              classes=config.classes, dataset=config.dataset)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{directory / CONFIG_NAME}: {e}") from None
    expected = {k for k in model.state_dict() if config.backbone_weights_included or not k.startswith("features.")}
    _load_strict(model, state, expected, directory / WEIGHTS_NAME)
    model.checkpoint_config = config  # type: ignore[attr-defined]
    return model.to(device or "cpu").eval()


def push_to_hub(model: HPMClassifier, repo_id: str, *, private: bool = False, token: str | None = None,
                commit_message: str = "Upload HPM checkpoint", **save_kwargs) -> str:
    """``save_pretrained`` into a temporary directory and upload it as one commit; returns the commit URL."""
    from huggingface_hub import HfApi

    if not _REPO_ID.match(repo_id):
        raise HPMError(f"repo id must look like owner/name; got {repo_id!r}")
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp, **save_kwargs)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            info = api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message)
        except OSError as e:
            raise OfflineError(f"uploading to {repo_id!r} failed ({e}); check the network and your token") from None
    return str(getattr(info, "commit_url", info))
