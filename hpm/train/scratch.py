"""Training zoo backbones from scratch: standard training, or fast adversarial training (FGSM-RS), optionally
with Wu & Yu's average-margin regulariser on the training logits (:func:`.losses.average_margin_penalty`), or
with Adv-DPNP's prototype classifier trained on clean and FGSM-RS inputs by its composite loss
(:func:`.losses.dpnp_loss`).

FGSM-RS is the recipe of Wong, Rice & Kolter, "Fast is better than free" (ICLR 2020): a uniform random
start in the eps-ball, one signed-gradient step of size ``1.25 eps``, projection, and training on the
result, with a one-cycle learning rate. Its known failure, catastrophic overfitting (PGD accuracy falling
to ~0 within an epoch while FGSM accuracy soars), is guarded against as the paper does: after every epoch
the PGD accuracy on a fixed batch of training images is measured, and when it drops by more than
``guard_drop`` below the best epoch's, training stops and the best epoch's weights are kept.

Training resumes from ``OUT/state.pt`` (loaded with ``weights_only=True``), written after every epoch and every
``save_every`` steps within one: it holds the epoch's random generator and running sums, so a run interrupted
mid-epoch continues with the batches, crops and attack draws it would have had. Each epoch's weights are also
kept as ``OUT/epoch-NNN.safetensors`` and its metrics appended to ``OUT/history.json``.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.optim.lr_scheduler import LambdaLR

from ..data import ImageTensorDataset
from ..devices import CPU, bf16_autocast
from ..errors import HPMError
from ..progress import progress_bar
from ..rng import seeded
from ..sources.zoo import ARCHITECTURES, OPTIONS, L2Classifier, PrototypeClassifier, ZooNet, build
from .losses import average_margin_penalty, dpnp_loss
from .pgd import linf_pgd, uniform_start
from .state import load_state, recipe, save_state

STATE_FILE = "state.pt"
HISTORY_FILE = "history.json"
FINAL_FILE = "backbone.safetensors"
ADVERSARIAL = (None, "fgsm-rs")


@dataclass
class BackboneConfig:
    """Architecture and recipe of a from-scratch run (defaults: standard training of a ResNet-20)."""

    arch: str = "cifar_resnet"  # a zoo architecture (hpm.sources.zoo.ARCHITECTURES)
    depth: int = 20  # cifar_resnet: 6n+2
    width: int = 16  # cifar_resnet: channels of the first stage (16: the original ResNet-20)
    classifier: str = "fc"  # "fc" or "l2" (learnable centres, Eq. 18 scores)
    num_classes: int = 10
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1  # peak of the one-cycle schedule (SGD, Nesterov momentum)
    momentum: float = 0.9
    nesterov: bool = True  # Nesterov momentum (Wong et al.'s recipe uses plain momentum: False)
    weight_decay: float = 5e-4
    warmup: float = 0.4  # share of the iterations the learning rate climbs linearly from 0 to lr
    momentum_at_peak: float | None = None  # momentum at the learning-rate peak, linear in the rate from `momentum`
    # at rate 0 (torch's CyclicLR in Wong et al.'s code: 0.8 with momentum 0.9); None: constant momentum
    adversarial: str | None = None  # None (standard training) or "fgsm-rs"
    eps: float = 8 / 255  # l_inf radius of the training attack
    fgsm_step: float | None = None  # FGSM-RS step; None: 1.25 eps (Wong et al.)
    guard_images: int = 256  # training images of the catastrophic-overfitting check (adversarial only)
    guard_steps: int = 10  # PGD steps of that check (step eps / 4)
    guard_drop: float = 0.2  # stop when the check's PGD accuracy falls this far below its best
    dpnp_radius: float = 4.0  # classifier "dpnp": norm r of every prototype (hpm's choice, as all dpnp_* values)
    dpnp_align: float = 0.1  # its positive-prototype alignment weight (.losses.dpnp_loss)
    dpnp_repel: float = 1.0  # its negative-prototype repulsion weight
    dpnp_consistency: float = 1.0  # its clean-adversarial consistency weight
    margin_reg: float = 0.0  # weight mu of Wu & Yu's average-margin regulariser on the training logits (0: off)
    margin_tau: float = 1.0  # its truncation tau (logit units)
    bf16: bool = True  # bfloat16 autocast for the training passes (evaluation stays float32)
    channels_last: bool = False  # NHWC memory layout while training (the same maths; faster convolutions in bf16)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise HPMError(f"arch must be one of {', '.join(ARCHITECTURES)}; got {self.arch!r}")
        if self.adversarial not in ADVERSARIAL:
            raise HPMError(f"adversarial must be one of {ADVERSARIAL}; got {self.adversarial!r}")
        if self.lr <= 0:
            raise HPMError(f"lr must be > 0; got {self.lr}")
        if not 0 <= self.warmup < 1:
            raise HPMError(f"warmup must be in [0, 1); got {self.warmup}")
        if self.momentum_at_peak is not None and not 0 <= self.momentum_at_peak < 1:
            raise HPMError(f"momentum_at_peak must be in [0, 1); got {self.momentum_at_peak}")
        if self.classifier == "dpnp" and self.adversarial != "fgsm-rs":
            raise HPMError("the dpnp classifier trains on clean and adversarial inputs: give adversarial='fgsm-rs'")
        if self.dpnp_radius <= 0:
            raise HPMError(f"dpnp_radius must be > 0; got {self.dpnp_radius}")
        if self.margin_reg < 0 or self.margin_tau <= 0:
            raise HPMError(f"need margin_reg >= 0 and margin_tau > 0; got {self.margin_reg}, {self.margin_tau}")

    def architecture(self) -> dict:
        """The ``options`` of the zoo spec (``config.json`` ``backbone.options``)."""
        options = {"depth": self.depth, "width": self.width, "num_classes": self.num_classes,
                   "classifier": self.classifier}
        return {key: value for key, value in options.items() if key in OPTIONS[self.arch]}

    def resolved_fgsm_step(self) -> float:
        return self.fgsm_step if self.fgsm_step is not None else 1.25 * self.eps


def hardware(device: torch.device) -> str:
    """What a run trains on, for the record: GPU name, or CPU cores and torch threads."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def one_cycle_schedule(opt: torch.optim.Optimizer, total: int, config: BackboneConfig) -> LambdaLR:
    """Wong et al.'s one-cycle schedule as a torch scheduler: the learning rate climbs linearly from 0 to
    ``config.lr`` over the first ``config.warmup`` of the ``total`` steps, then falls linearly to 0.

    (torch's ``OneCycleLR`` cannot start at 0 and ends its phases a step earlier; this keeps the schedule
    the shipped checkpoints were trained with, so their recorded commands reproduce them.)
    """
    peak, rise = config.lr, max(1, int(round(config.warmup * total)))

    def rate(step: int) -> float:
        if step < rise:
            return peak * step / rise
        return peak * max(0.0, (total - step) / max(1, total - rise))

    for group in opt.param_groups:
        group["lr"] = 1.0  # LambdaLR sets lr = 1.0 * rate(step): the rates exactly as computed above
    return LambdaLR(opt, rate)


def cycle_momentum(opt: torch.optim.Optimizer, config: BackboneConfig) -> None:
    """Set the momentum against the current learning rate, as torch's ``CyclicLR`` cycles it: ``config.momentum``
    at rate 0, ``config.momentum_at_peak`` at the peak ``config.lr``, linear in the rate between (no-op when
    ``momentum_at_peak`` is None)."""
    if config.momentum_at_peak is None:
        return
    for group in opt.param_groups:
        group["momentum"] = config.momentum - (config.momentum - config.momentum_at_peak) * group["lr"] / config.lr


def augment(x: Tensor, generator: torch.Generator) -> Tensor:
    """Random 32x32 crop of the 4-pixel zero-padded image and a random horizontal flip (per sample)."""
    b, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (b,), generator=generator)
    dx = torch.randint(0, 9, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None])[:, None, :, None]  # [B, 1, H, 1]
    cols = (dx[:, None] + torch.arange(w)[None])[:, None, None, :]  # [B, 1, 1, W]
    flip = torch.rand(b, generator=generator) < 0.5
    cols = torch.where(flip[:, None, None, None], cols.flip(-1), cols)
    batch = torch.arange(b)[:, None, None, None]
    chan = torch.arange(x.shape[1])[None, :, None, None]
    return padded[batch, chan, rows, cols]


def fgsm_rs(net: ZooNet, x: Tensor, y: Tensor, eps: float, step: float, generator: torch.Generator,
            bf16: bool) -> Tensor:
    """One FGSM step from a uniform random start in the l_inf ball, projected back (Wong et al. 2020)."""

    def loss(x_adv: Tensor) -> Tensor:
        with bf16_autocast(x.device, enabled=bf16):
            return F.cross_entropy(net(x_adv), y)

    return linf_pgd(loss, x, uniform_start(x, eps, generator), eps=eps, step=step, steps=1)


def pgd_accuracy(net: ZooNet, x: Tensor, y: Tensor, eps: float, steps: int, generator: torch.Generator) -> float:
    """Accuracy under l_inf PGD with a random start (float32, eval mode); the overfitting guard."""
    net.eval()
    x_adv = linf_pgd(lambda x_adv: F.cross_entropy(net(x_adv), y), x, uniform_start(x, eps, generator), eps=eps,
                     step=eps / 4, steps=steps)
    with torch.no_grad():
        return (net(x_adv).argmax(1) == y).float().mean().item()


def _save_weights(net: ZooNet, path: Path) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(path))


def load_weights(net: ZooNet, path: str | Path) -> ZooNet:
    """Load ``.safetensors`` weights written by :func:`train_backbone` into ``net`` (strict)."""
    net.load_state_dict(load_file(str(path)), strict=True)
    return net


def _write_state(path: Path, run: "_Run", config: BackboneConfig) -> None:
    """``run`` as ``state.pt``: between epochs (``run.step == 0``) or after ``run.step`` batches of epoch
    ``run.start + 1``, with that epoch's generator state and running sums."""
    state = {"model": run.net.state_dict(), "optimizer": run.opt.state_dict(), "schedule": run.schedule.state_dict(),
             "epoch": run.start, "best_epoch": run.best_epoch, "best_guard": run.best_guard, "config": recipe(config)}
    if run.step:
        state |= {"step": run.step, "generator": run.generator_state, "partial": dict(run.partial)}
    save_state(state, path)


@dataclass
class _Run:
    """The mutable state of a from-scratch run: what resumes from ``state.pt``."""

    net: ZooNet
    opt: torch.optim.Optimizer
    schedule: LambdaLR
    history: list[dict]
    start: int = 0  # next epoch to run (0-based) = epochs completed
    best_epoch: int = -1  # 1-based epoch with the best guard accuracy
    best_guard: float = -1.0
    step: int = 0  # batches of epoch `start` already trained (a mid-epoch state)
    generator_state: Tensor | None = None  # that epoch's generator after those batches
    partial: dict = field(default_factory=dict)  # that epoch's running loss_sum, correct, seen, seconds


def _start_or_resume(config: BackboneConfig, out: Path, total_steps: int, device: torch.device) -> _Run:
    with seeded(config.seed, CPU):  # PyTorch's layer initialisation draws from the global generator only
        net = build(config.arch, config.architecture())
    if isinstance(net.classifier, PrototypeClassifier):
        net.classifier.radius.fill_(config.dpnp_radius)
    net = net.to(device, memory_format=torch.channels_last if config.channels_last else torch.contiguous_format)
    opt = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                          weight_decay=config.weight_decay)
    history: list[dict] = json.loads((out / HISTORY_FILE).read_text()) if (out / HISTORY_FILE).exists() else []
    run = _Run(net, opt, one_cycle_schedule(opt, total_steps, config), history)
    state_path = out / STATE_FILE
    if not state_path.exists():
        return run
    state = load_state(state_path, config, device,
                       why="the learning-rate schedule depends on every option, --epochs included")
    net.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    if "schedule" in state:
        run.schedule.load_state_dict(state["schedule"])
    else:  # a run directory from before the schedule was saved: the rate is a function of the step alone
        run.schedule.last_epoch = state["epoch"] * (total_steps // config.epochs)
        for group in opt.param_groups:
            group["lr"] = run.schedule.lr_lambdas[0](run.schedule.last_epoch)
    run.start, run.best_epoch, run.best_guard = state["epoch"], state["best_epoch"], state["best_guard"]
    if state.get("step"):
        run.step, run.generator_state, run.partial = state["step"], state["generator"], dict(state["partial"])
    run.history = history[:run.start]
    return run


def _training_loss(net: ZooNet, config: BackboneConfig, x: Tensor, y: Tensor,
                   gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """The loss of one training batch and the logits its accuracy is counted on (adversarial ones if any)."""
    x_adv = fgsm_rs(net, x, y, config.eps, config.resolved_fgsm_step(), gen, config.bf16) if config.adversarial else x
    if config.classifier == "dpnp":  # clean and adversarial branches
        with bf16_autocast(x.device, enabled=config.bf16):
            z_clean, z_adv = net.forward_features(x), net.forward_features(x_adv)
        return dpnp_loss(z_clean.float(), z_adv.float(), net.classifier.prototypes, y, align=config.dpnp_align,
                         repel=config.dpnp_repel, consistency=config.dpnp_consistency)
    with bf16_autocast(x.device, enabled=config.bf16):
        logits = net(x_adv)
        loss = F.cross_entropy(logits, y)
    if config.margin_reg:
        loss = loss + config.margin_reg * average_margin_penalty(logits.float(), y, config.margin_tau)
    return loss, logits


def _train_epoch(run: _Run, config: BackboneConfig, train_set: ImageTensorDataset, epoch: int,
                 gen: torch.Generator, device: torch.device, progress: bool,
                 save: Callable[[], None] | None, save_every: int) -> dict:
    """One epoch of (FGSM-RS adversarial) training, continued from ``run.step`` batches in; returns its loss,
    training accuracy and seconds. ``save()`` is called every ``save_every`` batches (not after the last)."""
    n = len(train_set)
    steps = n // config.batch_size  # drop the last partial batch (batch norm statistics)
    order = torch.randperm(n, generator=gen)[: steps * config.batch_size].split(config.batch_size)
    if run.step:  # a mid-epoch state: the same batch order, the generator where it stood
        gen.set_state(run.generator_state)
    run.net.train()
    loss_sum, correct, seen = (run.partial.get(key, 0) for key in ("loss_sum", "correct", "seen"))
    seconds, started = run.partial.get("seconds", 0.0), time.time()
    bar = progress_bar(order, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress, unit="batch",
               initial=run.step, total=steps)
    for idx in order[run.step:]:
        x, y = train_set.tensors(idx)
        x, y = augment(x, gen).to(device), y.to(device)
        loss, logits = _training_loss(run.net, config, x, y, gen)
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        cycle_momentum(run.opt, config)
        run.opt.step()
        run.schedule.step()
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
        run.step += 1
        bar.update()
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}",
                        lr=f"{run.opt.param_groups[0]['lr']:.4f}")
        if save is not None and run.step % save_every == 0 and run.step < steps:
            run.generator_state = gen.get_state()
            run.partial = {"loss_sum": loss_sum, "correct": correct, "seen": seen,
                           "seconds": seconds + time.time() - started}
            save()
    bar.close()
    run.step, run.generator_state, run.partial = 0, None, {}
    return {"epoch": epoch + 1, "loss": loss_sum / seen, "train_accuracy": correct / seen,
            "seconds": seconds + time.time() - started}


def _guard(run: _Run, config: BackboneConfig, record: dict, guard: tuple[Tensor, Tensor], gen: torch.Generator) -> bool:
    """Measure the epoch on the fixed guard batch; returns True when catastrophic overfitting stops training."""
    guard_x, guard_y = guard
    run.net.eval()
    with torch.no_grad():
        record["guard_clean_accuracy"] = (run.net(guard_x).argmax(1) == guard_y).float().mean().item()
    if not config.adversarial:
        run.best_epoch = record["epoch"]
        return False
    accuracy = pgd_accuracy(run.net, guard_x, guard_y, config.eps, config.guard_steps, gen)
    record["guard_pgd_accuracy"] = accuracy
    if accuracy > run.best_guard:
        run.best_epoch, run.best_guard = record["epoch"], accuracy
    elif accuracy < run.best_guard - config.guard_drop:
        record["stopped"] = True  # catastrophic overfitting: keep the best epoch (Wong et al.)
    return bool(record.get("stopped"))


def train_backbone(config: BackboneConfig, train_set: ImageTensorDataset, out_dir: str | Path, *,
                   device: torch.device | str | None = None, progress: bool = True,
                   on_epoch: Callable[[dict], None] | None = None,
                   save_every: int = 50) -> tuple[ZooNet, list[dict]]:
    """Train a zoo network from scratch; resumes from ``out_dir/state.pt`` when present (also mid-epoch: the state
    is written every ``save_every`` training steps and after every epoch).

    Returns:
        The trained network (the best epoch's weights when the overfitting guard fired) and the
        per-epoch history (loss, train accuracy, guard accuracies, seconds).
    """
    device = torch.device(device or CPU)  # a new network: the CPU unless told
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = len(train_set)
    run = _start_or_resume(config, out, (n // config.batch_size) * config.epochs, device)
    guard_x, guard_y = train_set.tensors(torch.randperm(n, generator=torch.Generator().manual_seed(config.seed + 1))
                                         [:config.guard_images])
    guard = (guard_x.to(device), guard_y.to(device))
    stopped = bool(run.history) and run.history[-1].get("stopped", False)
    for epoch in range(run.start, config.epochs):
        if stopped:
            break
        gen = torch.Generator().manual_seed(config.seed * 1000 + epoch)
        record = _train_epoch(run, config, train_set, epoch, gen, device, progress,
                              lambda: _write_state(out / STATE_FILE, run, config), save_every)
        started = time.time()
        stopped = _guard(run, config, record, guard, gen)
        record["seconds"] += time.time() - started
        record["hardware"] = hardware(device)
        _save_weights(run.net, out / f"epoch-{epoch + 1:03d}.safetensors")
        run.history.append(record)
        (out / HISTORY_FILE).write_text(json.dumps(run.history, indent=2) + "\n")
        run.start = epoch + 1
        _write_state(out / STATE_FILE, run, config)
        if on_epoch is not None:
            on_epoch(record)
    if run.best_epoch > 0:
        load_weights(run.net, out / f"epoch-{run.best_epoch:03d}.safetensors")
        _save_weights(run.net, out / FINAL_FILE)
    return run.net.eval(), run.history


def training_summary(config: BackboneConfig, history: list[dict], train_source: str) -> dict:
    """The recipe and outcome written into a checkpoint's ``config.json`` ``training`` entry."""
    selected = max((h for h in history if "guard_pgd_accuracy" in h), key=lambda h: h["guard_pgd_accuracy"],
                   default=history[-1] if history else None)
    recipe = {key: value for key, value in asdict(config).items()
              if not (key.startswith("dpnp_") and config.classifier != "dpnp")
              and not (key.startswith("margin_") and not config.margin_reg)
              and not (key == "momentum_at_peak" and config.momentum_at_peak is None)
              and not (key in ("depth", "width") and key not in OPTIONS[config.arch])}  # options not used
    return {"mode": "from-scratch" if not config.adversarial else f"adversarial ({config.adversarial})",
            **recipe, "train_source": train_source, "epochs_run": len(history),
            "selected_epoch": selected["epoch"] if selected else None,
            "train_seconds": round(sum(h["seconds"] for h in history), 1),
            "hardware": sorted({h["hardware"] for h in history if "hardware" in h}) or "not recorded"}


def to_hpm(net: ZooNet, config: BackboneConfig, *, classes: list[str] | None, dataset: str | None):
    """The trained network as an :class:`hpm.HPMClassifier`: an FC model keeps its FC as the ``fc`` head;
    an l2 model deploys an NCM head holding its learned centres, a dpnp model a ``dpnp`` head over the linear
    layer ``W = C`` (identical scores either way)."""
    from ..heads import create_head
    from ..model import HPMClassifier
    from ..sources import BackboneSpec
    from ..sources.zoo import split

    centres = net.classifier.centres.detach().clone() if isinstance(net.classifier, L2Classifier) else None
    head_type = {"l2": "ncm", "dpnp": "dpnp"}.get(config.classifier, "fc")
    features, fc = split(net)
    head = create_head(head_type, fc.in_features, fc.out_features)
    if centres is not None:
        head.prototypes.copy_(centres)
    spec = BackboneSpec("hpm", config.arch, config.architecture())
    return HPMClassifier(features, fc, head, backbone_spec=spec, input_size=(3, 32, 32), classes=classes,
                         dataset=dataset).eval()
