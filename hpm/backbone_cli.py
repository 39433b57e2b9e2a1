"""``hpm train-backbone``: train a zoo ResNet from scratch (standard or FGSM-RS adversarial training),
resumable per epoch, and export it as an hpm checkpoint."""
from __future__ import annotations

import argparse

from .cli import _add_data_args, _device, parse_eps, positive_int
from .errors import HPMError


def add_backbone_parser(sub) -> None:
    b = sub.add_parser(
        "train-backbone", help="train a CIFAR ResNet from scratch (FC or l2 classifier, optionally adversarial)",
        description="Train a CIFAR ResNet-(6n+2) from scratch on the training split with a one-cycle SGD schedule "
                    "and random crop + flip, standard or FGSM-RS adversarial training (Wong et al. 2020, with its "
                    "catastrophic-overfitting guard). Every epoch is saved in --run-dir; rerunning the same "
                    "command resumes. The result is exported as an hpm checkpoint (FC head for an FC classifier, "
                    "NCM head with the learned centres for an l2 classifier).")
    b.add_argument("--run-dir", required=True, metavar="DIR", help="per-epoch states and history (resumes)")
    b.add_argument("--out", required=True, metavar="DIR", help="hpm checkpoint directory to export")
    b.add_argument("--depth", type=positive_int, default=20, help="6n+2 (default 20)")
    b.add_argument("--width", type=positive_int, default=16, help="first-stage channels (default 16)")
    b.add_argument("--classifier", default="fc", choices=["fc", "l2"], help="final classifier (default fc)")
    b.add_argument("--epochs", type=positive_int, default=30)
    b.add_argument("--batch-size", type=positive_int, default=128)
    b.add_argument("--lr", type=float, default=0.1, help="peak one-cycle learning rate (default 0.1)")
    b.add_argument("--weight-decay", type=float, default=5e-4)
    b.add_argument("--adversarial", default=None, choices=["fgsm-rs"], help="adversarial training recipe")
    b.add_argument("--eps", type=parse_eps, default=8 / 255, help="l_inf radius for --adversarial (default 8/255)")
    b.add_argument("--no-bf16", dest="bf16", action="store_false", help="train in float32 (default bf16 autocast)")
    b.add_argument("--n-train", type=positive_int, default=None, help="train on a fixed uniform subset of N images")
    b.add_argument("--n-test", type=positive_int, default=None, help="clean accuracy on the first N test images")
    b.add_argument("--seed", type=int, default=0)
    _add_data_args(b)
    b.set_defaults(func=_cmd_train_backbone)


def _cmd_train_backbone(args: argparse.Namespace) -> int:
    import torch

    from .backbone_train import BackboneConfig, to_hpm, train_backbone, training_summary
    from .cli import _uniform_subset
    from .data import load_dataset
    from .evaluate import clean_accuracy

    dataset = args.dataset or "cifar10"
    if dataset == "imagenet":
        raise HPMError("train-backbone trains 32x32 CIFAR ResNets; use cifar10 or cifar100")
    device = _device(args.device)
    train_set = load_dataset(dataset, "train", args.data)
    if args.n_train:
        train_set = _uniform_subset(train_set, args.n_train, args.seed)
    config = BackboneConfig(depth=args.depth, width=args.width, classifier=args.classifier,
                            num_classes=len(train_set.classes), epochs=args.epochs, batch_size=args.batch_size,
                            lr=args.lr, weight_decay=args.weight_decay, adversarial=args.adversarial, eps=args.eps,
                            bf16=args.bf16, seed=args.seed)
    if args.batch_size > len(train_set):
        raise HPMError(f"--batch-size {args.batch_size} exceeds the {len(train_set)} training images")
    net, history = train_backbone(config, train_set, args.run_dir, device=device)
    model = to_hpm(net, config, classes=train_set.classes, dataset=dataset).to(device)
    test_set = load_dataset(dataset, "test", args.data)
    n_test = min(args.n_test or len(test_set), len(test_set))
    x, y = test_set.tensors(torch.arange(n_test))
    acc = clean_accuracy(model, x, y, mode="hard", device=device)
    metrics = {"clean_accuracy": {"value": acc, "protocol": "clean", "split": test_set.source, "n": n_test,
                                  "batch_size": 256, "mode": "hard"}}
    print(f"clean accuracy ({n_test} test images): {100 * acc:.2f}%")
    training = training_summary(config, history, train_set.source)
    training["commands"] = [args.command_line]
    threat = {"norm": "Linf", "eps": args.eps} if args.adversarial else None
    model.save_pretrained(args.out, metrics=metrics, training=training, threat_model=threat)
    print(f"saved {args.out}")
    return 0
