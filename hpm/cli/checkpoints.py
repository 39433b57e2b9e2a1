"""``hpm info | card | push | mix``: read, annotate, publish and combine checkpoints."""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from .common import (MODEL_HELP, add_data_args, add_device_arg, eps_arg, positive_float, positive_int,
                     resolve_device, uniform_subset)

if TYPE_CHECKING:
    from ..checkpoint import CheckpointConfig


def register(sub) -> None:
    """Add this module's commands to the ``hpm`` subparsers ``sub``."""
    i = sub.add_parser("info", help="print a checkpoint's configuration and measured metrics",
                       description="Print what config.json of a checkpoint directory (or Hub repo) says.")
    i.add_argument("checkpoint", metavar="model", help=MODEL_HELP)
    i.add_argument("--json", action="store_true", help="print the raw config as JSON")
    i.set_defaults(func=_cmd_info)

    c = sub.add_parser("card", help="record evaluation reports in a checkpoint and regenerate its model card",
                       description="Add the clean and robust accuracies of hpm eval reports (JSON) to CHECKPOINT's "
                                   "config.json, with their protocol, subset, batch size and command, and rewrite "
                                   "its README.md model card from it. Weights are not touched.")
    c.add_argument("checkpoint", help="checkpoint directory, or a shipped checkpoint's name (in a clone: "
                                      "checkpoints/NAME)")
    c.add_argument("--eval", nargs="*", default=[], metavar="REPORT.json",
                   help="reports written by hpm eval (none: only regenerate the card from config.json)")
    c.add_argument("--worst-case", nargs="+", action="append", default=[], metavar="REPORT.json",
                   help="reports of the same samples (e.g. the paper's protocol, then --attacks apgd-t): records "
                        "their per-sample worst case as one robust accuracy; may be repeated")
    c.set_defaults(func=_cmd_card)

    _register_mix(sub)

    p = sub.add_parser("push", help="upload a checkpoint directory to the Hugging Face Hub",
                       description="Load CHECKPOINT (validating it) and upload it to REPO_ID on the Hub.")
    p.add_argument("checkpoint", help="checkpoint directory")
    p.add_argument("repo_id", help="owner/name on the Hub")
    p.add_argument("--private", action="store_true")
    p.add_argument("--token", default=None, help="Hub token (default: the logged-in one)")
    p.add_argument("--backbone-repo", default=None, metavar="OWNER/NAME@REVISION",
                   help="CHECKPOINT names its backbone's checkpoint by a local path: the Hub copy of that checkpoint "
                        "to name instead (push it first)")
    p.set_defaults(func=_cmd_push)


RECIPES = {  # hpm mix --adaptive --recipe: the mixing network's layout and the training attack
    "authors": {"network": {"width": None, "blocks": 2, "block": "preact"},
                "training": {"attack": "apgd", "warmup": 1 / 25, "attack_full_alpha": True}},
    "compact": {"network": {}, "training": {"attack": "pgd"}},  # width: --mixer-width
}


def _register_mix(sub) -> None:
    """``hpm mix``: a fixed, adaptive or MixedNUTS mixture of two models."""
    m = sub.add_parser("mix", help="save the mixed classifier of two models as a checkpoint (fixed, adaptive or "
                                    "MixedNUTS)",
                       description="Bai et al.'s mixed classifier, p = (1 - alpha) softmax(g) + alpha softmax(h / T), "
                                   "of a standard model g and a robust model h (each a checkpoint directory, Hub id or "
                                   "source string such as pyautoattack), saved as one checkpoint that hpm.load, "
                                   "hpm eval and the app read. --alpha fixes alpha; --adaptive trains a mixing network "
                                   "that predicts alpha per input from both models' features, adversarially, on the "
                                   "training split (adaptive smoothing; resumable from --run-dir); --nuts "
                                   "deploys MixedNUTS, selecting its map of h's logits and alpha on training images.")
    m.add_argument("--standard", required=True, metavar="MODEL", help="the accurate classifier g")
    m.add_argument("--robust", required=True, metavar="MODEL", help="the robust classifier h")
    rule = m.add_mutually_exclusive_group(required=True)
    rule.add_argument("--alpha", type=float, help="fixed weight of the robust branch, in [0, 1]")
    rule.add_argument("--adaptive", action="store_true", help="train a mixing network instead, on the training split")
    rule.add_argument("--nuts", action="store_true",
                      help="MixedNUTS (training-free): the standard branch as a hard max, the robust logits mapped; "
                           "the map and alpha selected by the authors' grid search on --n-select training images "
                           "attacked on the robust branch (resumes per batch from --run-dir)")
    m.add_argument("--temperature", type=float, default=1.0, help="T dividing h's logits (default 1)")
    m.add_argument("--out", required=True, metavar="DIR", help="checkpoint directory to write")
    m.add_argument("--store-backbone", action="store_true",
                   help="a branch from a checkpoint that stores its backbone: store a copy in --out too (default: "
                        "--out names that checkpoint, by its shipped name or its path relative to --out)")
    m.add_argument("--run-dir", metavar="DIR",
                   help="adaptive: resumable training states (default: OUT.run); nuts: the selection attack's batches")
    m.add_argument("--epochs", type=positive_int, default=1, help="adaptive: epochs (default 1)")
    m.add_argument("--batch-size", type=positive_int, default=128,
                   help="adaptive: clean images per step; nuts: images per batch of the selection attack")
    m.add_argument("--recipe", choices=sorted(RECIPES), default="compact",
                   help="adaptive: 'authors' trains Bai et al.'s mixing network (two pre-activation blocks per stage, "
                        "as wide as both models' stages) against their training attack (APGD through the mixture: "
                        "one cross-entropy and --target-classes targeted-DLR runs per image, random radii and "
                        "iteration counts) with their exponential warm-up; 'compact' (default) a network of one "
                        "block per stage of --mixer-width channels against PGD with --steps steps, for a CPU budget")
    m.add_argument("--steps", type=positive_int, default=5, help="adaptive, compact: PGD steps of the training attack")
    m.add_argument("--target-classes", type=int, default=9,
                   help="adaptive, authors: targeted-DLR runs per image after the cross-entropy one (default 9)")
    m.add_argument("--lr", type=positive_float, default=1e-4, help="adaptive: AdamW learning rate (default 1e-4)")
    m.add_argument("--recalibrate-steps", type=int, default=0,
                   help="adaptive: recompute the mixing network's batch-norm statistics afterwards on the images of "
                        "the last epoch's final N steps (for runs too short for their running averages; default 0)")
    m.add_argument("--mixer-width", type=positive_int, default=32,
                   help="adaptive, compact: the mixing network's first block width (default 32)")
    m.add_argument("--eval-gamma", type=float, nargs=2, metavar=("SCALE", "BIAS"),
                   help="adaptive: the mixing logit's constants in evaluation, gamma = BN(raw) * SCALE + BIAS "
                        "(default: the training ones, 2 0.4; the authors evaluate CIFAR-10 with 3 20)")
    m.add_argument("--eps", type=eps_arg, default=8 / 255,
                   help="adaptive: training attack radius; nuts: the selection attack's (default 8/255)")
    m.add_argument("--n-train", type=positive_int, default=None, help="adaptive: a fixed uniform subset of N images")
    m.add_argument("--seed", type=int, default=0)
    _add_nuts_args(m)
    add_data_args(m)
    add_device_arg(m)
    m.set_defaults(func=_cmd_mix)


def _add_nuts_args(m) -> None:
    """``hpm mix --nuts``'s selection options."""
    m.add_argument("--n-select", type=positive_int, default=1000,
                   help="nuts: training images (a fixed uniform subset) the map and alpha are selected on")
    m.add_argument("--beta", type=float, default=98.5,
                   help="nuts: percent of the attacked-correct robust predictions the mixture keeps (default 98.5)")
    m.add_argument("--select-iters", type=positive_int, default=100,
                   help="nuts: APGD iterations of the selection attack (default 100, the authors')")
    m.add_argument("--select-targets", type=positive_int, default=9,
                   help="nuts: APGD-T target classes of the selection attack (default 9, the authors')")


def _weights_text(config: CheckpointConfig) -> str:
    """Where a checkpoint's backbone weights come from, as ``hpm info`` says it."""
    if config.backbone_weights_included:
        return "included"
    if config.backbone["source"] == "checkpoint":
        digest = config.backbone.get("options", {}).get("features_sha256", "")
        return f"from checkpoint {config.backbone['name']} (sha256 {digest[:12]}…)"
    return "from source"


def _cmd_info(args: argparse.Namespace) -> int:
    from ..checkpoint import read_config
    from ..hub import resolve_checkpoint
    from ..model_card import metrics_table

    from ..model import load_or_wrap, model_kind

    if model_kind(args.checkpoint) != "checkpoint":  # a source or a factory: what the evaluation would see
        from ..defence import declare

        described = declare(load_or_wrap(args.checkpoint)).describe()
        print(json.dumps(described, indent=2) if args.json else
              "\n".join(f"{k + ':':<16}{v}" for k, v in described.items()))
        return 0
    config = read_config(resolve_checkpoint(args.checkpoint))
    if args.json:
        print(json.dumps(asdict(config), indent=2))
        return 0
    if hasattr(config, "standard"):  # a mixed classifier
        alpha = f"{config.alpha:g}" if config.alpha is not None else "alpha(x)"
        print(f"checkpoint: {args.checkpoint}")
        if config.robust_map is not None:
            m = config.robust_map
            print(f"mixed:      MixedNUTS, (1 - {alpha}) onehot(argmax standard) + {alpha} softmax(h~), h~ = "
                  f"{m['scale']:.4g} sign(u) |u|^{m['power']:.4g}, u = GELU(standardised robust logits "
                  f"{m['bias']:+.4g})")
        else:
            print(f"mixed:      (1 - {alpha}) softmax(standard) + {alpha} softmax(robust / {config.temperature:g})"
                  + (f", alpha(x) in {config.mixer['alpha_range']} from a mixing network" if config.mixer else ""))
        for name, branch in zip(config.names, (config.standard, config.robust)):
            print(f"branch:     {name}: {branch.backbone['source']}:{branch.backbone.get('name')} "
                  f"head {branch.head['type']}")
        print(metrics_table(config.metrics), end="")
        return 0
    b = config.backbone
    print(f"checkpoint: {args.checkpoint}")
    print(f"backbone:   {b['source']}:{b.get('name')}  input {tuple(config.input_size)}  "
          f"weights {_weights_text(config)}")
    print(f"head:       {config.head['type']}  d={config.head['num_features']}  k={config.head['num_classes']}")
    print(f"dataset:    {config.dataset}   threat model: {config.threat_model or 'none'}")
    print(f"training:   {json.dumps({k: v for k, v in (config.training or {}).items() if k != 'commands'})}")
    print(metrics_table(config.metrics), end="")
    return 0


def _cmd_card(args: argparse.Namespace) -> int:
    from ..model_card import metrics_table
    from ..publish.cards import record_evaluations

    from ..hub import is_repo_id, resolve_checkpoint

    local = Path(args.checkpoint)
    directory = local if local.is_dir() or is_repo_id(args.checkpoint) else resolve_checkpoint(args.checkpoint)
    metrics = record_evaluations(directory, args.eval, worst_cases=args.worst_case, command=args.command_line)
    print(metrics_table(metrics), end="")
    return 0


def _name_backbone(branch, name: str, out: str) -> None:
    """A branch loaded from the checkpoint ``name`` (a directory, a shipped name or a Hub id) that stores its
    backbone names that checkpoint instead of storing the backbone again (:mod:`hpm.sources.reference`); one that
    already names its backbone's checkpoint by a path relative to its own directory names it relative to ``out``."""
    from ..sources.reference import names_local_backbone

    config = getattr(branch, "checkpoint_config", None)
    if config is None or not hasattr(branch, "reference_backbone"):
        return  # a network wrapped from a zoo or a file, not a checkpoint
    spec = branch.backbone_spec
    if config.backbone_weights_included:
        branch.reference_backbone(name, relative_to=out)
    elif names_local_backbone(spec) and Path(name).is_dir():
        branch.reference_backbone(Path(name) / str(spec.name), relative_to=out)


def _cmd_mix(args: argparse.Namespace) -> int:
    from ..errors import HPMError
    from ..mixed import MixedClassifier, MixingNetwork, check_branches_agree
    from ..model import load_or_wrap

    if not ((args.alpha is None or 0 <= args.alpha <= 1) and args.temperature > 0):  # before loading a network
        raise HPMError(f"--alpha must be in [0, 1] and --temperature > 0; got {args.alpha}, {args.temperature:g}")
    if args.target_classes < 0:
        raise HPMError(f"--target-classes counts targeted runs, 0 or more; got {args.target_classes}")
    if args.nuts and not (0 < args.beta < 100 and args.temperature == 1):
        raise HPMError(f"--nuts takes --beta in (0, 100) and no --temperature (its map replaces it); got --beta "
                       f"{args.beta:g}, --temperature {args.temperature:g}")
    out = Path(args.out).expanduser().resolve()
    if any(Path(name).expanduser().resolve() == out for name in (args.standard, args.robust)):
        raise HPMError(f"--out {args.out} is one of the branches' checkpoints, which writing the mixture there would "
                       "replace; write it to another directory")
    standard, robust = load_or_wrap(args.standard), load_or_wrap(args.robust)
    if isinstance(standard, MixedClassifier) or isinstance(robust, MixedClassifier):
        raise HPMError("each branch must be one classifier, not a mixture")
    if out in (getattr(branch, "backbone_directory", None) for branch in (standard, robust)):
        raise HPMError(f"--out {args.out} stores a branch's backbone, which writing the mixture there would replace; "
                       "write it to another directory")
    check_branches_agree(standard, robust)  # before a selection or training spends minutes on them
    names = (args.standard, args.robust)
    if not args.store_backbone:
        for branch, name in zip((standard, robust), names):
            _name_backbone(branch, name, args.out)
    if args.nuts:
        model, selection = _select_nuts(standard, robust, args)
        model.save_pretrained(args.out)
        print(f"selected alpha {selection.alpha:.4g}, scale {selection.scale:.4g}, power {selection.power:.4g}, bias "
              f"{selection.bias:.4g}: {100 * selection.objective:.1f}% of {selection.n_clean_incorrect} "
              f"clean-misclassified margins at or above the cutoff {selection.cutoff:.4g}")
        print(f"saved {args.out}")
        return 0
    if not args.adaptive:
        MixedClassifier(standard, robust, args.alpha, args.temperature, names=names).save_pretrained(args.out)
        print(f"saved {args.out}")
        return 0
    layout = {"width": args.mixer_width} | RECIPES[args.recipe]["network"]
    mixer = MixingNetwork.for_branches(standard, robust, eval_gamma=args.eval_gamma, **layout)
    model = MixedClassifier(standard, robust, temperature=args.temperature, mixer=mixer, names=names)
    training = _train_mixer(model, args)
    model.save_pretrained(args.out, training=training)
    print(f"saved {args.out}")
    return 0


def _select_nuts(standard, robust, args: argparse.Namespace):
    """MixedNUTS' map and alpha selected on training images (:func:`hpm.train.nuts.select_mixednuts`), resumable
    from the run directory."""
    from ..data import load_dataset
    from ..train.nuts import select_mixednuts

    train_set = uniform_subset(load_dataset(robust.dataset or "cifar10", "train", args.data), args.n_select, args.seed)
    return select_mixednuts(standard, robust, train_set, args.run_dir or f"{args.out}.run", eps=args.eps,
                            n_iter=args.select_iters, target_classes=args.select_targets, beta=args.beta,
                            batch_size=args.batch_size, seed=args.seed, names=(args.standard, args.robust),
                            commands=[args.command_line], device=resolve_device(args.device))


def _train_mixer(model, args: argparse.Namespace) -> dict:
    """Train the mixing network as ``hpm mix --adaptive`` asks; returns the recipe for ``config.json``."""
    from dataclasses import asdict

    from ..data import load_dataset
    from ..train.mixer import MixerConfig, train_mixer

    train_set = load_dataset(model.dataset or "cifar10", "train", args.data)
    if args.n_train:
        train_set = uniform_subset(train_set, args.n_train, args.seed)
    config = MixerConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, steps=args.steps, eps=args.eps,
                         target_classes=args.target_classes, seed=args.seed, recalibrate_steps=args.recalibrate_steps,
                         **RECIPES[args.recipe]["training"])
    history = train_mixer(model, train_set, config, args.run_dir or f"{args.out}.run",
                          device=resolve_device(args.device))
    return {"mode": "mixing network (adaptive smoothing), branches frozen", **asdict(config),
            "train_source": train_set.source, "n_train": len(train_set), "history": history,
            "commands": [args.command_line]}


def _cmd_push(args: argparse.Namespace) -> int:
    from ..model import load

    print(load(args.checkpoint).push_to_hub(args.repo_id, private=args.private, token=args.token,
                                            backbone_repo=args.backbone_repo))
    return 0
