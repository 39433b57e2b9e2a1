"""Sanity checks on an evaluation, in the spirit of AutoAttack's ``checks.py``.

A flag does not prove a defence broken or sound; it says where to attack harder:

- ``deterministic_forward``: two forward passes on the same batch agree (no randomness, no EMA drift).
- ``robust_le_clean``: robust accuracy never exceeds clean accuracy.
- ``monotone_in_eps``: robust accuracy does not increase with eps over a small grid.
- ``large_eps_breaks_all``: at an eps that can erase the image, (almost) nothing stays robust.
- ``black_box_vs_white_box``: Square breaking samples that every gradient attack missed is a sign of
  gradient masking.
- ``end_to_end_vs_transfer``: for a mixture, a branch attacked alone (transfer) breaking samples that every
  end-to-end gradient attack on them missed is the same sign for the end-to-end gradients.
- ``repeatable``: the same evaluation with the same seed gives identical per-sample outcomes.
- ``batch_independent``: a model declared per-sample gives each image the same scores alone as inside its batch
  (BatchNorm on test-batch statistics or test-time adaptation undeclared would make every batch size but one a
  guess).
- ``clean_matches_card``: the clean accuracy is not far below the one the checkpoint's card records (images in
  the wrong range, another dataset or normalisation give plausible-looking but wrong numbers).
- ``input_convention``: the model classifies images in [0, 1], as hpm passes them, no worse than the same images
  as 0-255 pixels, in [-1, 1] or ImageNet-normalised (a model whose forward lacks its own scaling scores near
  chance, and every other check passes).
- ``clean_above_chance``: the clean accuracy is significantly above 1/k.
- ``stateless_forward``: a forward pass leaves the model's parameters and buffers as they were (no test-time
  adaptation carried from batch to batch and from attack step to attack step).
- ``randomness_averaged``: a model whose forward passes differ (beyond float rounding) was attacked with APGD's
  expectation over transformation (``eot_iter`` > 1).
- model-specific pitfalls a model declares itself (``model.pitfall_checks(x)``), e.g. a mixed classifier's
  robust branch saturating its softmax at a low temperature.
- ``ce_not_saturated``: no clean-correct sample has a float32 cross-entropy of exactly 0 or an all-zero input
  gradient (AutoAttack's zero-gradient check). On such samples APGD-CE has no loss to climb, while the
  scale-invariant DLR loss and black-box Square still work (see :func:`ce_saturation`).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import binomtest
from torch import Tensor, nn

from ..defence import copy_module, evaluation_copy, rounding_tolerance
from ..devices import resolve
from ..progress import progress_bar
from ..sources.split import IMAGENET_MEAN, IMAGENET_STD, Normalize
from .config import AttackConfig
from .protocol import run_protocol
from .report import BatchSizeResult, Check


def check_results(summary: BatchSizeResult, square_queries: int | None = None) -> list[Check]:
    """Checks that read one batch size's numbers (``square_queries``: Square's budget, to say when it is too small
    for ``black_box_vs_white_box`` to see masked gradients)."""
    bs = summary.batch_size
    clean, robust = summary.clean_accuracy, summary.robust_accuracy
    checks = [Check(f"robust_le_clean[bs={bs}]", robust <= clean, f"robust {robust:.4f} vs clean {clean:.4f}")]
    only_bb = summary.broken_only_by_black_box
    has_square = any(a.kind == "square" for a in summary.per_attack)
    weak = has_square and square_queries is not None and square_queries < SQUARE_QUERIES
    checks.append(Check(f"black_box_vs_white_box[bs={bs}]", None if not has_square or (weak and not only_bb)
                        else only_bb == 0,
                        f"{only_bb} sample(s) broken by Square but by no gradient attack"
                        + (" (possible gradient masking: attack harder)" if only_bb else "")
                        + (f"; Square ran {square_queries} queries, too few to see masked gradients "
                           f"({SQUARE_QUERIES} or more)" if weak and not only_bb else "")))
    only_transfer = summary.broken_only_by_transfer
    if only_transfer is not None:
        checks.append(Check(f"end_to_end_vs_transfer[bs={bs}]", only_transfer == 0,
                            f"{only_transfer} sample(s) broken by a transfer attack (a branch alone) but by no "
                            "end-to-end gradient attack that ran on them"
                            + (" (the end-to-end gradients may be masked: attack harder)" if only_transfer else "")))
    return checks


OTHER_BATCH_SIZE_ALLOWANCE = 0.10  # clean_matches_card at a batch size the card does not record: points allowed


def check_against_card(model: nn.Module, summary: BatchSizeResult, alpha: float = 1e-3) -> Check | None:
    """The clean accuracy at one batch size against the card's (``config.json`` metric ``clean_accuracy``): fails
    when an exact one-sided binomial test puts it below the card's at level ``alpha``; None without a card. A
    batch-dependent model is held to the card's value at the same batch size, or, at a batch size the card does
    not record, to its lowest value less :data:`OTHER_BATCH_SIZE_ALLOWANCE` (its accuracy moves with the batch)."""
    recorded = _card_clean_accuracy(model, summary.batch_size)
    if recorded is None:
        return None
    value, n_card, where = recorded
    n, correct = summary.n, round(summary.clean_accuracy * summary.n)
    p = binomtest(correct, n, value, alternative="less").pvalue if n else 1.0
    ok = bool(p >= alpha)
    return Check(f"clean_matches_card[bs={summary.batch_size}]", ok,
                 f"clean {100 * summary.clean_accuracy:.1f}% on {n} images vs {100 * value:.1f}% {where} "
                 f"({n_card} images); one-sided exact binomial p = {p:.2g}"
                 + ("" if ok else ": far below the card: are the images in [0, 1], of the model's dataset and "
                                  "split, not normalised twice, and the weights those the card was measured on?"))


def _card_clean_accuracy(model: nn.Module, batch_size: int) -> tuple[float, int, str] | None:
    """``(value, n, what it is)`` of the card's clean accuracy of the deployed model (its largest-n entry; for a
    batch-dependent model, at ``batch_size``, else the lowest at any batch size less the allowance), if any."""
    config = getattr(model, "checkpoint_config", None)
    entries = [m for m in (getattr(config, "metrics", None) or {}).values()
               if isinstance(m, dict) and m.get("protocol") == "clean" and m.get("mode", "hard") == "hard"
               and isinstance(m.get("value"), (int, float)) and isinstance(m.get("n"), int)]
    if not entries:
        return None
    if not getattr(model, "batch_dependent", False):
        best = max(entries, key=lambda m: m["n"])
        return float(best["value"]), int(best["n"]), "on the card"
    same = [m for m in entries if m.get("batch_size") == batch_size]
    if same:
        best = max(same, key=lambda m: m["n"])
        return float(best["value"]), int(best["n"]), "on the card at this batch size"
    lowest = min(entries, key=lambda m: m["value"])
    return (max(float(lowest["value"]) - OTHER_BATCH_SIZE_ALLOWANCE, 0.0), int(lowest["n"]),
            f"(the card's lowest, at batch size {lowest.get('batch_size', 'unrecorded')}, less "
            f"{100 * OTHER_BATCH_SIZE_ALLOWANCE:.0f} points for another batch size)")


CONVENTION_IMAGES = 100  # input_convention, clean_above_chance: the evaluation's first images they score


def _as_pixels(x: Tensor) -> Tensor:
    return x * 255


def _as_signed(x: Tensor) -> Tensor:
    return 2 * x - 1


def _as_normalised(x: Tensor) -> Tensor:
    return Normalize(IMAGENET_MEAN, IMAGENET_STD).to(x.device)(x)


# input_convention: how images in [0, 1] would look to a model whose forward lacks its own scaling, and the fix
CONVENTIONS: dict[str, tuple[Callable[[Tensor], Tensor], str]] = {
    "0-255 pixels": (_as_pixels, "it expects 0-255 pixels: multiply its input by 255 inside its forward"),
    "images in [-1, 1]": (_as_signed, "it expects images in [-1, 1]: map its input with 2 * x - 1 inside its "
                                      "forward"),
    "ImageNet-normalised images": (_as_normalised, "it expects normalised images: put the normalisation "
                                                   "inside its forward, e.g. nn.Sequential(Normalize(mean, std), "
                                                   "model)"),
}


@torch.no_grad()
def check_input_convention(model: nn.Module, x: Tensor, y: Tensor, batch_size: int,
                           alpha: float = 0.01) -> list[Check]:
    """Does the model take images in [0, 1], as hpm passes them? ``input_convention`` fails when the same images
    as 0-255 pixels, in [-1, 1] or ImageNet-normalised are classified correctly significantly more often (exact
    paired test at ``alpha``): a model whose forward lacks its own scaling scores hpm's images near chance while
    every other check passes. ``clean_above_chance`` fails when the clean accuracy is not significantly above
    1/k, whatever the cause. Both on the first :data:`CONVENTION_IMAGES` images, in batches of ``batch_size``."""
    x, y = x[:CONVENTION_IMAGES], y[:CONVENTION_IMAGES]
    model = evaluation_copy(model, x.device)

    def correct(transform: Callable[[Tensor], Tensor]) -> tuple[Tensor, int]:
        scores = [model(transform(x[i:i + batch_size])) for i in range(0, len(x), batch_size)]
        return torch.cat([s.argmax(1) for s in scores]).cpu() == y.cpu(), scores[0].shape[1]

    given, k = correct(lambda images: images)
    found = []
    for name, (transform, fix) in CONVENTIONS.items():
        if transform is _as_normalised and x.shape[1] != 3:
            continue  # ImageNet's statistics are of three channels
        try:
            other, _ = correct(transform)
        except Exception:  # a model that refuses inputs outside [0, 1] takes them as hpm passes them
            continue
        gained, lost = int((other & ~given).sum()), int((given & ~other).sum())
        if gained + lost and binomtest(gained, gained + lost, 0.5, alternative="greater").pvalue < alpha:
            found.append(f"as {name} {100 * float(other.float().mean()):.0f}%: {fix}")
    accuracy = float(given.float().mean())
    convention = Check("input_convention", not found,
                       f"clean accuracy on {len(y)} images in [0, 1]: {100 * accuracy:.0f}%"
                       + ("; " + "; ".join(found) if found else ", not beaten by the same images as 0-255 pixels, in "
                                                                 "[-1, 1] or ImageNet-normalised"))
    p = binomtest(int(given.sum()), len(y), 1 / k, alternative="greater").pvalue
    if binomtest(len(y), len(y), 1 / k, alternative="greater").pvalue >= alpha:  # even all correct would not tell
        return [convention, Check("clean_above_chance", None, f"{len(y)} images cannot tell {k} classes from chance")]
    above = Check("clean_above_chance", bool(p < alpha),
                  f"clean accuracy {100 * accuracy:.0f}% on {len(y)} images, chance {100 / k:.0f}% (one-sided exact "
                  f"binomial p = {p:.2g})" + ("" if p < alpha else ": the model does not classify these images: "
                                              "images in another range or normalisation than its forward takes, "
                                              "another dataset, or labels in another class order?"))
    return [convention, above]


@torch.no_grad()
def check_batch_independent(model: nn.Module, x: Tensor, deterministic: bool = True) -> Check:
    """A model declared per-sample scores each image alone (batch size 1) as it does inside the batch ``x``: every
    score equal up to float rounding (:func:`hpm.defence.rounding_tolerance`). Not applicable to a batch-dependent
    model, to fewer than two images, or (``deterministic=False``) to a model whose two passes on one batch already
    differ."""
    if getattr(model, "batch_dependent", False) or len(x) < 2 or not deterministic:
        why = "declared batch-dependent: evaluated at each batch size" if getattr(model, "batch_dependent", False) \
            else "fewer than two images" if len(x) < 2 else "not deterministic: alone vs together cannot be told apart"
        return Check("batch_independent", None, why)
    together = model(x).float()
    alone = torch.cat([model(x[i:i + 1]) for i in range(len(x))]).float()
    tolerance = rounding_tolerance(together)
    moved = (together - alone).abs().amax(1) > tolerance  # [n]: images whose scores depend on the batch
    ok = not bool(moved.any())
    return Check("batch_independent", ok,
                 f"alone vs in a batch of {len(x)}: the scores of {int(moved.sum())} image(s) change by more than "
                 f"{tolerance:.2g} (largest change {float((together - alone).abs().max()):.3g})"
                 + ("" if ok else "; its predictions depend on the batch: declare batch_dependent=True "
                                  "(hpm eval --batch-dependent)"))


@torch.no_grad()
def check_deterministic(model: nn.Module, x: Tensor) -> Check:
    """Two forward passes on the same batch agree (no randomness, no EMA drift); on the model's evaluation copy
    (:func:`hpm.defence.evaluation_copy`), so a module passed in training mode stays so."""
    model = evaluation_copy(model, x.device)
    a, b = model(x), model(x)
    return Check("deterministic_forward", bool(torch.equal(a, b)),
                 "two forward passes agree" if torch.equal(a, b) else "two forward passes differ")


@torch.no_grad()
def check_randomness_averaged(model: nn.Module, x: Tensor, eot_iter: int) -> Check:
    """On a fresh copy of the model, two forward passes on one batch (the first may fill a cache):
    ``stateless_forward`` fails when the second changed the model's own parameters or buffers (test-time
    adaptation: one copy is evaluated across every batch and attack step, so the numbers depend on what it met
    before, and averaging does not help); ``randomness_averaged`` fails when they differ beyond float rounding
    without such a change (noise in the forward) and APGD followed one pass's gradient per step (``eot_iter`` 1):
    the numbers mix attack success with the model's noise, and the robust accuracy left is overstated. Not
    applicable to a model whose passes agree, or whose deployed forward is attacked only through surrogates."""
    if getattr(model, "deployed_differentiable", True) is False:
        return Check("randomness_averaged", None, "the deployed model is not attacked by gradient: its surrogates "
                                                  "are, and it only judges")
    fresh = copy_module(evaluation_copy(model, x.device))
    a = fresh(x)  # a first pass may fill a cache; adaptation changes the state on every pass
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    b = fresh(x)
    changed = [k for k, v in fresh.state_dict().items() if not _same(before[k], v)]
    if changed:
        return Check("stateless_forward", False,
                     f"a forward pass changes the model's own state ({', '.join(changed[:3])}"
                     f"{', ...' if len(changed) > 3 else ''}): hpm evaluates one copy across every batch and attack "
                     "step, so each image meets a model changed by the images and attacks before it, and the "
                     "numbers depend on their order; reset that state at the start of each forward (and declare "
                     "batch_dependent=True if it adapts to the batch)")
    if bool(((a - b).abs() <= rounding_tolerance(a)).all()):
        return Check("randomness_averaged", None, "two forward passes agree: nothing to average")
    ok = eot_iter > 1
    return Check("randomness_averaged", ok, (f"two forward passes differ; APGD averaged its gradient over {eot_iter} "
                                             "passes per step (expectation over transformation)") if ok else
                 "two forward passes differ, and APGD followed one pass's gradient per step: the numbers mix attack "
                 "success with the model's noise; attack it with expectation over transformation, "
                 "AttackConfig(eot_iter=20) (hpm eval --eot-iter 20, as AutoAttack's rand version), or fix its "
                 "noise with a generator seeded inside its forward if the defence is meant to be deterministic")


def _same(a: Tensor, b: Tensor) -> bool:
    """Equal tensors, NaN equal to NaN (a buffer that holds NaN has not changed when it still does)."""
    return a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan()) if a.is_floating_point() else a == b).all())


def ce_saturation(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 256,
                  device: torch.device | str | None = None) -> dict:
    """Where the cross-entropy of the deployed scores gives a gradient attack nothing to climb.

    Counts, among the clean-correct samples, those whose float32 CE loss is exactly 0 (the softmax is
    saturated: ``log(1 + sum_j exp(-margin_j))`` rounds to 0 once every margin exceeds about 17) and those
    whose input gradient of the CE is all zero. Margins are top-1 minus top-2 scores. The gradient of a
    batch-dependent head is taken through its whole batch, as the attacks take it.
    """
    device = resolve(device, model)
    model = evaluation_copy(model, device)  # the module passed keeps its mode and device
    correct, zero_loss, zero_grad, margins = [], [], [], []
    for start in range(0, len(y), batch_size):
        xb = x[start:start + batch_size].to(device).requires_grad_(True)
        yb = y[start:start + batch_size].to(device)
        scores = model(xb).float()
        loss = F.cross_entropy(scores, yb, reduction="none")
        grad, = torch.autograd.grad(loss.sum(), xb)
        top2 = scores.detach().topk(2, dim=1).values
        correct.append((scores.argmax(1) == yb).cpu())
        zero_loss.append((loss.detach() == 0).cpu())
        zero_grad.append((grad.flatten(1).abs().amax(1) == 0).cpu())
        margins.append((top2[:, 0] - top2[:, 1]).cpu())
    ok = torch.cat(correct)
    margin = torch.cat(margins)[ok]
    return {"n": len(y), "clean_correct": int(ok.sum()),
            "zero_loss": int((torch.cat(zero_loss) & ok).sum()),
            "zero_gradient": int((torch.cat(zero_grad) & ok).sum()),
            "median_margin": float(margin.median()) if len(margin) else float("nan")}


def check_ce_saturation(model: nn.Module, x: Tensor, y: Tensor, batch_size: int, device=None) -> Check:
    """No clean-correct sample leaves APGD-CE without a loss to climb (see :func:`ce_saturation`); not applicable
    to a deployed model that is attacked only through its surrogates."""
    if getattr(model, "deployed_differentiable", True) is False:
        return Check("ce_not_saturated", None, "the deployed model has no input gradient: only its surrogates are "
                                               "attacked by gradient")
    s = ce_saturation(model, x, y, batch_size=batch_size, device=device)
    blind = s["zero_loss"] + s["zero_gradient"] > 0
    return Check("ce_not_saturated", not blind,
                 f"of {s['clean_correct']} clean-correct samples, {s['zero_loss']} have float32 CE exactly 0 and "
                 f"{s['zero_gradient']} an all-zero input gradient; median margin {s['median_margin']:.3g}"
                 + (" (APGD-CE is blind there; the plan's DLR attacks and Square are not, but if they broke few, "
                    "attack a surrogate whose scores are scaled down, e.g. logits / 100, or which returns logits "
                    "where the model returns probabilities)" if blind else ""))


EPS_FACTORS = (0.25, 0.5, 1.0, 2.0)  # monotone_in_eps: the eps grid, as multiples of the evaluation's eps
SQUARE_QUERIES = 500  # Square's query cap in the check runs, and the fewest that black_box_vs_white_box trusts


def check_run_factors(eps_factors: tuple[float, ...] = EPS_FACTORS) -> list[float | None]:
    """The protocol runs :func:`run_checks` makes, in order, as multiples of the evaluation's eps: the grid, the
    huge eps (None: :func:`large_eps`), the evaluation's eps again (repeatable)."""
    return [*sorted(eps_factors), None, 1.0]


def large_eps(norm: str, x: Tensor) -> float:
    """An eps at which every image can be turned into mid-grey: 0.5 in Linf, 0.5*sqrt(dim) in L2."""
    return 0.5 if norm == "Linf" else 0.5 * float(np.sqrt(x[0].numel()))


def run_checks(model: nn.Module, x: Tensor, y: Tensor, attack: AttackConfig, batch_size: int,
               eps_factors: tuple[float, ...] = EPS_FACTORS, square_queries: int = SQUARE_QUERIES, device=None,
               progress: bool = False, on_run_done: Callable[[], None] | None = None) -> list[Check]:
    """The checks that need extra attack runs, on the small sample ``x, y`` (batches of ``batch_size``).

    They use the evaluation's attacks with Square capped at ``square_queries`` (the cap is reported);
    ``on_run_done`` is called after each of their protocol runs (:func:`check_run_factors`).
    """
    bar = progress_bar(total=len(eps_factors) + 3, desc=f"sanity checks on {len(y)} images", unit="run",
               disable=not progress)
    first = x[:batch_size].to(resolve(device, model))
    deterministic = check_deterministic(model, first)
    checks = [deterministic, check_batch_independent(model, x.to(first.device), bool(deterministic.passed)),
              check_ce_saturation(model, x, y, batch_size, device)]
    if hasattr(model, "pitfall_checks"):
        with torch.no_grad():
            checks += [Check(*c) for c in model.pitfall_checks(x[:batch_size].to(resolve(device, model)))]
    bar.update()
    attack = replace(attack, square_queries=min(attack.square_queries, square_queries))
    budget = f"; n={len(y)}, Square {attack.square_queries} queries"

    def robust_mask(eps: float) -> np.ndarray:
        _, res, _ = run_protocol(model, x, y, attack=replace(attack, eps=eps), batch_sizes=[batch_size],
                                 device=device, progress=False)
        bar.update()
        if on_run_done is not None:
            on_run_done()
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
    bar.close()
    return checks
