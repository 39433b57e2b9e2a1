"""What several commands share: argument types, the data/device/model arguments, and resolving them."""
from __future__ import annotations

import argparse

from ..errors import HPMError
from ..units import parse_eps

DATASETS = ("cifar10", "cifar100", "imagenet")
HEAD_TYPES = ("fc", "ncm", "cosine", "hpm")  # hpm.heads.HEADS that fit any backbone, named here so that --help
# needs no torch (tested)


def eps_arg(text: str) -> float:
    """``--eps`` values: ``8/255``, ``0.25/255`` or ``0.031``."""
    try:
        return parse_eps(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0: {text!r}")
    return value


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="DIR", help="local data root (default: $HPM_DATA_DIR; else torchvision download)")
    p.add_argument("--dataset", default=None, choices=DATASETS, help="dataset (default: the model's)")


def add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cuda if available)")


MODEL_HELP = ("a shipped checkpoint's name, a checkpoint directory, a Hub repo id owner/name, a model source "
              "(pyautoattack, robustbench:NAME, timm:NAME, torchvision:NAME), or your own model: file.py:FACTORY or "
              "package.module:FACTORY (FACTORY returns the model)")


def add_model_arg(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    """The MODEL positional and where RobustBench weights live."""
    p.add_argument("model", nargs=None if required else "?", help=MODEL_HELP)
    p.add_argument("--model-dir", default="./models", help="robustbench: where zoo weights live")


def resolve_device(name: str | None):
    """``--device`` as a ``torch.device``; default CUDA when available."""
    import torch

    from ..devices import best_available, require

    if name is None:
        return best_available()
    try:
        device = torch.device(name)
    except RuntimeError:
        raise HPMError(f"--device: unknown device {name!r}") from None
    return require(device)


def dataset_of(args: argparse.Namespace, model=None) -> str:
    """``--dataset``, else the model's dataset, else CIFAR-10."""
    return args.dataset or getattr(model, "dataset", None) or "cifar10"


def uniform_subset(dataset, n: int, seed: int):
    """A fixed uniform random subset of ``n`` images of an :class:`hpm.data.ImageTensorDataset`."""
    from ..data import ImageTensorDataset, Subset

    idx = Subset(n=min(n, len(dataset)), mode="uniform", seed=seed).indices(len(dataset))
    return ImageTensorDataset(dataset.images[idx], dataset.labels[idx], dataset.classes,
                              f"{dataset.source}[uniform {len(idx)}, seed {seed}]")


def clean_metrics(model, test_set, n_test: int | None, batch_size: int, device, modes: dict[str, str]) -> dict:
    """Clean accuracy on the first ``n_test`` test images per mode (``{metric name: mode}``), printed and
    returned as ``config.json`` metric entries."""
    import torch

    from ..evaluation import clean_accuracy

    n = min(n_test or len(test_set), len(test_set))
    x, y = test_set.tensors(torch.arange(n))
    metrics = {}
    for label, mode in modes.items():
        acc = clean_accuracy(model, x, y, batch_size=batch_size, mode=mode, device=device)
        metrics[label] = {"value": acc, "protocol": "clean", "split": test_set.source, "n": n,
                          "batch_size": batch_size, "mode": mode}
        print(f"{label} ({mode}, {n} images, batch {batch_size}): {100 * acc:.2f}%")
    return metrics
