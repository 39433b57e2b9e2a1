"""Measure where APGD-CE is blind: saturated float32 cross-entropy on the clean-correct test samples.

    python scripts/ce_saturation.py fc=pyautoattack ncm=checkpoints/cifar10-resnet18-ncm --n 100 \
        --out results/eval/sweep/resnet18-saturation.json

(``scripts/ce_saturation.py`` runs :func:`main`.) For each NAME=MODEL (checkpoint directory or model source)
it writes :func:`hpm.evaluation.checks.ce_saturation`'s counts: the
clean-correct samples whose CE loss is exactly 0 in float32, those with an all-zero input gradient, and the
median top-1 minus top-2 score margin. These explain gaps between the APGD-CE-only and full-protocol sweeps.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from ..data import Subset
from ..model import load_or_wrap
from .api import load_eval_data
from .checks import ce_saturation


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", metavar="NAME=MODEL")
    parser.add_argument("--data", default=None, help="local data root (default: $HPM_DATA_DIR)")
    parser.add_argument("--n", type=int, default=100, help="first N test images (default 100)")
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--out", required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    if args.n < 1 or args.batch_size < 1:
        parser.error("--n and --batch-size must be >= 1")
    pairs = [m.partition("=") for m in args.models]
    if any(not name or not sep or not source for name, sep, source in pairs):
        parser.error("models must be NAME=MODEL pairs, e.g. fc=pyautoattack")
    result = {"command": "python scripts/ce_saturation.py " + shlex.join(sys.argv[1:] if argv is None else argv),
              "models": {}}
    data: dict[str, tuple] = {}  # dataset -> (x, y, indices, info), loaded once
    for name, _, source in pairs:
        model = load_or_wrap(source)
        dataset = getattr(model, "dataset", None) or "cifar10"
        if dataset not in data:
            data[dataset] = load_eval_data(dataset, "test", args.data, Subset(n=args.n))
        x, y, _, info = data[dataset]
        result["data"] = {k: info[k] for k in ("dataset", "source", "n")}
        result["models"][name] = {"source": source, **ce_saturation(model, x, y, batch_size=args.batch_size)}
        print(name, result["models"][name])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
