"""``hpm train`` (a head on a frozen backbone) and ``hpm train-backbone`` (a zoo ResNet from scratch)."""
from __future__ import annotations

import argparse
from dataclasses import asdict

from ..errors import HPMError
from .common import (
    HEAD_TYPES,
    add_data_args,
    add_device_arg,
    add_model_arg,
    clean_metrics,
    dataset_of,
    eps_arg,
    positive_int,
    resolve_device,
    uniform_subset,
)


def register(sub) -> None:
    """Add this module's commands to the ``hpm`` subparsers ``sub``."""
    _add_train(sub)
    _add_train_backbone(sub)


def _add_train(sub) -> None:
    t = sub.add_parser("train", help="wrap a classifier with a head and fine-tune it on a frozen backbone",
                       description="Wrap MODEL (pyautoattack, robustbench:NAME, timm:NAME, torchvision:NAME, or a "
                                   "checkpoint directory) with a head, fine-tune FC + head on the frozen backbone, "
                                   "report clean test accuracy and save a checkpoint.")
    add_model_arg(t)
    t.add_argument("--head", default="hpm", choices=HEAD_TYPES, help="head type (default hpm)")
    t.add_argument("--mode", default="clean", choices=["clean", "adversarial", "fit"],
                   help="clean: cached features, seconds; adversarial: IKL + PGD (paper recipe); fit: prototypes "
                        "= class means of the training features, nothing trained (e.g. an l2 NCM head)")
    t.add_argument("--out", required=True, metavar="DIR", help="checkpoint directory to write (resumes if present)")
    t.add_argument("--store-backbone", action="store_true",
                   help="MODEL a checkpoint that stores its backbone: store a copy in --out too (default: --out "
                        "names MODEL as its backbone, by its shipped name or its path relative to --out)")
    t.add_argument("--epochs", type=positive_int, default=1, help="epochs (default 1, the paper's CIFAR-10 value)")
    t.add_argument("--batch-size", type=positive_int, default=64, help="training batch size (default 64)")
    t.add_argument("--lr", type=float, default=5e-5, help="Adam learning rate (default 5e-5)")
    t.add_argument("--momentum", type=float, default=None, help="EMA lambda of the prototypes (default 0.98)")
    t.add_argument("--ablation", nargs="*", default=[], choices=["no-batch-prototypes", "mean-mixer", "dot-score"],
                   help="HPM ablations (Sec. 4.4): dataset-level prototypes only; (C_global + C_batch) / 2 instead "
                        "of the parameterised mixer; inner-product instead of -l2 scores")
    t.add_argument("--eps", type=eps_arg, default=8 / 255, help="adversarial: l_inf radius (default 8/255)")
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
    add_data_args(t)
    add_device_arg(t)
    t.set_defaults(func=_cmd_train)


def _model_to_train(args: argparse.Namespace):
    """MODEL with a new ``--head`` on its backbone and FC: a checkpoint's (a directory, a shipped name or a Hub id),
    a source's, or the classifier ``file.py:FACTORY`` returns."""
    from ..heads import create_head
    from ..mixed import MixedClassifier
    from ..model import load, load_classifier, model_kind, source_options, wrap

    if args.ablation and args.head != "hpm":
        raise HPMError(f"--ablation applies to the hpm head, not {args.head!r}")
    options = {"batch_prototypes": "no-batch-prototypes" not in args.ablation,
               "mixer": "mean" if "mean-mixer" in args.ablation else "linear",
               "score": "dot" if "dot-score" in args.ablation else "l2"} if args.head == "hpm" else {}
    kind = model_kind(args.model)
    if kind == "source":
        return wrap(args.model, head=args.head, source_options=source_options(args.model, args.model_dir,
                                                                              args.dataset),
                    dataset=args.dataset, **options)
    # a factory's own classifier: its features and FC, found by wrap at the model's input_size
    base = load(args.model) if kind == "checkpoint" else load_classifier(args.model, dataset=args.dataset)
    if isinstance(base, MixedClassifier):
        raise HPMError(f"{args.model} is a mixture of two classifiers; train a head on one of its branches instead")
    model = base.with_head(create_head(args.head, base.num_features, base.num_classes, **options))
    if kind == "checkpoint" and base.checkpoint_config.backbone_weights_included and not args.store_backbone:
        model.reference_backbone(args.model, relative_to=args.out)  # the backbone is stored once, there
    return model


def _fine_tune(args: argparse.Namespace, model, train_set, device) -> tuple[dict, dict | None]:
    """Run ``--mode`` on the training set; returns the recipe's fields and the training threat model."""
    from ..train import (
        AdversarialConfig,
        CleanConfig,
        extract_features,
        finetune_adversarial,
        finetune_clean,
        fit_prototypes,
    )

    if args.mode in ("fit", "clean"):
        z, y = extract_features(model, train_set, device=device)
        if args.mode == "fit":
            fit_prototypes(model, z.to(device), y.to(device))
            return {}, None
        cfg = CleanConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
                          seed=args.seed)
        finetune_clean(model, z.to(device), y.to(device), cfg)
        return asdict(cfg), None
    if args.momentum is not None and hasattr(model.head, "momentum"):
        model.head.momentum = args.momentum
    cfg = AdversarialConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, eps=args.eps,
                            steps=args.steps, attack_uses_wmse=args.attack_wmse, seed=args.seed,
                            save_every=args.save_every, max_steps=args.max_steps)
    finetune_adversarial(model, train_set, cfg, args.out, device=device)
    return asdict(cfg), {"norm": "Linf", "eps": args.eps}


def _cmd_train(args: argparse.Namespace) -> int:
    from ..data import load_dataset

    device = resolve_device(args.device)
    model = _model_to_train(args)
    dataset = dataset_of(args, model)
    train_set = load_dataset(dataset, "train", args.data)
    if args.n_train:
        train_set = uniform_subset(train_set, args.n_train, args.seed)
    model.to(device)
    recipe_fields, threat = _fine_tune(args, model, train_set, device)
    recipe = {"mode": args.mode, "dataset": dataset, "train_source": train_set.source, "n_train": len(train_set),
              **recipe_fields, "commands": [args.command_line]}
    metrics = clean_metrics(model, load_dataset(dataset, "test", args.data), args.n_test, args.eval_batch_size, device,
                            {"clean_accuracy": "hard", "clean_accuracy_fc": "fc"})
    model.save_pretrained(args.out, metrics=metrics, training=recipe, threat_model=threat)
    print(f"saved {args.out}")
    return 0


def _add_train_backbone(sub) -> None:
    b = sub.add_parser(
        "train-backbone",
        help="train a CIFAR ResNet or PreAct ResNet-18 from scratch (FC or l2 classifier, optionally adversarial)",
        description="Train a CIFAR ResNet-(6n+2) or a PreAct ResNet-18 from scratch on the training split with a "
                    "one-cycle SGD schedule and random crop + flip, standard or FGSM-RS adversarial training (Wong "
                    "et al. 2020, with its catastrophic-overfitting guard), optionally Wu & Yu's average-margin "
                    "regulariser or Adv-DPNP's prototype classifier and loss. Every epoch is saved in --run-dir; "
                    "rerunning the same command resumes. The result is exported as an hpm checkpoint (FC head for an "
                    "FC classifier, NCM head with the learned centres for an l2 classifier, dpnp head for a dpnp "
                    "one).")
    b.add_argument("--run-dir", required=True, metavar="DIR", help="per-epoch states and history (resumes)")
    b.add_argument("--out", required=True, metavar="DIR", help="hpm checkpoint directory to export")
    b.add_argument("--arch", default="cifar-resnet", choices=["cifar-resnet", "preact-resnet18"],
                   help="cifar-resnet: ResNet-(6n+2) of --depth and --width (default); preact-resnet18: the "
                        "pre-activation ResNet-18 of Wong et al. and Rice et al. (512-d features)")
    b.add_argument("--depth", type=positive_int, default=20, help="cifar-resnet: 6n+2 (default 20)")
    b.add_argument("--width", type=positive_int, default=16, help="cifar-resnet: first-stage channels (default 16)")
    b.add_argument("--classifier", default="fc", choices=["fc", "l2", "dpnp"],
                   help="final classifier (default fc); dpnp: Adv-DPNP's prototypes and composite loss (needs "
                        "--adversarial)")
    b.add_argument("--dpnp-radius", type=float, default=4.0, metavar="R", help="dpnp: prototype norm (default 4)")
    b.add_argument("--dpnp-weights", type=_three_weights, default=(0.1, 1.0, 1.0), metavar="ALIGN,REPEL,CONSISTENCY",
                   help="dpnp: weights of alignment, repulsion and consistency (default 0.1,1,1)")
    b.add_argument("--epochs", type=positive_int, default=30)
    b.add_argument("--batch-size", type=positive_int, default=128)
    b.add_argument("--lr", type=float, default=0.1, help="peak one-cycle learning rate (default 0.1)")
    b.add_argument("--warmup", type=float, default=0.4, metavar="FRACTION",
                   help="share of the steps the learning rate climbs from 0 to --lr, then falls linearly to 0 "
                        "(default 0.4; torch's CyclicLR in Wong et al.'s FGSM-RS code: 0.5)")
    b.add_argument("--momentum-at-peak", type=float, default=None, metavar="M",
                   help="cycle the momentum against the learning rate: 0.9 at rate 0, M at the peak (Wong et al.'s "
                        "code: 0.8, CyclicLR's default); default constant 0.9")
    b.add_argument("--weight-decay", type=float, default=5e-4)
    b.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=True,
                   help="Nesterov momentum (default on; Wong et al.'s recipe: --no-nesterov)")
    b.add_argument("--adversarial", default=None, choices=["fgsm-rs"], help="adversarial training recipe")
    b.add_argument("--eps", type=eps_arg, default=8 / 255, help="l_inf radius for --adversarial (default 8/255)")
    b.add_argument("--margin-reg", type=float, default=0.0, metavar="MU",
                   help="weight of Wu & Yu's average-margin regulariser on the training logits (default 0: off)")
    b.add_argument("--margin-tau", type=float, default=1.0, metavar="TAU",
                   help="truncation of that regulariser in logit units (default 1, the authors' code default)")
    b.add_argument("--no-bf16", dest="bf16", action="store_false", help="train in float32 (default bf16 autocast)")
    b.add_argument("--channels-last", action="store_true",
                   help="train in the NHWC memory layout (the same maths; about 1.2x faster in bf16 on a CPU)")
    b.add_argument("--n-train", type=positive_int, default=None, help="train on a fixed uniform subset of N images")
    b.add_argument("--n-test", type=positive_int, default=None, help="clean accuracy on the first N test images")
    b.add_argument("--save-every", type=positive_int, default=50, metavar="STEPS",
                   help="training steps between resumable states within an epoch (default 50; one is also "
                        "written after every epoch)")
    b.add_argument("--seed", type=int, default=0)
    add_data_args(b)
    add_device_arg(b)
    b.set_defaults(func=_cmd_train_backbone)


def _three_weights(text: str) -> tuple[float, float, float]:
    """``"A,B,C"`` -> three non-negative floats (``--dpnp-weights``)."""
    try:
        weights = tuple(float(part) for part in text.split(","))
    except ValueError:
        weights = ()
    if len(weights) != 3 or min(weights) < 0:
        raise argparse.ArgumentTypeError(f"give three non-negative numbers ALIGN,REPEL,CONSISTENCY; got {text!r}")
    return weights  # type: ignore[return-value]


def _cmd_train_backbone(args: argparse.Namespace) -> int:
    from ..data import load_dataset
    from ..train.scratch import BackboneConfig, to_hpm, train_backbone, training_summary

    dataset = dataset_of(args)
    if dataset == "imagenet":
        raise HPMError("train-backbone trains 32x32 CIFAR ResNets; use cifar10 or cifar100")
    device = resolve_device(args.device)
    train_set = load_dataset(dataset, "train", args.data)
    if args.n_train:
        train_set = uniform_subset(train_set, args.n_train, args.seed)
    if args.batch_size > len(train_set):
        raise HPMError(f"--batch-size {args.batch_size} exceeds the {len(train_set)} training images")
    config = BackboneConfig(arch=args.arch.replace("-", "_"), depth=args.depth, width=args.width,
                            classifier=args.classifier, num_classes=len(train_set.classes), epochs=args.epochs,
                            batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
                            momentum_at_peak=args.momentum_at_peak, nesterov=args.nesterov,
                            weight_decay=args.weight_decay, adversarial=args.adversarial, eps=args.eps,
                            dpnp_radius=args.dpnp_radius, dpnp_align=args.dpnp_weights[0],
                            dpnp_repel=args.dpnp_weights[1], dpnp_consistency=args.dpnp_weights[2],
                            margin_reg=args.margin_reg, margin_tau=args.margin_tau, bf16=args.bf16,
                            channels_last=args.channels_last, seed=args.seed)
    net, history = train_backbone(config, train_set, args.run_dir, device=device, save_every=args.save_every)
    model = to_hpm(net, config, classes=train_set.classes, dataset=dataset).to(device)
    metrics = clean_metrics(model, load_dataset(dataset, "test", args.data), args.n_test, 256, device,
                            {"clean_accuracy": "hard"})
    training = training_summary(config, history, train_set.source) | {"commands": [args.command_line]}
    threat = {"norm": "Linf", "eps": args.eps} if args.adversarial else None
    model.save_pretrained(args.out, metrics=metrics, training=training, threat_model=threat)
    print(f"saved {args.out}")
    return 0
