"""``HPMClassifier``: a backbone's features, its original FC layer and a head, with three forward modes.

Also the model's life cycle: :func:`wrap` (any classifier -> HPMClassifier, never editing the caller's
module), :meth:`HPMClassifier.save_pretrained` and :func:`load` (checkpoint directories or Hub repo ids).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

from .checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointConfig,
    MixedCheckpointConfig,
    load_strict,
    read_config,
    read_weights,
    write_config,
    write_weights,
)
from .devices import CPU
from .errors import CheckpointError, HPMError
from .heads import Head, Mode, check_mode, create_head
from .mixed import MixedClassifier, MixingNetwork, check_branches_agree
from .hub import closest_shipped, is_repo_id, push_folder, resolve_checkpoint, shipped_checkpoints, split_revision
from .model_card import model_card
from .nuts import MixedNUTS, RobustLogitMap
from .sources import (
    DATASET_OF_SOURCE,
    BackboneSpec,
    SplitModel,
    load_backbone,
    parse_source,
)
from .sources.external import LOADERS, with_absolute_paths
from .sources.factory import callables_in, is_factory, load_factory
from .sources.reference import SOURCE as REFERENCE_SOURCE
from .sources.reference import (backbone_config, features_digest, is_portable, names_local_backbone, reference_name,
                                resolve_reference)


class ModeView(nn.Module):
    """The classifier seen in one fixed mode (and optional fixed context): an ordinary ``images -> scores``
    module for attack libraries. It shares every parameter and buffer with the classifier it views."""

    def __init__(self, model: "HPMClassifier", mode: Mode, context: Tensor | None = None):
        super().__init__()
        self.model = model
        self.view_mode = check_mode(mode)
        self.context = context

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x, mode=self.view_mode, context=self.context)

    def extra_repr(self) -> str:
        return f"mode={self.view_mode!r}, context={0 if self.context is None else len(self.context)}"


class HPMClassifier(nn.Module):
    """Backbone features + original FC + head (Sec. 3.6).

    Args:
        features: images ``[B, 3, H, W]`` in [0, 1] -> features ``[B, d]`` (normalisation inside).
        fc: the original final linear layer ``d -> k``.
        head: any :class:`hpm.heads.Head` of matching width.
        backbone_spec: where the backbone comes from (saved in ``config.json``).
        input_size: ``(C, H, W)`` the backbone expects.
        classes: class names, ``k`` of them.
        dataset: name of the dataset the head was fitted on (``cifar10``, ``cifar100``, ``imagenet``).

    ``mode`` (``"hard"`` deployed, ``"soft"`` soft-hybrid surrogate, ``"fc"`` FC oracle) selects the
    default forward pass; :meth:`deployed`, :meth:`soft_surrogate` and :meth:`fc_oracle` return
    attackable modules fixed to one mode. The backbone is frozen: it stays in eval mode and has
    ``requires_grad=False``.

    A batch-dependent head (HPM) classifies a batch as a whole. ``context`` (features ``[m, d]`` from
    :meth:`context_features`) adds fixed reference samples to every batch: their rows join the head's
    computation and only the batch's own scores are returned. The model itself holds no context, so one
    model can serve many callers at once.

    Example:
        >>> model = hpm.wrap("pyautoattack", head="hpm")
        >>> scores = model(images)                    # deployed HPM prediction
        >>> ctx = model.context_features(reference)   # e.g. 64 test images
        >>> model(image[None], context=ctx)           # one image, classified inside that context
        >>> attack_target = model.soft_surrogate()    # nn.Module for any attack library
    """

    def __init__(self, features: nn.Module, fc: nn.Linear, head: Head, *,
                 backbone_spec: BackboneSpec | None = None, input_size: tuple[int, int, int] = (3, 32, 32),
                 classes: list[str] | None = None, dataset: str | None = None):
        super().__init__()
        if fc.in_features != head.num_features or fc.out_features != head.num_classes:
            raise ValueError(f"head is {head.num_features}->{head.num_classes} but the FC layer is "
                             f"{fc.in_features}->{fc.out_features}")
        if classes is not None and len(classes) != fc.out_features:
            raise ValueError(f"{len(classes)} class names for {fc.out_features} classes")
        self.features = features
        self.fc = fc
        self.head = head
        self.backbone_spec = backbone_spec or BackboneSpec("module")
        self.input_size = tuple(input_size)
        self.classes = list(classes) if classes is not None else [str(i) for i in range(fc.out_features)]
        self.dataset = dataset
        self.checkpoint_config: CheckpointConfig | None = None  # set by load / save_pretrained
        # the checkpoint directory a backbone named by a local path lives in (a "checkpoint" source), so that a copy
        # saved elsewhere names it relative to its own directory
        self.backbone_directory: Path | None = None
        self._mode: Mode = "hard"
        self.features.requires_grad_(False)
        self.features.eval()

    # -- configuration ---------------------------------------------------------------------------
    @property
    def mode(self) -> Mode:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        self._mode = check_mode(value)

    @property
    def num_features(self) -> int:
        return self.fc.in_features

    @property
    def num_classes(self) -> int:
        return self.fc.out_features

    @property
    def head_type(self) -> str:
        return self.head.head_type

    @property
    def device(self) -> torch.device:
        return self.fc.weight.device

    # -- what an evaluation asks (hpm.defence.Declared): the head declares it -------------------------
    @property
    def batch_dependent(self) -> bool:
        return self.head.batch_dependent

    @property
    def attack_targets(self) -> Mapping[str, tuple[str, ...]]:
        return self.head.attack_targets

    @property
    def target_descriptions(self) -> Mapping[str, str]:
        return self.head.target_descriptions

    def describe(self) -> dict:
        """What an evaluation report records about the model."""
        spec = self.backbone_spec
        return {"head": self.head_type, "backbone": f"{spec.source}:{spec.name}", "dataset": self.dataset,
                "batch_dependent": self.head.batch_dependent}

    def train(self, mode: bool = True) -> "HPMClassifier":
        super().train(mode)
        self.features.eval()  # BatchNorm statistics of the frozen backbone never move
        return self

    # -- forward ---------------------------------------------------------------------------------
    def forward_features(self, x: Tensor) -> Tensor:
        """Backbone features ``[B, d]`` of images in [0, 1]."""
        return self.features(x)

    def forward_head(self, z: Tensor, mode: str | None = None, labels: Tensor | None = None,
                     context: Tensor | None = None) -> Tensor:
        """Scores ``[B, k]`` from features; ``labels`` drive EMA prototype updates in training mode.

        ``context [m, d]``: features of fixed samples that join the batch of a batch-dependent head (Eq. 16).
        """
        if context is not None and (context.ndim != 2 or context.shape[1] != z.shape[1]):
            raise ValueError(f"context must be features [m, {z.shape[1]}] (from context_features); "
                             f"got shape {tuple(context.shape)}")
        if context is not None and self.head.batch_dependent:
            if labels is not None:
                raise ValueError("labels (EMA prototype updates) and a context cannot be combined")
            n = z.shape[0]
            z = torch.cat([z, context.to(z)], 0)  # [B + m, d]
            return self.head(z, self.fc(z), mode=check_mode(mode or self._mode))[:n]
        return self.head(z, self.fc(z), mode=check_mode(mode or self._mode), labels=labels)

    def forward(self, x: Tensor, mode: str | None = None, labels: Tensor | None = None,
                context: Tensor | None = None) -> Tensor:
        return self.forward_head(self.forward_features(x), mode=mode, labels=labels, context=context)

    @torch.no_grad()
    def context_features(self, images: Tensor, batch_size: int = 256) -> Tensor:
        """Features ``[m, d]`` of reference images, for the ``context`` argument (computed once, reused)."""
        return torch.cat([self.features(chunk.to(self.device)) for chunk in images.split(batch_size)])

    # -- attackable views ------------------------------------------------------------------------
    def deployed(self, context: Tensor | None = None) -> ModeView:
        """The deployed model (``hard`` mode) as its own module."""
        return ModeView(self, "hard", context)

    def soft_surrogate(self, context: Tensor | None = None) -> ModeView:
        """Surrogate 2 of MSA: the soft-hybrid model (``P_soft`` in the forward pass)."""
        return ModeView(self, "soft", context)

    def fc_oracle(self) -> ModeView:
        """Surrogate 1 of MSA: the original FC logits."""
        return ModeView(self, "fc")

    def trainable_parameters(self) -> list[nn.Parameter]:
        """FC + head parameters (the backbone is frozen)."""
        return [p for p in self.parameters() if p.requires_grad]

    def with_head(self, head: Head, fc: nn.Linear | None = None) -> "HPMClassifier":
        """This model's backbone (shared, frozen) and FC layer (or ``fc``) under ``head``; saved, the new model
        names or stores the same backbone as this one."""
        model = HPMClassifier(self.features, self.fc if fc is None else fc, head, backbone_spec=self.backbone_spec,
                              input_size=self.input_size, classes=self.classes, dataset=self.dataset)
        model.backbone_directory = self.backbone_directory
        return model

    # -- persistence -----------------------------------------------------------------------------
    def to_config(self, directory: str | Path | None = None) -> CheckpointConfig:
        """The checkpoint configuration this model is saved with (metrics and recipe of the last load/save);
        ``directory``: where it is saved, to which a backbone checkpoint named by a local path is named relative."""
        head = {"type": self.head_type, "num_features": self.num_features, "num_classes": self.num_classes,
                **self.head.extra_config()}
        config = CheckpointConfig(backbone=self._spec_for(directory).to_dict(), head=head,
                                  input_size=list(self.input_size),
                                  classes=list(self.classes), dataset=self.dataset,
                                  backbone_weights_included=not self.backbone_spec.rebuildable)
        if self.checkpoint_config is not None:
            previous = self.checkpoint_config
            config.metrics, config.training = dict(previous.metrics), previous.training
            config.threat_model = previous.threat_model
        return config

    def _spec_for(self, directory: str | Path | None) -> BackboneSpec:
        """The backbone spec as a checkpoint saved to ``directory`` writes it: a backbone checkpoint named by a local
        path named relative to ``directory`` (a shipped one by its name)."""
        spec = self.backbone_spec
        if directory is None or spec.source != REFERENCE_SOURCE or self.backbone_directory is None:
            return spec
        if Path(directory).expanduser().resolve() == self.backbone_directory:
            raise CheckpointError(f"{directory}: stores the backbone this model names; saving this model there would "
                                  "replace those weights: save it to another directory")
        if is_portable(str(spec.name)):
            return spec
        return BackboneSpec(REFERENCE_SOURCE, reference_name(self.backbone_directory, directory), dict(spec.options))

    def reference_backbone(self, checkpoint: str | Path, *, relative_to: str | Path = ".") -> "HPMClassifier":
        """Save this model naming the checkpoint that stores its backbone, instead of storing the backbone again
        (:mod:`hpm.sources.reference`). ``checkpoint``: a shipped checkpoint's name, a Hub id or a directory;
        ``relative_to``: the directory this model will be saved to (a directory is named relative to it; saved
        elsewhere, :meth:`save_pretrained` names it relative to that directory instead).

        Raises:
            CheckpointError: that checkpoint does not store its backbone, stores other weights than this model's
                backbone, or is ``relative_to`` itself (saving there would replace the weights it names).
        """
        name = reference_name(checkpoint, relative_to)
        directory = resolve_reference(str(checkpoint))
        if directory.resolve() == Path(relative_to).expanduser().resolve():
            raise CheckpointError(f"{checkpoint}: this model would be saved over the checkpoint that stores its "
                                  "backbone, replacing those weights; save it to another directory")
        backbone_config(directory)
        theirs = features_digest(read_weights(directory))
        ours = features_digest({f"features.{k}": v for k, v in self.features.state_dict().items()})
        if theirs != ours:
            raise CheckpointError(f"{checkpoint}: stores other backbone weights than this model's; reference the "
                                  "checkpoint this model's backbone was loaded from")
        self.backbone_spec = BackboneSpec(REFERENCE_SOURCE, name, {"features_sha256": ours})
        self.backbone_directory = directory.resolve()
        return self

    def save_pretrained(self, directory: str | Path, *, metrics: dict | None = None,
                        training: dict | None = None, threat_model: dict | None = None) -> Path:
        """Write ``config.json``, ``model.safetensors`` and a model card ``README.md`` to ``directory``.

        ``metrics``, ``training`` and ``threat_model`` replace those of the checkpoint the model was loaded
        from (kept when omitted). Existing files of the same names are replaced.
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        config = self.to_config(out)
        config.metrics = dict(metrics) if metrics is not None else config.metrics
        config.training = training if training is not None else config.training
        config.threat_model = threat_model if threat_model is not None else config.threat_model
        state = {k: v for k, v in self.state_dict().items()
                 if config.backbone_weights_included or not k.startswith("features.")}
        write_weights(out, state)
        write_config(out, config, model_card(config))
        self.checkpoint_config = config
        return out

    def push_to_hub(self, repo_id: str, *, private: bool = False, token: str | None = None,
                    commit_message: str = "Upload HPM checkpoint", backbone_repo: str | None = None,
                    **save_kwargs) -> str:
        """Save to a temporary directory and upload it to the Hugging Face Hub; returns the commit URL.

        A model that names its backbone's checkpoint by a local path must name a Hub copy of it there:
        ``backbone_repo="owner/name@REVISION"`` (pushed first; its weights are checked by digest when loaded).
        """
        spec = self.backbone_spec
        if backbone_repo is None and names_local_backbone(spec):
            raise HPMError(f"this model names its backbone checkpoint by the local path {spec.name!r}, which Hub "
                           "users cannot load: push that checkpoint first and pass backbone_repo='owner/name@REVISION'"
                           " (hpm push --backbone-repo)")
        if backbone_repo is not None and spec.source != REFERENCE_SOURCE:
            raise HPMError("backbone_repo applies to a model that names its backbone's checkpoint; this one does not")

        def write(directory: Path) -> None:
            if backbone_repo is not None:
                self.backbone_spec = BackboneSpec(REFERENCE_SOURCE, backbone_repo, dict(spec.options))
            try:
                self.save_pretrained(directory, **save_kwargs)
            finally:
                self.backbone_spec = spec

        return push_folder(write, repo_id, private=private, token=token, commit_message=commit_message)


def wrap(model_or_name: nn.Module | str, head: str = "hpm", *, input_size: tuple[int, int, int] | None = None,
         classes: list[str] | None = None, dataset: str | None = None, source_options: dict | None = None,
         **head_kwargs) -> HPMClassifier:
    """Wrap a trained classifier with a head in one call.

    Args:
        model_or_name: an ``nn.Module`` whose forward ends in ``nn.Linear`` (a deep copy is wrapped, so the
            caller's module is left as it was; this holds the weights twice while both exist), or a source
            string: ``"pyautoattack"`` (the CIFAR-10 ResNet-18
            inside pyautoattack), ``"robustbench:NAME"``, ``"timm:NAME"``, ``"torchvision:NAME"``.
        head: ``"hpm"`` (default), ``"ncm"``, ``"cosine"`` or ``"fc"``.
        input_size: ``(C, H, W)``; defaults to the source's, or CIFAR's 3x32x32 for modules.
        classes: class names (default: the dataset's, else ``"0".."k-1"``).
        dataset: ``cifar10``, ``cifar100`` or ``imagenet`` (default: from the source, if it says).
        source_options: keywords of the source, e.g. ``{"model_dir": "./models", "dataset": "cifar10",
            "threat_model": "Linf"}`` for RobustBench, ``{"pretrained": False}`` for timm.
        **head_kwargs: head options, e.g. ``momentum=0.98``.

    Returns:
        An :class:`HPMClassifier` in eval mode. Prototype heads start with zero prototypes: fit them with
        :func:`hpm.train.fit_prototypes` or fine-tune with :mod:`hpm.train`.
    """
    from .data import dataset_classes

    named = dataset  # the caller's word, checked against the model's classes below
    if isinstance(model_or_name, str):
        spec = parse_source(model_or_name)
        spec.options.update(with_absolute_paths(source_options or {}))
        split: SplitModel = load_backbone(spec, input_size=input_size)
        dataset = dataset or spec.options.get("dataset") or DATASET_OF_SOURCE.get(spec.source, "cifar10")
    elif isinstance(model_or_name, nn.Module):
        size = tuple(input_size or (3, 32, 32))
        spec = BackboneSpec("module", None, {"input_size": list(size), "class": type(model_or_name).__name__})
        split = load_backbone(spec, module=model_or_name, input_size=size)  # type: ignore[arg-type]
    else:
        raise TypeError(f"model_or_name must be an nn.Module or a source string; got {type(model_or_name).__name__}")
    k = split.fc.out_features
    if named is not None and (names := dataset_classes(named)) is not None and len(names) != k:
        raise HPMError(f"the model scores {k} classes, but {named} has {len(names)}: give the dataset it was "
                       "trained on")
    if classes is not None and len(classes) != k:
        raise HPMError(f"classes gives {len(classes)} names, but the model scores {k} classes")
    if classes is None and dataset is not None:
        names = dataset_classes(dataset)
        classes = names if names is not None and len(names) == k else None
    head_module = create_head(head, split.fc.in_features, k, **head_kwargs)
    model = HPMClassifier(split.features, split.fc, head_module, backbone_spec=split.spec,
                          input_size=split.input_size, classes=classes, dataset=dataset)
    return model.eval()


def load(path_or_repo_id: str | Path, *, backbone: nn.Module | None = None, device: torch.device | str | None = None,
         revision: str | None = None, token: str | None = None) -> HPMClassifier | MixedClassifier:
    """Load an HPM checkpoint from a local directory or a Hub repo id.

    Args:
        path_or_repo_id: a directory written by ``save_pretrained``, a shipped checkpoint's name,
            ``"owner/name"`` on the Hub, or ``"file.py:factory"`` / ``"package.module:factory"`` (the model the
            factory returns, as it returns it).
        backbone: the architecture for checkpoints whose backbone is an arbitrary module (its weights
            come from the checkpoint; the module passed is not modified).
        device: where to put the model (default CPU).
        revision: a Hub branch, tag or commit.

    Returns:
        An :class:`HPMClassifier`, or a :class:`hpm.mixed.MixedClassifier` for a mixed checkpoint.

    Raises:
        CheckpointError: missing files, invalid JSON, wrong keys or shapes, non-safetensors weights.
        OfflineError: a Hub id while the Hub is unreachable (fails within seconds).
    """
    if isinstance(path_or_repo_id, str) and not Path(path_or_repo_id).is_dir():
        kind = model_kind(path_or_repo_id)
        if kind == "factory":
            return load_factory(path_or_repo_id)
        if kind == "source":
            raise HPMError(f"{path_or_repo_id} is a model source, not a checkpoint: hpm.wrap({path_or_repo_id!r}, "
                           "head=...) wraps it")
    directory = resolve_checkpoint(path_or_repo_id, revision=revision, token=token)
    config = read_config(directory)
    state = read_weights(directory)
    if isinstance(config, MixedCheckpointConfig):
        model: HPMClassifier | MixedClassifier = _build_mixed(config, state, directory)
    else:
        model = _build(config, state, directory, backbone)
    return model.to(device or CPU).eval()


def _build(config: CheckpointConfig, state: dict[str, Tensor], directory: Path, backbone: nn.Module | None = None,
           part: str = "") -> HPMClassifier:
    """The :class:`HPMClassifier` a checkpoint config describes, with the weights ``state`` (strictly)."""
    where = directory / (WEIGHTS_NAME + part)
    spec = BackboneSpec.from_dict(config.backbone)
    input_size = tuple(config.input_size)
    try:
        split = load_backbone(spec, module=backbone, input_size=input_size,  # type: ignore[arg-type]
                              base_dir=directory)
        head = create_head(config.head["type"], int(config.head["num_features"]), int(config.head["num_classes"]),
                           **config.head_options)
        model = HPMClassifier(split.features, split.fc, head, backbone_spec=spec, input_size=input_size,  # type: ignore[arg-type]
                              classes=config.classes, dataset=config.dataset)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{directory / CONFIG_NAME}{part}: {e}") from None
    expected = {k for k in model.state_dict() if config.backbone_weights_included or not k.startswith("features.")}
    load_strict(model, state, expected, where)
    model.checkpoint_config = config
    if spec.source == REFERENCE_SOURCE and backbone is None and not is_repo_id(split_revision(str(spec.name))[0]):
        model.backbone_directory = resolve_reference(str(spec.name), directory).resolve()  # a local folder
    return model


def _build_mixed(config: MixedCheckpointConfig, state: dict[str, Tensor], directory: Path) -> MixedClassifier:
    """A mixed checkpoint's two classifiers (weights under ``standard.`` and ``robust.``), its mixing network if
    adaptive (``mixer.``), and their mixture."""
    prefixes = ("standard.", "robust.") + (("mixer.",) if config.mixer is not None else ())
    stray = sorted(k for k in state if not k.startswith(prefixes))
    if stray:
        raise CheckpointError(f"{directory / WEIGHTS_NAME}: weights of no part of the mixture: {stray[:8]}")

    def part(name: str) -> dict[str, Tensor]:
        return {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}

    branches = {name: _build(getattr(config, name), part(name), directory, part=f" [{name}]")
                for name in ("standard", "robust")}
    try:
        check_branches_agree(branches["standard"], branches["robust"])
    except HPMError as e:
        raise CheckpointError(f"{directory / CONFIG_NAME}: {e}") from None
    mixer = None
    if config.mixer is not None:
        try:
            mixer = MixingNetwork(**config.mixer)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{directory / CONFIG_NAME}: mixer: {e}") from None
        load_strict(mixer, part("mixer"), set(mixer.state_dict()), directory / (WEIGHTS_NAME + " [mixer]"))
    try:
        if config.robust_map is not None:
            m = config.robust_map
            model = MixedNUTS(branches["standard"], branches["robust"], config.alpha,  # type: ignore[arg-type]
                              RobustLogitMap(m["scale"], m["power"], m["bias"]), names=tuple(config.names),
                              attack_alpha=m.get("attack_alpha"), selection=m.get("selection"))
        else:
            model = MixedClassifier(branches["standard"], branches["robust"], config.alpha, config.temperature,
                                    mixer=mixer, names=tuple(config.names))  # type: ignore[arg-type]
    except (HPMError, ValueError) as e:  # the mixing network's taps do not fit the branches; a bad map
        raise CheckpointError(f"{directory / CONFIG_NAME}: {'robust_map' if config.robust_map else 'mixer'}: "
                              f"{e}") from None
    model.checkpoint_config = config
    return model


def load_or_wrap(text: str, *, model_dir: str = "./models", dataset: str | None = None) -> nn.Module:
    """Any model by name, as every command takes it (:func:`model_kind`): a checkpoint (directory, shipped name or
    Hub id: :func:`load`), a source string (:func:`wrap` with its own FC head), ``file.py:factory`` or
    ``package.module:factory`` (the model the factory returns), or
    ``mixed(standard=MODEL,robust=MODEL,alpha=A[,T=T])``: Bai et al.'s mixed classifier of two such models
    (:class:`hpm.mixed.MixedClassifier`).

    ``model_dir`` and ``dataset`` are RobustBench's weight directory and dataset for ``robustbench:NAME``.
    """
    if text.startswith("mixed(") and text.endswith(")"):
        return _mixed(text, model_dir=model_dir, dataset=dataset)
    kind = model_kind(text)
    if kind == "factory":
        return load_factory(text)
    if kind == "source":
        return wrap(text, head="fc", source_options=source_options(text, model_dir, dataset))
    return load(text)


def load_classifier(text: str, *, dataset: str | None = None, **where) -> HPMClassifier | MixedClassifier:
    """:func:`load_or_wrap` for commands that look inside the model (predict, attack, analyze, train): hpm's models
    as they are, any other classifier wrapped with its own FC head (:func:`wrap`, told ``dataset``; it must end in
    ``nn.Linear``)."""
    model = load_or_wrap(text, **where)
    if isinstance(model, (HPMClassifier, MixedClassifier)):
        return model
    if not isinstance(model, nn.Module):
        raise HPMError(f"{text} gave a {type(model).__name__}; this command needs an nn.Module classifier "
                       "(hpm eval takes any callable)")
    try:
        return wrap(model, head="fc", input_size=getattr(model, "input_size", None), dataset=dataset)
    except Exception as e:  # the caller's module: say what this command needs
        raise HPMError(f"{text}: this command reads the classifier's features and final nn.Linear, found by one "
                       f"forward pass on an image of its input_size (default 3x32x32; set model.input_size = "
                       f"(C, H, W) in the factory for another), and this failed ({type(e).__name__}: {e}); hpm eval "
                       "evaluates any model as it is") from None


def model_kind(text: str) -> str:
    """What a model name is: ``"checkpoint"`` (a directory, a shipped checkpoint's name, a Hub id
    ``owner/name[@revision]``), ``"source"`` (``pyautoattack``, ``robustbench:NAME``, ``timm:NAME``,
    ``torchvision:NAME``) or ``"factory"`` (``file.py:NAME``, ``package.module:NAME``).

    Raises:
        HPMError: none of these, with the shipped names closest to ``text``.
    """
    if Path(text).expanduser().is_dir() or text.removeprefix("checkpoints/") in shipped_checkpoints():
        return "checkpoint"
    prefix, colon, name = text.partition(":")
    if text == "pyautoattack" or (colon and prefix in LOADERS and name):
        return "source"
    if is_factory(text):
        return "factory"
    if text.endswith(".py") and Path(text).is_file():
        names = callables_in(text)
        raise HPMError(f"{text}: name the factory in the file, {text}:NAME" + (f"; it defines {', '.join(names)}"
                                                                               if names else ""))
    if is_repo_id(split_revision(text)[0]) or ("/" in text and ":" not in text):
        return "checkpoint"  # a Hub id, or a path whose error load() words
    raise HPMError(f"unknown model {text!r}{closest_shipped(text)}; a model is a checkpoint directory, a shipped "
                   f"checkpoint's name, a Hub id owner/name, pyautoattack, robustbench:NAME, timm:NAME, "
                   f"torchvision:NAME, file.py:FACTORY or package.module:FACTORY")


def _mixed(text: str, **where) -> MixedClassifier:
    """``mixed(standard=MODEL,robust=MODEL,alpha=A[,T=T])`` -> the mixed classifier of the two models."""
    fields = dict(part.partition("=")[::2] for part in text.removeprefix("mixed(").removesuffix(")").split(","))
    unknown, missing = set(fields) - {"standard", "robust", "alpha", "T"}, {"standard", "robust", "alpha"} - set(fields)
    if unknown or missing:
        raise HPMError(f"{text}: give mixed(standard=MODEL,robust=MODEL,alpha=A[,T=T])"
                       + (f"; unknown {', '.join(sorted(unknown))}" if unknown else "")
                       + (f"; missing {', '.join(sorted(missing))}" if missing else ""))
    try:
        alpha, temperature = float(fields["alpha"]), float(fields.get("T", 1.0))
    except ValueError:
        raise HPMError(f"{text}: alpha and T must be numbers") from None
    if not (0 <= alpha <= 1 and temperature > 0):  # before loading either network
        raise HPMError(f"{text}: alpha must be in [0, 1] and T > 0")
    standard, robust = (load_or_wrap(fields[k], **where).eval() for k in ("standard", "robust"))
    return MixedClassifier(standard, robust, alpha, temperature, names=(fields["standard"], fields["robust"]))


def source_options(text: str, model_dir: str = "./models", dataset: str | None = None) -> dict:
    """Keywords of a source string: RobustBench's weight directory and dataset (nothing for other sources)."""
    if not text.startswith("robustbench:"):
        return {}
    return {"model_dir": model_dir, **({"dataset": dataset} if dataset else {})}

