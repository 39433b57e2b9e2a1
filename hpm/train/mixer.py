"""Training the mixing network of an adaptive mixed classifier (Bai et al.'s adaptive smoothing); both branches
stay frozen.

Each step takes a batch of augmented training images and finds adversarial versions of them end to end through
the mixture, with an attack that also tries to fool the mixing network: it ascends, per sample,
``(1 - w) CE(log p(x), y) + w BCE(γ, 1)`` with ``w ~ U(0, attack_bce_max)`` (the second term pushes α towards the
standard branch). Then one AdamW step on the clean and the adversarial images together, in one batch for the
mixer's batch norm::

    loss_i = weight_i (bce · BCE(γ_i, s_i) + ce · CE_i + product · BCE_i · CE_i)

with ``s = 0`` for clean images (lean on the accurate standard branch) and ``s = 1`` for adversarial ones (lean
on the robust branch), ``weight`` 2 for clean and 1 for adversarial images: the authors' CIFAR-10
adversarial-training configuration. Where hpm differs, for a CPU budget: the training attack is hpm's l_inf PGD
with ``steps`` steps at the full radius from a random start (the authors run AutoAttack's APGD, about 75
iterations, one untargeted and nine targeted runs, at random radii), and the learning rate follows a cosine
schedule without warm-up.

The mixing network trains in training mode (its batch norm on batch statistics, its raw outputs clamped,
``α = sigmoid(γ)``: :class:`hpm.mixed.MixingNetwork`); the attack runs it in evaluation mode, as deployed.

Training resumes per epoch from ``OUT/mixer-state.pt`` (loaded with ``weights_only=True``); ``OUT/mixer-history.json``
keeps each epoch's loss, accuracies and mean training-mode α on clean and adversarial images.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import ImageTensorDataset
from ..devices import resolve
from ..errors import HPMError
from ..mixed import MixedClassifier
from ..progress import progress_bar
from .pgd import linf_pgd, uniform_start
from .scratch import augment, hardware

STATE_FILE = "mixer-state.pt"
HISTORY_FILE = "mixer-history.json"


@dataclass
class MixerConfig:
    """The mixing network's training recipe (Bai et al.'s CIFAR-10 values unless said otherwise)."""

    epochs: int = 1  # passes over the training images (theirs: 5)
    batch_size: int = 128  # clean images per step; each step trains on as many adversarial ones too
    lr: float = 1e-4  # AdamW learning rate, cosine-annealed to 0
    weight_decay: float = 1e-5
    eps: float = 8 / 255  # l_inf radius of the training attack
    steps: int = 5  # PGD steps of the training attack (hpm's CPU budget)
    step_size: float | None = None  # PGD step; None: 2.5 eps / steps
    bce: float = 1.0  # weight of BCE(γ, s)
    ce: float = 0.5  # weight of the mixture's cross-entropy
    product: float = 0.1  # weight of BCE * CE
    clean_weight: float = 2.0  # clean images count twice
    attack_bce_max: float = 0.4  # the attack's per-sample weight on fooling the mixer, drawn from U(0, this)
    grad_clip: float = 10.0  # max gradient norm
    seed: int = 0  # data order, augmentation, PGD starts and attack weights

    def resolved_step_size(self) -> float:
        return self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps


def mixer_loss(log_probs: Tensor, gamma: Tensor, labels: Tensor, use_robust: Tensor, weights: Tensor,
               config: MixerConfig) -> Tensor:
    """``mean_i weight_i (bce · BCE(γ_i, s_i) + ce · CE_i + product · BCE_i · CE_i)`` (module docstring)."""
    bce = F.binary_cross_entropy_with_logits(gamma, use_robust, reduction="none")
    ce = F.nll_loss(log_probs, labels, reduction="none")
    return (weights * (config.bce * bce + config.ce * ce + config.product * bce * ce)).mean()


def adversarial_for_mixer(model: MixedClassifier, x: Tensor, y: Tensor, config: MixerConfig,
                          generator: torch.Generator) -> Tensor:
    """PGD through the whole mixture (mixer in eval mode) on ``(1 - w) CE + w BCE(γ, 1)``, per sample."""
    w = (torch.rand(len(y), generator=generator) * config.attack_bce_max).to(x.device)

    def loss(x_adv: Tensor) -> Tensor:
        log_probs, gamma = model.mix(x_adv)
        fool_mixer = F.binary_cross_entropy_with_logits(gamma, torch.ones_like(gamma), reduction="none")
        return ((1 - w) * F.nll_loss(log_probs, y, reduction="none") + w * fool_mixer).sum()

    return linf_pgd(loss, x, uniform_start(x, config.eps, generator), eps=config.eps,
                    step=config.resolved_step_size(), steps=config.steps)


def _step(model: MixedClassifier, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, config: MixerConfig,
          generator: torch.Generator) -> dict:
    model.mixer.eval()
    x_adv = adversarial_for_mixer(model, x, y, config, generator)
    model.mixer.train()
    n = len(y)
    log_probs, gamma = model.mix(torch.cat([x, x_adv]))
    use_robust = torch.cat([torch.zeros(n), torch.ones(n)]).to(x.device)
    weights = torch.cat([torch.full((n,), config.clean_weight), torch.ones(n)]).to(x.device)
    loss = mixer_loss(log_probs, gamma, torch.cat([y, y]), use_robust, weights, config)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.mixer.parameters(), config.grad_clip)
    opt.step()
    with torch.no_grad():
        alpha = model.mixer.alpha(gamma)
        correct = log_probs.argmax(1) == torch.cat([y, y])
    return {"loss": loss.item() * 2 * n, "clean_correct": correct[:n].sum().item(),
            "adv_correct": correct[n:].sum().item(), "alpha_clean": alpha[:n].sum().item(),
            "alpha_adv": alpha[n:].sum().item()}


def _resume(out: Path, model: MixedClassifier, opt: torch.optim.Optimizer, schedule, config: MixerConfig,
            device: torch.device) -> tuple[int, list[dict]]:
    path = out / STATE_FILE
    if not path.exists():
        return 0, []
    state = torch.load(path, map_location=device, weights_only=True)
    if json.loads(state["config"]) != json.loads(json.dumps(asdict(config))):
        raise HPMError(f"{path} was written with a different recipe; resume with the same options or use a new "
                       "run directory")
    model.mixer.load_state_dict(state["mixer"])
    opt.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    history = json.loads((out / HISTORY_FILE).read_text())[:state["epoch"]]
    return state["epoch"], history


def train_mixer(model: MixedClassifier, dataset: ImageTensorDataset, config: MixerConfig, out_dir: str | Path, *,
                device: torch.device | str | None = None, progress: bool = True) -> list[dict]:
    """Train ``model.mixer`` (the branches stay frozen) on ``dataset``; resumes from ``out_dir`` per epoch.

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
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps * config.epochs)
    start, history = _resume(out, model, opt, schedule, config, device)
    for epoch in range(start, config.epochs):
        started, gen = time.time(), torch.Generator().manual_seed(config.seed * 1000 + epoch)
        order = torch.randperm(len(dataset), generator=gen)[: steps * config.batch_size].split(config.batch_size)
        totals: dict[str, float] = {}
        for idx in progress_bar(order, desc=f"mixer epoch {epoch + 1}/{config.epochs}", disable=not progress, unit="batch"):
            x, y = dataset.tensors(idx)
            for key, value in _step(model, opt, augment(x, gen).to(device), y.to(device), config, gen).items():
                totals[key] = totals.get(key, 0.0) + value
            schedule.step()
        n = steps * config.batch_size
        history.append({"epoch": epoch + 1, "loss": totals["loss"] / (2 * n),
                        "clean_accuracy": totals["clean_correct"] / n,
                        "adversarial_accuracy": totals["adv_correct"] / n,
                        "mean_alpha_clean": totals["alpha_clean"] / n,
                        "mean_alpha_adversarial": totals["alpha_adv"] / n,
                        "seconds": time.time() - started, "hardware": hardware(device)})
        (out / HISTORY_FILE).write_text(json.dumps(history, indent=2) + "\n")
        state = {"mixer": model.mixer.state_dict(), "optimizer": opt.state_dict(), "schedule": schedule.state_dict(),
                 "epoch": epoch + 1, "config": json.dumps(asdict(config), sort_keys=True)}
        torch.save(state, out / (STATE_FILE + ".tmp"))
        (out / (STATE_FILE + ".tmp")).replace(out / STATE_FILE)  # atomic: a kill keeps the previous epoch
    model.eval()
    return history
