"""The sample set shipped with hpm (assets/): enough test images for the app without a data root, and exactly the
official ones."""
import hashlib

import numpy as np
import pytest
import torch

from hpm import interactive as demo
from hpm.data import CIFAR10_CLASSES, load_dataset
from hpm.errors import HPMError
from hpm.samples import CIFAR10_N, load_samples, samples_root, write_samples


def test_the_cifar10_samples_are_labelled_by_their_file_names_and_cover_every_class():
    ds = load_samples("cifar10")
    files = sorted((samples_root() / "cifar10-samples").glob("*.png"))
    assert len(ds) == len(files) == CIFAR10_N and ds.images.shape == (CIFAR10_N, 3, 32, 32)
    assert [f.stem for f in files] == [f"{i:04d}_{CIFAR10_CLASSES[y]}" for i, y in enumerate(ds.labels.tolist())]
    assert ds.classes == CIFAR10_CLASSES and set(ds.labels.tolist()) == set(range(10))
    x, y = ds[0]
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1 and y == 3  # the test set opens with a cat


def test_the_samples_fill_the_gallery_a_full_context_batch_and_fig3():
    assert len(load_samples("cifar10")) >= demo.CONTEXT_MAX  # the largest context batch the app offers
    assert np.bincount(load_samples("cifar10").labels.numpy()).min() >= 20  # Fig. 3 fits angles per class


def test_the_imagenet_samples_are_model_sized_and_labelled_by_class_index():
    ds = load_samples("imagenet")
    assert len(ds) == 10 and ds.images.shape == (10, 3, 224, 224)
    assert ds.labels.tolist() == list(range(0, 1000, 100)) and ds.classes[0] == "tench"


def test_the_sample_set_stays_small():
    files = [f for f in samples_root().rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) < 3 * 2**20


def test_unknown_sample_sets_are_refused_with_the_choices():
    with pytest.raises(HPMError, match="choose one of cifar10, imagenet"):
        load_samples("cifar100")


def test_a_png_folder_out_of_order_is_refused_with_the_expected_name(tmp_path):
    from PIL import Image
    folder = tmp_path / "cifar10-samples"
    folder.mkdir(parents=True)
    for name in ("0000_cat.png", "0002_ship.png"):
        Image.new("RGB", (32, 32)).save(folder / name)
    with pytest.raises(HPMError, match="expected 0001_<class>.png"):
        load_dataset("cifar10", "test", tmp_path)


@pytest.mark.data
def test_the_png_pixels_and_labels_are_bit_exact_with_the_lossless_npz():
    from conftest import shared_data_or_skip
    with np.load(shared_data_or_skip() / "cifar10" / "test-first1000.npz") as npz:
        x, y = npz["x"][:CIFAR10_N], npz["y"][:CIFAR10_N]
    ds = load_samples("cifar10")
    assert np.array_equal(ds.images.numpy(), x) and np.array_equal(ds.labels.numpy(), y.astype(np.int64))


@pytest.mark.data
def test_the_imagenet_samples_are_byte_copies_of_the_data_roots():
    from conftest import shared_data_or_skip
    source = shared_data_or_skip() / "imagenet-samples"
    for shipped in (samples_root() / "imagenet-samples").glob("*.jpg"):
        assert hashlib.sha256(shipped.read_bytes()).digest() == hashlib.sha256(
            (source / shipped.name).read_bytes()).digest()


@pytest.mark.data
def test_regenerating_from_the_data_root_gives_the_shipped_set(tmp_path):
    from conftest import shared_data_or_skip
    assert write_samples(shared_data_or_skip(), tmp_path) == {"cifar10": CIFAR10_N, "imagenet": 10}
    shipped, again = samples_root(), tmp_path
    names = {f.relative_to(shipped) for f in shipped.rglob("*.png")} | {f.relative_to(shipped)
                                                                       for f in shipped.rglob("*.jpg")}
    assert names == {f.relative_to(again) for f in again.rglob("*.*")}
    for dataset in ("cifar10", "imagenet"):  # pixels, not PNG bytes: zlib builds compress differently
        a, b = load_dataset(dataset, "test", shipped), load_dataset(dataset, "test", again)
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
