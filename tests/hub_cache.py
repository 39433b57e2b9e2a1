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
