"""The Hugging Face Hub: resolve a repo id to a local checkpoint directory, and upload files. Nothing else.

Downloads go through ``huggingface_hub`` (its cache, revisions and ``HF_HUB_OFFLINE`` included) and fail
within seconds with :class:`hpm.OfflineError` when the Hub cannot be reached.
"""
from __future__ import annotations

import difflib
import re
import tempfile
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from .checkpoint import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME
from .errors import CheckpointError, HPMError, OfflineError

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_repo_id(text: str) -> bool:
    """True for strings of the form ``owner/name`` that are not paths."""
    return bool(_REPO_ID.match(text)) and not text.startswith((".", "/", "~"))


def split_revision(text: str, revision: str | None = None) -> tuple[str, str | None]:
    """``owner/name@revision`` -> ``("owner/name", "revision")`` (a branch, tag or commit pinned in the id);
    without ``@`` the ``revision`` argument (None: the default branch)."""
    name, at, pinned = text.partition("@")
    if not at:
        return text, revision
    if not pinned or "@" in pinned:
        raise CheckpointError(f"{text!r}: a pinned revision is written owner/name@REVISION")
    if revision is not None and revision != pinned:
        raise CheckpointError(f"{text!r} pins revision {pinned!r} but revision={revision!r} was passed")
    return name, pinned


def shipped_root() -> Path | None:
    """Where the checkpoints shipped with hpm are: ``hpm/checkpoints`` in an installed wheel, or the repository's
    ``checkpoints/`` in a clone (or an editable install of one)."""
    package = Path(__file__).resolve().parent
    if (package / "checkpoints").is_dir():
        return package / "checkpoints"
    if (package.parent / "pyproject.toml").is_file() and (package.parent / "checkpoints").is_dir():
        return package.parent / "checkpoints"
    return None


def shipped_checkpoints() -> dict[str, Path]:
    """The shipped checkpoints by name (``cifar10-resnet18-hpm-clean`` -> its directory)."""
    root = shipped_root()
    return {} if root is None else _checkpoints_in(root)


def closest_shipped(text: str) -> str:
    """``"; did you mean NAME?"`` for the shipped checkpoint names closest to ``text`` (all of them if none is
    close), for error messages."""
    names = sorted(shipped_checkpoints())
    close = difflib.get_close_matches(Path(text).name, names, n=3, cutoff=0.6)
    if close:
        return f"; did you mean {' or '.join(close)}?"
    return f"; shipped checkpoints: {', '.join(names)}" if names else ""


def resolve_checkpoint(path_or_repo_id: str | Path, *, revision: str | None = None,
                       token: str | None = None) -> Path:
    """A local checkpoint directory; else a shipped checkpoint by name (``NAME`` or ``checkpoints/NAME``, as the
    README writes them); else ``owner/name`` (or ``owner/name@revision``) downloaded from the Hub."""
    path = Path(path_or_repo_id).expanduser()
    if path.is_dir():
        return path
    text = str(path_or_repo_id)
    shipped = shipped_checkpoints().get(text.removeprefix("checkpoints/"))
    if shipped is not None:
        return shipped
    if path.exists():
        raise CheckpointError(f"{text} is a file; a checkpoint is a directory with {CONFIG_NAME} and {WEIGHTS_NAME}")
    parent = path.parent
    if parent != Path(".") and parent.is_dir():  # ``checkpoints/typo``: its folder exists, so it is a path
        raise CheckpointError(f"{text}: no such checkpoint directory; checkpoints in {parent}: "
                              f"{', '.join(_checkpoints_in(parent)) or 'none'}")
    if not is_repo_id(split_revision(text)[0]):
        raise CheckpointError(f"{text}: no such checkpoint directory, shipped checkpoint or Hub repo id (owner/name)"
                              f"{closest_shipped(text)}")
    return download_checkpoint(text, revision=revision, token=token)


def _checkpoints_in(folder: Path) -> dict[str, Path]:
    """The checkpoint directories in ``folder`` (those with a config.json), by name, sorted."""
    return {d.name: d for d in sorted(folder.iterdir()) if (d / CONFIG_NAME).is_file()}


def download_checkpoint(repo_id: str, *, revision: str | None = None, token: str | None = None) -> Path:
    """The local snapshot of Hub repo ``owner/name`` or ``owner/name@revision`` (from the cache when offline),
    never a local path of that name: for callers that must not let a request name files on their machine (the app)."""
    text, revision = split_revision(repo_id, revision)
    if not is_repo_id(text):
        raise CheckpointError(f"{text!r} is not a Hub repo id of the form owner/name")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    files = dict(allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME])
    try:
        try:
            return Path(snapshot_download(text, revision=revision, token=token, etag_timeout=5, **files))
        except RepositoryNotFoundError:
            raise
        except (HfHubHTTPError, OSError):  # unreachable (huggingface_hub < 2 does not fall back on its cache
            # itself when it cannot list the files): the cached snapshot, if there is one
            return Path(snapshot_download(text, revision=revision, token=token, local_files_only=True, **files))
    except RepositoryNotFoundError:
        raise CheckpointError(f"Hub repo {text!r} does not exist or is private (pass token=...); for a local "
                              f"checkpoint give a directory path such as ./checkpoints/NAME") from None
    except LocalEntryNotFoundError:
        at = f" at revision {revision!r}" if revision else ""
        raise OfflineError(f"cannot reach the Hugging Face Hub to download {text!r}{at} and it is not in the local "
                           f"cache; pass a local checkpoint directory instead (e.g. ./checkpoints/NAME)") from None
    except (HfHubHTTPError, OSError) as e:
        raise OfflineError(f"downloading {text!r} from the Hub failed ({type(e).__name__}: {e}); pass a local "
                           f"checkpoint directory instead") from None


def push_folder(write: Callable[[Path], object], repo_id: str, *, private: bool = False, token: str | None = None,
                commit_message: str = "Upload HPM checkpoint") -> str:
    """Let ``write(directory)`` fill a temporary directory and upload it as one commit; returns the commit URL."""
    with tempfile.TemporaryDirectory() as tmp:
        write(Path(tmp))
        files = sorted(str(p.relative_to(tmp)) for p in Path(tmp).rglob("*") if p.is_file())
        return upload_files(Path(tmp), files, repo_id, private=private, token=token, commit_message=commit_message)


def upload_files(root: Path, files: list[str], repo_id: str, *, repo_type: str = "model",
                 space_sdk: str | None = None, mirror: bool = False, private: bool = False, token: str | None = None,
                 commit_message: str = "Upload with hpm") -> str:
    """Upload ``files`` to the Hub repo ``repo_id`` in one commit, creating the repo if needed.

    Large files go through the Hub's large-file storage, which a plain ``git push`` of files over 10 MB would
    need git-lfs for. Fails within seconds with :class:`hpm.OfflineError` when the Hub cannot be reached, and
    with :class:`hpm.HPMError` when it refuses (the message gives the HTTP status).

    Args:
        root: the local folder the paths are relative to.
        files: paths relative to ``root``, kept as the paths in the repo.
        repo_id: ``owner/name``.
        repo_type: ``model``, ``dataset`` or ``space``.
        space_sdk: a new Space's SDK (``gradio``).
        mirror: also delete the repo's files that are not in ``files`` (never ``.gitattributes``), so that the
            repo holds exactly these files.

    Returns:
        The commit's URL.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    if not _REPO_ID.match(repo_id):
        raise HPMError(f"repo id must look like owner/name; got {repo_id!r}")
    if not files:
        raise HPMError(f"nothing to upload from {root}")
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        raise HPMError(f"{len(missing)} of the files to upload are not files under {root}, e.g. {missing[:3]}")
    _check_reachable(repo_id)
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type=repo_type, space_sdk=space_sdk, private=private, exist_ok=True)
        stale = set(api.list_repo_files(repo_id, repo_type=repo_type)) - set(files) - {".gitattributes"}
        operations = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(root / f)) for f in files]
        operations += [CommitOperationDelete(path_in_repo=f) for f in sorted(stale)] if mirror else []
        info = api.create_commit(repo_id, repo_type=repo_type, operations=operations, commit_message=commit_message)
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        hint = ("; check your token (`hf auth login` or token=...) and that you may write to that account"
                if status in (401, 403) else "")
        raise HPMError(f"the Hub refused the upload to {repo_id!r} (HTTP {status or '?'}: {e}){hint}") from None
    except ValueError as e:  # huggingface_hub's own checks, e.g. a Space README whose metadata does not parse
        raise HPMError(f"the upload to {repo_id!r} was not made: {e}") from None
    except _transport_errors() as e:
        raise OfflineError(f"uploading to {repo_id!r} failed ({type(e).__name__}: {e}); check the network") from None
    return str(getattr(info, "commit_url", info))


def _check_reachable(repo_id: str) -> None:
    """Raise :class:`OfflineError` within seconds when the Hub endpoint (``HF_ENDPOINT``) does not answer."""
    from huggingface_hub import constants

    from .network import network_available

    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or constants.ENDPOINT, url.port or (80 if url.scheme == "http" else 443)
    if not network_available(host, port):
        raise OfflineError(f"cannot reach {host} to upload to {repo_id!r}; nothing was uploaded")


def _transport_errors() -> tuple[type[BaseException], ...]:
    """What a Hub call raises when the connection fails: ``OSError``, and the base error of whichever HTTP client
    the installed ``huggingface_hub`` uses (it has changed between versions)."""
    import importlib

    errors: list[type[BaseException]] = [OSError]
    for module, name in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)
