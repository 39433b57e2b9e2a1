"""The shipped checkpoints: they load strictly, their cards are generated from config.json, and they fit."""
from pathlib import Path

import pytest
import torch

import hpm
from hpm.model_card import model_card
from hpm.checkpoint import read_config

CHECKPOINTS = sorted(p for p in (Path(__file__).resolve().parents[1] / "checkpoints").iterdir()
                     if (p / "config.json").is_file())


def test_shipped_checkpoints_stay_within_80_mb():
    """The wheel carries every shipped checkpoint, and PyPI refuses files over 100 MB: the PreAct ResNet-18
    (45 MB in float32) is stored once, and the heads on it name it."""
    total = sum(f.stat().st_size for p in CHECKPOINTS for f in p.rglob("*") if f.is_file())
    assert total <= 80 * 2**20


@pytest.mark.parametrize("directory", CHECKPOINTS, ids=lambda p: p.name)
def test_checkpoint_loads_and_its_card_is_generated_from_its_config(directory):
    model = hpm.load(directory)
    with torch.no_grad():
        assert model(torch.rand(2, *model.input_size)).shape == (2, model.num_classes)
    assert (directory / "README.md").read_text() == model_card(read_config(directory))
    assert not list(directory.glob("*.pt")), "no pickled files in shipped checkpoints"
