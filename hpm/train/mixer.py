"""Training the mixing network of an adaptive mixed classifier (Bai et al.'s adaptive smoothing); both branches
stay frozen.

Each step takes a batch of augmented training images and finds adversarial versions of them end to end through
the mixture, with an attack that also tries to fool the mixing network: it ascends, per sample,
``(1 - w) L + w BCE(γ, 1)`` with ``w ~ U(0, attack_bce_max)`` (the second term pushes α towards the standard
branch). Then one AdamW step on the clean and the adversarial images together, in one batch for the mixer's
batch norm::

    loss_i = weight_i (bce · BCE(γ_i, s_i) + ce · CE_i + product · BCE_i · CE_i)

with ``s = 0`` for clean images (lean on the accurate standard branch) and ``s = 1`` for adversarial ones (lean
on the robust branch), ``weight`` 2 for clean and 1 for adversarial images: the authors' CIFAR-10
adversarial-training configuration. Two training attacks:

* ``attack="apgd"``, the authors': AutoAttack's APGD, one cross-entropy and ``target_classes`` targeted-DLR runs
  per image at random radii and iteration counts (:mod:`hpm.train.mixer_attack`), so each clean image comes
  with ``1 + target_classes`` adversarial ones; with ``warmup`` the learning rate also rises as theirs does;
* ``attack="pgd"``, hpm's CPU budget: hpm's l_inf PGD with ``steps`` steps at the full radius from a random
  start, cross-entropy only, one adversarial image per clean one.

The learning rate follows a cosine schedule to 0, times ``1 - exp(-(t + 1) / (warmup · total steps))`` at step
``t`` when ``warmup`` is positive (the authors' exponential warm-up, with a time constant of 1/25 of the steps).

The mixing network trains in training mode (its batch norm on batch statistics, its raw outputs clamped,
``α = sigmoid(γ)``: :class:`hpm.mixed.MixingNetwork`); the attack runs it in evaluation mode with the training
constants (``MixingNetwork.attacked_in_training``), as the authors do: evaluation constants chosen for deployment
never shape the training attack. With ``attack_full_alpha`` (the authors' recipe) the attack also sees α = sigmoid(γ)
over all of (0, 1), as their ``eval(scale_alpha=False)`` does, so its BCE term can push α below the deployed range.

A short run leaves the mixing network's batch-norm running statistics mostly at their initial values (the output
norm moves by 1% a step, as the authors set it for their 50,000 × 5 epochs): with ``recalibrate_steps`` the images
of the last epoch's final steps (clean and adversarial, as trained on; kept in ``OUT``) recompute them afterwards as
cumulative averages in training mode (:func:`torch.optim.swa_utils.update_bn`), the branches untouched.

Training resumes from ``OUT/mixer-state.pt`` (loaded with ``weights_only=True``), written at the end of each
epoch and every ``save_seconds`` within one; ``OUT/mixer-history.json`` keeps each epoch's loss, accuracies and
mean training-mode α on clean and adversarial images.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.optim.swa_utils import update_bn

from ..data import ImageTensorDataset
from ..devices import resolve
from ..errors import HPMError
from ..mixed import MixedClassifier
from ..progress import progress_bar
from .mixer_attack import RandomizedAttack, fooling_the_mixer, randomized_apgd
from .pgd import linf_pgd, uniform_start
from .scratch import augment, hardware
from .state import load_state, recipe, save_state

STATE_FILE = "mixer-state.pt"
HISTORY_FILE = "mixer-history.json"
FREE_WHEN_RESUMING = ("save_seconds",)  # options a resumed run may change


@dataclass
class MixerConfig:
    """The mixing network's training recipe (Bai et al.'s CIFAR-10 values unless said otherwise)."""

    epochs: int = 1  # passes over the training images (theirs: 5)
    batch_size: int = 128  # clean images per step; each step trains on their adversarial versions too
    lr: float = 1e-4  # AdamW learning rate, cosine-annealed to 0
    weight_decay: float = 1e-5
    warmup: float = 0.0  # time constant of the exponential warm-up, as a share of all steps (theirs: 1/25)
    eps: float = 8 / 255  # l_inf radius of the training attack
    attack: str = "pgd"  # "apgd": the authors' randomized APGD; "pgd": hpm's CPU budget
    steps: int = 5  # pgd: steps of the training attack
    step_size: float | None = None  # pgd: step; None: 2.5 eps / steps
    target_classes: int = 9  # apgd: targeted-DLR runs after the cross-entropy one
    radius_range: tuple[float, float] = (0.4, 1.1)  # apgd: per-sample factor on eps, uniform
    iters_df: float = 75.0  # apgd: degrees of freedom of the chi-squared number of iterations per run
    bce: float = 1.0  # weight of BCE(γ, s)
    ce: float = 0.5  # weight of the mixture's cross-entropy
    product: float = 0.1  # weight of BCE * CE
    clean_weight: float = 2.0  # clean images count twice
    attack_bce_max: float = 0.4  # the attack's per-sample weight on fooling the mixer, drawn from U(0, this)
    attack_full_alpha: bool = False  # the attack sees α = sigmoid(γ) unshrunk (the authors'); False: alpha_range
    grad_clip: float = 10.0  # max gradient norm
    seed: int = 0  # data order, augmentation, attack starts, radii, iterations and weights
    save_seconds: float = 600.0  # a resumable state at least this often within an epoch
    recalibrate_steps: int = 0  # the mixer's batch-norm statistics recomputed on the last epoch's final N steps

    def __post_init__(self):
        if self.attack not in ("apgd", "pgd"):
            raise HPMError(f"the mixer's training attack is 'apgd' (the authors') or 'pgd' (hpm's CPU budget); got "
                           f"{self.attack!r}")
        if self.attack == "apgd":
            self.randomized_attack()  # checks its values now, not after hours
        if not 0 <= self.warmup < 1:
            raise HPMError(f"warmup is a share of the training steps in [0, 1); got {self.warmup}")
        if self.recalibrate_steps < 0:
            raise HPMError(f"recalibrate_steps must be >= 0; got {self.recalibrate_steps}")

    def resolved_step_size(self) -> float:
        return self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps

    def randomized_attack(self) -> RandomizedAttack:
        """The authors' training attack with this recipe's values."""
        try:
            return RandomizedAttack(eps=self.eps, target_classes=self.target_classes,
                                    radius_range=tuple(self.radius_range), iters_df=self.iters_df,
                                    bce_max=self.attack_bce_max)
        except ValueError as error:
            raise HPMError(f"the training attack: {error}") from None


def mixer_loss(log_probs: Tensor, gamma: Tensor, labels: Tensor, use_robust: Tensor, weights: Tensor,
               config: MixerConfig) -> Tensor:
    """``mean_i weight_i (bce · BCE(γ_i, s_i) + ce · CE_i + product · BCE_i · CE_i)`` (module docstring)."""
    bce = F.binary_cross_entropy_with_logits(gamma, use_robust, reduction="none")
    ce = F.nll_loss(log_probs, labels, reduction="none")
    return (weights * (config.bce * bce + config.ce * ce + config.product * bce * ce)).mean()


def adversarial_for_mixer(model: MixedClassifier, x: Tensor, y: Tensor, config: MixerConfig,
                          generator: torch.Generator) -> list[Tensor]:
    """The adversarial batches of ``x`` the recipe's attack makes through the whole mixture, one per run: the
    authors' randomized APGD (:func:`hpm.train.mixer_attack.randomized_apgd`) or PGD on
    ``(1 − w) CE + w BCE(γ, 1)``."""
    if config.attack == "apgd":
        return randomized_apgd(model, x, y, config.randomized_attack(), generator)
    w = (torch.rand(len(y), generator=generator) * config.attack_bce_max).to(x.device)

    def loss(x_adv: Tensor) -> Tensor:
        log_probs, gamma = model.mix(x_adv)
        return fooling_the_mixer(F.nll_loss(log_probs, y, reduction="none"), gamma, w).sum()

    return [linf_pgd(loss, x, uniform_start(x, config.eps, generator), eps=config.eps,
                     step=config.resolved_step_size(), steps=config.steps)]


def _step(model: MixedClassifier, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, config: MixerConfig,
          generator: torch.Generator) -> tuple[Tensor, dict]:
    with model.mixer.attacked_in_training(config.attack_full_alpha):
        adversarial = adversarial_for_mixer(model, x, y, config, generator)
    model.mixer.train()
    n, m = len(y), len(y) * len(adversarial)
    images = torch.cat([x, *adversarial])
    log_probs, gamma = model.mix(images)
    labels = y.repeat(1 + len(adversarial))
    use_robust = torch.cat([torch.zeros(n), torch.ones(m)]).to(x.device)
    weights = torch.cat([torch.full((n,), config.clean_weight), torch.ones(m)]).to(x.device)
    loss = mixer_loss(log_probs, gamma, labels, use_robust, weights, config)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.mixer.parameters(), config.grad_clip)
    opt.step()
    with torch.no_grad():
        alpha = model.mixer.alpha(gamma)
        correct = log_probs.argmax(1) == labels
    return images.detach(), {"loss": loss.item() * (n + m), "images": n + m, "clean": n, "adversarial": m,
                             "clean_correct": correct[:n].sum().item(), "adv_correct": correct[n:].sum().item(),
                             "alpha_clean": alpha[:n].sum().item(), "alpha_adv": alpha[n:].sum().item()}


def _schedule(opt: torch.optim.Optimizer, total: int, warmup: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Cosine annealing to 0 over ``total`` steps, times the exponential warm-up ``1 - exp(-(t + 1) / τ)`` with
    ``τ = warmup · total`` (none at 0)."""
    tau = warmup * total

    def factor(t: int) -> float:
        rise = 1.0 - math.exp(-(t + 1) / tau) if tau > 0 else 1.0
        return rise * 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _save(out: Path, model: MixedClassifier, opt, schedule, config: MixerConfig, data: str, position: dict) -> None:
    """Write the resumable state atomically: a kill keeps the previous one."""
    state = {"mixer": model.mixer.state_dict(), "optimizer": opt.state_dict(), "schedule": schedule.state_dict(),
             "config": recipe(config, free=FREE_WHEN_RESUMING), "data": data, "position": json.dumps(position)}
    save_state(state, out / STATE_FILE)


def _resume(out: Path, model: MixedClassifier, opt: torch.optim.Optimizer, schedule, config: MixerConfig,
            data: str, device: torch.device) -> dict:
    """The position to resume from (epoch, step within it, the epoch's running totals, the generator's state),
    with the mixer, the optimizer and the schedule restored; a fresh start without a state file."""
    path = out / STATE_FILE
    if not path.exists():
        return {"epoch": 0, "step": 0, "totals": {}, "generator": None}
    state = load_state(path, config, device, free=FREE_WHEN_RESUMING)
    if state.get("data") != data:
        raise HPMError(f"{path} was written for other training images ({state.get('data')} then, {data} now); resume "
                       "with the same data or use a new run directory")
    try:
        model.mixer.load_state_dict(state["mixer"])
    except RuntimeError as error:
        raise HPMError(f"{path} holds a mixing network of another layout; resume with the same options or use a "
                       f"new run directory ({str(error).splitlines()[0]})") from None
    opt.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    return json.loads(state["position"])


def _epoch_record(epoch: int, totals: dict, seconds: float, device: torch.device) -> dict:
    """One epoch of ``mixer-history.json``: means over its clean and its adversarial images."""
    return {"epoch": epoch, "loss": totals["loss"] / totals["images"],
            "clean_accuracy": totals["clean_correct"] / totals["clean"],
            "adversarial_accuracy": totals["adv_correct"] / totals["adversarial"],
            "mean_alpha_clean": totals["alpha_clean"] / totals["clean"],
            "mean_alpha_adversarial": totals["alpha_adv"] / totals["adversarial"],
            "seconds": seconds, "hardware": hardware(device)}


def train_mixer(model: MixedClassifier, dataset: ImageTensorDataset, config: MixerConfig, out_dir: str | Path, *,
                device: torch.device | str | None = None, progress: bool = True) -> list[dict]:
    """Train ``model.mixer`` (the branches stay frozen) on ``dataset``; resumes from ``out_dir``.

    Returns:
        The per-epoch history: loss, clean and adversarial accuracy of the mixture, mean α on each.
    """
    if model.mixer is None:
        raise HPMError("this mixed classifier has a fixed alpha; give it a MixingNetwork to train")
    device = resolve(device, model)
    model.to(device).eval()
    model.standard.requires_grad_(False)
    model.robust.requires_grad_(False)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    steps = len(dataset) // config.batch_size
    if steps == 0:
        raise HPMError(f"batch size {config.batch_size} exceeds the {len(dataset)} training images")
    opt = torch.optim.AdamW(model.mixer.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = _schedule(opt, steps * config.epochs, config.warmup)
    data = f"{dataset.source} ({len(dataset)} images)"
    position = _resume(out, model, opt, schedule, config, data, device)
    history = json.loads((out / HISTORY_FILE).read_text())[:position["epoch"]] if position["epoch"] else []
    for epoch in range(position["epoch"], config.epochs):
        gen = torch.Generator().manual_seed(config.seed * 1000 + epoch)
        order = torch.randperm(len(dataset), generator=gen)[: steps * config.batch_size].split(config.batch_size)
        first, totals = 0, {}
        if position["epoch"] == epoch and position["step"]:  # inside this epoch: its totals and random state
            first, totals = position["step"], position["totals"]
            gen.set_state(torch.tensor(position["generator"], dtype=torch.uint8))
        started, saved = time.time() - totals.get("seconds", 0.0), time.time()
        bar = progress_bar(range(first, steps), desc=f"mixer epoch {epoch + 1}/{config.epochs}",
                           disable=not progress, unit="batch", initial=first, total=steps)
        for step in bar:
            x, y = dataset.tensors(order[step])
            images, stats = _step(model, opt, augment(x, gen).to(device), y.to(device), config, gen)
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + value
            if epoch + 1 == config.epochs and step >= steps - config.recalibrate_steps:
                save_file({"images": images.cpu().contiguous()}, str(_recalibration_file(out, step)))
            schedule.step()
            if time.time() - saved > config.save_seconds and step + 1 < steps:
                totals["seconds"] = time.time() - started
                _save(out, model, opt, schedule, config, data, {"epoch": epoch, "step": step + 1, "totals": totals,
                                                                 "generator": gen.get_state().tolist()})
                saved = time.time()
        history.append(_epoch_record(epoch + 1, totals, time.time() - started, device))
        (out / HISTORY_FILE).write_text(json.dumps(history, indent=2) + "\n")
        _save(out, model, opt, schedule, config, data, {"epoch": epoch + 1, "step": 0, "totals": {}, "generator": None})
    if config.recalibrate_steps:
        steps_kept = range(max(steps - config.recalibrate_steps, 0), steps)
        recalibrate_norms(model, (load_file(str(_recalibration_file(out, step)))["images"].to(device)
                                  for step in steps_kept))  # one batch in memory at a time
    model.eval()
    return history


def _recalibration_file(out: Path, step: int) -> Path:
    return out / f"recalibration-{step:06d}.safetensors"


class _MixingPass(nn.Module):
    """The mixture's forward pass with only its mixing network as a submodule (so that ``update_bn`` resets and
    trains only its norms)."""

    def __init__(self, model: MixedClassifier):
        super().__init__()
        self.mixer, self._mix = model.mixer, model.mix

    def forward(self, x: Tensor) -> Tensor:
        return self._mix(x)[1]


@torch.no_grad()
def recalibrate_norms(model: MixedClassifier, batches: Iterable[Tensor]) -> None:
    """The mixing network's batch-norm running statistics recomputed as cumulative averages over ``batches`` (each
    ``[B, C, H, W]``, as trained on) in training mode; the branches and every weight untouched."""
    update_bn(batches, _MixingPass(model))
    model.mixer.eval()
