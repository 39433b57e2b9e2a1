"""Datasets: CIFAR-10/100 and ImageNet from a local data root, or through torchvision when online.

The local data root (``--data DIR`` or the ``HPM_DATA_DIR`` environment variable) is laid out as::

    cifar10/test-first1000.npz     lossless first 1000 official test images (x uint8 [N,3,32,32], y uint8)
    cifar10-samples/NNNN_class.png lossless PNGs of the first N official test images (NNNN = test index)
    cifar10/cifar10-jpeg.tar.gz    all of CIFAR-10 as JPEG: train/<class>/NNNN.jpg, test/<class>/NNNN.jpg
    cifar100/cifar-100-python/     torchvision's CIFAR-100 files (optional)
    imagenet-samples/IIII_nXXXXXXXX_name.jpg   ImageNet validation samples, IIII = class index
    imagenet/                      torchvision.datasets.ImageNet layout (optional)

With ``cifar10/test-first1000.npz`` present, CIFAR-10's default ``test`` split is that lossless subset in
official order (what RobustBench's ``n_examples=1000`` evaluates); else ``cifar10-samples/`` (as in the sample set
shipped with hpm, :mod:`hpm.samples`). Archives are extracted once into the cache directory (``HPM_CACHE_DIR``,
default ``~/.cache/hpm``), never into the repository.
"""
from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .errors import HPMError, OfflineError

DATA_ENV = "HPM_DATA_DIR"
CACHE_ENV = "HPM_CACHE_DIR"
DATASETS = ("cifar10", "cifar100", "imagenet")
SPLITS = ("train", "test", "test-jpeg")

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100_CLASSES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
    "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin "
    "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster "
    "man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck "
    "pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
    "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger "
    "tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm").split()


def dataset_classes(name: str) -> list[str] | None:
    """Class names of a known dataset in label order, or None."""
    if name == "cifar10":
        return list(CIFAR10_CLASSES)
    if name == "cifar100":
        return list(CIFAR100_CLASSES)
    if name == "imagenet":
        from torchvision.models import ResNet50_Weights

        return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    return None


def data_root(data: str | os.PathLike | None = None) -> Path | None:
    """The local data root: ``data`` if given, else ``$HPM_DATA_DIR``, else None. Must exist if named."""
    chosen = data if data is not None else os.environ.get(DATA_ENV)
    if not chosen:
        return None
    root = Path(chosen).expanduser()
    if not root.is_dir():
        source = "--data" if data is not None else f"${DATA_ENV}"
        raise HPMError(f"data root {root} (from {source}) is not a directory")
    return root


def cache_dir() -> Path:
    """Where archives are extracted and downloads kept (``$HPM_CACHE_DIR``, default ``~/.cache/hpm``)."""
    path = Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "hpm")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


class ImageTensorDataset(Dataset):
    """Images held as uint8 ``[N, C, H, W]``; items are ``(float image in [0, 1], int label)``."""

    def __init__(self, images: Tensor, labels: Tensor, classes: list[str], source: str):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W]; got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels.long()
        self.classes, self.source = classes, source

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.images[i].float() / 255.0, int(self.labels[i])

    def tensors(self, indices: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """All (or the indexed) images as float ``[N, C, H, W]`` in [0, 1] and labels ``[N]``."""
        idx = slice(None) if indices is None else indices
        return self.images[idx].float() / 255.0, self.labels[idx]


def _load_npz(path: Path, classes: list[str]) -> ImageTensorDataset:
    try:
        with np.load(path, allow_pickle=False) as f:
            x, y = f["x"], f["y"]
    except (OSError, ValueError, KeyError) as e:
        raise HPMError(f"{path}: not a valid image npz with arrays x, y ({e})") from None
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1] not in (1, 3):
        raise HPMError(f"{path}: x must be uint8 [N, C, H, W]; got {x.dtype} {x.shape}")
    return ImageTensorDataset(torch.from_numpy(x.copy()), torch.from_numpy(y.astype(np.int64)), classes, str(path))


def _extract_once(archive: Path) -> Path:
    """Extract ``archive`` into the cache (once; a marker file records completion)."""
    target = cache_dir() / archive.name.replace(".tar.gz", "").replace(".tgz", "")
    marker = target / ".extracted"
    if not marker.exists():
        tmp = target.with_name(target.name + ".partial")
        with tarfile.open(archive) as tar:
            for member in tqdm(tar, desc=f"extracting {archive.name} (once)", unit="file", leave=False):
                tar.extract(member, tmp, filter="data")
        if target.exists():
            import shutil

            shutil.rmtree(target)
        tmp.rename(target)
        marker.touch()
    return target


def _image_folder_tensors(folder: Path, classes: list[str]) -> tuple[Tensor, Tensor]:
    """Decode ``folder/<class>/*.jpg`` (sorted by class order, then file name) to uint8 tensors, cached."""
    cached = folder.with_suffix(".npz")
    if cached.exists():
        with np.load(cached, allow_pickle=False) as f:
            return torch.from_numpy(f["x"]), torch.from_numpy(f["y"])
    from PIL import Image

    xs, ys = [], []
    for label, name in enumerate(tqdm(classes, desc=f"decoding {folder.name} images (once)", unit="class",
                                      leave=False)):
        files = sorted((folder / name).glob("*.jpg"))
        if not files:
            raise HPMError(f"{folder / name}: no JPEG files")
        for file in files:
            with Image.open(file) as im:
                xs.append(np.asarray(im.convert("RGB")).transpose(2, 0, 1))
            ys.append(label)
    x, y = np.stack(xs), np.asarray(ys, dtype=np.int64)
    np.savez(cached, x=x, y=y)
    return torch.from_numpy(x), torch.from_numpy(y)


def _png_folder(folder: Path, classes: list[str]) -> ImageTensorDataset:
    """``folder/NNNN_class.png``: the first N test images in order (NNNN = 0000 .. N-1), lossless."""
    from PIL import Image

    xs, ys = [], []
    for i, file in enumerate(sorted(folder.glob("*.png"))):
        index, _, name = file.stem.partition("_")
        if index != f"{i:04d}" or name not in classes:
            raise HPMError(f"{file}: expected {i:04d}_<class>.png (the first N test images in order, class one of "
                           f"{', '.join(classes)}); hpm.samples.write_samples writes such a folder")
        with Image.open(file) as im:
            xs.append(np.asarray(im.convert("RGB")).transpose(2, 0, 1))
        ys.append(classes.index(name))
    if not xs:
        raise HPMError(f"{folder}: no PNG files")
    return ImageTensorDataset(torch.from_numpy(np.stack(xs)), torch.tensor(ys), list(classes), str(folder))


def _cifar10_local(root: Path, split: str) -> ImageTensorDataset | None:
    npz, pngs = root / "cifar10" / "test-first1000.npz", root / "cifar10-samples"
    if split == "test" and npz.is_file():
        return _load_npz(npz, CIFAR10_CLASSES)
    if split == "test" and pngs.is_dir():
        return _png_folder(pngs, CIFAR10_CLASSES)
    archive = root / "cifar10" / "cifar10-jpeg.tar.gz"
    if not archive.is_file():
        return None
    folder = _extract_once(archive) / ("train" if split == "train" else "test")
    x, y = _image_folder_tensors(folder, CIFAR10_CLASSES)
    return ImageTensorDataset(x, y, CIFAR10_CLASSES, f"{archive}:{folder.name}")


def _imagenet_samples(root: Path) -> ImageTensorDataset | None:
    folder = root / "imagenet-samples"
    files = sorted(folder.glob("*.jpg")) if folder.is_dir() else []
    if not files:
        return None
    from PIL import Image

    xs, ys = [], []
    for file in files:
        try:
            ys.append(int(file.name.split("_", 1)[0]))
        except ValueError:
            raise HPMError(f"{file}: name must start with the class index, e.g. 0010_n01530575_brambling.jpg") from None
        with Image.open(file) as im:
            im = im.convert("RGB")
            if im.size != (224, 224):
                from torchvision.transforms.functional import center_crop, resize

                im = center_crop(resize(im, 256), 224)
            xs.append(np.asarray(im).transpose(2, 0, 1))
    return ImageTensorDataset(torch.from_numpy(np.stack(xs)), torch.tensor(ys), dataset_classes("imagenet") or [],
                              str(folder))


_HOSTS = {"cifar10": "www.cs.toronto.edu", "cifar100": "www.cs.toronto.edu"}


def _torchvision_download(name: str, split: str) -> ImageTensorDataset:
    import torchvision

    from . import network

    if name == "imagenet":
        raise HPMError("ImageNet is not downloaded automatically: put its validation set under DATA/imagenet "
                       "(torchvision.datasets.ImageNet layout) or samples under DATA/imagenet-samples")
    host = _HOSTS[name]
    folder = cache_dir() / "torchvision"
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    try:
        ds = cls(str(folder), train=(split == "train"), download=False)
    except RuntimeError:
        if not network.network_available(host):
            raise OfflineError(f"{name} is not in {folder} and {host} is unreachable to download it") from None
        ds = cls(str(folder), train=(split == "train"), download=True)
    x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return ImageTensorDataset(x, torch.tensor(ds.targets), list(ds.classes), f"torchvision:{folder}")


def load_dataset(name: str = "cifar10", split: str = "test", data: str | os.PathLike | None = None) -> ImageTensorDataset:
    """Load a dataset split as images in [0, 1].

    Args:
        name: ``cifar10``, ``cifar100`` or ``imagenet``.
        split: ``train``, ``test`` (CIFAR-10: the lossless first-1000 subset when the data root has it),
            or ``test-jpeg`` (CIFAR-10: the full 10,000-image JPEG test set).
        data: a local data root; defaults to ``$HPM_DATA_DIR``. Without one, torchvision downloads into
            the cache when online and fails fast with :class:`OfflineError` otherwise.
    """
    if name not in DATASETS:
        raise HPMError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise HPMError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    root = data_root(data)
    if root is not None:
        found = None
        if name == "cifar10":
            found = _cifar10_local(root, split)
        elif name == "imagenet" and split != "train":
            found = _imagenet_samples(root)
        elif name == "cifar100" and (root / "cifar100").is_dir():
            import torchvision

            ds = torchvision.datasets.CIFAR100(str(root / "cifar100"), train=(split == "train"), download=False)
            found = ImageTensorDataset(torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(),
                                       torch.tensor(ds.targets), list(ds.classes), str(root / "cifar100"))
        if found is not None:
            return found
    try:
        return _torchvision_download(name, split)
    except HPMError as e:
        where = (f"{root} has no {name} {split} data (looked for {_expected(root, name, split)})" if root is not None
                 else f"no local data root was given (--data DIR or ${DATA_ENV}; see hpm.data)")
        raise type(e)(f"{where}; {e}") from None


def jpeg_copy_index(labels: Tensor, per_class: int) -> Tensor:
    """Where each image of the official CIFAR test order (``labels``) sits in the ``test-jpeg`` split, which is
    sorted by class: class ``c``'s ``k``-th image in the official order is the archive's ``test/<c>/k``, the
    ``k``-th of its class (the archive names its files by their order within the class)."""
    seen = torch.zeros(int(labels.max()) + 1, dtype=torch.long)
    index = torch.empty(len(labels), dtype=torch.long)
    for i, c in enumerate(labels.tolist()):
        index[i] = c * per_class + seen[c]
        seen[c] += 1
    return index


def _expected(root: Path, name: str, split: str) -> str:
    """The files :func:`load_dataset` reads under a data root for ``name`` and ``split``."""
    cifar10 = root / "cifar10"
    return {"cifar10": (f"{cifar10 / 'test-first1000.npz'}, {root / 'cifar10-samples'}/*.png or "
                        if split == "test" else "")
                       + str(cifar10 / "cifar10-jpeg.tar.gz"),
            "cifar100": f"{root / 'cifar100'} (torchvision's CIFAR-100 layout)",
            "imagenet": f"{root / 'imagenet-samples'}/*.jpg"}[name]


@dataclass
class Subset:
    """How to choose evaluation samples; recorded in every report."""

    n: int | None = None  # number of samples (None: all)
    mode: str = "first"  # "first" N in dataset order, or "uniform": a fixed random N with `seed`
    seed: int = 0  # seed of the uniform subset
    index_file: str | None = None  # a text/npy file of indices; overrides n/mode
    order_seed: int | None = None  # evaluate the chosen samples in a seeded random order (None: as chosen)

    def indices(self, total: int) -> Tensor:
        """The chosen indices into a dataset of ``total`` samples, in evaluation order: as chosen (sorted for
        ``uniform``, as listed for an index file), or shuffled with ``order_seed``. The order matters to
        batch-dependent heads only: it decides which samples share an evaluation batch."""
        chosen = self._chosen(total)
        if self.order_seed is None:
            return chosen
        return chosen[torch.randperm(len(chosen), generator=torch.Generator().manual_seed(self.order_seed))]

    def _chosen(self, total: int) -> Tensor:
        if self.index_file is not None:
            return _read_index_file(Path(self.index_file), total)
        if self.mode not in ("first", "uniform"):
            raise HPMError(f"subset mode must be first or uniform; got {self.mode!r}")
        n = total if self.n is None else self.n
        if not 1 <= n <= total:
            raise HPMError(f"--n must be between 1 and {total} (the split's size); got {n}")
        if self.mode == "first":
            return torch.arange(n)
        g = torch.Generator().manual_seed(self.seed)
        return torch.randperm(total, generator=g)[:n].sort().values


def _read_index_file(path: Path, total: int) -> Tensor:
    try:
        idx = np.load(path, allow_pickle=False) if path.suffix == ".npy" else np.loadtxt(path, dtype=np.int64, ndmin=1)
    except (OSError, ValueError) as e:
        raise HPMError(f"index file {path}: {e}") from None
    idx = np.asarray(idx).reshape(-1)
    if idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
        raise HPMError(f"index file {path}: needs a non-empty list of integers")
    if idx.min() < 0 or idx.max() >= total:
        raise HPMError(f"index file {path}: indices must lie in [0, {total - 1}]")
    if len(np.unique(idx)) != len(idx):
        raise HPMError(f"index file {path}: has duplicate indices")
    return torch.from_numpy(idx.astype(np.int64))
