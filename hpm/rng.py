"""Seeded randomness that leaves the process-wide random stream alone.

Code that owns its randomness draws from its own ``torch.Generator``. Only code that cannot take one (AutoAttack's
attacks, PyTorch's default initialisation of new layers) runs inside :func:`seeded`, which lends it the global
generators in a seeded state and gives them back unchanged.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

import torch

_GLOBAL_RNG = threading.Lock()  # held by the one seeded block that owns PyTorch's global generator


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Run the body with PyTorch's global generator (and ``device``'s, on CUDA) in the state of a fresh
    ``torch.Generator`` seeded with ``seed``, alone.

    The lock keeps concurrent threads from drawing from, or resetting, the global generators mid-block, and the
    caller's states are restored on exit, so the body neither depends on nor changes the caller's random stream.
    """
    cuda = [device] if device.type == "cuda" else []
    with _GLOBAL_RNG, torch.random.fork_rng(devices=cuda):
        torch.set_rng_state(torch.Generator().manual_seed(seed).get_state())
        for gpu in cuda:
            torch.cuda.set_rng_state(torch.Generator(device=gpu).manual_seed(seed).get_state(), gpu)
        yield
