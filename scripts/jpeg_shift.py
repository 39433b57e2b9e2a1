"""How much of a backbone's clean accuracy the JPEG training set costs on the lossless test images.

    python scripts/jpeg_shift.py checkpoints/cifar10-preactresnet18-fgsmrs-15ep-fc --data ../shared/data \\
        --out results/literature/preact-jpeg-shift.json

The project trains on the JPEG copy of CIFAR-10 (the only full training set offline) and reports on the lossless
first 1000 test images, as the literature does. A network trained on JPEG images meets a slightly different
input distribution at test time. This script measures that shift directly: each checkpoint's clean accuracy on
the 1000 lossless test images and on the JPEG copies of the same 1000 images (found by class and by their order
within the class, which is how the JPEG archive names them), with the exact McNemar test on the paired
outcomes, and on the whole 10,000-image JPEG test set. No attack is run; robust accuracy is not affected by it.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import binomtest

from hpm.data import load_dataset
from hpm.evaluation.protocol import predict
from hpm.model import load_or_wrap


def jpeg_index(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Position in the class-sorted JPEG test set of each image of the official test order ``labels``: class
    ``c``'s ``k``-th image in the official order is the archive's ``test/<c>/k``, the ``k``-th file of its class."""
    seen = np.zeros(labels.max() + 1, dtype=np.int64)
    index = np.empty(len(labels), dtype=np.int64)
    for i, c in enumerate(labels):
        index[i] = c * per_class + seen[c]
        seen[c] += 1
    return index


def paired(lossless: np.ndarray, jpeg: np.ndarray) -> dict:
    """Accuracy on both copies of the same images and the exact (binomial) McNemar test on the discordant pairs."""
    only_lossless, only_jpeg = int((lossless & ~jpeg).sum()), int((jpeg & ~lossless).sum())
    discordant = only_lossless + only_jpeg
    p = binomtest(only_jpeg, discordant, 0.5).pvalue if discordant else 1.0
    return {"n": int(len(lossless)), "lossless_accuracy": float(lossless.mean()), "jpeg_accuracy": float(jpeg.mean()),
            "jpeg_minus_lossless": float(jpeg.mean() - lossless.mean()), "right_only_lossless": only_lossless,
            "right_only_jpeg": only_jpeg, "mcnemar_exact_p": float(p)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="CIFAR-10 checkpoint directories, Hub ids or source "
                        "strings (pyautoattack:resnet18: a network trained on the lossless images)")
    parser.add_argument("--data", required=True, help="data root holding cifar10/test-first1000.npz and "
                        "cifar10/cifar10-jpeg.tar.gz")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--out", type=Path, required=True, help="results JSON to write")
    args = parser.parse_args(argv)

    lossless = load_dataset("cifar10", "test", args.data)
    jpeg = load_dataset("cifar10", "test-jpeg", args.data)
    per_class = len(jpeg) // len(jpeg.classes)
    y = lossless.labels.numpy()
    index = jpeg_index(y, per_class)
    if not np.array_equal(jpeg.labels.numpy()[index], y):
        raise SystemExit("the JPEG test set's labels do not match the lossless images they should copy")
    x_lossless, x_jpeg = lossless.tensors()[0], jpeg.tensors(torch.from_numpy(index))[0]
    pixel_error = float((x_lossless - x_jpeg).abs().mean() * 255)
    x_all, y_all = jpeg.tensors()

    rows = []
    for ckpt in args.checkpoints:
        model = load_or_wrap(ckpt, dataset="cifar10").eval()
        with torch.inference_mode():
            right_lossless = (predict(model, x_lossless, batch_size=args.batch_size) == lossless.labels).numpy()
            right_jpeg = (predict(model, x_jpeg, batch_size=args.batch_size) == lossless.labels).numpy()
            right_all = (predict(model, x_all, batch_size=args.batch_size) == y_all).numpy()
        row = {"checkpoint": ckpt, **paired(right_lossless, right_jpeg),
               "jpeg_test_set": {"n": int(len(right_all)), "accuracy": float(right_all.mean())}}
        rows.append(row)
        print(f"{ckpt}: lossless {row['lossless_accuracy']:.1%}, JPEG copies {row['jpeg_accuracy']:.1%} "
              f"(McNemar p = {row['mcnemar_exact_p']:.2g}), whole JPEG test set {right_all.mean():.1%}")

    result = {
        "what": __doc__.split("\n\n")[0],
        "lossless": lossless.source, "jpeg": jpeg.source,
        "mean_absolute_pixel_error_255": pixel_error,
        "batch_size": args.batch_size,
        "checkpoints": rows,
        "command": "python scripts/jpeg_shift.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"mean absolute pixel error of the JPEG copies: {pixel_error:.2f}/255; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
