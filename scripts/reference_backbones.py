"""Shipped heads name the shipped checkpoint that stores their backbone instead of storing a copy of it.

    python scripts/reference_backbones.py            # rewrite checkpoints/ in place (idempotent)
    python scripts/reference_backbones.py --check    # exit 1 if some checkpoint still stores a copy

A head fine-tuned on a frozen backbone holds the same ``features.*`` weights as the backbone's own checkpoint;
``hpm train`` on such a checkpoint now names it (``"source": "checkpoint"``, digest-checked), and this script
brings checkpoints written before that to the same form. The lender of a backbone is the checkpoint among those
sharing its weights whose head is the backbone's own FC layer (what ``hpm train-backbone`` wrote). Before a head
is rewritten, its logits on the shipped sample images are compared with the rewritten head's: they must be
identical, bit for bit.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import torch

import hpm
from hpm.checkpoint import CheckpointConfig, read_config, read_weights
from hpm.samples import load_samples
from hpm.sources.reference import features_digest

ROOT = Path(__file__).resolve().parents[1]


def lenders_and_borrowers(root: Path) -> list[tuple[Path, list[Path]]]:
    """For every backbone stored more than once under ``root``: the checkpoint that keeps it (an FC head that
    stores its backbone) and the other checkpoints that store a copy."""
    by_digest: dict[str, list[Path]] = defaultdict(list)
    for directory in sorted(d for d in root.iterdir() if (d / "config.json").is_file()):
        config = read_config(directory)
        if isinstance(config, CheckpointConfig) and config.backbone_weights_included:
            by_digest[features_digest(read_weights(directory))].append(directory)
    pairs = []
    for copies in by_digest.values():
        lenders = [d for d in copies if read_config(d).head.get("type") == "fc"]
        if len(copies) > 1:
            if not lenders:
                raise SystemExit(f"{', '.join(d.name for d in copies)} share a backbone but none is its FC checkpoint")
            pairs.append((lenders[0], [d for d in copies if d != lenders[0]]))
    return pairs


def logits(directory: Path, images: torch.Tensor) -> torch.Tensor:
    """The deployed model's logits on ``images``, as one batch."""
    with torch.no_grad():
        return hpm.load(str(directory)).eval()(images)


def rewrite(head: Path, lender: Path, images: torch.Tensor) -> None:
    """Rewrite ``head`` to name ``lender``'s backbone, after checking the result predicts exactly as before."""
    before = logits(head, images)
    with tempfile.TemporaryDirectory(dir=head.parent) as tmp:
        staged = Path(tmp) / head.name
        hpm.load(str(head)).reference_backbone(lender.name).save_pretrained(staged)
        if not torch.equal(logits(staged, images), before):
            raise SystemExit(f"{head.name}: naming {lender.name}'s backbone changes its logits; left as it was")
        for name in ("config.json", "model.safetensors", "README.md"):
            shutil.copyfile(staged / name, head / name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT / "checkpoints", help="the shipped checkpoints' folder")
    parser.add_argument("--check", action="store_true", help="only say which checkpoints store a copy")
    args = parser.parse_args(argv)
    pairs = lenders_and_borrowers(args.root)
    for lender, heads in pairs:
        print(f"{lender.name} lends its backbone to {', '.join(h.name for h in heads)}")
    if args.check:
        return 1 if pairs else 0
    images = load_samples("cifar10").images[:64].float() / 255
    for lender, heads in pairs:
        for head in heads:
            rewrite(head, lender, images)
            print(f"rewrote {head.name}: names {lender.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
