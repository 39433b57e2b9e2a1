"""An adaptive-smoothing checkpoint with other evaluation constants for its mixing logit, ``γ = BN(raw) · scale +
bias``: the same weights, a new checkpoint directory whose card starts with no metrics (those of the source were
measured with its own constants). Bai et al. train CIFAR-10 mixers with (2, 0.4) and evaluate them with (3, 20).

    python scripts/adaptive_eval_constants.py checkpoints/cifar10-resnet20w32-fgsmrs-20ep-mixed-adaptive \\
        --eval-gamma 3 20 --out checkpoints/cifar10-resnet20w32-fgsmrs-20ep-mixed-adaptive-gamma3-20
"""
import argparse
import shlex
import sys

import hpm


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="an adaptive mixed classifier's checkpoint (hpm mix --adaptive)")
    parser.add_argument("--eval-gamma", type=float, nargs=2, metavar=("SCALE", "BIAS"), required=True)
    parser.add_argument("--out", required=True, help="the new checkpoint directory")
    args = parser.parse_args()
    model = hpm.load(args.checkpoint)
    if getattr(model, "mixer", None) is None:
        parser.error(f"{args.checkpoint} has no mixing network (it is not an adaptive mixture)")
    before = model.mixer.eval_gamma
    model.mixer.eval_gamma = tuple(args.eval_gamma)
    training = model.checkpoint_config.training or {}
    command = "python scripts/adaptive_eval_constants.py " + shlex.join(sys.argv[1:])
    training = {**training, "commands": [*training.get("commands", []), command],  # its card's Reproduce block
                "eval_gamma_changed": f"from {list(before)} to {args.eval_gamma} by scripts/adaptive_eval_constants.py "
                                      f"(weights of {args.checkpoint})"}
    model.save_pretrained(args.out, metrics={}, training=training)
    print(f"saved {args.out}: evaluation constants {list(before)} -> {args.eval_gamma}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
