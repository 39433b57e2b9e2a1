"""The evaluation's settings: threat model, attack budget, plan and schedule."""
from __future__ import annotations

import numbers
from dataclasses import dataclass

from ..attacks import NORMS
from ..errors import HPMError
from ..units import meant_per_255, parse_eps

SCHEDULES = ("cumulative", "independent")


def is_positive_integer(value) -> bool:
    """An integer >= 1 of any integer type (numpy's too), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


@dataclass
class AttackConfig:
    """Threat model and attack budget; the defaults are the paper's (APGD 40 iterations; AutoAttack uses 100).

    Checked when built (:meth:`validate`): ``eps`` may be written as on the command line (``"8/255"``), and a
    Linf ``eps`` above 1 (``eps=8``) is refused with the radius it probably meant.
    """

    norm: str = "Linf"  # "Linf" or "L2"
    eps: float = 8 / 255  # radius of the perturbation ball (a number, or text such as "8/255")
    n_iter: int = 40  # APGD iterations (paper: 40; AutoAttack: 100)
    n_restarts: int = 1  # APGD restarts
    eot_iter: int = 1  # APGD's gradient averaged over this many forward passes (expectation over transformation,
    # for a randomized model: AutoAttack's rand version uses 20); 1: one pass per step
    square_queries: int = 5000  # Square's query budget per sample (AutoAttack's default)
    n_target_classes: int = 9  # APGD-T: top wrong classes targeted in turn (AutoAttack's default)
    attacks: list[str] | None = None  # attack names (None: the default plan for the model)
    targeted: bool = True  # the default plan adds APGD-T (False: the paper's MSA + Square exactly)
    schedule: str = "cumulative"  # "cumulative" (attack survivors) or "independent" (every attack on all)
    seed: int = 0  # APGD and Square seeds
    batch_kappa: float | None = 0.5  # whole-batch attacks: a row's loss stops pulling the joint step once its
    # surrogate margin exceeds this (logit units), and each row is also judged alone among the others clean;
    # None: the earlier whole-batch attack (summed unclamped loss, the batch judged only as perturbed)

    def __post_init__(self) -> None:
        if isinstance(self.norm, str):
            self.norm = {n.lower(): n for n in NORMS}.get(self.norm.lower(), self.norm)  # "linf" is "Linf"
        if isinstance(self.eps, str):
            try:
                self.eps = parse_eps(self.eps)
            except ValueError as e:
                raise HPMError(f"eps: {e}") from None
        elif isinstance(self.eps, numbers.Real) and not isinstance(self.eps, bool):
            self.eps = float(self.eps)  # numpy and fractions too
        for name in ("n_iter", "n_restarts", "eot_iter", "square_queries", "n_target_classes", "seed"):
            value = getattr(self, name)
            if isinstance(value, numbers.Integral) and not isinstance(value, bool):
                setattr(self, name, int(value))
        self.validate()

    def budget(self) -> dict:
        """The keywords of :func:`hpm.attacks.run_attack`: threat model, budgets and seed."""
        return {"norm": self.norm, "eps": self.eps, "n_iter": self.n_iter, "n_restarts": self.n_restarts,
                "eot_iter": self.eot_iter, "square_queries": self.square_queries,
                "n_target_classes": self.n_target_classes, "seed": self.seed, "batch_kappa": self.batch_kappa}

    def validate(self) -> None:
        if self.norm not in NORMS:
            raise HPMError(f"norm must be one of {', '.join(NORMS)}; got {self.norm!r}")
        if not (isinstance(self.eps, (int, float)) and not isinstance(self.eps, bool)
                and 0 < self.eps < float("inf")):
            raise HPMError(f"eps must be a positive number (e.g. 8/255); got {self.eps!r}")
        if self.norm == "Linf" and self.eps >= 1:  # at 1, any image is within reach of any other
            meant = meant_per_255(self.eps, 1)
            raise HPMError(f"Linf eps must be below 1 for images in [0, 1]; got {self.eps:g}" + (
                f": did you mean {meant} (eps={meant}, or --eps {meant})?" if meant else " (e.g. 8/255)"))
        for name in ("n_iter", "n_restarts", "eot_iter", "square_queries", "n_target_classes"):
            if not is_positive_integer(value := getattr(self, name)):
                raise HPMError(f"{name} must be an integer >= 1; got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise HPMError(f"seed must be an integer; got {self.seed!r}")
        if self.attacks is not None and (isinstance(self.attacks, str) or not all(isinstance(a, str)
                                                                                  for a in self.attacks)):
            raise HPMError(f"attacks must be a list of attack names, e.g. ['apgd-ce/deployed', 'square']; got "
                           f"{self.attacks!r}")
        if self.batch_kappa is not None and not (isinstance(self.batch_kappa, (int, float))
                                                 and 0 <= self.batch_kappa < float("inf")):
            raise HPMError(f"batch_kappa must be a finite number >= 0 or None; got {self.batch_kappa!r}")
        if self.schedule not in SCHEDULES:
            raise HPMError(f"schedule must be one of {', '.join(SCHEDULES)}; got {self.schedule!r}")
