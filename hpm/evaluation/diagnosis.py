"""Why an HPM head on a robust backbone is less accurate than its own FC view: one table of clean accuracies.

    python scripts/diagnose_clean_drop.py checkpoints/cifar10-resnet20w32-fgsmrs-fc --data ../shared/data \\
        --extra ikl-shipped=checkpoints/cifar10-resnet20w32-fgsmrs-hpm --out results/diagnosis/r20w32.json

(``scripts/diagnose_clean_drop.py`` runs :func:`main`.) On the FC checkpoint's frozen backbone it builds, from
the clean training features: the l2 NCM head (class means), HPM at initialisation (mixer ``[I; 0]``: the NCM
head exactly), HPM after clean fine-tuning, and the paper's ablations (Sec. 4.4) after the same clean
fine-tuning; ``--extra NAME=CKPT`` adds fine-tuned checkpoints of the same backbone (IKL), each with the NCM
head on its fine-tuned prototypes (does the EMA drift?). Every model is
measured on the same test images at several evaluation batch sizes and shuffled orders
(:func:`hpm.evaluation.batch_dependence.prediction_curve`), beside its own FC view.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data import ImageTensorDataset, Subset, cache_dir, load_dataset
from ..heads import create_head
from ..model import HPMClassifier, load
from ..progress import progress_bar
from ..train import CleanConfig, extract_features, finetune_clean
from ..train.pgd import linf_pgd, uniform_start
from .batch_dependence import prediction_curve

ABLATIONS = {  # name -> (HPM head options, how it was made)
    "hpm, clean FT": ({}, "HPM (Eq. 14-18) after clean fine-tuning"),
    "hpm w/o C_batch, clean FT": ({"batch_prototypes": False}, "ablation: dataset-level prototypes only"),
    "hpm mean mixer, clean FT": ({"mixer": "mean"}, "ablation: (C_global + C_batch) / 2, no parameterised mixer"),
    "hpm dot score, clean FT": ({"score": "dot"}, "ablation: inner-product scores instead of -l2"),
}


def _with_head(base: HPMClassifier, head_type: str, **options) -> HPMClassifier:
    """The base model's backbone (shared, frozen) and a copy of its FC layer, with a new head."""
    head = create_head(head_type, base.num_features, base.num_classes, **options)
    return base.with_head(head, copy.deepcopy(base.fc)).eval()


def adversarial_training_images(base: HPMClassifier, train: ImageTensorDataset, n: int, eps: float = 8 / 255,
                                steps: int = 10, seed: int = 0) -> ImageTensorDataset:
    """PGD-``steps`` adversarial examples (l_inf ``eps``, step ``eps / 4``, random start, the FC model's
    cross-entropy) of a fixed uniform subset of ``n`` training images, stored as 8-bit images (in the eps-ball
    for eps a multiple of 1/255) and cached on disk, since they take minutes on a CPU."""
    subset = Subset(n=min(n, len(train)), mode="uniform", seed=seed).indices(len(train))
    key = hashlib.sha256(json.dumps([base.backbone_spec.to_dict(), train.source, n, eps, steps, seed]).encode())
    for name, tensor in sorted(base.state_dict().items()):
        key.update(name.encode() + tensor.detach().float().cpu().numpy().tobytes())
    path = cache_dir() / "adversarial" / f"{key.hexdigest()[:24]}.npz"
    if not path.exists():
        generator = torch.Generator().manual_seed(seed)
        chunks = []
        for idx in progress_bar(subset.split(256), desc="PGD on training images", unit="batch"):
            x, y = train.tensors(idx)
            loss = lambda x_adv, y=y: F.cross_entropy(base(x_adv, mode="fc"), y)  # noqa: E731
            chunks.append(linf_pgd(loss, x, uniform_start(x, eps, generator), eps=eps, step=eps / 4, steps=steps))
        images = (torch.cat(chunks) * 255).round().to(torch.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, x=images.numpy(), y=train.labels[subset].numpy())
    with np.load(path) as f:
        return ImageTensorDataset(torch.from_numpy(f["x"]), torch.from_numpy(f["y"]), train.classes,
                                  f"{train.source}[uniform {n}, PGD-{steps} at {eps * 255:g}/255]")


def build_variants(base: HPMClassifier, z_train: torch.Tensor, y_train: torch.Tensor,
                   config: CleanConfig) -> dict[str, tuple[HPMClassifier, str]]:
    """The models of the table, built from the clean training features ``z_train``: name -> (model, how)."""
    ncm = _with_head(base, "ncm")
    ncm.head.init_prototypes(z_train, y_train)
    init = _with_head(base, "hpm")
    init.head.init_prototypes(z_train, y_train)
    variants = {"fc": (base, "the backbone's own FC classifier"),
                "ncm (clean class means)": (ncm, "l2 nearest class mean of the clean training features"),
                "hpm at init": (init, "HPM before fine-tuning: mixer [I; 0], C_global = the class means")}
    for name, (options, how) in ABLATIONS.items():
        model = _with_head(base, "hpm", **options)
        finetune_clean(model, z_train, y_train, config, progress=False)
        variants[name] = (model, f"{how} (1 epoch, batch {config.batch_size}, Adam {config.lr:g}; FC trained too)")
    return variants


def _ncm_on_prototypes_of(base: HPMClassifier, model: HPMClassifier, path: str) -> tuple[HPMClassifier, str]:
    """The NCM head on a fine-tuned checkpoint's dataset-level prototypes (after their EMA updates): does the
    EMA move the prototypes away from the class means (drift), for better or worse?"""
    ncm = _with_head(base, "ncm")
    ncm.head.prototypes.copy_(model.head.prototypes)
    return ncm, f"l2 nearest class mean with the prototypes C_global of {path} after fine-tuning (EMA, Eq. 14)"


def measure(variants: dict[str, tuple[HPMClassifier, str]], z_test: torch.Tensor, y_test: torch.Tensor,
            batch_sizes: list[int], n_orders: int) -> dict[str, dict]:
    """Per model: its head, how it was made, its FC view's accuracy and its batch-size/order curve."""
    out = {}
    for name, (model, how) in variants.items():
        with torch.no_grad():
            fc_view = float((model.fc(z_test).argmax(1) == y_test).float().mean())
        out[name] = {"how": how, "head": model.head.label, "batch_dependent": model.head.batch_dependent,
                     "fc_view_accuracy": fc_view,
                     "curve": {str(bs): v for bs, v in prediction_curve(model, z_test, y_test, batch_sizes,
                                                                         n_orders=n_orders).items()}}
    return out


def _init_equals_ncm(variants: dict, z_test: torch.Tensor) -> float:
    """Largest score difference between HPM at initialisation and the NCM head (0 up to rounding)."""
    with torch.no_grad():
        a = variants["hpm at init"][0].forward_head(z_test)
        b = variants["ncm (clean class means)"][0].forward_head(z_test)
    return float((a - b).abs().max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backbone", help="an FC checkpoint of the backbone (e.g. checkpoints/...-fgsmrs-fc)")
    parser.add_argument("--data", default=None, help="local data root (default: $HPM_DATA_DIR)")
    parser.add_argument("--extra", nargs="*", default=[], metavar="NAME=CKPT", help="fine-tuned checkpoints to add")
    parser.add_argument("--batch-sizes", default="1,16,250,1000")
    parser.add_argument("--orders", type=int, default=5, help="shuffled orders per batch size (default 5)")
    parser.add_argument("--n-train", type=int, default=None, help="first N training images (default: all)")
    parser.add_argument("--adv-n", type=int, default=0,
                        help="add an NCM head on the class means of PGD-10 adversarial features of N training images")
    parser.add_argument("--out", required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    base = load(args.backbone)
    train, test = load_dataset(base.dataset or "cifar10", "train", args.data), \
        load_dataset(base.dataset or "cifar10", "test", args.data)
    if args.n_train:
        train.images, train.labels = train.images[:args.n_train], train.labels[:args.n_train]
    z_train, y_train = extract_features(base, train)
    z_test, y_test = extract_features(base, test, cache=False, progress=False)
    variants = build_variants(base, z_train, y_train, CleanConfig())
    if args.adv_n:
        adversarial = adversarial_training_images(base, train, args.adv_n)
        ncm = _with_head(base, "ncm")
        ncm.head.init_prototypes(*extract_features(base, adversarial))
        how = (f"l2 nearest class mean of the features of PGD-10 adversarial examples (8/255, against the FC "
               f"head, stored as 8-bit images) of {len(adversarial)} uniformly drawn training images")
        variants = {**dict(list(variants.items())[:2]), "ncm (adversarial class means)": (ncm, how),
                    **dict(list(variants.items())[2:])}
    for pair in args.extra:
        name, _, path = pair.partition("=")
        model = load(path)
        variants[name] = (model, f"checkpoint {path} ({(model.checkpoint_config.training or {}).get('mode', '?')} "
                                 f"fine-tuning, {(model.checkpoint_config.training or {}).get('n_train', '?')} images)")
        if model.head.has_prototypes:
            variants[f"ncm on the C_global of: {name}"] = _ncm_on_prototypes_of(base, model, path)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    command = "python scripts/diagnose_clean_drop.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    result = {"command": command,
              "backbone": args.backbone, "test": {"source": test.source, "n": len(y_test)},
              "train": {"source": train.source, "n": len(y_train)}, "batch_sizes": sizes, "n_orders": args.orders,
              "hpm_at_init_minus_ncm_max_abs_score": _init_equals_ncm(variants, z_test),
              "models": measure(variants, z_test, y_test, sizes, args.orders)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for name, m in result["models"].items():
        print(f"{name:32s} FC view {100 * m['fc_view_accuracy']:5.1f}  " + "  ".join(
            f"bs{bs} {100 * c['accuracy']:5.1f} [{100 * c['min']:.1f}-{100 * c['max']:.1f}]"
            for bs, c in m["curve"].items()))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
