"""hpm: Hybrid Prototype Mixing, a plug-in l2 re-classifier, and the Mixed Surrogate Attack evaluation.

Public API::

    model = hpm.wrap("pyautoattack", head="hpm")      # any classifier ending in nn.Linear
    model.save_pretrained("my-ckpt"); model = hpm.load("my-ckpt")
    model.fc_oracle(), model.soft_surrogate(), model.deployed()   # attackable nn.Modules
    report = hpm.evaluate_model(model, x, y, attack=hpm.AttackConfig(eps=8/255), batch_sizes=[16, 256])
"""
__version__ = "0.1.0"

from .errors import CheckpointError, HPMError, OfflineError  # noqa: E402
from .heads import CosineHead, FCHead, HPMHead, NCMHead, create_head  # noqa: E402
from .model import HPMClassifier, wrap  # noqa: E402
from .hub import load  # noqa: E402
from .evaluate import AttackConfig  # noqa: E402
from .msa import evaluate_model  # noqa: E402

__all__ = [
    "HPMClassifier", "HPMHead", "NCMHead", "CosineHead", "FCHead", "create_head",
    "wrap", "load", "evaluate_model", "AttackConfig", "HPMError", "CheckpointError", "OfflineError", "__version__",
]
