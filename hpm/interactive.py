"""Single-image functions behind the web demo (``app.py`` only lays them out).

Everything here is per request: a visitor's image is classified either alone or together with a fixed,
cached *context* of dataset samples (never with another visitor's images), and attacks run on that
batch with the same adapters the evaluation uses (:mod:`hpm.attacks`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .attacks import BatchFeatures, apgd_targets, parse_attacks, run_attack
from .devices import device_of
from .errors import HPMError
from .heads import HEADS
from .images import enlarged, tensor_to_image, to_8bit, to_8bit_within
from .mixed import MixedClassifier
from .model import HPMClassifier
from .nuts import MixedNUTS, mapped_margins
from .units import eps_text, meant_per_255

EPS_MAX = 16 / 255  # l_inf budget offered by the demo
STEPS_MAX = 200  # APGD iterations
STEPS_DEFAULT = 20
QUERIES_MAX = 5000  # Square queries (AutoAttack's standard budget)
QUERIES_DEFAULT = 500
CONTEXT_MAX = 256
CONTEXT_DEFAULT = 64  # test images a batch-dependent head's image is classified with on a first visit
DEFAULT_MODEL = "cifar10-resnet18-hpm-clean"  # the shipped checkpoint a first visit sees
GALLERY_SIZE = 24  # test samples offered in the gallery
PREVIEW_SIDE = 192  # the current image is shown enlarged (nearest neighbour) until its short side is this long,
PREVIEW_MAX = 1024  # as long as its long side stays within this (a 1 x 12000 upload is not enlarged)
SQUARE_TEXT = "Square attack on the deployed model (black box)"
KNOWN_ATTACKS = (*dict.fromkeys([*(t for head in HEADS.values() for t in head.attack_targets),
                                 *MixedClassifier.ADAPTIVE_TARGETS, *MixedNUTS.TARGETS]), "square")


Demo = HPMClassifier | MixedClassifier  # what the demo shows: an hpm model, or a mixed classifier of two


def attack_choices(model: Demo) -> list[str]:
    """The attacks that exist for this model's head, as the evaluation protocol plans them (then Square)."""
    return [*apgd_targets(model), "square"]


def _target_descriptions(model: Demo):
    """Each attack target's one-line description, in the head's (or the mixture's) own words."""
    return model.target_descriptions


def attack_description(model: Demo, attack: str) -> str:
    """One line saying what ``attack`` does to this model (its head's, or the mixture's, own words)."""
    if attack == "square":
        return SQUARE_TEXT
    return "APGD-CE on " + _target_descriptions(model).get(attack, attack)


def panel_labels(model: Demo) -> tuple[str, str]:
    """What the demo's two views of a prediction are: the reference (an hpm model's FC head, a mixed classifier's
    robust branch) and the deployed model."""
    if isinstance(model, MixedClassifier):
        return "robust branch", f"mixture ({model.mixing_text})"
    return "FC", model.head.label


def attack_legend(model: Demo) -> str:
    """What each attack choice of this model follows, in one line (its head's or the mixture's own words)."""
    descriptions = _target_descriptions(model)
    return "what the white-box APGD attack follows: " + " · ".join(
        f"{name} = {descriptions.get(name, name)}" for name in apgd_targets(model)) + " · square = black box"


def deployed_is_reference(model: Demo) -> bool:
    """True when the deployed model is its reference view itself (an FC head): one pair of panels says it all."""
    return isinstance(model, HPMClassifier) and "fc" in model.head.deployed_modes


def batch_dependent(model: Demo) -> bool:
    """True when one image's prediction depends on the rest of its batch (the demo then offers a context)."""
    return model.batch_dependent


def default_attack(choices: list[str]) -> str:
    """The attack the app preselects: the MSA ensemble where it exists, else the first choice."""
    return "ensemble" if "ensemble" in choices else choices[0]


def preview(pixels: np.ndarray) -> tuple[np.ndarray, str]:
    """The current image as the page shows it (``H x W x 3`` uint8 in, enlarged by an integer factor, nearest
    neighbour, until its short side is :data:`PREVIEW_SIDE`, its long side at most :data:`PREVIEW_MAX`) and the label
    that says so."""
    shown, factor = enlarged(pixels, PREVIEW_SIDE, PREVIEW_MAX)
    h, w = pixels.shape[:2]
    if factor == 1:
        return shown, f"Current image: {w}×{h} px"
    return shown, f"Current image: {w}×{h} px, shown {factor}× enlarged (nearest neighbour: one square per pixel)"


# --- predictions -----------------------------------------------------------------------------------------
def top_k(scores: Tensor, classes: list[str], k: int = 5) -> dict[str, float]:
    """``{class name: probability}`` of the top ``k`` classes of one score row (softmax of the scores)."""
    probs = scores.detach().float().softmax(-1).flatten()
    values, idx = probs.topk(min(k, probs.numel()))
    return {classes[i]: float(v) for v, i in zip(values.tolist(), idx.tolist())}


@dataclass
class Context:
    """Fixed reference samples whose features join the single image's batch (read-only, shared)."""

    features: Tensor | None  # [m, d] or None
    description: str


def no_context() -> Context:
    return Context(None, "alone (batch of 1)")


def make_context(model: HPMClassifier, images: Tensor, description: str, batch_size: int = 128) -> Context:
    """Compute the context features once (cache the result; it is never modified)."""
    return Context(model.context_features(images, batch_size), description)


@torch.no_grad()
def _both_heads(model: Demo, batch: BatchFeatures, z: Tensor) -> dict[str, dict[str, float]]:
    """Top-5 of the reference view (key ``"fc"``: the FC head, or a mixture's robust branch) and of the deployed
    model from ``z`` (features ``[1, d]`` inside ``batch``'s context; a mixture's input image itself)."""
    reference = model.fc(z) if isinstance(model, HPMClassifier) else batch.scores(z, "robust")
    return {"fc": top_k(reference[0], model.classes),
            "deployed": top_k(batch.scores(z, "hard")[0], model.classes)}


@torch.no_grad()
def classify(model: Demo, x: Tensor, context: Context) -> dict[str, dict[str, float]]:
    """Top-5 of the reference view (:func:`panel_labels`) and of the deployed model for image ``x [1, 3, H, W]``
    inside ``context``."""
    batch = BatchFeatures(model, context.features)
    return _both_heads(model, batch, batch.features(x))


@torch.no_grad()
def nuts_decision(model: Demo, x: Tensor) -> str | None:
    """For a MixedNUTS mixture, which branch's class the mixture predicts for image ``x [1, 3, H, W]``, with the
    mapped robust margin beside the cutoff ``(1 − α) / α`` it must reach to be sure to decide; None for any other
    model."""
    if not isinstance(model, MixedNUTS):
        return None
    x = x.to(device_of(model))
    g, h = model.standard(x), model.robust(x)  # each network once
    mixture, standard, robust = (int(scores[0].argmax()) for scores in (model.combine(g, h), g, h))
    margin = float(mapped_margins(h, model.robust_map)[0])
    cutoff = math.inf if model.alpha == 0 else (1 - model.alpha) / model.alpha
    follows = ("both branches' class" if standard == robust else "the robust branch's class" if mixture == robust
               else "the standard branch's class" if mixture == standard else "a third class")
    name = model.classes[mixture] if model.classes else f"class {mixture}"
    return (f"The mixture predicts {name}, {follows}; the robust branch's mapped margin (top-1 "
            f"minus top-2 probability) is {margin:.3f} against the cutoff (1 − α)/α = {cutoff:.3f}, above which the "
            "robust branch always decides.")


@torch.no_grad()
def adaptive_alpha(model: Demo, x: Tensor) -> float | None:
    """The weight α(x) an adaptive mixture's mixing network gives its robust branch for image ``x [1, 3, H, W]``;
    None for any other model (a fixed mixture's α is in its name, :func:`panel_labels`)."""
    if not isinstance(model, MixedClassifier) or model.mixer is None:
        return None
    return float(model.mixing_weight(x.to(device_of(model)))[0])


@dataclass
class AttackResult:
    """An attack on one image, judged on the deployed model inside the chosen context."""

    attack: str
    eps: float
    steps: int
    x: Tensor  # [1, 3, H, W]
    x_adv: Tensor
    label: int  # the deployed model's clean prediction (the attack's untargeted label)
    clean: dict[str, dict[str, float]]  # {"fc": top-5, "deployed": top-5}
    adversarial: dict[str, dict[str, float]]
    surrogate_fooled: bool | None  # did the attacked surrogate change its prediction? (None for Square)
    deployed_fooled: bool
    linf: float = field(default=0.0)
    l2: float = field(default=0.0)
    alpha: tuple[float, float] | None = None  # an adaptive mixture's α(x) on the clean and the adversarial image

    @property
    def transferred(self) -> bool | None:
        """Did an attack that fooled the surrogate also fool the deployed head?"""
        return None if self.surrogate_fooled is None else bool(self.surrogate_fooled and self.deployed_fooled)


def setting(value: object, name: str, low: float, high: float, *, integer: bool = False) -> int | float:
    """A numeric setting as a form or an API client sent it, checked: a number (not null, text, a boolean or NaN),
    within ``[low, high]``, and whole where ``integer``. Returns it as an ``int`` or a ``float``.

    Raises:
        HPMError: naming the setting, its range and what was received.
    """
    kind = "a whole number" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise HPMError(f"{name} must be {kind} from {low:g} to {high:g}; got {value!r}")
    if not low <= value <= high:
        raise HPMError(f"{name} must be from {low:g} to {high:g}; got {value:g}")
    if integer and value != int(value):
        raise HPMError(f"{name} must be a whole number; got {value:g}")
    return int(value) if integer else float(value)


def check_attack_name(attack: object, model: Demo, name: str | None = None) -> None:
    """``attack`` is one of the attacks that apply to ``model`` (:func:`attack_choices`), whatever another model
    offers.

    Raises:
        HPMError: naming the model (``name``, else its deployed head) and listing the attacks it accepts.
    """
    choices = attack_choices(model)
    if attack in choices:
        return
    which = f"{name} ({panel_labels(model)[1]})" if name else f"this model ({panel_labels(model)[1]})"
    known = "" if attack in KNOWN_ATTACKS else " (no attack of that name exists)"
    raise HPMError(f"the attack {attack!r} does not apply to {which}{known}: it accepts {', '.join(choices)}")


def check_attack_args(attack: str, eps: float, steps: int, model: Demo) -> None:
    """The attack's name (:func:`check_attack_name`), radius (at most :data:`EPS_MAX`) and budget are valid."""
    check_attack_name(attack, model)
    number = isinstance(eps, (int, float)) and not isinstance(eps, bool)
    if number and (meant := meant_per_255(eps, EPS_MAX)):
        raise HPMError(f"eps must be at most {EPS_MAX * 255:g}/255 for images in [0, 1]; got {eps:g}: did you mean "
                       f"{meant}?")
    setting(eps * 255 if number else eps, "eps in units of 1/255", 0, EPS_MAX * 255 + 1e-9)
    if attack == "square":
        setting(steps, "queries", 1, QUERIES_MAX, integer=True)
    else:
        setting(steps, "steps", 1, STEPS_MAX, integer=True)


def attack_image(model: Demo, x: Tensor, *, attack: str = "ensemble", eps: float = 8 / 255, steps: int = 20,
                 context: Context | None = None, seed: int = 0,
                 on_step: Callable[[int, int], None] | None = None) -> AttackResult:
    """Attack one image (label: the deployed model's clean prediction) and judge it on the deployed model.

    The demo works on 8-bit images, so that what it shows and returns is exactly what it judged: ``x`` is
    rounded to 8-bit levels, and the adversarial image is rounded to them too, within the ε ball
    (:func:`hpm.images.to_8bit_within`), before it is judged. ``on_step(done, total)`` reports progress: APGD
    iterations (0 for the starting point, up to ``steps``) or Square queries.
    """
    check_attack_args(attack, eps, steps, model)
    spec, = parse_attacks(["square" if attack == "square" else f"apgd-ce/{attack}"], model)
    context = context or no_context()
    x = to_8bit(x.to(device_of(model)))
    batch = BatchFeatures(model, context.features)
    with torch.no_grad():
        z = batch.features(x)
        label = batch.scores(z, "hard").argmax(1)
        clean = _both_heads(model, batch, z)
    counter = {"n": -1 if attack != "square" else 0}  # APGD reports its starting point (0) before iteration 1

    def step() -> None:
        counter["n"] += 1
        if on_step is not None:
            on_step(min(counter["n"], steps), steps)

    if eps == 0:
        x_adv = x.clone()
    else:
        x_adv = run_attack(spec, batch, x, label, norm="Linf", eps=eps, n_iter=steps, square_queries=steps, seed=seed,
                           num_classes=model.num_classes, on_step=step).x_adv
        x_adv = to_8bit_within(x_adv, x, eps)
    with torch.no_grad():
        z_adv = batch.features(x_adv)
        adversarial = _both_heads(model, batch, z_adv)
        deployed_fooled = bool(batch.scores(z_adv, "hard").argmax(1) != label)
        surrogate_fooled = None
        if spec.white_box:
            surrogate_fooled = any(bool(batch.scores(z_adv, m).argmax(1) != batch.scores(z, m).argmax(1))
                                   for m in spec.surrogates)
    delta = (x_adv - x).flatten()
    alpha = adaptive_alpha(model, x)
    return AttackResult(attack, eps, steps, x.cpu(), x_adv.detach().cpu(), int(label), clean, adversarial,
                        surrogate_fooled, deployed_fooled, float(delta.abs().max()), float(delta.norm()),
                        None if alpha is None else (alpha, adaptive_alpha(model, x_adv)))


def save_png(x: Tensor, path: str | Path) -> Tensor:
    """Write image ``[1, 3, H, W]`` in [0, 1] as a lossless 8-bit PNG; returns exactly what the file holds."""
    from PIL import Image

    pixels = tensor_to_image(x)
    Image.fromarray(pixels).save(path, format="PNG")
    return torch.from_numpy(pixels).permute(2, 0, 1).float().div(255).unsqueeze(0)


def perturbation_views(result: AttackResult, gain: float | None = None,
                       min_side: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The perturbation amplified to the visible range (uint8 RGB) and its per-pixel l2 magnitude ``H x W``."""
    delta = (result.x_adv - result.x).squeeze(0)  # [3, H, W]
    gain = gain or (0.5 / max(float(delta.abs().max()), 1e-12))
    amplified = tensor_to_image((0.5 + gain * delta).clamp(0, 1), min_side)
    magnitude = delta.norm(dim=0).numpy()
    return amplified, magnitude


# --- checkpoints -----------------------------------------------------------------------------------------
def _threat_eps(model: Demo) -> float | None:
    cfg = getattr(model, "checkpoint_config", None)
    threat = cfg.threat_model if cfg is not None else None
    return float(threat["eps"]) if threat and threat.get("eps") is not None else None


# where the demo starts on a model not adversarially trained: the smallest radius at which the preselected attack
# fools the default model's FC head on three quarters of the gallery (scripts/first_visit.py measures and chooses it)
UNTRAINED_EPS = 3 / 255


def default_eps(model: Demo) -> float:
    """The radius the demo starts at: the one the checkpoint was adversarially trained for, else
    :data:`UNTRAINED_EPS`, chosen from a measurement on the gallery so that a first visit's attack works."""
    return _threat_eps(model) or UNTRAINED_EPS


def _key_robust_metric(metrics: dict, eps: float | None) -> dict | None:
    """The robust accuracy to lead with: at the trained radius (else the largest measured one), the lowest
    recorded there (the most conservative; on more images when tied)."""
    robust = [m for name, m in metrics.items() if name.startswith("robust_accuracy") and isinstance(m, dict)
              and m.get("eps") is not None]
    if not robust:
        return None
    radius = eps if eps is not None and any(abs(m["eps"] - eps) < 1e-9 for m in robust) else max(m["eps"] for m in robust)
    at_radius = [m for m in robust if abs(m["eps"] - radius) < 1e-9]
    return min(at_radius, key=lambda m: (m["value"], -(m.get("n") or 0)))


def _what_it_is(model: Demo, trained: str) -> str:
    """The first line of :func:`card_summary`."""
    if isinstance(model, HPMClassifier):
        spec = model.backbone_spec
        return f"**Backbone:** `{spec.source}:{spec.name}` · **head:** {model.head.label} · {trained}"
    branches = " and ".join(f"{role} `{b.backbone_spec.source}:{b.backbone_spec.name}` ({b.head.label})"
                            for role, b in (("standard", model.standard), ("robust", model.robust)))
    if isinstance(model, MixedNUTS):
        return (f"**MixedNUTS** (Bai et al., training-free): (1 − α) · onehot(argmax standard) + α · softmax(h̃), h̃ "
                f"the robust logits standardised and mapped, {model.mixing_text}, of {branches} · the robust branch "
                f"{trained}")
    return (f"**Mixed classifier** (Bai et al.): (1 − α) · softmax(standard) + α · softmax(robust / T), "
            f"{model.mixing_text}, T = {model.temperature:g}, of {branches} · the robust branch {trained}")


def _key_clean_metric(metrics: dict, robust: dict | None) -> dict | None:
    """The clean accuracy to lead with: the checkpoint's own (``clean_accuracy``), else the one measured on the
    same images and batch size as the key robust accuracy, else the one on the most images."""
    if isinstance(metrics.get("clean_accuracy"), dict):
        return metrics["clean_accuracy"]
    clean = [m for name, m in metrics.items() if name.startswith("clean_accuracy (") and isinstance(m, dict)]
    paired = [m for m in clean if robust is not None and (m.get("n"), m.get("batch_size"))
              == (robust.get("n"), robust.get("batch_size"))]
    return (paired or sorted(clean, key=lambda m: -(m.get("n") or 0)) or [None])[0]


def card_summary(model: Demo) -> str:
    """A loaded checkpoint in three lines of Markdown: what it is, what it knows, and its key measured numbers
    (clean accuracy, and the lowest recorded robust accuracy with its attacks, radius, images and batch size)."""
    (_, h, w) = model.input_size
    eps = _threat_eps(model)
    trained = (f"adversarially trained for ℓ∞ ε = {eps_text(eps)}" if eps is not None
               else "**not adversarially trained**: expect a tiny ε to fool it")
    lines = [_what_it_is(model, trained),
             f"Knows the {model.num_classes} {model.dataset} classes; every image is resized (short side) and "
             f"centre-cropped to {h}×{w} and put in one of them."]
    cfg = getattr(model, "checkpoint_config", None)
    metrics = cfg.metrics if cfg is not None else {}
    numbers = []
    robust = _key_robust_metric(metrics, eps)
    if (clean := _key_clean_metric(metrics, robust)) is not None:
        numbers.append(f"clean {100 * clean['value']:.1f}% (n {clean.get('n')}, batch {clean.get('batch_size')})")
    if robust is not None:
        numbers.append(f"robust {100 * robust['value']:.1f}% at ε = {eps_text(robust['eps'])} (n {robust.get('n')}, "
                       f"batch {robust.get('batch_size')}; {_attacks_of(robust.get('protocol', ''))})")
    lines.append("**Measured:** " + (" · ".join(numbers) if numbers else "nothing recorded yet"))
    return "\n\n".join(lines)


def _attacks_of(protocol: str) -> str:
    """``"Linf eps 8/255: apgd-ce/fc, square (APGD 40 iterations ...)"`` -> ``"apgd-ce/fc, square"``."""
    return protocol.split(": ", 1)[-1].split(" (", 1)[0]


def card_metrics(model: Demo) -> str:
    """Every metric the checkpoint's card records, as a Markdown table."""
    from .model_card import metrics_table

    cfg = getattr(model, "checkpoint_config", None)
    return metrics_table(cfg.metrics if cfg is not None else {}, protocol=False)


@lru_cache(maxsize=8)
def gallery_samples(dataset: str = "cifar10", n: int = 24, data: str | None = None):
    """The first ``n`` test images of the local data root, as ``(images [n,3,H,W], labels, classes)``.

    Raises:
        HPMError: with a message saying how to enable the gallery (set HPM_DATA_DIR, or go online).
    """
    from .data import load_dataset

    ds = load_dataset(dataset, "test", data)
    n = min(n, len(ds))
    x, y = ds.tensors(torch.arange(n))
    return x, y, ds.classes


# --- caches shared by all visitors (read-only after creation) -------------------------------------------
@lru_cache(maxsize=4)
def load_cached(model_id: str, device: str | None = None) -> Demo:
    """``hpm.load`` once per model id (checkpoint directory or Hub repo id) and device (None: the CPU)."""
    from .model import load

    return load(model_id, device=device)


@lru_cache(maxsize=16)
def dataset_context(model_id: str, n: int, device: str | None = None, data: str | None = None) -> Context:
    """Features of the first ``n`` test images of the model's dataset, computed once and cached."""
    setting(n, "context size", 1, CONTEXT_MAX, integer=True)
    model = load_cached(model_id, device)
    x, _, _ = gallery_samples(model.dataset or "cifar10", n, data)
    return make_context(model, x.to(device_of(model)), f"inside a batch with the first {len(x)} {model.dataset} test images")


@torch.no_grad()
def angle_report(model: HPMClassifier, data: str | None = None, n: int = 1000,
                 on_step: Callable[[int, int], None] | None = None):
    """Fig. 3 statistics of a loaded model on its first ``n`` test images, l2 prototypes = its head's.

    ``on_step(done, total)`` reports progress in images whose features are computed (the slow part)."""
    from .sensitivity import angle_statistics

    if not isinstance(model, HPMClassifier) or not model.head.has_prototypes:
        raise HPMError(f"the {panel_labels(model)[1]} head has no l2 prototypes to compare with")
    x, y, _ = gallery_samples(model.dataset or "cifar10", n, data)
    device, parts = device_of(model), []
    for chunk in x.split(100):
        parts.append(model.forward_features(chunk.to(device)).cpu())
        if on_step is not None:
            on_step(sum(len(p) for p in parts), len(x))
    return angle_statistics(torch.cat(parts), y, model.fc.weight.detach().cpu(), model.head.prototypes.detach().cpu())
