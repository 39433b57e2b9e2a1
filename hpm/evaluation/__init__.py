"""Honest evaluation: the Mixed Surrogate Attack protocol + Square, per-sample worst case, one typed report.

- :mod:`.protocol`  the attack plan run batch by batch, judged on the deployed model
- :mod:`.samples`   per-sample outcomes (``.npz``): resume, merge, paired tests
- :mod:`.report`    the report dataclass (JSON and Markdown)
- :mod:`.checks`    sanity checks in the spirit of AutoAttack's
- :mod:`.dist`      torchrun: ranks share the batches, one report
- :mod:`.api`       :func:`evaluate_model`: model + data + config -> report files
- :mod:`.estimate`  how long the attacks take at most (timed passes), said before they start
- :mod:`.expect`    how long the evaluation is expected to take, updated while it runs
"""
from .api import evaluate_model, load_eval_data, merge_reports
from .config import AttackConfig
from .protocol import clean_accuracy, predict, run_protocol
from .report import EvalReport

__all__ = ["evaluate_model", "load_eval_data", "merge_reports", "AttackConfig", "clean_accuracy", "predict",
           "run_protocol", "EvalReport"]
