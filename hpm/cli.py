"""The ``hpm`` command line: ``hpm train | train-backbone | eval | analyze | card | info | push``.

Bad arguments and bad files end with a one-line ``hpm: error: ...`` and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import asdict
from fractions import Fraction
from pathlib import Path

from .errors import HPMError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage too; keep it short)
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_eps(text: str) -> float:
    """``"8/255"``, ``"0.25/255"`` or ``"0.0314"`` -> float; rejects negatives and non-numbers."""
    numerator, _, denominator = text.partition("/")
    try:
        value = float(Fraction(numerator) / Fraction(denominator or 1))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number or fraction: {text!r} (e.g. 8/255 or 0.031)") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {text!r}")
    return value


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="DIR", help="local data root (default: $HPM_DATA_DIR; else torchvision download)")
    p.add_argument("--dataset", default=None, choices=["cifar10", "cifar100", "imagenet"],
                   help="dataset (default: the model's)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cuda if available)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hpm", description="Hybrid Prototype Mixing: wrap, fine-tune, evaluate and publish "
                                             "l2 re-classifiers for robust models.")
    parser.add_argument("--version", action="version", version=f"hpm {__import__('hpm').__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="wrap a classifier with a head and fine-tune it on a frozen backbone",
                       description="Wrap MODEL (pyautoattack, robustbench:NAME, timm:NAME, torchvision:NAME, or a "
                                   "checkpoint directory) with a head, fine-tune FC + head on the frozen backbone, "
                                   "report clean test accuracy and save a checkpoint.")
    t.add_argument("model", help="model source or checkpoint directory")
    t.add_argument("--head", default="hpm", choices=["hpm", "ncm", "cosine", "fc"], help="head type (default hpm)")
    t.add_argument("--mode", default="clean", choices=["clean", "adversarial", "fit"],
                   help="clean: cached features, seconds; adversarial: IKL + PGD (paper recipe); fit: prototypes "
                        "= class means of the training features, nothing trained (e.g. an l2 NCM head)")
    t.add_argument("--out", required=True, metavar="DIR", help="checkpoint directory to write (resumes if present)")
    t.add_argument("--epochs", type=positive_int, default=1, help="epochs (default 1, the paper's CIFAR-10 value)")
    t.add_argument("--batch-size", type=positive_int, default=64, help="training batch size (default 64)")
    t.add_argument("--lr", type=float, default=5e-5, help="Adam learning rate (default 5e-5)")
    t.add_argument("--momentum", type=float, default=None, help="EMA lambda of the prototypes (default 0.98)")
    t.add_argument("--eps", type=parse_eps, default=8 / 255, help="adversarial: l_inf radius (default 8/255)")
    t.add_argument("--steps", type=positive_int, default=10, help="adversarial: PGD steps (default 10)")
    t.add_argument("--attack-wmse", action="store_true",
                   help="adversarial: add the wMSE term to the inner maximisation (the paper's CIFAR-100 recipe)")
    t.add_argument("--max-steps", type=positive_int, default=None, help="adversarial: stop after N steps")
    t.add_argument("--save-every", type=positive_int, default=100, help="adversarial: steps between saved states")
    t.add_argument("--n-train", type=positive_int, default=None,
                   help="use a fixed uniform random subset of N training images (seeded by --seed)")
    t.add_argument("--n-test", type=positive_int, default=None, help="clean accuracy on the first N test images")
    t.add_argument("--eval-batch-size", type=positive_int, default=256, help="batch size for clean accuracy")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--model-dir", default="./models", help="robustbench: where zoo weights live")
    _add_data_args(t)
    t.set_defaults(func=_cmd_train)

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
    c.set_defaults(func=_cmd_card)

    p = sub.add_parser("push", help="upload a checkpoint directory to the Hugging Face Hub",
                       description="Load CHECKPOINT (validating it) and upload it to REPO_ID on the Hub.")
    p.add_argument("checkpoint", help="checkpoint directory")
    p.add_argument("repo_id", help="owner/name on the Hub")
    p.add_argument("--private", action="store_true")
    p.add_argument("--token", default=None, help="Hub token (default: the logged-in one)")
    p.set_defaults(func=_cmd_push)

    from .analyze_cli import add_analyze_parser
    from .backbone_cli import add_backbone_parser
    from .evaluate_cli import add_eval_parser

    add_backbone_parser(sub)
    add_eval_parser(sub)
    add_analyze_parser(sub)
    return parser


def _device(name: str | None):
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise HPMError(f"--device: unknown device {name!r}") from None


def load_model_arg(text: str, model_dir: str = "./models", dataset: str | None = None):
    """A checkpoint directory / Hub id, or a source string (pyautoattack, robustbench:NAME, ...)."""
    import hpm

    if Path(text).is_dir() or ("/" in text and ":" not in text):
        return hpm.load(text)
    options = {"model_dir": model_dir, **({"dataset": dataset} if dataset else {})} if text.startswith(
        "robustbench:") else {}
    return hpm.wrap(text, head="fc", source_options=options)


def _cmd_train(args) -> int:
    import torch

    import hpm
    from .data import load_dataset
    from .evaluate import clean_accuracy
    from .train import (AdversarialConfig, CleanConfig, extract_features, finetune_adversarial, finetune_clean,
                        fit_prototypes)

    device = _device(args.device)
    if Path(args.model).is_dir():
        base = hpm.load(args.model)
        model = hpm.HPMClassifier(base.features, base.fc, hpm.create_head(args.head, base.num_features,
                                  base.num_classes), backbone_spec=base.backbone_spec, input_size=base.input_size,
                                  classes=base.classes, dataset=base.dataset)
    else:
        options = {"model_dir": args.model_dir} if args.model.startswith("robustbench:") else {}
        if args.dataset and args.model.startswith("robustbench:"):
            options["dataset"] = args.dataset
        model = hpm.wrap(args.model, head=args.head, source_options=options, dataset=args.dataset)
    dataset = args.dataset or model.dataset or "cifar10"
    train_set = load_dataset(dataset, "train", args.data)
    if args.n_train:
        train_set = _uniform_subset(train_set, args.n_train, args.seed)
    test_set = load_dataset(dataset, "test", args.data)
    n_test = min(args.n_test or len(test_set), len(test_set))
    model.to(device)
    recipe: dict = {"mode": args.mode, "dataset": dataset, "train_source": train_set.source,
                    "n_train": len(train_set)}
    if args.mode == "fit":
        z, y = extract_features(model, train_set, device=device)
        fit_prototypes(model, z.to(device), y.to(device))
        cfg, threat = None, None
    elif args.mode == "clean":
        z, y = extract_features(model, train_set, device=device)
        cfg = CleanConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
                          seed=args.seed)
        finetune_clean(model, z.to(device), y.to(device), cfg)
        threat = None
    else:
        if args.momentum is not None and hasattr(model.head, "momentum"):
            model.head.momentum = args.momentum
        cfg = AdversarialConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, eps=args.eps,
                                steps=args.steps, attack_uses_wmse=args.attack_wmse, seed=args.seed,
                                save_every=args.save_every,
                                max_steps=args.max_steps)
        finetune_adversarial(model, train_set, cfg, args.out, device=device)
        threat = {"norm": "Linf", "eps": args.eps}
    recipe.update(asdict(cfg) if cfg is not None else {})
    recipe["commands"] = [args.command_line]
    x, y = test_set.tensors(torch.arange(n_test))
    metrics = {}
    for label, mode in (("clean_accuracy", "hard"), ("clean_accuracy_fc", "fc")):
        acc = clean_accuracy(model, x, y, batch_size=args.eval_batch_size, mode=mode, device=device)
        metrics[label] = {"value": acc, "protocol": "clean", "split": test_set.source, "n": n_test,
                          "batch_size": args.eval_batch_size, "mode": mode}
        print(f"{label} ({mode}, {n_test} images, batch {args.eval_batch_size}): {100 * acc:.2f}%")
    model.save_pretrained(args.out, metrics=metrics, training=recipe, threat_model=threat)
    print(f"saved {args.out}")
    return 0


def _uniform_subset(dataset, n: int, seed: int):
    from .data import ImageTensorDataset, Subset

    idx = Subset(n=min(n, len(dataset)), mode="uniform", seed=seed).indices(len(dataset))
    return ImageTensorDataset(dataset.images[idx], dataset.labels[idx], dataset.classes,
                              f"{dataset.source}[uniform {len(idx)}, seed {seed}]")


def _cmd_info(args) -> int:
    from .cards import metrics_table
    from .hub import read_config, resolve_checkpoint

    config = read_config(resolve_checkpoint(args.checkpoint))
    if args.json:
        print(json.dumps(asdict(config), indent=2))
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


def _cmd_card(args) -> int:
    from .cards import metrics_table
    from .results import record_evaluations

    metrics = record_evaluations(args.checkpoint, args.eval, command=args.command_line)
    print(metrics_table(metrics), end="")
    return 0


def _cmd_push(args) -> int:
    import hpm

    url = hpm.load(args.checkpoint).push_to_hub(args.repo_id, private=args.private, token=args.token)
    print(url)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = "hpm " + shlex.join(sys.argv[1:] if argv is None else argv)  # recorded in cards/reports
    try:
        return args.func(args)
    except HPMError as e:
        print(f"hpm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hpm: interrupted (adversarial training and evaluation resume from their saved state)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
