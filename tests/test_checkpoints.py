"""The shipped checkpoints: they load strictly, their cards are generated from config.json, and they fit."""
import shutil
import tomllib
from pathlib import Path

import pytest
import torch

import hpm
from hpm.checkpoint import is_withheld, read_config
from hpm.errors import CheckpointError
from hpm.model_card import model_card

REPO = Path(__file__).resolve().parents[1]

CHECKPOINTS = sorted(p for p in (REPO / "checkpoints").iterdir()
                     if (p / "config.json").is_file())


def withheld_weights() -> set[Path]:
    """The weights pyproject.toml keeps out of the wheel."""
    listed = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["exclude-package-data"]
    return {REPO / "checkpoints" / pattern for pattern in listed["hpm.checkpoints"]}


def test_the_checkpoints_the_wheel_carries_stay_within_80_mb():
    """PyPI refuses files over 100 MB, and the wheel is one file: the PreAct ResNet-18 (45 MB in float32) is stored
    once, the heads on it name it, and larger weights stay out of the wheel (pyproject.toml lists them)."""
    withheld = withheld_weights()
    assert all(path.name == "model.safetensors" and path.parent in CHECKPOINTS for path in withheld), withheld
    total = sum(f.stat().st_size for p in CHECKPOINTS for f in p.rglob("*") if f.is_file() and f not in withheld)
    assert total <= 80 * 2**20


def test_a_checkpoint_whose_weights_the_wheel_leaves_out_says_where_they_are(tmp_path):
    installed = tmp_path / "hpm" / "checkpoints" / "big"
    shutil.copytree(CHECKPOINTS[0], installed, ignore=shutil.ignore_patterns("model.safetensors"))
    with pytest.raises(CheckpointError, match="big: no model.safetensors"):  # a clone called hpm: no package here
        hpm.load(installed)
    (tmp_path / "hpm" / "__init__.py").touch()  # the installed package
    with pytest.raises(CheckpointError, match=r"big: its weights are not in the installed hpm: .* "
                                              r"hpm.load\('CLONE/checkpoints/big'\), or from its Hub copy"):
        hpm.load(installed)
    assert is_withheld(installed) and not is_withheld(CHECKPOINTS[0])


@pytest.mark.parametrize("directory", CHECKPOINTS, ids=lambda p: p.name)
def test_checkpoint_loads_and_its_card_is_generated_from_its_config(directory):
    model = hpm.load(directory)
    with torch.no_grad():
        assert model(torch.rand(2, *model.input_size)).shape == (2, model.num_classes)
    assert (directory / "README.md").read_text() == model_card(read_config(directory))
    assert not list(directory.glob("*.pt")), "no pickled files in shipped checkpoints"
