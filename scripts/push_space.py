"""Publish the repository as a Hugging Face Space: exactly the files git tracks, in one commit.

    python scripts/push_space.py OWNER/NAME            # creates the Space if needed, then uploads
    python scripts/push_space.py OWNER/NAME --dry-run  # lists what would be uploaded

A Space is a git repository on the Hub, and the Hub refuses files over 10 MB that are not in its large-file
storage; the shipped PreAct ResNet-18 backbone (45 MB) is one, so a plain ``git push`` of this history is refused.
Uploading through ``huggingface_hub`` stores such files there by itself: no git-lfs set-up, no history rewrite.
README's front matter makes the Space a Gradio one (``app.py``, the pinned ``sdk_version``), and the Space installs
``requirements.txt``. Files git does not track (run directories, caches, a virtual environment) stay home, and
files the Space holds that git no longer tracks are deleted in the same commit (never ``.gitattributes``).
Needs the repository's hpm (``pip install -e .``), the network and a Hub token with write access (``hf auth
login``, or ``--token``); offline it says so within seconds and uploads nothing.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from hpm.errors import HPMError
from hpm.hub import upload_files

ROOT = Path(__file__).resolve().parents[1]


def space_files(root: Path = ROOT) -> list[str]:
    """The files git tracks under ``root`` that exist in the working tree, as paths relative to it."""
    try:
        listed = subprocess.run(["git", "-C", str(root), "ls-files", "-z"], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise HPMError(f"{root}: cannot list the files git tracks ({e}); run this from a git clone") from None
    return [name for name in listed.decode().split("\0") if name and (root / name).is_file()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("repo_id", help="the Space, owner/name")
    parser.add_argument("--private", action="store_true", help="create the Space private")
    parser.add_argument("--token", default=None, help="Hub token with write access (default: the logged-in one)")
    parser.add_argument("--dry-run", action="store_true", help="list the files and their total size; upload nothing")
    args = parser.parse_args(argv)
    try:
        files = space_files()
        size = sum((ROOT / f).stat().st_size for f in files)
        print(f"{len(files)} files, {size / 2**20:.1f} MiB")
        if args.dry_run:
            print("\n".join(files))
            return 0
        url = upload_files(ROOT, files, args.repo_id, repo_type="space", space_sdk="gradio", private=args.private,
                           token=args.token, mirror=True, commit_message="Upload the hpm app")
    except HPMError as e:
        print(f"push_space: error: {e}", file=sys.stderr)
        return 1
    print(url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
