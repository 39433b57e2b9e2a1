"""Model cards (Hugging Face format: YAML metadata + Markdown), generated from a checkpoint's config.

Every number in a card comes from ``config.json`` — which evaluation scripts fill from their result
files — never typed by hand.
"""
from __future__ import annotations

from .checkpoint import CheckpointConfig, MixedCheckpointConfig
from .heads import HEADS
from .units import eps_text

PAPER = "Sensitivity as a Double-Edged Sword: l2 re-classification with Hybrid Prototype Mixing"


def _backbone_text(backbone: dict) -> str:
    source, name = backbone.get("source"), backbone.get("name")
    if source == "pyautoattack":
        return "the standard CIFAR-10 ResNet-18 shipped inside PyPI's `pyautoattack` (referenced, not copied)"
    if source == "hpm":
        o = backbone.get("options", {})
        net = ("a PreAct ResNet-18 (He et al.'s pre-activation ResNet, as Wong et al. train it)"
               if name == "preact_resnet18"
               else f"a CIFAR ResNet-{o.get('depth')} of first-stage width {o.get('width')}")
        return (f"{net} trained from scratch by hpm (`hpm train-backbone`, {o.get('classifier')} classifier; "
                "weights included)")
    if source == "checkpoint":
        digest = backbone.get("options", {}).get("features_sha256")
        check = f"checks its weights' SHA-256 `{digest[:12]}…`" if digest else "has no digest to check its weights by"
        return f"the backbone stored in the checkpoint `{name}` (named, not copied: loading reads it there and {check})"
    if source == "module":
        return f"a user-supplied `{backbone.get('options', {}).get('class', 'nn.Module')}` (weights included)"
    return f"`{source}:{name}`"


def metrics_table(metrics: dict, *, protocol: bool = True) -> str:
    """A Markdown table of ``metrics`` (name -> dict with value and its protocol), or a note if empty.

    ``protocol=False`` leaves out the (long) protocol column, for narrow displays such as the app."""
    if not metrics:
        return "_No measured metrics recorded yet._\n"
    header = ["metric", "value", "95% CI"] + (["protocol"] if protocol else []) + ["samples", "eval batch size"]
    rows = [header, ["---"] * len(header)]
    for name, m in metrics.items():
        m = m if isinstance(m, dict) else {"value": m}
        value = m.get("value")
        shown = f"{100 * value:.1f}%" if isinstance(value, float) and 0 <= value <= 1 else str(value)
        ci = m.get("ci95")
        ci_text = f"{100 * ci[0]:.1f}–{100 * ci[1]:.1f}%" if ci else ""
        rows.append([name, shown, ci_text] + ([str(m.get("protocol", ""))] if protocol else [])
                    + [str(m.get("n", "")), str(m.get("batch_size", ""))])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows) + "\n"


def evaluation_commands(metrics: dict) -> list[str]:
    """The distinct commands that produced the metrics (evaluations, then the ``hpm card`` calls that
    recorded them), in order of first appearance."""
    measured = [m for m in metrics.values() if isinstance(m, dict)]
    evaluations = [c for m in measured for c in (m.get("commands") or [m.get("command")])]  # a joined metric: several
    recorded = [m.get("recorded_with") for m in measured]
    return list(dict.fromkeys(c for c in evaluations + recorded if c))


def _threat_text(threat: dict | None) -> str:
    if threat and threat.get("eps") is not None:
        return f"{threat.get('norm', 'Linf')}, eps = {eps_text(float(threat['eps']))}"
    return "none (standard training / clean fine-tuning)"


def _reproduce_block(config: CheckpointConfig | MixedCheckpointConfig) -> str:
    """The commands that rebuild and evaluate a checkpoint: its training's, a MixedNUTS selection's, its reports'."""
    selection = (getattr(config, "robust_map", None) or {}).get("selection") or {}
    commands = [*((config.training or {}).get("commands") or []), *(selection.get("commands") or []),
                *evaluation_commands(config.metrics)]
    return ("```bash\n" + "\n".join(commands) + "\n```\n") if commands else "_not recorded_\n"


def model_card(config: CheckpointConfig | MixedCheckpointConfig) -> str:
    """The README.md of a checkpoint directory."""
    from huggingface_hub import ModelCardData

    if isinstance(config, MixedCheckpointConfig):
        return _mixed_card(config)

    head = HEADS[config.head["type"]](int(config.head["num_features"]), int(config.head["num_classes"]),
                                      **config.head_options)  # an instance: ablated variants describe themselves
    data = ModelCardData(
        library_name="hpm",
        license="mit",
        tags=["adversarial-robustness", "image-classification", f"head-{head.head_type}", "pytorch", "safetensors"],
        datasets=[config.dataset] if config.dataset else None,
        pipeline_tag="image-classification",
    )
    recipe = "\n".join(f"- `{k}`: `{v}`" for k, v in (config.training or {}).items() if k != "commands")
    batch_text = (f"{head.label} predictions depend on the other samples of the batch; every metric below states its evaluation "
                  "batch size." if head.batch_dependent else "none: predictions are per-sample.")
    return f"""---
{data.to_yaml()}
---

# {config.dataset or 'image'} classifier with a `{head.head_type}` head

- **Head:** {head.description}; {config.head['num_features']} features, {config.head['num_classes']} classes.
- **Backbone:** {_backbone_text(config.backbone)}; inputs are images in [0, 1] of size {tuple(config.input_size)}.
- **Adversarial training / fine-tuning threat model:** {_threat_text(config.threat_model)}.
- **Batch dependence:** {batch_text}

## Usage

```python
import hpm
model = hpm.load("path/to/this/directory")   # or a Hub repo id
scores = model(images)                         # images: float [B, 3, H, W] in [0, 1]
```

## Results

{metrics_table(config.metrics)}
## Training recipe

{recipe or "- not recorded"}

## Reproduce

{_reproduce_block(config)}
Paper: *{PAPER}*. Card generated by hpm {config.hpm_version} from `config.json`.
"""


def _branch_text(config: CheckpointConfig, name: str) -> str:
    head = HEADS[config.head["type"]]
    return (f"`{name}`: {_backbone_text(config.backbone)}, its {head.label} head; adversarial training: "
            f"{_threat_text(config.threat_model)}")


def _mixing_rule(config: MixedCheckpointConfig) -> tuple[str, str]:
    """A mixed checkpoint's title words and its mixing rule in a sentence."""
    if config.robust_map is not None:
        return f"MixedNUTS classifier (alpha {config.alpha:.3g})", ""
    if config.mixer is None:
        return (f"mixed classifier (alpha {config.alpha:g}, T {config.temperature:g})",
                f"with alpha = {config.alpha:g} and T = {config.temperature:g}")
    lo, hi = config.mixer["alpha_range"]
    return (f"adaptive mixed classifier (alpha in [{lo:g}, {hi:g}], T {config.temperature:g})",
            f"with T = {config.temperature:g} and alpha = alpha(x) in [{lo:g}, {hi:g}] predicted per input by a mixing "
            f"network from both networks' first two stages of feature maps (adaptive smoothing; "
            f"{_mixer_layout(config.mixer)}), trained adversarially with both networks frozen")


def _mixer_layout(mixer: dict) -> str:
    """``2 pre-activation blocks per stage, the first stage as wide as both networks' second stages`` or
    ``1 basic block per stage, width 32``, from a mixing network's config."""
    blocks, block = mixer.get("blocks", 1), {"preact": "pre-activation", "basic": "basic"}[mixer.get("block", "basic")]
    width = ("the first stage as wide as both networks' second stages" if mixer.get("width") is None
             else f"width {mixer['width']}")
    return f"{blocks} {block} block{'s' if blocks > 1 else ''} per stage, {width}"


def _nuts_text(config: MixedCheckpointConfig) -> tuple[str, str]:
    """A MixedNUTS checkpoint's introduction and the section saying how its map and alpha were selected."""
    m = config.robust_map or {}
    intro = (f"MixedNUTS (Bai et al., training-free): `p(x) = (1 - alpha) onehot(argmax g(x)) + alpha softmax(h~(x))` "
             f"with alpha = {config.alpha:.4g}, `h~ = s sign(u) |u|^p`, `u = GELU(standardised h(x) + c)`, s = "
             f"{m['scale']:.4g}, p = {m['power']:.4g}, c = {m['bias']:.4g}; the model outputs `log p(x)`.")
    sel = m.get("selection")
    if not sel:
        return intro, ""
    grid = sel["grid"]
    text = (f"By the authors' procedure, on {sel.get('images', 'images not recorded')}. Attack: "
            f"{sel.get('attack', 'not recorded')}. The {sel['n_attacked_correct']} "
            f"images the robust branch still classifies correctly under it set the cutoff: {sel['beta']:g}% of their "
            f"margins after the map stay at or above it ({sel['cutoff']:.4g}), and alpha = 1 / (1 + cutoff) = "
            f"{sel['alpha']:.4g}. Of the {grid['n'] ** 3} maps of the grid ({grid['n']} values each of s in "
            f"[{grid['scale'][0]:g}, {grid['scale'][1]:g}], log-spaced, c in [{grid['bias'][0]:g}, "
            f"{grid['bias'][1]:g}] and p in [{grid['power'][0]:g}, {grid['power'][1]:g}]), the one kept leaves the "
            f"fewest margins of the {sel['n_clean_incorrect']} images the robust branch misclassifies clean at or "
            f"above the cutoff: {100 * sel['objective']:.1f}% of them, whose prediction the mixture leaves to the "
            "robust branch.")
    if sel.get("attack_alpha") is not None:
        text += (f" The adaptive attack weighs the robust branch in its gradient by {sel['attack_alpha']:.4g}, the "
                 f"alpha the same selection gives without the map (plain softmax margins, {sel['attack_beta']:g}% "
                 "of them kept), as the authors attack it.")
    return intro, f"\n## How alpha and the map were selected\n\n{text}\n"


def _epoch_cost(epoch: dict) -> str:
    """``; 1226 s on cpu: 2 cores, 2 torch threads`` where a training history recorded its time and hardware."""
    if "seconds" not in epoch:
        return ""
    return f"; {epoch['seconds']:.0f} s" + (f" on {epoch['hardware']}" if epoch.get("hardware") else "")


def _mixed_card(config: MixedCheckpointConfig) -> str:
    """The README.md of a mixed classifier's checkpoint."""
    from huggingface_hub import ModelCardData

    data = ModelCardData(library_name="hpm", license="mit", pipeline_tag="image-classification",
                         tags=["adversarial-robustness", "image-classification", "mixed-classifier", "pytorch",
                               "safetensors"], datasets=[config.dataset] if config.dataset else None)
    reproduce = _reproduce_block(config)
    title, rule = _mixing_rule(config)
    recipe = "\n".join(f"- `{k}`: `{v}`" for k, v in (config.training or {}).items()
                       if k not in ("commands", "history"))
    history = (config.training or {}).get("history") or []
    progress = "\n".join(f"- epoch {h['epoch']}: clean accuracy {100 * h['clean_accuracy']:.1f}%, adversarial "
                         f"{100 * h['adversarial_accuracy']:.1f}%, mean training-mode alpha clean "
                         f"{h['mean_alpha_clean']:.3f} / adversarial {h['mean_alpha_adversarial']:.3f} (training "
                         "images, training attack)" + _epoch_cost(h)
                         for h in history)
    training = f"\n## Mixing network training\n\n{recipe}\n{progress}\n" if config.training else ""
    through, lowest = "", ""
    intro = ("The mixed classifier of Bai et al. (\"Improving the accuracy-robustness trade-off of classifiers via "
             f"adaptive\nsmoothing\"): `p(x) = (1 - alpha) softmax(g(x)) + alpha softmax(h(x) / T)` {rule}; the model "
             "outputs `log p(x)`.")
    if config.robust_map is not None:
        intro, training = _nuts_text(config)
        through = ("; the standard branch's hard max replaced by its softmax in the gradient (MixedNUTS' adaptive "
                   "attack, the mapped mixture, BPDA)")
    if config.mixer is not None:
        taps = "; ".join(f"{branch}: `{'`, `'.join(names)}`" for branch, names in zip(("g", "h"), config.mixer["taps"]))
        through = f" and the mixing network, which reads {taps}"
        lowest = ", and the mixture at its lowest alpha"
    return f"""---
{data.to_yaml()}
---

# {config.dataset or 'image'} {title}

{intro}

- **Standard branch g:** {_branch_text(config.standard, config.names[0])}.
- **Robust branch h:** {_branch_text(config.robust, config.names[1])}.
- **Evaluation:** white-box attacks differentiate the mixture end to end (gradients flow through both networks{through})
  and each branch alone (transfer to the mixture){lowest}, then Square; every attack is judged on the mixture.
- **Batch dependence:** none: predictions are per-sample.

## Usage

```python
import hpm
model = hpm.load("path/to/this/directory")   # or a Hub repo id
log_probs = model(images)                      # images: float [B, 3, H, W] in [0, 1]
```

## Results

{metrics_table(config.metrics)}{training}
## Reproduce

{reproduce}
Card generated by hpm {config.hpm_version} from `config.json`.
"""
