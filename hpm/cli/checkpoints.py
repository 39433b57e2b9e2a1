"""``hpm info | card | push | mix``: read, annotate, publish and combine checkpoints."""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict


def register(sub) -> None:
    """Add this module's commands to the ``hpm`` subparsers ``sub``."""
    i = sub.add_parser("info", help="print a checkpoint's configuration and measured metrics",
                       description="Print what config.json of a checkpoint directory (or Hub repo) says.")
    i.add_argument("checkpoint", help="checkpoint directory or Hub repo id")
    i.add_argument("--json", action="store_true", help="print the raw config as JSON")
    i.set_defaults(func=_cmd_info)

    c = sub.add_parser("card", help="record evaluation reports in a checkpoint and regenerate its model card",
                       description="Add the clean and robust accuracies of hpm eval reports (JSON) to CHECKPOINT's "
                                   "config.json, with their protocol, subset, batch size and command, and rewrite "
                                   "its README.md model card from it. Weights are not touched.")
    c.add_argument("checkpoint", help="checkpoint directory")
    c.add_argument("--eval", nargs="*", default=[], metavar="REPORT.json",
                   help="reports written by hpm eval (none: only regenerate the card from config.json)")
    c.add_argument("--worst-case", nargs="+", action="append", default=[], metavar="REPORT.json",
                   help="reports of the same samples (e.g. the paper's protocol, then --attacks apgd-t): records "
                        "their per-sample worst case as one robust accuracy; may be repeated")
    c.set_defaults(func=_cmd_card)

    m = sub.add_parser("mix", help="save the mixed classifier of two models as a checkpoint",
                       description="Bai et al.'s mixed classifier, p = (1 - alpha) softmax(g) + alpha softmax(h / T), "
                                   "of a standard model g and a robust model h (each a checkpoint directory, Hub id or "
                                   "source string such as pyautoattack), saved as one checkpoint that hpm.load, "
                                   "hpm eval and the app read.")
    m.add_argument("--standard", required=True, metavar="MODEL", help="the accurate classifier g")
    m.add_argument("--robust", required=True, metavar="MODEL", help="the robust classifier h")
    m.add_argument("--alpha", type=float, required=True, help="weight of the robust branch, in [0, 1]")
    m.add_argument("--temperature", type=float, default=1.0, help="T dividing h's logits (default 1)")
    m.add_argument("--out", required=True, metavar="DIR", help="checkpoint directory to write")
    m.set_defaults(func=_cmd_mix)

    p = sub.add_parser("push", help="upload a checkpoint directory to the Hugging Face Hub",
                       description="Load CHECKPOINT (validating it) and upload it to REPO_ID on the Hub.")
    p.add_argument("checkpoint", help="checkpoint directory")
    p.add_argument("repo_id", help="owner/name on the Hub")
    p.add_argument("--private", action="store_true")
    p.add_argument("--token", default=None, help="Hub token (default: the logged-in one)")
    p.set_defaults(func=_cmd_push)


def _cmd_info(args: argparse.Namespace) -> int:
    from ..checkpoint import read_config
    from ..hub import resolve_checkpoint
    from ..model_card import metrics_table

    config = read_config(resolve_checkpoint(args.checkpoint))
    if args.json:
        print(json.dumps(asdict(config), indent=2))
        return 0
    if hasattr(config, "alpha"):  # a mixed classifier
        print(f"checkpoint: {args.checkpoint}")
        print(f"mixed:      (1 - {config.alpha:g}) softmax(standard) + {config.alpha:g} softmax(robust / "
              f"{config.temperature:g})")
        for name, branch in zip(config.names, (config.standard, config.robust)):
            print(f"branch:     {name}: {branch.backbone['source']}:{branch.backbone.get('name')} "
                  f"head {branch.head['type']}")
        print(metrics_table(config.metrics), end="")
        return 0
    b = config.backbone
    print(f"checkpoint: {args.checkpoint}")
    print(f"backbone:   {b['source']}:{b.get('name')}  input {tuple(config.input_size)}  "
          f"weights {'included' if config.backbone_weights_included else 'from source'}")
    print(f"head:       {config.head['type']}  d={config.head['num_features']}  k={config.head['num_classes']}")
    print(f"dataset:    {config.dataset}   threat model: {config.threat_model or 'none'}")
    print(f"training:   {json.dumps({k: v for k, v in (config.training or {}).items() if k != 'commands'})}")
    print(metrics_table(config.metrics), end="")
    return 0


def _cmd_card(args: argparse.Namespace) -> int:
    from ..model_card import metrics_table
    from ..publish.cards import record_evaluations

    metrics = record_evaluations(args.checkpoint, args.eval, worst_cases=args.worst_case, command=args.command_line)
    print(metrics_table(metrics), end="")
    return 0


def _cmd_mix(args: argparse.Namespace) -> int:
    from ..errors import HPMError
    from ..mixed import MixedClassifier
    from ..model import load_or_wrap

    if not (0 <= args.alpha <= 1 and args.temperature > 0):  # before loading either network
        raise HPMError(f"--alpha must be in [0, 1] and --temperature > 0; got {args.alpha:g}, {args.temperature:g}")
    standard, robust = load_or_wrap(args.standard), load_or_wrap(args.robust)
    if isinstance(standard, MixedClassifier) or isinstance(robust, MixedClassifier):
        raise HPMError("each branch must be one classifier, not a mixture")
    MixedClassifier(standard, robust, args.alpha, args.temperature, names=(args.standard, args.robust)
                    ).save_pretrained(args.out)
    print(f"saved {args.out}")
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    from ..model import load

    print(load(args.checkpoint).push_to_hub(args.repo_id, private=args.private, token=args.token))
    return 0
