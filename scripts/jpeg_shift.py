"""How much of a backbone's clean accuracy the JPEG training set costs on the lossless test images.

    python scripts/jpeg_shift.py checkpoints/cifar10-preactresnet18-fgsmrs-15ep-fc --data ../shared/data \
        --out results/literature/preact-jpeg-shift.json

The project trains on the JPEG copy of CIFAR-10 (the only full training set offline) and reports on the lossless
first 1000 test images, as the literature does. A network trained on JPEG images meets a slightly different
input distribution at test time. This script measures that shift directly: each model's clean accuracy on the
1000 lossless test images and on the JPEG copies of the same 1000 images (found by class and by their order
within the class, which is how the JPEG archive names them), with the exact McNemar test on the paired
outcomes, and on the whole 10,000-image JPEG test set. Only clean accuracy is measured. Models must predict per
sample (the JPEG test set is sorted by class, so a batch-dependent head would see one class per batch).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

from hpm.cli.common import positive_int
from hpm.data import jpeg_copy_index, load_dataset
from hpm.evaluation.protocol import is_batch_dependent, predict
from hpm.model import load_or_wrap
from hpm.publish.compare import mcnemar_exact

PLAUSIBLE_PIXEL_ERROR = (1.0, 20.0)  # mean absolute error of a JPEG copy, in 1/255 (the archive's: about 6)


def accuracy_on_both_copies(right_lossless: torch.Tensor, right_jpeg: torch.Tensor) -> dict:
    """Accuracy on the lossless images and on their JPEG copies, and the exact McNemar test of the pairs."""
    test = mcnemar_exact(dict(enumerate(right_lossless.tolist())), dict(enumerate(right_jpeg.tolist())))
    lossless, jpeg = int(right_lossless.sum()) / len(right_lossless), int(right_jpeg.sum()) / len(right_jpeg)
    return {"n": test["n"], "lossless_accuracy": lossless, "jpeg_accuracy": jpeg,
            "jpeg_minus_lossless": jpeg - lossless, "right_only_lossless": test["a_only"],
            "right_only_jpeg": test["b_only"], "mcnemar_exact_p": test["p_value"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="CIFAR-10 checkpoint directories, Hub ids or source "
                        "strings (pyautoattack:resnet18: a network trained on the lossless images)")
    parser.add_argument("--data", required=True, help="data root holding cifar10/test-first1000.npz and "
                        "cifar10/cifar10-jpeg.tar.gz")
    parser.add_argument("--batch-size", type=positive_int, default=250)
    parser.add_argument("--out", type=Path, required=True, help="results JSON to write")
    args = parser.parse_args(argv)

    lossless = load_dataset("cifar10", "test", args.data)
    jpeg = load_dataset("cifar10", "test-jpeg", args.data)
    if lossless.source == jpeg.source:
        raise SystemExit(f"{args.data} has no lossless test images (cifar10/test-first1000.npz): nothing to compare")
    index = jpeg_copy_index(lossless.labels, len(jpeg) // len(jpeg.classes))
    x_lossless, x_jpeg = lossless.tensors()[0], jpeg.tensors(index)[0]
    pixel_error = float((x_lossless - x_jpeg).abs().mean() * 255)
    if not torch.equal(jpeg.labels[index], lossless.labels) or not (
            PLAUSIBLE_PIXEL_ERROR[0] <= pixel_error <= PLAUSIBLE_PIXEL_ERROR[1]):
        raise SystemExit(f"the JPEG images found are not copies of the lossless ones (labels differ, or the mean "
                         f"pixel error {pixel_error:.1f}/255 is outside {PLAUSIBLE_PIXEL_ERROR})")
    x_all, y_all = jpeg.tensors()

    rows = []
    for ckpt in args.checkpoints:
        model = load_or_wrap(ckpt, dataset="cifar10").eval()
        if is_batch_dependent(model):
            raise SystemExit(f"{ckpt}: a batch-dependent head; give its FC checkpoint (per-sample predictions)")
        with torch.inference_mode():
            right_lossless = predict(model, x_lossless, batch_size=args.batch_size) == lossless.labels
            right_jpeg = predict(model, x_jpeg, batch_size=args.batch_size) == lossless.labels
            right_all = predict(model, x_all, batch_size=args.batch_size) == y_all
        row = {"checkpoint": ckpt, **accuracy_on_both_copies(right_lossless, right_jpeg),
               "jpeg_test_set": {"n": len(right_all), "accuracy": int(right_all.sum()) / len(right_all)}}
        rows.append(row)
        print(f"{ckpt}: lossless {row['lossless_accuracy']:.1%}, JPEG copies {row['jpeg_accuracy']:.1%} "
              f"(McNemar p = {row['mcnemar_exact_p']:.2g}), whole JPEG test set {row['jpeg_test_set']['accuracy']:.1%}")

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
