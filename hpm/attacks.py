"""Thin adapters over AutoAttack's own APGD and Square (``pyautoattack``) for the MSA protocol.

Nothing here re-implements an attack. The adapters only decide *what* an attack differentiates and
*where* success is judged (the paper's Mixed Surrogate Attack, Sec. 3.7 and supp. 6.3):

- :class:`AttackTarget` runs the backbone once per step and returns the logits of one or more
  surrogates (``fc`` oracle, ``soft`` hybrid, ``hard`` = the deployed model's straight-through gradient,
  i.e. BPDA). With several surrogates, APGD optimises the *sum* of their per-sample losses (the
  ensemble), still with one shared backbone forward/backward.
- On every iterate it also evaluates the **deployed** head on the same features (no extra backbone
  pass) and records, per sample, whether some iterate fooled the deployed model: APGD's own success
  test (on the surrogate) and its "return the clean image when not fooled" rule are bypassed.
- For batch-dependent heads, samples not under attack still take part in every forward pass through
  their cached clean features, so the deployed model always sees the full evaluation batch.
- A whole-batch attack (``batch:``) perturbs every row of the batch jointly. Its loss is clamped per row
  (:func:`clamp_rows`: a row whose surrogate margin exceeds ``kappa`` stops pulling the shared step, so rows
  already broken do not drown the rest), and every iterate is judged twice: as the perturbed batch, and each
  row's perturbation alone among the batch's other rows clean.
- AutoAttack's attacks draw their random numbers from PyTorch's process-wide generator. Every run is
  therefore made a pure function of its inputs and seed by :func:`hpm.rng.seeded`: one attack run at a time seeds
  that generator and gives the caller's generator state back afterwards (concurrent app requests queue here).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
from pyautoattack.square import SquareAttack
from torch import Tensor, nn

from .heads import HEADS
from .model import HPMClassifier
from .rng import seeded

NORMS = ("Linf", "L2")


@dataclass(frozen=True)
class AttackSpec:
    """One attack of the protocol."""

    name: str  # e.g. "apgd-ce/fc", "apgd-t/bpda", "batch:apgd-ce/ensemble", "square"
    kind: str  # a key of KINDS: "apgd" or "square"
    loss: str = "ce"  # APGD loss: "ce", "dlr", "margin" (C&W) or "dlr-targeted" (APGD-T: top wrong classes in turn)
    surrogates: tuple[str, ...] = ("hard",)  # modes whose summed loss APGD follows; "hard" = deployed (BPDA)
    whole_batch: bool = False  # perturb every image of the evaluation batch jointly (batch-dependent heads)

    @property
    def white_box(self) -> bool:
        return self.kind == "apgd"


LOSSES = ("ce", "dlr")  # of the default plan; parse_attacks also takes "t" (APGD-T, targeted DLR) and "margin"
ATTACK_LOSSES = {"ce": "ce", "dlr": "dlr", "t": "dlr-targeted", "margin": "margin"}  # apgd-NAME -> APGD's loss
PLAIN_TARGETS = {"deployed": ("hard",)}  # a plain classifier: attacked as it is


def apgd_targets(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """What APGD attacks on this model, as its head declares (:attr:`hpm.heads.Head.attack_targets`) or, for a
    model with modes of its own (e.g. :class:`hpm.mixed.MixedClassifier`), the model's ``attack_targets``:
    target name -> the forward modes whose summed loss APGD follows. A plain classifier: the model itself."""
    if isinstance(model, HPMClassifier):
        return dict(model.head.attack_targets)
    return dict(getattr(model, "attack_targets", PLAIN_TARGETS))


def accepted_targets(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """The targets :func:`parse_attacks` accepts: the declared ones, plus ``deployed`` (every model whose deployed
    forward has a gradient) and ``fc`` (every :class:`HPMClassifier` has its FC oracle) for experiments beyond the
    default plan."""
    extra = {**({"deployed": ("hard",)} if getattr(model, "deployed_differentiable", True) else {}),
             **({"fc": ("fc",)} if isinstance(model, HPMClassifier) else {})}
    return {**apgd_targets(model), **{k: v for k, v in extra.items() if k not in apgd_targets(model)}}


TARGETED_ON = ("fc", "bpda", "deployed")  # APGD-T in the default plan: the FC oracle and the deployed model


def default_plan(model: nn.Module, losses: tuple[str, ...] = LOSSES, square: bool = True,
                 targeted: bool = True) -> list[AttackSpec]:
    """The attacks for this model: the paper's MSA (APGD with each loss on each of :func:`apgd_targets`), then
    (``targeted``) APGD-T on the FC oracle and on the deployed model (through BPDA where the head has it; a model
    may name its own with ``targeted_on``, as :class:`hpm.Defence` does), then Square. ``targeted=False`` is the
    paper's protocol exactly."""
    targets = apgd_targets(model)
    plan = [AttackSpec(f"apgd-{loss}/{t}", "apgd", loss, modes) for t, modes in targets.items() for loss in losses]
    if targeted:
        plan += [AttackSpec(f"apgd-t/{t}", "apgd", ATTACK_LOSSES["t"], targets[t])
                 for t in getattr(model, "targeted_on", TARGETED_ON) if t in targets]
    return plan + ([AttackSpec("square", "square")] if square else [])


def parse_attacks(names: list[str], model: nn.Module) -> list[AttackSpec]:
    """``["apgd-ce/fc", "apgd-t/bpda", "batch:apgd-ce/ensemble", "square", ...]`` -> specs, validated against
    the model (targets: :func:`accepted_targets`).

    ``apgd-t/TARGET`` is AutoAttack's targeted APGD (APGD-T: the targeted DLR loss towards each of the top
    wrong classes of the deployed model in turn). ``batch:`` perturbs every image of the evaluation batch
    jointly, and applies only to batch-dependent heads. ``apgd-t`` (``apgd-ce``, ``apgd-dlr``) without a target
    stands for that attack on every target the model's default plan runs it on.
    """
    plan = [_parse_attack(one, model) for name in names for one in _on_default_targets(name, model)]
    twice = sorted({s.name for s in plan if sum(t.name == s.name for t in plan) > 1})
    if twice:
        raise ValueError(f"an attack is listed twice: {', '.join(twice)}")
    return plan


def _on_default_targets(name: str, model: nn.Module) -> list[str]:
    """``apgd-KIND`` without a target -> ``apgd-KIND/TARGET`` for each target of the default plan that runs it;
    any other name as it is."""
    if name.startswith("apgd-") and "/" not in name:
        names = [s.name for s in default_plan(model, square=False) if s.name.partition("/")[0] == name]
        return names or [name]
    return [name]


def _parse_attack(name: str, model: nn.Module) -> AttackSpec:
    targets = accepted_targets(model)
    known = {t for head in HEADS.values() for t in head.attack_targets} | {"deployed", "fc"} | set(targets)
    whole_batch = name.startswith("batch:")
    if whole_batch and not getattr(model, "batch_dependent", False):
        raise ValueError(f"attack {name!r}: whole-batch attacks apply only to batch-dependent models (declare "
                         "batch_dependent=True, or --batch-dependent, if its predictions depend on its batch)")
    kind, _, target = name.removeprefix("batch:").partition("/")
    if kind == "square" and not target:
        return AttackSpec(name, "square", whole_batch=whole_batch)
    loss = ATTACK_LOSSES.get(kind.removeprefix("apgd-")) if kind.startswith("apgd-") else None
    if loss is None or target not in known:
        raise ValueError(f"unknown attack {name!r}; use square, apgd-{{ce,dlr,t}} (on the default plan's targets) "
                         f"or apgd-{{ce,dlr,t,margin}}/TARGET (optionally after batch:) with a TARGET of "
                         f"{', '.join(sorted(known))}")
    if target not in targets:
        head = _model_text(model)
        raise ValueError(f"attack {name!r} does not apply to this model ({head}); its APGD targets are "
                         f"{', '.join(targets)}")
    return AttackSpec(name, "apgd", loss, targets[target], whole_batch)


def _model_text(model: nn.Module) -> str:
    """``an 'hpm' head``, ``'my defence'``: the model, for error messages."""
    if isinstance(model, HPMClassifier):
        return f"an {model.head_type!r} head"
    return repr(model.describe()["head"]) if hasattr(model, "describe") else f"a {type(model).__name__}"


class BatchFeatures:
    """Computes ``[B, k]`` scores of a batch whose rows are attacked, inside a fixed context: the batch's other
    samples (only batch-dependent models use it). An :class:`HPMClassifier` keeps them as cached features and
    runs only its head on them (``HPMClassifier.forward_head``); any other model's "features" are its images, and
    the attacked rows are put back at their places among the others (``rows``), so it sees the evaluation batch
    in its evaluation order.

    ``clean_rows [B, d]``: the clean features of the attacked rows themselves, given for a whole-batch attack so
    that each row can also be judged alone among the others clean (:meth:`scores_alone`).
    ``rows [n]`` (bool): which rows of the evaluation batch are attacked, the others being ``fixed_features`` in
    order (default: the attacked rows first).
    """

    def __init__(self, model: nn.Module, fixed_features: Tensor | None, clean_rows: Tensor | None = None,
                 rows: Tensor | None = None):
        self.model = model
        self.fixed = fixed_features if fixed_features is not None and len(fixed_features) else None
        self.clean_rows = clean_rows
        self.rows = rows
        self.hpm = isinstance(model, HPMClassifier)
        self.modal = not self.hpm and hasattr(model, "attack_targets")  # a model with forward modes of its own
        # judging each row alone costs a head pass per row for HPM, a whole forward pass per row otherwise: every
        # iterate for HPM, the end of every run otherwise
        self.alone_every_step = self.hpm

    def features(self, x: Tensor) -> Tensor:
        return self.model.forward_features(x) if self.hpm else x

    def scores(self, z: Tensor, mode: str) -> Tensor:
        """Scores of the attacked rows, computed inside the full batch (attacked + fixed rows)."""
        if self.hpm:
            return self.model.forward_head(z, mode=mode, context=self.fixed)
        if self.fixed is None:
            return self._call(z, mode)
        rows = self.rows if self.rows is not None else \
            torch.arange(len(z) + len(self.fixed), device=z.device) < len(z)
        return self._call(_assemble(z, self.fixed, rows), mode)[rows]

    def _call(self, x: Tensor, mode: str) -> Tensor:
        return self.model(x, mode=mode) if self.modal else self.model(x)

    @torch.no_grad()
    def scores_alone(self, z: Tensor, rows: Tensor) -> Tensor:
        """Deployed scores ``[len(rows), k]`` of each listed row's features ``z[i]`` inside the batch whose other
        rows are clean (``clean_rows``) and whose fixed rows are the context: one row perturbed at a time.

        One vectorised head pass over the ``len(rows)`` batches (``torch.func.vmap``, in chunks); a head whose
        forward vmap cannot trace (data-dependent control flow) is run row by row instead."""
        assert self.clean_rows is not None, "scores_alone needs the attacked rows' clean features"
        if not self.hpm:
            return self._scores_alone_by_forward(z, rows)
        clean = self.clean_rows if self.fixed is None else torch.cat([self.clean_rows, self.fixed])  # [m, d]
        masks = torch.zeros(len(rows), len(clean), dtype=torch.bool, device=clean.device)
        masks[torch.arange(len(rows)), rows.to(clean.device)] = True  # [r, m]: the row swapped in

        def one(mask: Tensor, row: Tensor) -> Tensor:
            swapped = torch.where(mask[:, None], row[None], clean)  # [m, d]
            return (self.model.forward_head(swapped, mode="hard") * mask[:, None]).sum(0)  # [k]: that row's scores

        try:
            return torch.func.vmap(one, chunk_size=64)(masks, z[rows])
        except RuntimeError:  # vmap cannot trace this head
            return torch.stack([one(mask, row) for mask, row in zip(masks, z[rows])])

    def _scores_alone_by_forward(self, x: Tensor, rows: Tensor) -> Tensor:
        """:meth:`scores_alone` for a model without a head of its own: one forward pass of the whole batch per
        listed row, that row perturbed (``x``), the others clean."""
        out = []
        for row in rows.tolist():
            batch = self.clean_rows.clone()
            batch[row] = x[row]
            out.append(self.scores(batch, "hard")[row])
        return torch.stack(out)


def _assemble(attacked: Tensor, fixed: Tensor, rows: Tensor) -> Tensor:
    """The evaluation batch ``[n, ...]``: ``attacked`` at the ``rows`` (bool ``[n]``), ``fixed`` at the others;
    differentiable in ``attacked``."""
    full = fixed.new_zeros((len(rows), *fixed.shape[1:]))
    full = full.index_put((rows.nonzero().flatten(),), attacked)
    return full.index_put(((~rows).nonzero().flatten(),), fixed)


class BreakRecorder:
    """Per-sample record of whether some iterate made the deployed model misclassify it."""

    def __init__(self, y: Tensor):
        self.y = y
        self.broken = torch.zeros_like(y, dtype=torch.bool)
        self.witness: Tensor | None = None  # the first fooling image per sample

    @torch.no_grad()
    def update(self, x: Tensor, deployed_scores: Tensor) -> None:
        """Record the rows of ``x`` that ``deployed_scores [B, k]`` misclassify."""
        self._mark(x, ((deployed_scores.argmax(1) != self.y) & ~self.broken).nonzero().flatten())

    @torch.no_grad()
    def update_alone(self, x: Tensor, z: Tensor, batch: BatchFeatures) -> None:
        """Judge each row not yet broken with only its own perturbation (features ``z``), the batch's other rows
        clean: an adversary who controls the batch may perturb one image only."""
        pending = (~self.broken).nonzero().flatten()
        if len(pending):
            fooled = batch.scores_alone(z.detach(), pending).argmax(1) != self.y[pending]
            self._mark(x, pending[fooled])

    def _mark(self, x: Tensor, rows: Tensor) -> None:
        if len(rows):
            if self.witness is None:
                self.witness = torch.zeros_like(x)
            self.witness[rows] = x.detach()[rows]
            self.broken[rows] = True


class AttackTarget(nn.Module):
    """What APGD differentiates: flattened surrogate logits ``[B, S*k]``; records deployed breaks, on the last of
    every ``judge_every`` passes (with expectation over transformation, APGD's passes of one step come in groups
    of ``eot_iter``, and AutoAttack judges a step on one of them)."""

    def __init__(self, batch: BatchFeatures, surrogates: tuple[str, ...], recorder: BreakRecorder,
                 on_step: Callable[[], None] | None = None, judge_every: int = 1):
        super().__init__()
        self.batch, self.surrogates, self.recorder, self.on_step = batch, surrogates, recorder, on_step
        self.judge_every, self.passes = judge_every, 0

    def forward(self, x: Tensor) -> Tensor:
        z = self.batch.features(x)  # one backbone pass shared by every surrogate
        logits = [self.batch.scores(z, mode) for mode in self.surrogates]  # S x [B, k]
        self.passes += 1
        if self.passes % self.judge_every:
            if self.on_step is not None:
                self.on_step()
            return torch.cat(logits, 1)
        with torch.no_grad():
            deployed = logits[self.surrogates.index("hard")] if "hard" in self.surrogates \
                else self.batch.scores(z.detach(), "hard")
            self.recorder.update(x, deployed)
            if self.batch.clean_rows is not None and self.batch.alone_every_step:
                self.recorder.update_alone(x, z, self.batch)
        if self.on_step is not None:
            self.on_step()
        return torch.cat(logits, 1)


def margin(logits: Tensor, y: Tensor) -> Tensor:
    """Carlini & Wagner's margin ``max_{j != y} z_j - z_y`` per row ``[B]``: positive exactly when misclassified."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    return logits.scatter(1, y[:, None], float("-inf")).amax(1) - true


def clamp_rows(loss: Tensor, logits: Tensor, y: Tensor, kappa: float | None) -> Tensor:
    """Per-row loss ``[B]`` of a whole-batch attack: rows whose margin on these ``logits`` exceeds ``kappa`` keep
    their loss value but stop pulling the step (no gradient), so the joint step serves the rows still standing.
    ``kappa=None``: unclamped."""
    if kappa is None:
        return loss
    return torch.where(margin(logits, y) > kappa, loss.detach(), loss)


class SummedLossAPGDT(APGDAttack_targeted):
    """AutoAttack's targeted APGD (APGD-T), following the sum over surrogates of its targeted DLR loss
    towards ``self.y_target`` (set per target class by :func:`run_apgd`), clamped per row at ``kappa``."""

    def __init__(self, target: AttackTarget, num_classes: int, kappa: float | None = None, **kwargs):
        super().__init__(target, **kwargs)
        self.num_classes, self.kappa = num_classes, kappa

    def dlr_loss_targeted(self, x: Tensor, y: Tensor) -> Tensor:
        parts = x.view(x.shape[0], -1, self.num_classes).unbind(1)  # S x [B, k]
        return sum(clamp_rows(APGDAttack_targeted.dlr_loss_targeted(self, p, y), p, y, self.kappa) for p in parts)


class SummedLossAPGD(APGDAttack):
    """AutoAttack's APGD, unchanged, following the sum over surrogates of its own per-sample loss.

    ``attack_single_run`` picks its criterion from ``self.loss``; we run it with ``loss="dlr"`` and
    override ``dlr_loss`` (the hook APGD calls) to split the target's ``[B, S*k]`` output into the S
    surrogates' logits and add APGD's CE or DLR loss, or the C&W margin, of each. With one surrogate and no
    ``kappa`` this is exactly APGD-CE or APGD-DLR; ``kappa`` clamps every row (:func:`clamp_rows`).
    """

    def __init__(self, target: AttackTarget, num_classes: int, objective: str, kappa: float | None = None,
                 **kwargs):
        super().__init__(target, loss="dlr", **kwargs)
        self.num_classes, self.objective, self.kappa = num_classes, objective, kappa

    def dlr_loss(self, x: Tensor, y: Tensor) -> Tensor:
        parts = x.view(x.shape[0], -1, self.num_classes).unbind(1)  # S x [B, k]
        return sum(clamp_rows(self._objective(p, y), p, y, self.kappa) for p in parts)

    def _objective(self, logits: Tensor, y: Tensor) -> Tensor:
        if self.objective == "ce":
            return F.cross_entropy(logits, y, reduction="none")
        if self.objective == "margin":
            return margin(logits, y)
        return APGDAttack.dlr_loss(self, logits, y)


@dataclass
class AttackOutcome:
    """What one attack found: which samples fool the deployed model, and an adversarial image per sample."""

    broken: Tensor  # [B] bool: some adversarial batch made the deployed model misclassify the sample
    x_adv: Tensor  # [B, C, H, W]: the first fooling image where broken, else the attack's best (highest-loss) one


def run_apgd(spec: AttackSpec, batch: BatchFeatures, x: Tensor, y: Tensor, *, norm: str, eps: float, n_iter: int,
             n_restarts: int, seed: int, num_classes: int, on_step: Callable[[], None] | None = None,
             keep_first_break: bool = True, n_targets: int = 9, kappa: float | None = None,
             eot_iter: int = 1) -> AttackOutcome:
    """APGD on ``x`` (all rows attacked together), success judged on the deployed model at every iterate.

    ``on_step`` is called after every forward pass of the attack (``n_iter + 1`` per restart, and per target
    class for APGD-T, which attacks the ``n_targets`` top wrong classes in turn; ``eot_iter`` times as many with
    APGD's expectation over transformation, its gradient averaged over that many passes, the last of which judges
    the step, as in AutoAttack).
    ``keep_first_break=False`` returns APGD's (last run's) highest-loss iterate for every sample.
    ``kappa`` clamps each row's loss at that margin (:func:`clamp_rows`; whole-batch attacks).
    """
    x = x.contiguous()  # AutoAttack reshapes gradients with .view
    recorder = BreakRecorder(y)
    target = AttackTarget(batch, spec.surrogates, recorder, on_step, judge_every=eot_iter)
    targeted = spec.loss == "dlr-targeted"
    common = dict(n_iter=n_iter, norm=norm, eps=eps, n_restarts=1, seed=seed, device=x.device, eot_iter=eot_iter)
    apgd = SummedLossAPGDT(target, num_classes, kappa, n_target_classes=n_targets, **common) if targeted \
        else SummedLossAPGD(target, num_classes, spec.loss, kappa, **common)
    apgd.init_hyperparam(x)
    with torch.no_grad():  # APGD-T's targets: the deployed model's top wrong classes on the clean batch
        ranking = batch.scores(batch.features(x), "hard").argsort(1) if targeted else None
    x_best = x
    for target_rank in range(2, n_targets + 2) if targeted else [None]:
        if targeted:
            apgd.y_target = ranking[:, -target_rank]
        for restart in range(n_restarts):
            with seeded(seed + restart, x.device):
                x_best, *_ = apgd.attack_single_run(x, y)
            if batch.clean_rows is not None and not batch.alone_every_step:  # each row alone, on the run's end
                with torch.no_grad():
                    recorder.update_alone(x_best, batch.features(x_best), batch)
    x_adv = x_best.detach().clone()
    if keep_first_break and recorder.witness is not None:
        x_adv[recorder.broken] = recorder.witness[recorder.broken]
    return AttackOutcome(recorder.broken, x_adv)


def run_square(spec: AttackSpec, batch: BatchFeatures, x: Tensor, y: Tensor, *, norm: str, eps: float,
               n_queries: int, seed: int, p_init: float = 0.8,
               on_step: Callable[[], None] | None = None) -> AttackOutcome:
    """Square (AutoAttack's) against the deployed model; its best images are judged on the full batch (and, when
    ``batch.clean_rows`` is given, each row alone among the others clean).

    ``on_step`` is called after every query round (about ``n_queries`` times).
    """

    def predict(images: Tensor) -> Tensor:
        with torch.no_grad():
            scores = batch.scores(batch.features(images), "hard")
        if on_step is not None:
            on_step()
        return scores

    x = x.contiguous()
    square = SquareAttack(predict, norm=norm, n_queries=n_queries, eps=eps, p_init=p_init, n_restarts=1,
                          seed=seed, device=x.device, loss="margin")
    square.init_hyperparam(x)
    with seeded(seed, x.device), torch.no_grad():
        _, x_best = square.attack_single_run(x, y)
        recorder = BreakRecorder(y)
        z = batch.features(x_best)
        recorder.update(x_best, batch.scores(z, "hard"))  # the whole batch at once: a witness
        if batch.clean_rows is not None:
            recorder.update_alone(x_best, z, batch)
    return AttackOutcome(recorder.broken, x_best)


def _apgd(spec: AttackSpec, batch: BatchFeatures, x: Tensor, y: Tensor, budget: dict, num_classes: int,
          on_step: Callable[[], None] | None) -> AttackOutcome:
    return run_apgd(spec, batch, x, y, norm=budget["norm"], eps=budget["eps"], n_iter=budget["n_iter"],
                    n_restarts=budget["n_restarts"], seed=budget["seed"], num_classes=num_classes, on_step=on_step,
                    n_targets=min(budget["n_target_classes"], num_classes - 1),
                    kappa=budget["batch_kappa"] if spec.whole_batch else None, eot_iter=budget["eot_iter"])


def _square(spec: AttackSpec, batch: BatchFeatures, x: Tensor, y: Tensor, budget: dict, num_classes: int,
            on_step: Callable[[], None] | None) -> AttackOutcome:
    return run_square(spec, batch, x, y, norm=budget["norm"], eps=budget["eps"], n_queries=budget["square_queries"],
                      seed=budget["seed"], on_step=on_step)


KINDS: dict[str, Callable[..., AttackOutcome]] = {"apgd": _apgd, "square": _square}  # AttackSpec.kind -> runner


def run_attack(spec: AttackSpec, batch: BatchFeatures, x: Tensor, y: Tensor, *, norm: str, eps: float,
               n_iter: int = 100, n_restarts: int = 1, eot_iter: int = 1, square_queries: int = 5000,
               n_target_classes: int = 9, seed: int = 0, batch_kappa: float | None = None, num_classes: int,
               on_step: Callable[[], None] | None = None) -> AttackOutcome:
    """Run one attack of a plan on ``x`` (every row attacked together), judged on the deployed model.

    Args:
        spec: the attack (:func:`default_plan`, :func:`parse_attacks`); its ``kind`` picks the runner in
            :data:`KINDS`.
        batch: the model and the fixed rows of the evaluation batch.
        norm, eps: the threat model; n_iter, n_restarts, eot_iter: APGD's budget (eot_iter forward passes
            averaged per step); square_queries: Square's;
            n_target_classes: how many top wrong classes APGD-T targets in turn (AutoAttack: 9).
        seed: the attack's seed.
        batch_kappa: a whole-batch APGD's per-row clamp (:func:`clamp_rows`); None: its loss unclamped.
        on_step: called after every forward pass (APGD) or query round (Square).
    """
    if spec.kind not in KINDS:
        raise ValueError(f"unknown attack kind {spec.kind!r}; one of {', '.join(KINDS)}")
    budget = {"norm": norm, "eps": eps, "n_iter": n_iter, "n_restarts": n_restarts, "eot_iter": eot_iter,
              "square_queries": square_queries, "n_target_classes": n_target_classes, "seed": seed,
              "batch_kappa": batch_kappa}
    return KINDS[spec.kind](spec, batch, x, y, budget, num_classes, on_step)
