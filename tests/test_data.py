"""Datasets from a local root (never the repository), torchvision when online, fixed subsets."""
import numpy as np
import pytest
import torch

from hpm.data import Subset, cache_dir, load_dataset
from hpm.errors import HPMError, OfflineError


def test_default_cifar10_test_split_is_the_lossless_npz(tiny_data_root):
    ds = load_dataset("cifar10", "test", tiny_data_root)
    assert len(ds) == 24 and ds.source.endswith("test-first1000.npz")
    x, y = ds[3]
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1 and y == 3


def test_data_root_comes_from_the_environment_variable(tiny_data_root, monkeypatch):
    monkeypatch.setenv("HPM_DATA_DIR", str(tiny_data_root))
    assert len(load_dataset("cifar10", "test")) == 24


def test_jpeg_archive_is_extracted_once_into_the_cache(tiny_data_root):
    train = load_dataset("cifar10", "train", tiny_data_root)
    assert len(train) == 30 and train.labels.tolist() == sorted(train.labels.tolist())
    marker = cache_dir() / "cifar10-jpeg" / ".extracted"
    assert marker.exists() and not (tiny_data_root / "cifar10" / "train").exists()
    mtime = marker.stat().st_mtime_ns
    assert len(load_dataset("cifar10", "test-jpeg", tiny_data_root)) == 20
    assert marker.stat().st_mtime_ns == mtime


def test_offline_without_a_data_root_fails_fast_with_advice(monkeypatch):
    monkeypatch.setattr("hpm.network.network_available", lambda *a, **k: False)
    with pytest.raises(OfflineError, match="HPM_DATA_DIR"):
        load_dataset("cifar10", "test")


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "mnist"}, "unknown dataset"), ({"split": "val"}, "unknown split")])
def test_unknown_names_are_rejected(kwargs, message, tiny_data_root):
    with pytest.raises(HPMError, match=message):
        load_dataset(**{"name": "cifar10", "split": "test", "data": tiny_data_root, **kwargs})


def test_missing_data_root_is_reported(tmp_path):
    with pytest.raises(HPMError, match="not a directory"):
        load_dataset("cifar10", "test", tmp_path / "missing")


def test_subsets_first_uniform_and_index_file(tmp_path):
    assert Subset(n=3).indices(10).tolist() == [0, 1, 2]
    uniform = Subset(n=4, mode="uniform", seed=1).indices(100)
    assert uniform.tolist() == Subset(n=4, mode="uniform", seed=1).indices(100).tolist()
    assert uniform.tolist() != Subset(n=4, mode="uniform", seed=2).indices(100).tolist()
    (tmp_path / "idx.txt").write_text("5\n2\n9\n")
    assert Subset(index_file=str(tmp_path / "idx.txt")).indices(10).tolist() == [5, 2, 9]
    np.save(tmp_path / "idx.npy", np.array([1, 3]))
    assert Subset(index_file=str(tmp_path / "idx.npy")).indices(10).tolist() == [1, 3]


def test_an_order_seed_shuffles_the_chosen_samples_reproducibly():
    shuffled = Subset(n=20, order_seed=1).indices(100)
    assert sorted(shuffled.tolist()) == list(range(20)) and shuffled.tolist() != list(range(20))
    assert shuffled.tolist() == Subset(n=20, order_seed=1).indices(100).tolist()
    assert shuffled.tolist() != Subset(n=20, order_seed=2).indices(100).tolist()


@pytest.mark.parametrize("subset, message", [
    (Subset(n=0), "between 1 and 10"), (Subset(n=11), "between 1 and 10"), (Subset(mode="random"), "first or uniform")])
def test_bad_subsets_are_rejected(subset, message):
    with pytest.raises(HPMError, match=message):
        subset.indices(10)


@pytest.mark.parametrize("content, message", [("1\n12\n", r"\[0, 9\]"), ("1\n1\n", "duplicate"), ("a b", "index file")])
def test_bad_index_files_are_rejected(tmp_path, content, message):
    (tmp_path / "i.txt").write_text(content)
    with pytest.raises(HPMError, match=message):
        Subset(index_file=str(tmp_path / "i.txt")).indices(10)


def test_imagenet_samples_are_labelled_by_their_file_name(tmp_path):
    from PIL import Image
    folder = tmp_path / "imagenet-samples"
    folder.mkdir()
    Image.new("RGB", (224, 224)).save(folder / "0010_n01530575_brambling.jpg")
    Image.new("RGB", (300, 260)).save(folder / "0020_n01601694_water_ouzel.jpg")
    ds = load_dataset("imagenet", "test", tmp_path)
    assert ds.labels.tolist() == [10, 20] and ds.images.shape == (2, 3, 224, 224)
    assert ds.classes[10] == "brambling"


def test_the_jpeg_copy_of_an_official_test_image_is_found_by_its_class_and_its_rank_within_the_class():
    from hpm.data import jpeg_copy_index
    labels = torch.tensor([3, 8, 8, 0, 3, 8])  # the official order; the JPEG split holds 4 images per class, sorted
    assert jpeg_copy_index(labels, per_class=4).tolist() == [12, 32, 33, 0, 13, 34]
