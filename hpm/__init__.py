"""hpm: Hybrid Prototype Mixing, a plug-in l2 re-classifier, and the Mixed Surrogate Attack evaluation.

Public API::

    model = hpm.wrap("pyautoattack", head="hpm")      # any classifier ending in nn.Linear
    model.save_pretrained("my-ckpt"); model = hpm.load("my-ckpt")
    model.fc_oracle(), model.soft_surrogate(), model.deployed()   # attackable nn.Modules
    report = hpm.evaluate_model(model, x, y, attack=hpm.AttackConfig(eps=8/255), batch_sizes=[16, 256])
    hpm.evaluate_model(hpm.Defence(my_model, batch_dependent=True, surrogates={"s": my_surrogate}), x, y)
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .errors import CheckpointError, HPMError, OfflineError
from .version import __version__

# The rest imports torch, so it is imported on first use: ``hpm --help`` and ``hpm --version`` answer at once.
_LAZY = {"CosineHead": "heads", "FCHead": "heads", "HPMHead": "heads", "NCMHead": "heads", "create_head": "heads",
         "HPMClassifier": "model", "load": "model", "wrap": "model",
         "AttackConfig": "evaluation", "EvalReport": "evaluation", "evaluate_model": "evaluation",
         "Defence": "defence"}

if TYPE_CHECKING:
    from .defence import Defence
    from .evaluation import AttackConfig, EvalReport, evaluate_model
    from .heads import CosineHead, FCHead, HPMHead, NCMHead, create_head
    from .model import HPMClassifier, load, wrap

__all__ = [
    "HPMClassifier", "HPMHead", "NCMHead", "CosineHead", "FCHead", "create_head",
    "wrap", "load", "evaluate_model", "AttackConfig", "EvalReport", "Defence",
    "HPMError", "CheckpointError", "OfflineError",
    "__version__",
]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'hpm' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
