"""Backbones from other libraries: the pyautoattack ResNet-18, RobustBench's zoo, timm and torchvision.

Each loader takes ``(name, options)`` and returns ``(model, input_size)``: a classifier on images in [0, 1]
(normalisation prepended where the library expects normalised inputs) ending in ``nn.Linear``.

Local weights, for machines without a network: timm takes ``file`` (the architecture's state dict, safetensors
or a torch file; offline, a download cached earlier is used as well), RobustBench ``model_dir`` (the layout of
:func:`robustbench_checkpoint_path`). Offline with neither, loading fails at once naming the option.

A torch file handed to timm is first read with ``weights_only=True``: timm 1.0.9 unpickles local files without
that restriction, and a ``file`` may come from a checkpoint's ``config.json``, so one that holds anything but
tensors and plain values is refused before timm opens it.
"""
from __future__ import annotations

import importlib.resources
import importlib.util
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

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


ROBUSTBENCH_EXTRA = 'pip install "hybrid-prototype-mixing[robustbench]"'


def _import_robustbench():
    """``robustbench.utils``, or an error naming the extra when RobustBench is missing or does not import."""
    from .._compat import import_robustbench_utils

    if importlib.util.find_spec("robustbench") is None:
        raise HPMError(f"robustbench: sources need RobustBench, an optional extra: {ROBUSTBENCH_EXTRA}")
    try:
        return import_robustbench_utils()
    except ImportError as e:
        raise HPMError(f"RobustBench is installed but does not import ({e}); reinstall it with the versions it "
                       f"needs: {ROBUSTBENCH_EXTRA}") from None


def _robustbench(name: str | None, options: dict) -> tuple[nn.Module, tuple[int, int, int]]:
    if not name:
        raise HPMError("a robustbench backbone needs a model name, e.g. Cui2023Decoupled_WRN-28-10")
    dataset = options.get("dataset", "cifar10")
    threat_model = options.get("threat_model", "Linf")
    model_dir = options.get("model_dir", "./models")
    rb_utils = _import_robustbench()
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
    try:
        model = rb_utils.load_model(name, model_dir=str(model_dir), dataset=dataset, threat_model=threat_model)
    except pickle.UnpicklingError as e:  # torch reads weights only by default, and hpm never unpickles more
        raise HPMError(f"robustbench: {path} holds more than tensors ({_refused(e)}), which hpm does not unpickle; "
                       "if you trust the file, load it once with torch.load(PATH, weights_only=False) and save its "
                       "state dict (tensors alone) back to PATH with torch.save") from None
    return model.eval(), (IMAGENET_INPUT if dataset == "imagenet" else CIFAR_INPUT)


def _hub_offline_requested() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set, now or when ``huggingface_hub`` was imported."""
    from huggingface_hub import constants

    requested = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    return bool(constants.HF_HUB_OFFLINE) or requested


def _hub_host() -> str:
    from huggingface_hub import constants

    return urlparse(constants.ENDPOINT).hostname or "huggingface.co"


def _timm_weights_host(cfg) -> str | None:
    """The host timm downloads ``cfg``'s weights from (the Hub first, as timm does); None when there are none."""
    if cfg.hf_hub_id:
        return _hub_host()
    return urlparse(cfg.url).hostname if cfg.url else None


def _timm_cached_weights(cfg) -> Path | None:
    """``cfg``'s weights where an earlier download left them: the Hugging Face cache, else torch.hub's."""
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")
        for filename in [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]:
            hit = try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(hit, str):
                return Path(hit)
    if cfg.url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg.url).path).name
        if path.is_file():
            return path
    return None


def _check_hub_name_loads(name: str) -> None:
    """An ``hf-hub:`` name loads online or in the Hub's own offline mode (from its cache); else fail at once."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return
    host = _hub_host()
    if _hub_offline_requested() or not network.network_available(host):
        raise OfflineError(f"timm: {name!r} is read from {host}, which is unreachable (or HF_HUB_OFFLINE was set "
                           f"after huggingface_hub was imported); start Python with HF_HUB_OFFLINE=1 to load it from "
                           f"the Hugging Face cache, or use an architecture name with source_options={{'file': PATH}}")


def _refused(error: pickle.UnpicklingError) -> str:
    """What torch's weights-only unpickler refused to load (it names the global), for an error message."""
    found = re.search(r"GLOBAL [\w.]+", str(error))
    return found[0] if found else "UnpicklingError"


def _plain_weights(path: Path) -> Path:
    """``path``, once a torch file there is known to hold only tensors and plain values (safetensors always do).

    Raises:
        HPMError: it holds other Python objects, which unpickling it would run.
    """
    if path.suffix == ".safetensors":
        return path
    try:
        torch.load(path, map_location=CPU, weights_only=True)
    except pickle.UnpicklingError as e:
        raise HPMError(f"timm weights file {path} holds more than tensors ({_refused(e)}); hpm does not unpickle "
                       "such files: save the state dict as safetensors "
                       "(safetensors.torch.save_file(model.state_dict(), 'model.safetensors')) and pass that file"
                       ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise HPMError(f"timm weights file {path} does not read as a torch file ({e}); is it complete?") from None
    return path


def _safetensors_alternatives(filename: str) -> list[str]:
    """The safetensors files timm looks for on the Hub before a torch file named ``filename``."""
    if filename == "pytorch_model.bin":
        return ["model.safetensors"]
    if filename == "open_clip_pytorch_model.bin":
        return ["open_clip_model.safetensors"]
    return [filename[:-len(".bin")] + ".safetensors"] if filename.endswith(".bin") else []


def _check_hub_weights(repo_id: str) -> None:
    """The weights timm reads for ``hf-hub:repo_id``, checked as :func:`_plain_weights` where timm would unpickle
    them unrestricted: a repo whose timm config names its weights file (``hf_hub_filename``, or a local ``file``)
    and has no safetensors copy of it. The files are the ones timm then reads from the Hub's cache."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError
    from timm.models import load_model_config_from_hf

    try:
        cfg, _, _ = load_model_config_from_hf(repo_id)
    except (OSError, KeyError, ValueError):
        return  # no readable timm config: create_model fails on it and says why
    if cfg.get("file"):
        _plain_weights(Path(cfg["file"]))
        return
    filename = cfg.get("hf_hub_filename")
    if not filename or filename.endswith(".safetensors"):
        return  # safetensors, or timm's default file, which it reads with weights_only=True
    repo, _, revision = repo_id.partition("@")
    for alternative in _safetensors_alternatives(filename):
        try:
            hf_hub_download(repo, alternative, revision=revision or None)
            return  # timm takes this one
        except EntryNotFoundError:
            pass
    try:
        path = hf_hub_download(repo, filename, revision=revision or None)
    except OSError as e:
        raise OfflineError(f"timm could not fetch {filename} of {repo_id!r} ({e})") from None
    _plain_weights(Path(path))


def _timm_file(name: str, options: dict) -> Path | None:
    """The local weights file for ``timm:name``: ``options["file"]``, else, offline, the cached download; None
    when timm should download as usual. Offline with nothing local, an error naming the ``file`` option."""
    if options.get("file"):
        path = Path(options["file"]).expanduser()
        if name.startswith("hf-hub:"):
            raise HPMError(f"timm: a weights file needs an architecture name (e.g. timm:resnet18), not {name!r}")
        if not path.is_file():
            raise HPMError(f"timm weights file {path} does not exist")
        return _plain_weights(path)
    if name.startswith("hf-hub:"):
        _check_hub_name_loads(name)
        _check_hub_weights(name[len("hf-hub:"):])
        return None
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError:
        return None  # a bad tag: create_model says so
    host = _timm_weights_host(cfg) if cfg is not None else None
    if not host or (not _hub_offline_requested() and network.network_available(host)):
        return None
    cached = _timm_cached_weights(cfg)
    if cached is None:
        why = "HF_HUB_OFFLINE is set" if _hub_offline_requested() else f"{host} is unreachable"
        raise OfflineError(f"timm weights for {name!r} are not cached and {why}; save them on a networked machine "
                           f"and pass source_options={{'file': 'PATH/model.safetensors'}}, or {{'pretrained': False}} "
                           f"for random weights")
    return _plain_weights(cached)


def _timm_hub_hint(error: Exception) -> str:
    """How to fix timm's "huggingface_hub not installed" when the real cause is a timm too old for the Hub."""
    if "huggingface_hub" not in str(error) or importlib.util.find_spec("huggingface_hub") is None:
        return ""
    import timm

    return (f" (it is installed: timm {timm.__version__} predates huggingface_hub 2; run pip install -U "
            f"'timm>=1.0.21', or, where robustbench pins timm 1.0.9, pip install 'huggingface_hub<2')")


def _timm(name: str | None, options: dict) -> tuple[nn.Module, tuple[int, int, int]]:
    import timm

    if not name:
        raise HPMError("a timm backbone needs a model name, e.g. resnet18")
    pretrained = bool(options.get("pretrained", True))
    if options.get("file") and not pretrained:
        raise HPMError(f"timm:{name}: source_options give a weights file and pretrained=False; drop 'pretrained' to "
                       "load the file, or 'file' for random weights")
    kwargs = {k: v for k, v in options.items() if k in ("num_classes",)}
    file = _timm_file(name, options) if pretrained else None
    try:
        if options.get("file"):
            model = _timm_with_weights(name, file, kwargs)
        else:
            model = timm.create_model(name, pretrained=pretrained, **kwargs,
                                      **({"pretrained_cfg_overlay": {"file": str(file)}} if file else {}))
    except RuntimeError as e:
        raise HPMError(f"timm: {e}{_timm_hub_hint(e)}") from None
    except OSError as e:
        raise OfflineError(f"timm could not fetch weights for {name!r} ({e}); pass source_options={{'file': PATH}} "
                           f"with the weights saved locally, or {{'pretrained': False}}") from None
    cfg = model.pretrained_cfg
    wanted = kwargs.get("num_classes")
    if pretrained and not options.get("file") and wanted is not None and wanted != cfg.get("num_classes"):
        warnings.warn(f"timm:{name} with num_classes={wanted}: its pretrained weights score "
                      f"{cfg.get('num_classes')} classes, so timm gives it a new classifier at random: fine-tune it "
                      "or fit an HPM head (head='hpm') before evaluating; an FC head scores at chance",
                      stacklevel=4)  # the caller of hpm.wrap (through load_backbone)
    size = tuple(cfg.get("input_size", IMAGENET_INPUT))
    norm = Normalize(cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD))
    return TimmWithNormalize(norm, model).eval(), size  # type: ignore[return-value]


def _timm_with_weights(name: str, path: Path, kwargs: dict) -> nn.Module:
    """``timm:name`` with every weight read from the state dict at ``path``, strictly: a file of another
    architecture or class count is refused (timm's pretrained loading would instead drop a classifier of another
    size, or leave unmatched layers at random, without a word)."""
    import timm

    model = timm.create_model(name, pretrained=False, **kwargs)
    state, own = _state_dict_in(path), model.state_dict()
    optional = {k for k in own if k.endswith("num_batches_tracked")}  # files saved before BatchNorm counted
    differences = {"missing": [k for k in own if k not in state and k not in optional],
                   "unexpected": [k for k in state if k not in own],
                   "of another shape": [k for k in own if k in state and state[k].shape != own[k].shape]}
    if any(differences.values()):
        found = "; ".join(f"{len(keys)} {what} (e.g. {keys[0]})" for what, keys in differences.items() if keys)
        raise HPMError(f"timm: {path} is not a state dict of {name} with {model.num_classes} classes: its tensors, "
                       f"against the model's: {found}; save model.state_dict() of that architecture, and pass "
                       "source_options num_classes=K when its classifier scores K classes")
    model.load_state_dict(state, strict=False)  # every tensor checked above; a missing count keeps its default
    return model


EMA_KEYS = ("state_dict_ema", "model_ema")  # a training checkpoint's averaged copy of the weights


def _state_dict_in(path: Path) -> dict:
    """The state dict a weights file holds: the file itself, or its ``state_dict`` (else ``model``) entry as a
    training checkpoint keeps it, without a ``module.`` prefix (DataParallel); an averaged copy beside it is
    left, with a warning, rather than picked silently (alone, it is the weights)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return {k.removeprefix("module."): v for k, v in load_file(str(path)).items()}
    raw = torch.load(path, map_location=CPU, weights_only=True)
    if not isinstance(raw, dict):
        raise HPMError(f"timm: {path} holds a {type(raw).__name__}, not a state dict")
    entry = next((k for k in ("state_dict", "model") if isinstance(raw.get(k), dict)), None)
    averaged = [k for k in EMA_KEYS if isinstance(raw.get(k), dict)]
    if entry and averaged:
        warnings.warn(f"timm: {path} holds the weights under {entry!r} and an averaged copy under {averaged[0]!r}; "
                      f"hpm loads {entry!r}: to evaluate the averaged weights, save them alone "
                      f"(torch.save(checkpoint[{averaged[0]!r}], PATH))",
                      stacklevel=6)  # the caller of hpm.wrap (through load_backbone, _timm, _timm_with_weights)
    entry = entry or next(iter(averaged), None)  # the averaged copy alone: the only weights there are
    state = raw[entry] if entry else raw
    return {k.removeprefix("module."): v for k, v in state.items()}


def _torchvision(name: str | None, options: dict) -> tuple[nn.Module, tuple[int, int, int]]:
    import torchvision

    kwargs = {k: v for k, v in options.items() if k in ("num_classes",)}
    try:
        weights = _torchvision_weights(name, options.get("weights", "DEFAULT"))
        model = torchvision.models.get_model(name, weights=weights, **kwargs)
    except ValueError as e:
        raise HPMError(f"torchvision: {e}") from None
    except OSError as e:
        raise OfflineError(f"torchvision could not fetch weights for {name!r} ({e}); run online, or pass "
                           "source_options={'weights': None} for random weights") from None
    if weights is None:  # random initialisation: ImageNet's usual input
        return nn.Sequential(Normalize(IMAGENET_MEAN, IMAGENET_STD), model).eval(), IMAGENET_INPUT
    preprocess = weights.transforms()  # the size and statistics these weights were trained and evaluated at
    size = (3, *[int(s) for s in (preprocess.crop_size * 2)[:2]])
    return nn.Sequential(Normalize(tuple(preprocess.mean), tuple(preprocess.std)), model).eval(), size


def _torchvision_weights(name: str | None, weights):
    """The torchvision weights entry that ``weights`` names for the model ``name``: ``"DEFAULT"``, an entry's name
    (``"IMAGENET1K_V2"``), its full name (``"ResNet50_Weights.IMAGENET1K_V2"``) or the entry itself; None for
    random initialisation. Raises ValueError naming the entries the model has."""
    import torchvision

    if weights is None:
        return None
    entries = torchvision.models.get_model_weights(name)
    if isinstance(weights, entries):
        return weights
    enum_name, dot, member = weights.rpartition(".") if isinstance(weights, str) else ("", "", None)
    if (dot and enum_name != entries.__name__) or member not in entries.__members__:
        raise ValueError(f"{name!r} has no weights {weights!r}; its weights: "
                         f"{', '.join(f'{entries.__name__}.{m}' for m in entries.__members__)}")
    return entries[member]


OPTIONS: dict[str, tuple[str, ...]] = {  # the source options each loader reads
    "pyautoattack": (),
    "robustbench": ("dataset", "threat_model", "model_dir"),
    "timm": ("pretrained", "num_classes", "file"),
    "torchvision": ("weights", "num_classes"),
}


LOCAL_PATHS = ("file", "model_dir")  # source options that name a place on this machine


def with_absolute_paths(options: dict) -> dict:
    """``options`` with the local paths among them made absolute, so that a checkpoint recording them reloads
    from any working directory."""
    return {k: str(Path(v).expanduser().resolve()) if k in LOCAL_PATHS and isinstance(v, (str, Path)) else v
            for k, v in options.items()}


def check_options(source: str, options: dict) -> None:
    """Refuse source options that ``source``'s loader does not read (a misspelt one would be ignored)."""
    unknown = sorted(set(options) - set(OPTIONS[source]))
    if unknown:
        raise HPMError(f"{source}: unknown source option(s) {', '.join(map(repr, unknown))}; its options: "
                       f"{', '.join(OPTIONS[source]) or 'none'}")


LOADERS: dict[str, Callable[[str | None, dict], tuple[nn.Module, tuple[int, int, int]]]] = {
    "pyautoattack": _pyautoattack_resnet18,
    "robustbench": _robustbench,
    "timm": _timm,
    "torchvision": _torchvision,
}
