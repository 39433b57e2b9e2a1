"""Selecting MixedNUTS' map and mixing weight (:mod:`hpm.nuts`) as its authors do, without training.

On images the evaluation will not use, the robust branch alone is attacked; two sets of its logits are kept: the
attacked images it still classifies correctly, and the clean images it misclassifies. For each map ``(s, p, c)`` of
a grid (8 × 8 × 8 by default: ``s`` log-spaced in [0.05, 5], ``c`` in [-1.1, 0], ``p`` in [1, 4]), the margins of
the mapped robust probabilities (top-1 minus top-2) are computed on both sets. The mixture keeps a robust prediction
where its margin is at least ``(1 − α) / α``; so the cutoff is put where ``beta`` percent of the attacked-correct
margins stay above it (their ``100 − beta`` percentile; the authors' ``target_rob_beta``, 98.5 on CIFAR-10), and the
map is the one that lets the fewest clean-misclassified margins reach that cutoff: those are the images where a
confident wrong robust prediction would overrule the standard branch. ``α = 1 / (1 + cutoff)``.

The attacked images are those of the authors' adaptive AutoAttack: APGD-CE on the images the robust branch
classifies correctly, then APGD-T on those still standing, and per image the input of lowest margin met at any
iterate (the softmax of its standardised logits, true class minus best other; negative once misclassified), not
APGD's highest-loss one. The same attacked-correct logits also give the weight of the robust branch in the
adaptive attack's gradient (:class:`hpm.nuts.MixedNUTS`, ``attack_alpha``): the authors' selection without the map,
plain softmax margins with the cutoff at their ``ATTACK_BETA`` percentile.
"""
from __future__ import annotations

import hashlib
import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..attacks import BatchFeatures, margin, parse_attacks, run_attack
from ..defence import evaluation_copy, model_fingerprint
from ..devices import resolve
from ..errors import HPMError
from ..nuts import MixedNUTS, RobustLogitMap, mapped_margins, softmax_margins, standardise
from ..progress import progress_bar
from ..units import eps_text

if TYPE_CHECKING:
    from ..data import ImageTensorDataset

BETA = 98.5  # percent of the attacked-correct robust predictions the mixture keeps
ATTACK_BETA = 95.0  # the same for the adaptive attack's weight, selected without the map (the authors' CIFAR-10 value)


@dataclass(frozen=True)
class Grid:
    """The grid of maps searched: ``n`` values of each of scale (log-spaced), bias and power."""

    scale: tuple[float, float] = (0.05, 5.0)
    bias: tuple[float, float] = (-1.1, 0.0)
    power: tuple[float, float] = (1.0, 4.0)
    n: int = 8

    def values(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (np.logspace(np.log10(self.scale[0]), np.log10(self.scale[1]), self.n),
                np.linspace(*self.bias, self.n), np.linspace(*self.power, self.n))


@dataclass
class Selection:
    """The selected map and α, with the objective and the cutoff they came from."""

    scale: float
    power: float
    bias: float
    alpha: float
    cutoff: float  # (1 - alpha) / alpha: the mapped robust margin above which the robust branch decides
    objective: float  # share of clean-misclassified margins at or above the cutoff (minimised)
    beta: float
    n_attacked_correct: int
    n_clean_incorrect: int
    grid: dict = field(default_factory=dict)
    attack_alpha: float | None = None  # the robust branch's weight in the adaptive attack's gradient
    attack_beta: float | None = None  # the percentile it was selected at, without the map

    def robust_map(self) -> RobustLogitMap:
        return RobustLogitMap(self.scale, self.power, self.bias)

    def record(self) -> dict:
        """What a checkpoint records about the selection (the caller adds the images and the attack)."""
        return asdict(self)


def select_map(attacked_correct: Tensor, clean_incorrect: Tensor, beta: float = BETA, grid: Grid = Grid(),
               attack_beta: float = ATTACK_BETA) -> Selection:
    """The authors' grid search over maps (module docstring) on the robust branch's logits of attacked images it
    classifies correctly (``[N1, k]``) and of clean images it misclassifies (``[N2, k]``). Ties go to the first
    map in (scale, bias, power) order. The adaptive attack's weight is selected at ``attack_beta`` without the map."""
    if not len(attacked_correct) or not len(clean_incorrect):
        raise ValueError("selection needs attacked images the robust branch gets right and clean images it gets wrong")
    best = None
    for s in grid.values()[0]:
        for c in grid.values()[1]:
            for p in grid.values()[2]:
                robust_map = RobustLogitMap(float(s), float(p), float(c))
                cutoff = float(np.percentile(mapped_margins(attacked_correct, robust_map).numpy(), 100 - beta))
                cutoff = min(cutoff, 1 - 1e-9)  # as the authors: just below 1 (margins of 1 are saturated ones)
                objective = float((mapped_margins(clean_incorrect, robust_map) >= cutoff).double().mean())
                if best is None or objective < best[0]:
                    best = (objective, float(s), float(p), float(c), cutoff)
    objective, s, p, c, cutoff = best
    plain = softmax_margins(attacked_correct.double()).numpy()  # no map
    attack_cutoff = min(float(np.percentile(plain, 100 - attack_beta)), 1 - 1e-9)
    return Selection(s, p, c, 1 / (1 + cutoff), cutoff, objective, beta, len(attacked_correct), len(clean_incorrect),
                     asdict(grid), 1 / (1 + attack_cutoff), attack_beta)


class LowestMargin(nn.Module):
    """``model`` that remembers, for each row of the batch it is attacked on (labels ``y``), its logits on the
    input of lowest margin it was called with: ``p_y − max_{j≠y} p_j`` of the softmax of the standardised logits
    (the authors' layer-normed robust model), negative once misclassified."""

    def __init__(self, model: nn.Module, y: Tensor):
        super().__init__()
        self.model, self.y = model, y
        self.margin = torch.full((len(y),), float("inf"), device=y.device)  # [B] lowest so far
        self.logits: Tensor | None = None  # [B, k] at that input

    def forward(self, x: Tensor) -> Tensor:
        logits = self.model(x)
        if len(logits) != len(self.y):
            raise RuntimeError(f"LowestMargin tracks a batch of {len(self.y)} rows; called on {len(logits)}")
        with torch.no_grad():
            found = -margin(standardise(logits.detach()).softmax(-1), self.y)
            lower = found < self.margin
            if self.logits is None:
                self.logits = logits.detach().clone()
            self.logits[lower], self.margin[lower] = logits.detach()[lower], found[lower]
        return logits


def attacked_logits(robust: nn.Module, x: Tensor, y: Tensor, *, eps: float, n_iter: int, target_classes: int,
                    batch_size: int, seed: int = 0, on_batch=None,
                    on_step: Callable[[], None] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The robust branch's logits on the input of lowest margin that the selection attack met per image (module
    docstring: APGD-CE on the images it classifies correctly, then APGD-T towards ``target_classes`` classes on
    those still standing, ``n_iter`` iterations each) and on the clean images, with the labels:
    ``(adversarial [N, k], clean [N, k], y)``. A clean-misclassified image keeps its clean logits. ``on_step`` is
    called after every APGD step (``n_iter + 1`` per run)."""
    specs = parse_attacks(["apgd-ce/deployed", "apgd-t/deployed"], robust)
    adv_logits, clean_logits = [], []
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        with torch.no_grad():
            clean = robust(xb)
        lowest, lowest_margin = clean.clone(), torch.full((len(yb),), float("inf"), device=yb.device)
        standing = clean.argmax(1) == yb
        for spec in specs:
            rows = standing.nonzero().squeeze(1)
            if not len(rows):
                break
            tracker = LowestMargin(robust, yb[rows])
            run_attack(spec, BatchFeatures(tracker, None), xb[rows], yb[rows], norm="Linf", eps=eps, n_iter=n_iter,
                       n_target_classes=target_classes, seed=seed, num_classes=clean.shape[1], on_step=on_step)
            lower = tracker.margin < lowest_margin[rows]
            lowest[rows[lower]], lowest_margin[rows[lower]] = tracker.logits[lower], tracker.margin[lower]
            standing[rows] = tracker.margin > 0
        adv_logits.append(lowest.cpu())
        clean_logits.append(clean.cpu())
        if on_batch is not None:
            on_batch(start + len(xb), len(x))
    return torch.cat(adv_logits), torch.cat(clean_logits), y.cpu()


def selection_logits(robust: nn.Module, images: ImageTensorDataset, run_dir: str | Path, *, eps: float,
                     n_iter: int = 100, target_classes: int = 9, batch_size: int = 250, seed: int = 0,
                     device: torch.device | str | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`attacked_logits` on ``images``, one batch of ``batch_size`` at a time, each batch's logits kept in
    ``run_dir`` so that a rerun resumes; progress is shown in APGD steps.

    A batch's file name holds everything its logits depend on (the images and labels themselves, the attack and
    the robust model's :func:`hpm.defence.model_fingerprint`), so that a rerun reuses only what it would compute.

    Returns:
        ``(adversarial [N, k], clean [N, k], labels [N])`` on the CPU, in the order of ``images``.
    """
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    device = resolve(device, robust)
    attacked = evaluation_copy(robust, device)
    attack = f"lowest-margin|{eps}|{seed}|{n_iter}|{target_classes}"
    key = hashlib.sha256(f"{attack}|{model_fingerprint(attacked)}".encode())
    key.update(images.images.contiguous().numpy().tobytes())
    key.update(images.labels.contiguous().numpy().tobytes())
    key = key.hexdigest()[:12]
    paths = {start: run / f"selection-{key}-{start:06d}-{batch_size}.safetensors"
             for start in range(0, len(images), batch_size)}
    to_do = [start for start, path in paths.items() if not path.is_file()]
    per_batch = (n_iter + 1) * (1 + target_classes)  # APGD steps: APGD-CE, then each APGD-T class
    bar = progress_bar(total=per_batch * len(to_do), unit="step",
                       desc=f"selection attack on the robust branch, {len(to_do)} of {len(paths)} batches to do")
    for done, start in enumerate(to_do):
        x, y = images.tensors(torch.arange(start, min(start + batch_size, len(images))))
        adv, clean, y = attacked_logits(attacked, x.to(device), y.to(device), eps=eps, seed=seed, n_iter=n_iter,
                                        target_classes=target_classes, batch_size=batch_size,
                                        on_step=lambda: bar.update(1))
        partial = paths[start].with_suffix(".partial")
        save_file({"adversarial": adv, "clean": clean, "labels": y}, str(partial))
        os.replace(partial, paths[start])  # a file cut short is never taken for a finished batch
        bar.update(per_batch * (done + 1) - bar.n)  # APGD-T skipped where APGD-CE broke every image
    bar.close()
    parts = [load_file(str(path)) for path in paths.values()]
    return tuple(torch.cat([p[k] for p in parts]) for k in ("adversarial", "clean", "labels"))


def select_mixednuts(standard: nn.Module, robust: nn.Module, images: ImageTensorDataset, run_dir: str | Path, *,
                     eps: float, n_iter: int = 100, target_classes: int = 9, beta: float = BETA,
                     batch_size: int = 250, seed: int = 0, names: tuple[str, str] = ("standard", "robust"),
                     commands: list[str] | None = None,
                     device: torch.device | str | None = None) -> tuple[MixedNUTS, Selection]:
    """MixedNUTS of ``standard`` and ``robust``, its map and α selected by the authors' procedure (module
    docstring) on ``images``, which must not be the evaluation's: training images.

    Args:
        images: the selection images (``hpm mix --nuts`` takes a fixed uniform subset of 1000 training images;
            the authors take 1000).
        run_dir: where the robust branch's logits are kept per batch (:func:`selection_logits`), so that a rerun
            resumes.
        eps, n_iter, target_classes: the selection attack (APGD-CE, then APGD-T towards ``target_classes`` classes).
        beta: percent of the attacked-correct robust predictions the mixture keeps.
        names: how the checkpoint names the two branches.
        commands: the commands that made it, recorded in the checkpoint with the images and the attack.

    Returns:
        ``(model, selection)``: the :class:`hpm.nuts.MixedNUTS` (its ``save_pretrained`` writes the checkpoint and a
        card that says how it was selected) and the :class:`Selection` it came from.
    """
    if not 0 < beta < 100:
        raise HPMError(f"beta is the percent of attacked-correct margins the mixture keeps, in (0, 100); got {beta}")
    adv, clean, y = selection_logits(robust, images, run_dir, eps=eps, n_iter=n_iter, target_classes=target_classes,
                                     batch_size=batch_size, seed=seed, device=device)
    attacked_correct, clean_incorrect = adv[adv.argmax(1) == y], clean[clean.argmax(1) != y]
    # np.percentile interpolates at index (N - 1) (100 - beta) / 100: below 1, between the two lowest margins
    needed = 1 + math.ceil(100 / (100 - beta))
    fix = (f"select on more images (images; hpm mix --n-select; the authors use 1000) or check the radius (eps "
           f"{eps_text(eps)})")
    if not len(attacked_correct) or not len(clean_incorrect):
        raise HPMError(f"the selection needs images the robust branch still classifies correctly under the selection "
                       f"attack and clean images it gets wrong; of {len(y)}, got {len(attacked_correct)} and "
                       f"{len(clean_incorrect)}: {fix}")
    if len(attacked_correct) < needed:
        warnings.warn(f"only {len(attacked_correct)} of the {len(y)} selection images are classified correctly under "
                      f"the selection attack, fewer than the {needed} it takes for their {100 - beta:g}th-percentile "
                      f"margin (the cutoff, hence alpha) to rest on more than the two lowest margins; {fix}",
                      stacklevel=2)
    selection = select_map(attacked_correct, clean_incorrect, beta=beta)
    record = {**selection.record(), "images": f"{images.source} (training images; the evaluation uses test images)",
              "attack": f"APGD-CE, then APGD-T ({target_classes} classes) on the images still standing, "
                        f"{n_iter} iterations each, Linf eps {eps_text(eps)}, on the robust branch alone; per image "
                        "the input of lowest margin met at any iterate",
              "commands": list(commands or [])}
    model = MixedNUTS(standard, robust, selection.alpha, selection.robust_map(), names=names,
                      attack_alpha=selection.attack_alpha, selection=record)
    return model, selection
