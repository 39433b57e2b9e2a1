"""Measure where APGD-CE is blind: saturated float32 cross-entropy on the clean-correct test samples.

    python scripts/ce_saturation.py fc=pyautoattack ncm=checkpoints/cifar10-resnet18-ncm --n 100 \
        --out results/eval/sweep/resnet18-saturation.json

For each NAME=MODEL (checkpoint directory or model source) it writes hpm.checks.ce_saturation's counts: the
clean-correct samples whose CE loss is exactly 0 in float32, those with an all-zero input gradient, and the
median top-1 minus top-2 score margin. These explain gaps between the APGD-CE-only and full-protocol sweeps.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hpm.checks import ce_saturation  # noqa: E402
from hpm.cli import load_model_arg, positive_int  # noqa: E402
from hpm.data import Subset  # noqa: E402
from hpm.msa import load_eval_data  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", metavar="NAME=MODEL")
    parser.add_argument("--data", default=None, help="local data root (default: $HPM_DATA_DIR)")
    parser.add_argument("--n", type=positive_int, default=100, help="first N test images (default 100)")
    parser.add_argument("--batch-size", type=positive_int, default=200)
    parser.add_argument("--out", required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    pairs = [m.partition("=") for m in args.models]
    if any(not name or not sep or not source for name, sep, source in pairs):
        parser.error("models must be NAME=MODEL pairs, e.g. fc=pyautoattack")
    result = {"command": "python scripts/ce_saturation.py " + shlex.join(sys.argv[1:] if argv is None else argv),
              "models": {}}
    data: dict[str, tuple] = {}  # dataset -> (x, y, indices, info), loaded once
    for name, _, source in pairs:
        model = load_model_arg(source)
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
