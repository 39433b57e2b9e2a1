"""Shipped checkpoints name the shipped checkpoint that stores their backbone instead of storing a copy of it.

    python scripts/reference_backbones.py            # rewrite checkpoints/ in place (idempotent)
    python scripts/reference_backbones.py --check    # exit 1 if a backbone is still stored twice

A head fine-tuned on a frozen backbone, or a mixed classifier's branch, holds the same ``features.*`` weights as
the backbone's own checkpoint; ``hpm train`` on such a checkpoint now names it (``"source": "checkpoint"``,
digest-checked), and this script brings checkpoints written before that to the same form. The lender of a
backbone is the checkpoint ``hpm train-backbone`` wrote (its recorded command says so). Before a checkpoint is
rewritten, its outputs on 64 shipped sample images are compared with the rewritten one's: they must be identical,
bit for bit. The rewritten folder replaces the old one by two renames, the old kept until the new is in place.
Needs the repository's hpm (``pip install -e .``): the names written are looked up among the checkpoints the
running hpm ships.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

import hpm
from hpm.checkpoint import CheckpointConfig, read_config
from hpm.hub import shipped_checkpoints, shipped_root
from hpm.samples import load_samples
from hpm.sources.reference import stored_backbones

ROOT = Path(__file__).resolve().parents[1]


def trained_by_hpm(directory: Path) -> bool:
    """True for a checkpoint written by ``hpm train-backbone`` (the first command its training record gives)."""
    config = read_config(directory)
    if not isinstance(config, CheckpointConfig):
        return False
    commands = (config.training or {}).get("commands") or [""]
    return commands[0].startswith("hpm train-backbone")


def borrowers(root: Path) -> list[tuple[Path, list[tuple[Path, str]]]]:
    """For every backbone stored more than once under ``root``: the checkpoint that keeps it, and the
    ``(checkpoint, part)`` copies to rewrite (``part``: ``""``, or a mixed classifier's branch)."""
    pairs = []
    for copies in stored_backbones(sorted(d for d in root.iterdir() if (d / "config.json").is_file())).values():
        if len(copies) < 2:
            continue
        lenders = [d for d, part in copies if not part and trained_by_hpm(d)]
        if len(lenders) != 1:
            names = ", ".join(d.name + (f" [{part}]" if part else "") for d, part in copies)
            raise SystemExit(f"{names} store one backbone, and {len(lenders)} of them were written by "
                             "hpm train-backbone: which one keeps it is not clear")
        pairs.append((lenders[0], [(d, part) for d, part in copies if d != lenders[0]]))
    return pairs


def outputs(directory: Path, images: torch.Tensor) -> torch.Tensor:
    """The deployed model's outputs on ``images``, as one batch."""
    with torch.no_grad():
        return hpm.load(str(directory)).eval()(images)


def rewrite(checkpoint: Path, parts: list[str], lender: Path, images: torch.Tensor) -> None:
    """Rewrite ``checkpoint`` so that its ``parts`` name ``lender``'s backbone, once its outputs are checked to
    stay exactly the same; the old folder is kept until the new one is in place."""
    model = hpm.load(str(checkpoint))
    for part in parts:
        (getattr(model, part) if part else model).reference_backbone(lender.name)
    with tempfile.TemporaryDirectory(dir=checkpoint.parent, prefix=".rewrite-") as tmp:
        staged, old = Path(tmp) / checkpoint.name, Path(tmp) / "old"
        model.save_pretrained(staged)
        if not torch.equal(outputs(staged, images), outputs(checkpoint, images)):
            raise SystemExit(f"{checkpoint.name}: naming {lender.name}'s backbone changes its outputs; left as it was")
        os.replace(checkpoint, old)
        os.replace(staged, checkpoint)
        shutil.rmtree(old)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only say which backbones are stored twice")
    args = parser.parse_args(argv)
    root = ROOT / "checkpoints"
    if shipped_root() is None or shipped_root().resolve() != root.resolve():
        raise SystemExit(f"the running hpm ships the checkpoints in {shipped_root()}, not {root}: install the "
                         "repository's with pip install -e .")
    pairs = borrowers(root)
    for lender, copies in pairs:
        names = ", ".join(d.name + (f" [{part}]" if part else "") for d, part in copies)
        print(f"{lender.name} lends its backbone to {names}")
    if args.check:
        return 1 if pairs else 0
    images = load_samples("cifar10").tensors(torch.arange(64))[0]
    for lender, copies in pairs:
        for checkpoint in dict.fromkeys(d for d, _ in copies):
            rewrite(checkpoint, [part for d, part in copies if d == checkpoint], lender, images)
            print(f"rewrote {checkpoint.name}: names {lender.name}")
    assert not borrowers(root) and set(shipped_checkpoints()) >= {lender.name for lender, _ in pairs}
    return 0


if __name__ == "__main__":
    sys.exit(main())
