"""Wrap the CIFAR-10 ResNet-18 shipped in pyautoattack with an HPM head, fine-tune it on clean features,
save, reload, and report clean accuracy of FC and HPM on the lossless first 1000 test images.

    python examples/quickstart.py --data ../shared/data [--n-train 50000] [--out runs/quickstart]
"""
import argparse

import hpm
from hpm.data import Subset, load_dataset
from hpm.errors import HPMError
from hpm.evaluation import clean_accuracy
from hpm.train import CleanConfig, extract_features, finetune_clean

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--data", default=None, help="local data root (default: $HPM_DATA_DIR)")
parser.add_argument("--n-train", type=int, default=50000, help="training images used (default: all 50,000)")
parser.add_argument("--out", default="runs/quickstart", help="checkpoint directory")


def main(args: argparse.Namespace) -> None:
    model = hpm.wrap("pyautoattack", head="hpm")                 # backbone + original FC + HPM head
    train = load_dataset("cifar10", "train", args.data)          # JPEG train set, extracted once into the cache
    keep = Subset(n=min(args.n_train, len(train)), mode="uniform", seed=0).indices(len(train))  # class-balanced
    train.images, train.labels = train.images[keep], train.labels[keep]
    features, labels = extract_features(model, train)            # frozen backbone: features computed once, cached
    finetune_clean(model, features, labels, CleanConfig())       # paper defaults: Adam 5e-5, batch 64, 1 epoch

    model.save_pretrained(args.out)
    reloaded = hpm.load(args.out)

    test = load_dataset("cifar10", "test", args.data)            # lossless first 1000 official test images
    x, y = test.tensors()
    for name, mode in (("FC ", "fc"), ("HPM", "hard")):
        acc = clean_accuracy(reloaded, x, y, batch_size=256, mode=mode)
        print(f"{name} clean accuracy on {len(y)} test images (batch 256): {100 * acc:.1f}%")


if __name__ == "__main__":
    try:
        main(parser.parse_args())
    except HPMError as e:  # a bad --data, or offline without data: one line, no traceback
        parser.exit(2, f"quickstart: error: {e}\n")
