"""Fine-tuning a head on a frozen backbone (Sec. 4.2, supp. 6.2).

- :func:`finetune_clean` trains on cached backbone features: seconds on a CPU.
- :func:`finetune_adversarial` trains with the IKL loss on 10-step PGD examples (the paper's recipe),
  saving a resumable training state every ``save_every`` steps and at the end of every epoch.

Both initialise prototype buffers from the class means of clean training features first.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..data import ImageTensorDataset, cache_dir
from ..defence import PROBE_IMAGES, agree_to_rounding
from ..devices import resolve
from ..errors import HPMError
from ..model import HPMClassifier
from ..progress import progress_bar
from .losses import ClassWeights, ikl_loss, soft_cross_entropy, weighted_pairwise_mse
from .pgd import linf_pgd
from .state import load_state, recipe, save_state


@dataclass
class CleanConfig:
    """Clean fine-tuning on cached features."""

    epochs: int = 1  # passes over the training features
    batch_size: int = 64  # the paper's batch size; also the HPM batch during training
    lr: float = 5e-5  # Adam learning rate (paper)
    momentum: float | None = None  # EMA lambda override for prototype heads (None: keep the head's)
    seed: int = 0  # data order and initialisation


@dataclass
class AdversarialConfig:
    """IKL adversarial fine-tuning; defaults are the paper's CIFAR-10 recipe (Sec. 4.2, supp. 6.2)."""

    epochs: int = 1  # paper: 1 on CIFAR-10, 2 on CIFAR-100 and the ImageNet subset
    batch_size: int = 64  # paper
    lr: float = 5e-5  # Adam learning rate (paper)
    eps: float = 8 / 255  # l_inf radius of the training attack (paper: 8/255 CIFAR, 4/255 ImageNet)
    steps: int = 10  # PGD steps of the inner maximisation (paper)
    step_size: float | None = None  # PGD step; None: eps / 4 (2/255 at 8/255, as in the DKL code)
    alpha: float = 4.0  # weight of the soft-label CE term
    beta: float = 20.0  # weight of the weighted-MSE term
    temperature: float = 4.0  # T of the class-wise weights
    attack_uses_wmse: bool = False  # CIFAR-100 recipe adds wMSE to the inner loss
    seed: int = 0  # data order, PGD noise
    save_every: int = 100  # steps between resumable training states (and at every epoch end)
    max_steps: int | None = None  # stop after this many optimisation steps in total (None: all epochs)

    def resolved_step_size(self) -> float:
        return self.step_size if self.step_size is not None else self.eps / 4


@torch.no_grad()
def extract_features(model: HPMClassifier, dataset: ImageTensorDataset, *, batch_size: int = 256,
                     device: torch.device | str | None = None, cache: bool = True,
                     progress: bool = True) -> tuple[Tensor, Tensor]:
    """Backbone features ``[N, d]`` and labels ``[N]`` of a dataset, cached on disk by content key.

    The key covers the backbone spec, a hash of its weights and a hash of the images and labels
    themselves, so a changed backbone, dataset or subset never reuses stale features; and cached features are
    used only once the backbone gives the same features on the first images (a wrapped module's behaviour may
    live in plain attributes that no hash sees).
    """
    device = resolve(device, model)
    content = hashlib.sha256(dataset.images.numpy().tobytes())
    content.update(dataset.labels.numpy().tobytes())
    for name, tensor in sorted(model.features.state_dict().items()):
        content.update(name.encode())
        content.update(tensor.detach().float().cpu().numpy().tobytes())
    key_src = json.dumps([model.backbone_spec.to_dict(), content.hexdigest()], sort_keys=True)
    path = cache_dir() / "features" / (hashlib.sha256(key_src.encode()).hexdigest()[:24] + ".safetensors")
    model.features.eval().to(device)
    if cache and path.exists():
        stored = load_file(str(path))
        probe, _ = dataset.tensors(torch.arange(min(PROBE_IMAGES, len(dataset))))
        with torch.no_grad():
            now = model.features(probe.to(device)).float().cpu()
        if agree_to_rounding(now, stored["features"][:len(probe)]):
            return stored["features"], stored["labels"]
    chunks = []
    for start in progress_bar(range(0, len(dataset), batch_size), desc="features", disable=not progress, unit="batch"):
        x, _ = dataset.tensors(torch.arange(start, min(start + batch_size, len(dataset))))
        chunks.append(model.features(x.to(device)).float().cpu())
    z, y = torch.cat(chunks), dataset.labels.clone()
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"features": z.contiguous(), "labels": y.contiguous()}, str(path))
    return z, y


def fit_prototypes(model: HPMClassifier, features: Tensor, labels: Tensor) -> None:
    """Initialise the head's prototypes to the class means of clean features (the paper's initialisation).

    Raises:
        HPMError: when some class has no training sample (e.g. a too small ``--n-train`` subset).
    """
    try:
        model.head.init_prototypes(features.to(model.fc.weight), labels.to(model.fc.weight.device))
    except ValueError as e:
        raise HPMError(f"{e}; the training images must cover every class (use a larger --n-train)") from None


def finetune_clean(model: HPMClassifier, features: Tensor, labels: Tensor, config: CleanConfig = CleanConfig(),
                   *, progress: bool = True) -> list[float]:
    """Fine-tune FC + head on cached features with cross-entropy on the head's (deployed) scores.

    Returns the per-step training losses. Heads without parameters (NCM) only fit their prototypes.
    """
    if config.momentum is not None and hasattr(model.head, "momentum"):
        model.head.momentum = config.momentum
    fit_prototypes(model, features, labels)
    params = model.trainable_parameters()
    if not model.head.fine_tuned or not params:
        return []
    opt = torch.optim.Adam(params, lr=config.lr)
    device = model.fc.weight.device
    g = torch.Generator().manual_seed(config.seed)
    losses: list[float] = []
    model.train()
    n_batches = math.ceil(len(labels) / config.batch_size)
    with progress_bar(total=config.epochs * n_batches, desc="clean fine-tune", disable=not progress) as bar:
        for _ in range(config.epochs):
            for idx in torch.randperm(len(labels), generator=g).split(config.batch_size):
                z, y = features[idx].to(device), labels[idx].to(device)
                loss = F.cross_entropy(model.forward_head(z, mode="hard", labels=y), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.item())
                bar.set_postfix(loss=f"{loss.item():.3f}")
                bar.update()
    model.eval()
    return losses


def pgd_ikl(model: HPMClassifier, x: Tensor, zn: Tensor, labels: Tensor, config: AdversarialConfig,
            class_weights: ClassWeights, *, generator: torch.Generator | None = None) -> Tensor:
    """Inner maximisation: signed-gradient l_inf PGD on sCE (plus wMSE if configured), model in eval mode.

    The start's small Gaussian noise is drawn from ``generator`` (default: a new one seeded with ``config.seed``).
    """
    if generator is None:
        generator = torch.Generator().manual_seed(config.seed)
    was_training = model.training
    model.eval()
    zn = zn.detach()

    def loss(x_adv: Tensor) -> Tensor:
        za = model(x_adv, mode="hard")
        value = soft_cross_entropy(zn, za)
        if config.attack_uses_wmse:
            value = value + weighted_pairwise_mse(zn, za, class_weights.for_labels(labels))
        return value

    start = (x + 0.001 * torch.randn(x.shape, generator=generator).to(x)).clamp(0, 1)
    x_adv = linf_pgd(loss, x, start, eps=config.eps,
                     step=config.resolved_step_size(), steps=config.steps)
    model.train(was_training)
    return x_adv


STATE_FILE = "trainer_state.pt"


FREE_WHEN_RESUMING = ("max_steps", "save_every")  # options a resumed run may change


def _save_state(path: Path, model: HPMClassifier, opt: torch.optim.Optimizer, weights: ClassWeights,
                noise: torch.Generator, epoch: int, step: int, losses: list[float], config: AdversarialConfig) -> None:
    state = {
        "trainable": {k: v for k, v in model.state_dict().items() if not k.startswith("features.")},
        "optimizer": opt.state_dict(),
        "class_weights": weights.state_dict(),
        "epoch": epoch, "step": step, "losses": losses,
        "config": recipe(config, free=FREE_WHEN_RESUMING),
        "torch_rng": noise.get_state(),  # the PGD noise's generator (the name predates its own generator)
    }
    save_state(state, path)


def finetune_adversarial(model: HPMClassifier, dataset: ImageTensorDataset, config: AdversarialConfig,
                         out_dir: str | Path, *, device: torch.device | str | None = None,
                         init_features: tuple[Tensor, Tensor] | None = None, progress: bool = True,
                         on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """IKL adversarial fine-tuning of FC + head; resumes from ``out_dir/trainer_state.pt`` if present.

    Args:
        model: the wrapped classifier; its backbone stays frozen.
        dataset: training images.
        config: hyperparameters (paper defaults).
        out_dir: where the resumable state is written every ``config.save_every`` steps and per epoch.
        init_features: clean ``(features, labels)`` to initialise prototypes (default: extracted here).
        on_step: callback ``(global_step, loss)``.

    Returns:
        Training losses of every step run so far (including those before a resume).
    """
    device = resolve(device, model)
    state_path = Path(out_dir) / STATE_FILE
    state_path.parent.mkdir(parents=True, exist_ok=True)
    model.to(device)
    weights = ClassWeights(model.num_classes, config.temperature, device)
    opt = torch.optim.Adam(model.trainable_parameters(), lr=config.lr)
    start_epoch, start_step, losses, noise = _resume_or_initialise(state_path, model, opt, weights, config,
                                                                   dataset, init_features, device, progress)
    steps_per_epoch = math.ceil(len(dataset) / config.batch_size)
    total = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    global_step = start_epoch * steps_per_epoch + start_step
    bar = progress_bar(total=total, initial=min(global_step, total), desc="IKL adversarial fine-tune", disable=not progress)
    for epoch in range(start_epoch, config.epochs):
        batches = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(config.seed + epoch)) \
            .split(config.batch_size)
        for step in range(start_step if epoch == start_epoch else 0, steps_per_epoch):
            if global_step >= total:
                _save_state(state_path, model, opt, weights, noise, epoch, step, losses, config)  # stopped by max_steps
                bar.close()
                return _finish(model, losses)
            x, y = dataset.tensors(batches[step])
            losses.append(_ikl_step(model, opt, weights, noise, x.to(device), y.to(device), config))
            global_step += 1
            bar.update()
            bar.set_postfix(epoch=epoch, loss=f"{losses[-1]:.3f}")
            if on_step is not None:
                on_step(global_step, losses[-1])
            if global_step % config.save_every == 0:
                _save_state(state_path, model, opt, weights, noise, epoch, step + 1, losses, config)
        weights.end_epoch()
        _save_state(state_path, model, opt, weights, noise, epoch + 1, 0, losses, config)
    bar.close()
    return _finish(model, losses)


def _finish(model: HPMClassifier, losses: list[float]) -> list[float]:
    model.eval()
    return losses


def _resume_or_initialise(state_path: Path, model: HPMClassifier, opt: torch.optim.Optimizer, weights: ClassWeights,
                          config: AdversarialConfig, dataset: ImageTensorDataset,
                          init_features: tuple[Tensor, Tensor] | None, device: torch.device,
                          progress: bool) -> tuple[int, int, list[float], torch.Generator]:
    """Load the saved training state (same recipe only), or fit the prototypes to clean features.

    Returns ``(epoch, step within the epoch, losses so far, the PGD noise's generator)`` to continue from.
    """
    noise = torch.Generator()
    if not state_path.exists():
        z, y = init_features or extract_features(model, dataset, device=device, progress=progress)
        fit_prototypes(model, z, y)
        return 0, 0, [], noise.manual_seed(config.seed)
    state = load_state(state_path, config, device, free=FREE_WHEN_RESUMING)
    model.load_state_dict({**model.state_dict(), **state["trainable"]}, strict=True)
    opt.load_state_dict(state["optimizer"])
    weights.load_state_dict(state["class_weights"])
    noise.set_state(state["torch_rng"].cpu())
    return state["epoch"], state["step"], list(state["losses"]), noise


def _ikl_step(model: HPMClassifier, opt: torch.optim.Optimizer, weights: ClassWeights, noise: torch.Generator,
              x: Tensor, y: Tensor, config: AdversarialConfig) -> float:
    """One optimisation step: PGD on the natural logits, then IKL on (clean, adversarial); returns the loss."""
    with torch.no_grad():
        zn_eval = model(x, mode="hard")
    x_adv = pgd_ikl(model, x, zn_eval, y, config, weights, generator=noise)
    model.train()
    zn = model(x, mode="hard", labels=y)  # EMA update from clean features (Eq. 14)
    za = model(x_adv, mode="hard")
    loss = ikl_loss(zn, za, y, weights, config.alpha, config.beta)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    weights.accumulate(zn, y)
    return loss.item()
