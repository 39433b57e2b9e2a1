"""The sample set shipped with hpm: lossless CIFAR-10 test images and a few ImageNet samples, no data root needed.

A hosted Space or a pip install has no data root; the app then takes its gallery, its context batch and the test
features of Fig. 3 from this set. The set is itself a small data root, read by :func:`hpm.data.load_dataset`::

    cifar10-samples/NNNN_class.png             the first CIFAR10_N official CIFAR-10 test images, lossless
    imagenet-samples/IIII_nXXXXXXXX_name.jpg   ImageNet samples copied byte for byte (IIII = class index)

It lies in ``assets/`` of a clone and in ``hpm/assets`` of an installed wheel. :func:`write_samples` regenerates it
from a full data root (``python scripts/make_assets.py DATA``); the same data root gives the same files.
"""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from .data import CIFAR10_CLASSES, ImageTensorDataset, data_root, load_dataset
from .errors import HPMError

CIFAR10_N = 300  # CIFAR-10 test images shipped: the gallery, a context batch of up to 256 and Fig. 3's features
IMAGENET_STEP = 10  # every 10th of the data root's ImageNet samples (which hold one class in 10): one class in 100
FOLDERS = {"cifar10": Path("cifar10-samples"), "imagenet": Path("imagenet-samples")}  # dataset -> its folder


def samples_root() -> Path | None:
    """Where the shipped sample set is: ``hpm/assets`` in an installed wheel, or the repository's ``assets/`` in a
    clone (or an editable install of one); None when neither exists."""
    package = Path(__file__).resolve().parent
    if (package / "assets").is_dir():
        return package / "assets"
    if (package.parent / "pyproject.toml").is_file() and (package.parent / "assets").is_dir():
        return package.parent / "assets"
    return None


def load_samples(name: str = "cifar10") -> ImageTensorDataset:
    """The shipped samples of a dataset, as :func:`hpm.data.load_dataset` returns a data root's test split.

    Args:
        name: ``cifar10`` (the first :data:`CIFAR10_N` official test images, labelled) or ``imagenet``.

    Example:
        >>> x, y = load_samples("cifar10").tensors()  # [300, 3, 32, 32] in [0, 1], labels [300]
    """
    if name not in FOLDERS:
        raise HPMError(f"no shipped samples of {name!r}; choose one of {', '.join(FOLDERS)}")
    root = samples_root()
    if root is None or not (root / FOLDERS[name]).is_dir():
        raise HPMError(f"hpm's sample set has no {FOLDERS[name].as_posix()} folder: reinstall hpm, or give a data "
                       "root (--data DIR or $HPM_DATA_DIR)")
    return load_dataset(name, "test", root)  # a local folder that exists: never a download


def write_samples(data: str | os.PathLike, out: str | os.PathLike, *, n: int = CIFAR10_N,
                  imagenet_step: int = IMAGENET_STEP) -> dict[str, int]:
    """Write the sample set from a full data root: the first ``n`` lossless CIFAR-10 test images as PNG (from
    ``cifar10/test-first1000.npz``, never the JPEG copy) and every ``imagenet_step``-th ImageNet sample. Earlier
    files in the two folders are removed first, so the result depends on the data root only.

    Returns:
        The number of files written per dataset.
    """
    from PIL import Image

    root = data_root(data)
    npz = root / "cifar10" / "test-first1000.npz" if root is not None else None
    if npz is None or not npz.is_file():
        raise HPMError(f"the sample set is cut from DATA/cifar10/test-first1000.npz (lossless); {data} has none")
    images = sorted((root / "imagenet-samples").glob("*.jpg"))[::imagenet_step]
    if not images:
        raise HPMError(f"{root / 'imagenet-samples'}: no ImageNet samples (IIII_nXXXXXXXX_name.jpg) to copy")
    test = load_dataset("cifar10", "test", root)
    if not 1 <= n <= len(test):
        raise HPMError(f"n must be between 1 and {len(test)} (the images in {npz.name}); got {n}")
    folders = {name: _emptied(Path(out) / folder) for name, folder in FOLDERS.items()}
    for i in range(n):
        label = int(test.labels[i])
        Image.fromarray(test.images[i].permute(1, 2, 0).numpy()).save(
            folders["cifar10"] / f"{i:04d}_{CIFAR10_CLASSES[label]}.png", format="PNG")
    for file in images:
        shutil.copyfile(file, folders["imagenet"] / file.name)
    return {"cifar10": n, "imagenet": len(images)}


def _emptied(folder: Path) -> Path:
    """``folder``, created, without the image files of an earlier run."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in [*folder.glob("*.png"), *folder.glob("*.jpg")]:
        old.unlink()
    return folder


def main(argv: list[str] | None = None) -> int:
    """``python scripts/make_assets.py [DATA] [--out assets]``: regenerate the shipped sample set."""
    p = argparse.ArgumentParser(description="Regenerate hpm's shipped sample set from a full data root.")
    p.add_argument("data", nargs="?", default=os.environ.get("HPM_DATA_DIR"),
                   help="the data root to cut it from (default: $HPM_DATA_DIR)")
    p.add_argument("--out", default=None, help="where to write it (default: the sample set hpm reads)")
    p.add_argument("--n", type=int, default=CIFAR10_N, help=f"CIFAR-10 test images (default {CIFAR10_N})")
    args = p.parse_args(argv)
    out = args.out or samples_root()
    if args.data is None or out is None:
        p.error("give the data root (DATA or $HPM_DATA_DIR)" if args.data is None else
                "give --out: this hpm has no sample folder to rewrite")
    try:
        counts = write_samples(args.data, out, n=args.n)
    except HPMError as e:
        p.error(str(e))
    print(f"wrote {counts['cifar10']} CIFAR-10 PNGs and {counts['imagenet']} ImageNet samples to {out}")
    return 0
