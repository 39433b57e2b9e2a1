"""``HPMClassifier``: a backbone's features, its original FC layer and a head, with three forward modes."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import torch
from torch import Tensor, nn

from .backbones import BackboneSpec, SplitModel, load_backbone, parse_source
from .heads import Head, Mode, check_mode, create_head

if TYPE_CHECKING:
    from .hub import CheckpointConfig


class ModeView(nn.Module):
    """The classifier seen in one fixed mode: an ordinary ``images -> scores`` module for attack libraries.

    It shares every parameter and buffer with the classifier it views.
    """

    def __init__(self, model: "HPMClassifier", mode: Mode):
        super().__init__()
        self.model = model
        self.view_mode = check_mode(mode)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x, mode=self.view_mode)

    def extra_repr(self) -> str:
        return f"mode={self.view_mode!r}"


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
    ``requires_grad=False`` unless :meth:`unfreeze_backbone` is called.

    Example:
        >>> model = hpm.wrap("pyautoattack", head="hpm")
        >>> scores = model(images)                    # deployed HPM prediction
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
        self._mode: Mode = "hard"
        self._context: Tensor | None = None  # cached context features [m, d]
        self.backbone_frozen = True
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

    def train(self, mode: bool = True) -> "HPMClassifier":
        super().train(mode)
        if self.backbone_frozen:
            self.features.eval()  # BatchNorm statistics of a frozen backbone never move
        return self

    def unfreeze_backbone(self) -> None:
        """Let the backbone train too (end-to-end training; the paper freezes it)."""
        self.backbone_frozen = False
        self.features.requires_grad_(True)

    # -- context ---------------------------------------------------------------------------------
    @torch.no_grad()
    def set_context(self, images: Tensor | None = None, *, features: Tensor | None = None,
                    batch_size: int = 256) -> None:
        """Fix reference samples that join every batch-prototype computation (Eq. 16).

        Features of ``images`` are computed once and cached; FC logits of the context are recomputed
        from them at each forward (cheap), so they follow a fine-tuned FC. Pass ``features`` directly
        to skip the backbone. Only batch-dependent heads (HPM) use the context.
        """
        if (images is None) == (features is None):
            raise ValueError("pass exactly one of images= or features=")
        if images is not None:
            was = self.features.training
            self.features.eval()
            features = torch.cat([self.features(chunk) for chunk in images.split(batch_size)])
            self.features.train(was)
        assert features is not None
        if features.ndim != 2 or features.shape[1] != self.num_features:
            raise ValueError(f"context features must be [m, {self.num_features}]; got {tuple(features.shape)}")
        self._context = features.detach()

    def clear_context(self) -> None:
        self._context = None

    @property
    def context_size(self) -> int:
        return 0 if self._context is None else int(self._context.shape[0])

    # -- forward ---------------------------------------------------------------------------------
    def forward_features(self, x: Tensor) -> Tensor:
        """Backbone features ``[B, d]`` of images in [0, 1]."""
        return self.features(x)

    def forward_head(self, z: Tensor, mode: str | None = None, labels: Tensor | None = None) -> Tensor:
        """Scores ``[B, k]`` from features; ``labels`` drive EMA prototype updates in training mode."""
        fc_logits = self.fc(z)
        context = None
        if self._context is not None and self.head.batch_dependent:
            z_ctx = self._context.to(z)
            context = (z_ctx, self.fc(z_ctx))
        return self.head(z, fc_logits, mode=check_mode(mode or self._mode), labels=labels, context=context)

    def forward(self, x: Tensor, mode: str | None = None, labels: Tensor | None = None) -> Tensor:
        return self.forward_head(self.forward_features(x), mode=mode, labels=labels)

    # -- attackable views ------------------------------------------------------------------------
    def deployed(self) -> ModeView:
        """The deployed model (``hard`` mode) as its own module."""
        return ModeView(self, "hard")

    def soft_surrogate(self) -> ModeView:
        """Surrogate 2 of MSA: the soft-hybrid model (``P_soft`` in the forward pass)."""
        return ModeView(self, "soft")

    def fc_oracle(self) -> ModeView:
        """Surrogate 1 of MSA: the original FC logits."""
        return ModeView(self, "fc")

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        """FC + head parameters (the backbone too when unfrozen)."""
        return [p for p in self.parameters() if p.requires_grad]

    # -- persistence -----------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, *, metrics: dict | None = None,
                        training: dict | None = None, threat_model: dict | None = None) -> Path:
        """Write ``config.json``, ``model.safetensors`` and a model card ``README.md`` to ``directory``."""
        from .hub import save_pretrained

        return save_pretrained(self, directory, metrics=metrics, training=training, threat_model=threat_model)

    def push_to_hub(self, repo_id: str, *, private: bool = False, token: str | None = None,
                    commit_message: str = "Upload HPM checkpoint", **save_kwargs) -> str:
        """Save to a temporary directory and upload it to the Hugging Face Hub; returns the commit URL."""
        from .hub import push_to_hub

        return push_to_hub(self, repo_id, private=private, token=token, commit_message=commit_message,
                           **save_kwargs)

    @property
    def config(self) -> "CheckpointConfig":
        """The checkpoint configuration this model would be saved with (without metrics)."""
        from .hub import config_of

        return config_of(self)


def wrap(model_or_name: nn.Module | str, head: str = "hpm", *, input_size: tuple[int, int, int] | None = None,
         classes: list[str] | None = None, dataset: str | None = None, source_options: dict | None = None,
         **head_kwargs) -> HPMClassifier:
    """Wrap a trained classifier with a head in one call.

    Args:
        model_or_name: an ``nn.Module`` whose forward ends in ``nn.Linear`` (modified in place: its final
            layer becomes ``nn.Identity``), or a source string: ``"pyautoattack"`` (the CIFAR-10 ResNet-18
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

    if isinstance(model_or_name, str):
        spec = parse_source(model_or_name)
        spec.options.update(source_options or {})
        split: SplitModel = load_backbone(spec, input_size=input_size)
        if spec.source == "pyautoattack":
            dataset = dataset or "cifar10"
        elif spec.source == "robustbench":
            dataset = dataset or spec.options.get("dataset", "cifar10")
        elif spec.source in ("timm", "torchvision"):
            dataset = dataset or "imagenet"
    elif isinstance(model_or_name, nn.Module):
        size = tuple(input_size or (3, 32, 32))
        spec = BackboneSpec("module", None, {"input_size": list(size), "class": type(model_or_name).__name__})
        split = load_backbone(spec, module=model_or_name, input_size=size)  # type: ignore[arg-type]
    else:
        raise TypeError(f"model_or_name must be an nn.Module or a source string; got {type(model_or_name).__name__}")
    k = split.fc.out_features
    if classes is None and dataset is not None:
        names = dataset_classes(dataset)
        classes = names if names is not None and len(names) == k else None
    head_module = create_head(head, split.fc.in_features, k, **head_kwargs)
    model = HPMClassifier(split.features, split.fc, head_module, backbone_spec=split.spec,
                          input_size=split.input_size, classes=classes, dataset=dataset)
    return model.eval()
