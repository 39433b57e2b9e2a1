"""Sanity checks on an evaluation, in the spirit of AutoAttack's ``checks.py``.

A flag does not prove a defence broken or sound; it says where to attack harder:

- ``deterministic_forward``: two forward passes on the same batch agree (no randomness, no EMA drift).
- ``robust_le_clean``: robust accuracy never exceeds clean accuracy.
- ``monotone_in_eps``: robust accuracy does not increase with eps over a small grid.
- ``large_eps_breaks_all``: at an eps that can erase the image, (almost) nothing stays robust.
- ``black_box_vs_white_box``: Square breaking samples that every gradient attack missed is a sign of
  gradient masking.
- ``repeatable``: the same evaluation with the same seed gives identical per-sample outcomes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from torch import Tensor, nn

from .evaluate import AttackConfig, run_protocol


@dataclass
class Check:
    name: str
    passed: bool | None  # None: not applicable / skipped
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)


def check_results(summary: dict) -> list[Check]:
    """Checks that read one batch size's summary."""
    bs = summary["batch_size"]
    clean, robust = summary["clean_accuracy"], summary["robust_accuracy"]
    checks = [Check(f"robust_le_clean[bs={bs}]", robust <= clean, f"robust {robust:.4f} vs clean {clean:.4f}")]
    only_bb = summary["broken_only_by_black_box"]
    has_square = any(a["kind"] == "square" for a in summary["per_attack"])
    checks.append(Check(f"black_box_vs_white_box[bs={bs}]", None if not has_square else only_bb == 0,
                        f"{only_bb} sample(s) broken by Square but by no gradient attack"
                        + (" (possible gradient masking: attack harder)" if only_bb else "")))
    return checks


@torch.no_grad()
def check_deterministic(model: nn.Module, x: Tensor) -> Check:
    model.eval()
    a, b = model(x), model(x)
    return Check("deterministic_forward", bool(torch.equal(a, b)),
                 "two forward passes agree" if torch.equal(a, b) else "two forward passes differ")


def large_eps(norm: str, x: Tensor) -> float:
    """An eps at which every image can be turned into mid-grey: 0.5 in Linf, 0.5*sqrt(dim) in L2."""
    return 0.5 if norm == "Linf" else 0.5 * float(np.sqrt(x[0].numel()))


def run_checks(model: nn.Module, x: Tensor, y: Tensor, attack: AttackConfig, batch_size: int,
               eps_factors: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0), square_queries: int = 500, device=None,
               progress: bool = False) -> list[Check]:
    """The checks that need extra attack runs, on the small sample ``x, y`` (batches of ``batch_size``).

    They use the evaluation's attacks with Square capped at ``square_queries`` (the cap is reported).
    """
    checks = [check_deterministic(model, x[:batch_size].to(device or "cpu"))]
    attack = replace(attack, square_queries=min(attack.square_queries, square_queries))
    budget = f"; n={len(y)}, Square {attack.square_queries} queries"

    def robust_mask(eps: float) -> np.ndarray:
        _, res, _ = run_protocol(model, x, y, attack=replace(attack, eps=eps), batch_sizes=[batch_size],
                                 device=device, progress=progress)
        return res[batch_size].robust

    grid = sorted(attack.eps * f for f in eps_factors)
    masks = {eps: robust_mask(eps) for eps in grid}
    accs = [float(masks[e].mean()) for e in grid]
    monotone = all(b <= a + 1e-12 for a, b in zip(accs, accs[1:]))
    checks.append(Check("monotone_in_eps", monotone, "robust accuracy at eps " + ", ".join(
        f"{e * 255:.3g}/255: {100 * a:.1f}%" for e, a in zip(grid, accs)) + budget))
    big = large_eps(attack.norm, x)
    acc_big = float(robust_mask(big).mean())
    checks.append(Check("large_eps_breaks_all", acc_big == 0.0,
                        f"robust accuracy {100 * acc_big:.1f}% at eps {big:.3g}, expected 0%" + budget))
    again = robust_mask(attack.eps)
    same = bool(np.array_equal(again, masks[attack.eps]))
    checks.append(Check("repeatable", same, ("same seed, same per-sample outcomes" if same
                        else f"{int((again != masks[attack.eps]).sum())} sample(s) differ between two runs") + budget))
    return checks
