"""A Hugging Face cache laid out as ``huggingface_hub`` lays it out, for offline tests of the Hub's success path."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path


def write_hub_cache(cache: Path, repo_id: str, commits: dict[str, Path], refs: dict[str, str]) -> None:
    """Put checkpoint directories in ``cache`` (``HF_HUB_CACHE``) as snapshots of ``repo_id``.

    ``commits`` maps a 40-hex commit hash to the directory whose files that commit holds; ``refs`` maps a branch
    or tag name to a commit. File contents live once in ``blobs/`` (named by their hash), and each snapshot links
    to them, as the library's own downloads do.
    """
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for commit, directory in commits.items():
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True)
        for file in sorted(directory.iterdir()):
            data = file.read_bytes()
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
            os.symlink(os.path.relpath(blob, snapshot), snapshot / file.name)
    (repo / "refs").mkdir(exist_ok=True)
    for name, commit in refs.items():
        (repo / "refs" / name).write_text(commit)


def write_tiny_imagenet_checkpoint(path: Path) -> Path:
    """An ImageNet-shaped checkpoint written from scratch: 224x224 inputs, the 1000 ImageNet classes, a random-init
    CIFAR ResNet-8 (width 4) with its FC head, so the whole ImageNet path runs offline in seconds."""
    from hpm.data import dataset_classes
    from hpm.heads import create_head
    from hpm.model import HPMClassifier
    from hpm.sources import BackboneSpec
    from hpm.sources.zoo import build, split

    options = {"depth": 8, "width": 4, "num_classes": 1000, "classifier": "fc"}
    features, fc = split(build("cifar_resnet", options))
    model = HPMClassifier(features, fc, create_head("fc", fc.in_features, 1000),
                          backbone_spec=BackboneSpec("hpm", "cifar_resnet", options), input_size=(3, 224, 224),
                          classes=dataset_classes("imagenet"), dataset="imagenet")
    model.eval().save_pretrained(path)
    return path
