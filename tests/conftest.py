"""Shared fixtures: tiny models and data, an isolated cache, and never the network."""
from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

torch.set_num_threads(1)  # tiny models: threads cost more than they save, and CI has two cores

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


class TinyNet(nn.Module):
    """A small CNN whose forward ends in nn.Linear: conv -> pool -> MLP -> Linear(16, k)."""

    def __init__(self, num_classes: int = 10, width: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.hidden = nn.Linear(width, 16)
        self.linear = nn.Linear(16, num_classes)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x))).mean((2, 3))
        return self.linear(torch.relu(self.hidden(h)))


class TinyMLP(nn.Module):
    """Centred pixels -> Linear(3072, 16) -> ReLU -> Linear(16, k): input-sensitive, diverse predictions."""

    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.hidden = nn.Linear(3 * 32 * 32, 16)
        self.linear = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.linear(torch.relu(self.hidden((x - 0.5).flatten(1))))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own cache dir and no implicit data root; sockets to the outside are refused."""
    monkeypatch.setenv("HPM_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("HPM_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


class FakeHub:
    """What a fake, reachable Hub was asked: the repo created, the files committed (their bytes, up to 1 MB each)
    and deleted; ``remote`` lists the files it holds before, ``fail`` is raised when a repo is created."""

    def __init__(self):
        self.fail: Exception | None = None
        self.remote: list[str] = []
        self.created: tuple | None = None
        self.added: dict[str, bytes | None] = {}
        self.deleted: list[str] = []


@pytest.fixture
def fake_hub(monkeypatch) -> FakeHub:
    """``huggingface_hub.HfApi`` replaced by one that records into the returned :class:`FakeHub`."""
    hub = FakeHub()

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, repo_type="model", space_sdk=None, private=False, exist_ok=False):
            if hub.fail is not None:
                raise hub.fail
            hub.created = (repo_id, repo_type, space_sdk, private, exist_ok)

        def list_repo_files(self, repo_id, repo_type="model"):
            return list(hub.remote)

        def create_commit(self, repo_id, repo_type, operations, commit_message):
            for op in operations:
                if hasattr(op, "path_or_fileobj"):
                    path = Path(op.path_or_fileobj)
                    hub.added[op.path_in_repo] = path.read_bytes() if path.stat().st_size <= 2**20 else None
                else:
                    hub.deleted.append(op.path_in_repo)
            return type("Info", (), {"commit_url": f"https://hub/{repo_id}/commit/1"})()

    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    monkeypatch.setattr("hpm.network.network_available", lambda host, port=443, timeout=3.0: True)
    return hub


@pytest.fixture
def tiny_net():
    torch.manual_seed(0)
    return TinyNet().eval()


def _jpeg_bytes(rng: np.random.Generator, size: int = 32) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture
def tiny_data_root(tmp_path) -> Path:
    """A data root laid out like ../shared/data: an npz test split and a JPEG tar with 3 train images/class."""
    from hpm.data import CIFAR10_CLASSES

    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    (root / "cifar10").mkdir(parents=True)
    np.savez(root / "cifar10" / "test-first1000.npz",
             x=rng.integers(0, 256, (24, 3, 32, 32), dtype=np.uint8), y=np.arange(24, dtype=np.uint8) % 10)
    with tarfile.open(root / "cifar10" / "cifar10-jpeg.tar.gz", "w:gz") as tar:
        for split, per_class in (("train", 3), ("test", 2)):
            for name in CIFAR10_CLASSES:
                for i in range(per_class):
                    data = _jpeg_bytes(rng)
                    info = tarfile.TarInfo(f"{split}/{name}/{i:04d}.jpg")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return root


def shared_data_or_skip() -> Path:
    root = Path(os.environ.get("HPM_TEST_DATA", SHARED_DATA))
    if not (root / "cifar10" / "test-first1000.npz").is_file():
        pytest.skip(f"local data root {root} not present")
    return root


def tiny_resnet(seed: int):
    """A CIFAR-10 ResNet-8 of width 4 as an HPM model (FC head), its weights drawn from ``seed``."""
    from hpm.sources.zoo import build
    from hpm.train.scratch import BackboneConfig, to_hpm
    torch.manual_seed(seed)
    config = BackboneConfig(depth=8, width=4)
    return to_hpm(build("cifar_resnet", config.architecture()), config, classes=None, dataset="cifar10")


@pytest.fixture
def two_checkpoints(tmp_path):
    """Two tiny CIFAR-10 ResNets saved as checkpoints (stand-ins for a standard and a robust network)."""
    return [str(tiny_resnet(seed).save_pretrained(tmp_path / f"net{seed}")) for seed in (0, 1)]
