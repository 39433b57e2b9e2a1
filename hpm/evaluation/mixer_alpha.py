"""Where an adaptive mixture's mixing network puts α: on clean test images, and on the images that the evaluation's
APGD-CE attacks make from them: through the whole mixture (mixing network included), and through the mixture with
α held at the bottom of its range (the attack that exploits a mixing network pushed down). Per image, the attacked
image is the adversary's best of the two: one that fools the mixture, else the one of lower α.

    python scripts/adaptive_alpha.py checkpoints/cifar10-resnet20w32-fgsmrs-20ep-mixed-adaptive --data DATA \
        --n 200 --out results/analysis/adaptive-alpha.json

(``scripts/adaptive_alpha.py`` runs :func:`main`.) Adaptive smoothing is robust only if the mixing network keeps α
high on adversarial images; an attacker who differentiates through it can instead push α towards the bottom of
its range, where the (non-robust) standard branch decides. The JSON gives α's mean and quartiles on the clean
images, and on the attacked versions of the clean-correct ones (each attack's, and the adversary's best), split by
whether the attack fooled the mixture, and on those that fooled the mixture while the robust branch alone still
classifies them correctly; and the share of images whose sigmoid is saturated in float32 (α at an end of its
range, with no gradient through the mixing network: large evaluation constants do that).
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
from ..mixed import MixedClassifier, sigmoid_saturation
from ..model import load_or_wrap
from ..units import parse_eps
from .api import load_eval_data

ATTACKS = ("apgd-ce/deployed", "apgd-ce/lowest-alpha")  # through the mixing network, and with α at its lowest


def alpha_summary(alpha: Tensor) -> dict:
    """``{"n", "mean", "min", "q25", "median", "q75", "max"}`` of a 1-D tensor of α values (empty: only ``n``)."""
    if alpha.numel() == 0:
        return {"n": 0}
    q = torch.quantile(alpha.double(), torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64))
    return {"n": alpha.numel(), "mean": float(alpha.double().mean()),
            **dict(zip(("min", "q25", "median", "q75", "max"), q.tolist()))}


def attacked_alpha(model: MixedClassifier, x: Tensor, y: Tensor, *, eps: float, n_iter: int, batch_size: int,
                   seed: int = 0) -> dict[str, Tensor]:
    """For every image ``[N]``: α(x), γ(x) and the mixture's clean correctness; and after each attack of
    :data:`ATTACKS` (keys suffixed with its target) and for the adversary's best of them (suffix ``_adv``): α, γ,
    the mixture's correctness and the robust branch's alone."""
    specs = parse_attacks(list(ATTACKS), model)
    batch, device = BatchFeatures(model, None), device_of(model)
    out: dict[str, list[Tensor]] = {}
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size].to(device), y[start:start + batch_size].to(device)
        found = {"": _alpha_on(model, xb, yb)}
        for spec in specs:
            x_adv = run_attack(spec, batch, xb, yb, norm="Linf", eps=eps, n_iter=n_iter, seed=seed,
                               num_classes=model.num_classes).x_adv
            found["_" + spec.name.split("/")[1]] = _alpha_on(model, x_adv, yb)
        first, second = (found["_" + name.split("/")[1]] for name in ATTACKS)
        best = ~second["correct"] & first["correct"] | (first["correct"] == second["correct"]) & (
            second["alpha"] < first["alpha"])  # the second fools where the first does not, or both alike, lower α
        found["_adv"] = {k: torch.where(best, second[k], first[k]) for k in first}
        for suffix, values in found.items():
            for key, value in values.items():
                out.setdefault(key + suffix, []).append(value.cpu())
    return {key: torch.cat(values) for key, values in out.items()}


@torch.no_grad()
def _alpha_on(model: MixedClassifier, images: Tensor, y: Tensor) -> dict[str, Tensor]:
    log_probs, gamma = model.mix(images)  # one forward pass: the prediction and α together
    return {"alpha": model.mixer.alpha(gamma), "gamma": gamma, "correct": log_probs.argmax(1) == y,
            "robust_correct": model(images, mode="robust").argmax(1) == y}


def _alpha_sections(found: dict[str, Tensor]) -> dict:
    """α's summaries: clean, and on the attacked clean-correct images (the adversary's best, split by outcome,
    and each attack's)."""
    attacked = found["correct"]  # the evaluation attacks the clean-correct images only
    fooled = attacked & ~found["correct_adv"]
    robust_held = fooled & found["robust_correct_adv"]  # the mixture fell although its robust branch did not
    return {"clean": alpha_summary(found["alpha"]),
            "attacked": alpha_summary(found["alpha_adv"][attacked]),
            "attacked_fooled": alpha_summary(found["alpha_adv"][fooled]),
            "attacked_not_fooled": alpha_summary(found["alpha_adv"][attacked & ~fooled]),
            "fooled_robust_branch_correct": alpha_summary(found["alpha_adv"][robust_held]),
            **{f"attacked_by_{name}": alpha_summary(found["alpha_" + name.split("/")[1]][attacked])
               for name in ATTACKS}}


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
    attacked = found["correct"]
    result = {"command": "python scripts/adaptive_alpha.py " + shlex.join(sys.argv[1:] if argv is None else argv),
              "model": args.model, "data": {k: info[k] for k in ("dataset", "source", "n")},
              "attack": {"names": list(ATTACKS), "eps": args.eps, "iters": args.iters, "batch_size": args.batch_size,
                         "attacked_image": "per image, one that fools the mixture, else the one of lower alpha"},
              "alpha_range": list(model.mixer.alpha_range), "eval_gamma": list(model.mixer.eval_gamma),
              "clean_accuracy": float(found["correct"].float().mean()),
              "accuracy_after_attack": float(found["correct_adv"].float().mean()),
              "robust_branch_accuracy_on_attacked": float(found["robust_correct_adv"].float().mean()),
              "saturated_sigmoid_share": {"clean": sigmoid_saturation(found["gamma"]),
                                          "attacked": sigmoid_saturation(found["gamma_adv"][attacked])},
              "alpha": _alpha_sections(found)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["alpha"], indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
