"""Every path follows the model's device: nothing in the library pins computation to the CPU."""
import ast
from pathlib import Path

import torch
from torch import nn

from hpm.devices import CPU, bf16_autocast, describe, device_of, fp32_judging, resolve, set_tf32

PACKAGE = Path(__file__).resolve().parents[1] / "hpm"


def test_no_module_but_the_device_module_names_the_cpu():
    """A literal "cpu" is how a path ends up pinned to the CPU while the model sits on a GPU; the one place
    that may name it is hpm/devices.py (the default for new networks and loaded weights)."""
    found = [f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
             for path in sorted(PACKAGE.rglob("*.py")) if path.name != "devices.py"
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.lower() == "cpu"]
    assert found == []


def test_a_module_is_on_the_device_of_its_parameters_or_buffers():
    assert device_of(nn.Linear(2, 2, device="meta")) == torch.device("meta")
    buffers_only = nn.BatchNorm1d(2, affine=False, device="meta")
    assert device_of(buffers_only) == torch.device("meta")
    assert device_of(nn.ReLU()) == CPU


def test_an_explicit_device_wins_and_none_follows_the_model():
    on_meta = nn.Linear(2, 2, device="meta")
    assert resolve(None, on_meta) == torch.device("meta")
    assert resolve("cpu", on_meta) == CPU


def test_autocast_runs_on_the_backend_of_the_device_it_is_given():
    assert bf16_autocast(CPU).device == "cpu"
    assert bf16_autocast(torch.device("cuda"), enabled=False).device == "cuda"  # no GPU needed to build it


def test_a_report_describes_the_device_it_ran_on():
    assert describe(CPU) == {"device": "cpu"}


def test_robustness_is_judged_in_plain_float32_and_the_callers_tf32_settings_come_back():
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with fp32_judging():
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_tf32_is_switched_for_convolutions_and_matmuls_together_and_the_old_settings_are_returned():
    before = set_tf32(True)
    try:
        assert set_tf32(False) == (True, True)
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (False, False)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
