"""Images and labels checked where they enter an evaluation, with errors that name the fix.

The most common mistakes give plausible numbers, not errors: pixels in [0, 255] (every image saturates, clean
accuracy collapses to chance or below and every check passes), pixels divided by 255 twice (every image near
black) and normalised images (mean/std applied twice). So they are refused before anything runs, as are tensors
of the wrong dtype or shape.
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from ..defence import Defence, modules_closed_over
from ..errors import HPMError

TOLERANCE = 1e-6  # float rounding around [0, 1]


def num_classes_of(model) -> int | None:
    """The number of classes a model declares (``num_classes``), if any."""
    value = getattr(model, "num_classes", None)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def check_images(x, input_size: tuple[int, ...] | None = None, *, name: str = "x") -> None:
    """Raise :class:`HPMError` unless ``x`` is a float32 tensor ``[N, C, H, W]`` (``input_size`` = ``(C, H, W)``
    when known) of finite values in [0, 1]."""
    if not isinstance(x, Tensor):
        raise HPMError(f"{name} must be a torch.Tensor of images [N, C, H, W] in [0, 1]; got {type(x).__name__} "
                       f"(convert with torch.as_tensor({name}))")
    if x.dtype == torch.uint8:
        raise HPMError(f"{name} is uint8 (pixels 0-255); hpm takes float images in [0, 1]: convert with "
                       f"{name}.float() / 255")
    if not x.is_floating_point():
        raise HPMError(f"{name} has dtype {x.dtype}; hpm takes float images in [0, 1]: convert with "
                       f"{name}.float() (and divide by 255 if its pixels are 0-255)")
    if x.dtype != torch.float32:
        raise HPMError(f"{name} has dtype {x.dtype}; hpm evaluates float32 images (attacks step and clamp them in "
                       f"float32; a model in another precision casts them inside its forward and returns float32 "
                       f"scores): convert with {name}.float()")
    if x.ndim != 4:
        hint = f" (one image: {name}[None])" if x.ndim == 3 else ""
        raise HPMError(f"{name} must be a batch of images [N, C, H, W]; got shape {tuple(x.shape)}{hint}")
    if len(x) == 0:
        raise HPMError(f"{name} holds no images")
    if input_size is None and x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
        raise HPMError(f"{name} has images of shape {tuple(x.shape[1:])}: channels last? hpm takes [N, C, H, W]: "
                       f"permute with {name}.permute(0, 3, 1, 2)")
    if input_size is not None and tuple(x.shape[1:]) != tuple(input_size):
        raise HPMError(f"{name} has images of shape {tuple(x.shape[1:])}, but the model takes "
                       f"{tuple(input_size)} (C, H, W){_shape_hint(tuple(x.shape[1:]), tuple(input_size), name)}")
    if not bool(torch.isfinite(x).all()):
        raise HPMError(f"{name} holds NaN or infinite values")
    low, high = float(x.min()), float(x.max())
    if 2 < high <= 255 and low >= 0:
        raise HPMError(f"{name} has values up to {high:g}: pixels look like 0-255; hpm takes images in [0, 1]: "
                       f"divide by 255 ({name} / 255), and if the model expects 0-255 pixels, multiply by 255 inside "
                       "its forward")
    if 0 < high <= 1 / 255 + TOLERANCE and low >= 0:
        raise HPMError(f"{name} has values up to {high:g} (1/255 at most): pixels look divided by 255 twice; hpm "
                       f"takes images in [0, 1]: divide 0-255 pixels by 255 once")
    if 1 + TOLERANCE < high <= 2 and low >= -TOLERANCE:
        raise HPMError(f"{name} has values up to {high:g}, slightly above 1 (a resize overshooting?); hpm takes "
                       f"images in [0, 1]: clamp them ({name}.clamp(0, 1))")
    if low < -TOLERANCE or high > 1 + TOLERANCE:
        raise HPMError(f"{name} has values in [{low:.3g}, {high:.3g}]; hpm takes images in [0, 1], with any "
                       "normalisation (mean/std) inside the model: pass the images before normalising them, and put "
                       "the normalisation in the model's forward (e.g. torch.nn.Sequential(torchvision.transforms."
                       "Normalize(mean, std), model))")


def _shape_hint(got: tuple, want: tuple, name: str) -> str:
    """How to turn images of shape ``got`` (C, H, W) into ``want``, as far as a shape tells."""
    if got[-1] == want[0] and got[:2] == want[1:]:
        return f": channels last? permute with {name}.permute(0, 3, 1, 2)"
    fixes = []
    if got[0] == 1 and want[0] == 3:
        fixes.append(f"greyscale images? repeat the channel with {name}.expand(-1, 3, -1, -1)")
    if got[1:] != want[1:]:
        fixes.append(f"resize with torch.nn.functional.interpolate({name}, size={tuple(want[1:])}, "
                     "mode='bilinear', antialias=True), or use a model for this image size")
    return (": " + "; then ".join(fixes)) if fixes else ""


def check_labels(y, n: int, num_classes: int | None = None, *, name: str = "y") -> None:
    """Raise :class:`HPMError` unless ``y`` is an integer tensor ``[n]`` of labels in ``[0, num_classes)``."""
    if not isinstance(y, Tensor):
        raise HPMError(f"{name} must be a torch.Tensor of integer labels; got {type(y).__name__} "
                       f"(convert with torch.as_tensor({name}))")
    if y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
        raise HPMError(f"{name} must hold integer class labels; got dtype {y.dtype} (one-hot? use "
                       f"{name}.argmax(1); else {name}.long())")
    if y.ndim != 1 or len(y) != n:
        raise HPMError(f"{name} must be labels [{n}], one per image; got shape {tuple(y.shape)}")
    if n and (int(y.min()) < 0 or (num_classes is not None and int(y.max()) >= num_classes)):
        bound = f"[0, {num_classes - 1}]" if num_classes is not None else ">= 0"
        raise HPMError(f"{name} holds labels in [{int(y.min())}, {int(y.max())}]; the model's are {bound}")


def check_inputs(x, y, *, input_size: tuple[int, ...] | None = None, num_classes: int | None = None) -> None:
    """:func:`check_images` and :func:`check_labels` on an evaluation's inputs."""
    check_images(x, input_size)
    check_labels(y, len(x), num_classes)


def check_heads_fitted(model) -> None:
    """Raise :class:`HPMError` when a prototype head inside ``model`` was never fitted (all its class prototypes
    equal, as a new head's zeros are): it scores every image alike, and its chance-level accuracy would be
    reported as if measured."""
    for name, module in model.named_modules() if isinstance(model, nn.Module) else ():
        prototypes = getattr(module, "prototypes", None)
        if getattr(module, "has_prototypes", False) and isinstance(prototypes, Tensor) and len(prototypes) > 1 \
                and not bool((prototypes != prototypes[:1]).any()):
            raise HPMError(f"{name or 'the model'}: its {len(prototypes)} class prototypes were never fitted (all "
                           "equal); fit them on training images first (hpm train MODEL --mode fit, or "
                           "hpm.train.fit_prototypes(model, *hpm.train.extract_features(model, train_set))), or "
                           "load a trained checkpoint")


MODE_DEPENDENT = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
MODE_DEPENDENT_NAMES = ("DropPath", "DropBlock")  # timm's stochastic depth and DropBlock, by class name


def _mode_dependent(module: nn.Module) -> bool:
    if isinstance(module, MODE_DEPENDENT):
        return getattr(module, "track_running_stats", True)  # a norm without running statistics: alike in both
    return any(name in type(module).__name__ for name in MODE_DEPENDENT_NAMES)


def warn_if_training(model) -> None:
    """Warn when ``model`` holds BatchNorm, dropout, DropPath or DropBlock layers in training mode: hpm evaluates a
    copy in eval mode (running statistics, no dropout), which is not how such a model was passed; and, louder, when
    a plain function inside it closes over such a module, which hpm can neither copy nor switch (its statistics
    would change as it is attacked). A forward that reads ``self.training`` itself is not seen."""
    modules = list(model.modules()) if isinstance(model, nn.Module) else []
    training = _training_layers(modules)
    if training:
        warnings.warn(f"the model's {', '.join(training)} layers are in training mode; hpm evaluates it in eval mode "
                      "(running statistics, no dropout): call .eval() to silence this, or, for a defence that "
                      "normalises with the test batch, do so in its forward and declare batch_dependent=True",
                      stacklevel=5)  # the caller of hpm.evaluate_model (through check_evaluation_inputs)
    hidden = [m for module in (modules_closed_over(model) if modules else []) for m in module.modules()]
    if _training_layers(hidden):
        warnings.warn(f"the model is a function that calls a module whose {', '.join(_training_layers(hidden))} "
                      "layers are in training mode: hpm can neither copy a function nor switch what it calls to "
                      "eval mode, so that module is attacked in training mode and its running statistics change; "
                      "call .eval() on it, or pass the module itself", stacklevel=5)


def _training_layers(modules: list[nn.Module]) -> list[str]:
    """The kinds of mode-dependent layers among ``modules`` that are in training mode."""
    return sorted({type(m).__name__ for m in modules if m.training and _mode_dependent(m)})


def check_evaluation_inputs(model, x: Tensor, y: Tensor) -> None:
    """Everything an evaluation checks of its inputs before it attacks: the images and labels
    (:func:`check_inputs`), the prototype heads fitted (:func:`check_heads_fitted`), mode-dependent layers left in
    training mode (:func:`warn_if_training`), and a :class:`~hpm.Defence`'s deployed forward probed on the
    evaluation's own first images (whether attacks can differentiate it).

    Raises:
        HPMError: naming the fix.
    """
    check_inputs(x, y, input_size=getattr(model, "input_size", None), num_classes=num_classes_of(model))
    check_heads_fitted(model)
    warn_if_training(model)
    if isinstance(model, Defence):
        model.probe(x[:2])
