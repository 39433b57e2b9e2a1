"""hpm: Hybrid Prototype Mixing, a plug-in l2 re-classifier, and the Mixed Surrogate Attack evaluation.

Public API::

    model = hpm.wrap("pyautoattack", head="hpm")      # any classifier ending in nn.Linear
    model.save_pretrained("my-ckpt"); model = hpm.load("my-ckpt")
    model.fc_oracle(), model.soft_surrogate(), model.deployed()   # attackable nn.Modules
    report = hpm.evaluate_model(model, x, y, attack=hpm.AttackConfig(eps=8/255), batch_sizes=[16, 256])
"""
from .version import __version__  # noqa: I001  (first: importable without torch)

from .errors import CheckpointError, HPMError, OfflineError
from .heads import CosineHead, FCHead, HPMHead, NCMHead, create_head
from .model import HPMClassifier, load, wrap
from .evaluation import AttackConfig, EvalReport, evaluate_model

__all__ = [
    "HPMClassifier", "HPMHead", "NCMHead", "CosineHead", "FCHead", "create_head",
    "wrap", "load", "evaluate_model", "AttackConfig", "EvalReport", "HPMError", "CheckpointError", "OfflineError",
    "__version__",
]
