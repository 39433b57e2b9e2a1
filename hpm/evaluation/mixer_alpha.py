"""Where an adaptive mixture's mixing network puts α: on clean test images, and on the images that the evaluation's
first attack (APGD-CE through the whole mixture, mixing network included) makes from them.

    python scripts/adaptive_alpha.py checkpoints/cifar10-resnet20w32-fgsmrs-20ep-mixed-adaptive --data DATA \
        --n 200 --out results/analysis/adaptive-alpha.json

(``scripts/adaptive_alpha.py`` runs :func:`main`.) Adaptive smoothing is robust only if the mixing network keeps α
high on adversarial images; an attacker who differentiates through it can instead push α towards the bottom of
its range, where the (non-robust) standard branch decides. The JSON gives α's mean and quartiles on the clean
images, and on the attacked versions of the clean-correct ones, split by whether the attack fooled the mixture, and
on those that fooled the mixture while the robust branch alone still classifies them correctly.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch
from torch import Tensor

from ..attacks import BatchFeatures, parse_attacks, run_attack
from ..data import Subset
from ..devices import device_of
from ..mixed import MixedClassifier
from ..model import load_or_wrap
from ..units import parse_eps
from .api import load_eval_data


def alpha_summary(alpha: Tensor) -> dict:
    """``{"n", "mean", "min", "q25", "median", "q75", "max"}`` of a 1-D tensor of α values (empty: only ``n``)."""
    if alpha.numel() == 0:
        return {"n": 0}
    q = torch.quantile(alpha.double(), torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64))
    return {"n": alpha.numel(), "mean": float(alpha.double().mean()),
            **dict(zip(("min", "q25", "median", "q75", "max"), q.tolist()))}


def attacked_alpha(model: MixedClassifier, x: Tensor, y: Tensor, *, eps: float, n_iter: int, batch_size: int,
                   seed: int = 0) -> dict[str, Tensor]:
    """α(x), the mixture's clean correctness, and, for every image, α, the mixture's correctness and the robust
    branch's alone after APGD-CE on the deployed mixture (all ``[N]``)."""
    spec, = parse_attacks(["apgd-ce/deployed"], model)
    batch, device = BatchFeatures(model, None), device_of(model)
    out: dict[str, list[Tensor]] = {"alpha": [], "correct": [], "alpha_adv": [], "correct_adv": [],
                                    "robust_correct_adv": []}
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size].to(device), y[start:start + batch_size].to(device)
        x_adv = run_attack(spec, batch, xb, yb, norm="Linf", eps=eps, n_iter=n_iter, seed=seed,
                           num_classes=model.num_classes).x_adv
        with torch.no_grad():
            for suffix, images in (("", xb), ("_adv", x_adv)):
                log_probs, gamma = model.mix(images)  # one forward pass: the prediction and α together
                out["alpha" + suffix].append(model.mixer.alpha(gamma).cpu())
                out["correct" + suffix].append((log_probs.argmax(1) == yb).cpu())
            out["robust_correct_adv"].append((model(x_adv, mode="robust").argmax(1) == yb).cpu())
    return {key: torch.cat(values) for key, values in out.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="an adaptive mixed checkpoint (directory or Hub id)")
    parser.add_argument("--data", default=None, help="local data root (default: $HPM_DATA_DIR)")
    parser.add_argument("--n", type=int, default=200, help="first N test images (default 200)")
    parser.add_argument("--eps", default="8/255", help="l_inf radius: 8/255 or 0.031 (default 8/255)")
    parser.add_argument("--iters", type=int, default=40, help="APGD iterations (default 40, as evaluated)")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--out", required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    if min(args.n, args.iters, args.batch_size) < 1:
        parser.error("--n, --iters and --batch-size must be >= 1")
    try:
        args.eps = parse_eps(args.eps)
    except ValueError as e:
        parser.error(f"--eps: {e}")
    model = load_or_wrap(args.model).eval()
    if not isinstance(model, MixedClassifier) or model.mixer is None:
        parser.error(f"{args.model} is not an adaptive mixed classifier (one with a mixing network)")
    x, y, _, info = load_eval_data(model.dataset or "cifar10", "test", args.data, Subset(n=args.n))
    found = attacked_alpha(model, x, y, eps=args.eps, n_iter=args.iters, batch_size=args.batch_size)
    attacked = found["correct"]  # the evaluation attacks the clean-correct images only
    fooled = attacked & ~found["correct_adv"]
    robust_held = fooled & found["robust_correct_adv"]  # the mixture fell although its robust branch did not
    result = {"command": "python scripts/adaptive_alpha.py " + shlex.join(sys.argv[1:] if argv is None else argv),
              "model": args.model, "data": {k: info[k] for k in ("dataset", "source", "n")},
              "attack": {"name": "apgd-ce/deployed", "eps": args.eps, "iters": args.iters,
                         "batch_size": args.batch_size},
              "alpha_range": list(model.mixer.alpha_range),
              "clean_accuracy": float(found["correct"].float().mean()),
              "accuracy_after_attack": float(found["correct_adv"].float().mean()),
              "robust_branch_accuracy_on_attacked": float(found["robust_correct_adv"].float().mean()),
              "alpha": {"clean": alpha_summary(found["alpha"]),
                        "attacked": alpha_summary(found["alpha_adv"][attacked]),
                        "attacked_fooled": alpha_summary(found["alpha_adv"][fooled]),
                        "attacked_not_fooled": alpha_summary(found["alpha_adv"][attacked & ~fooled]),
                        "fooled_robust_branch_correct": alpha_summary(found["alpha_adv"][robust_held])}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["alpha"], indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
