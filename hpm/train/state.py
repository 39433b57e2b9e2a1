"""A training run's resumable state: written atomically, read without unpickling, and refused when it was written
with another recipe (a resumed run that silently changed its options would report a recipe it never followed)."""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

import torch

from ..errors import HPMError


def recipe(config, *, free: Iterable[str] = ()) -> str:
    """``config`` (a dataclass) as the JSON a resumed run must match: every option but those named in ``free``
    (what a run may change when it resumes, such as how often it saves)."""
    free = set(free)
    return json.dumps({k: v for k, v in asdict(config).items() if k not in free}, sort_keys=True)


def save_state(state: dict, path: Path) -> None:
    """``torch.save`` ``state`` to ``path`` atomically: a kill while saving keeps the previous state."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_state(path: Path, config, device: torch.device | str, *, free: Iterable[str] = (), why: str = "") -> dict:
    """The state saved at ``path`` (tensors, numbers and strings only: ``weights_only=True``) once its recipe
    (``state["config"]``, as :func:`recipe` wrote it) is ``config``'s; options added to the recipe since it was
    written take their defaults, those in ``free`` are not compared. Otherwise an error that lists the options that
    differ and names the fix (``why`` adds why the options matter)."""
    free = set(free)
    state = torch.load(path, map_location=device, weights_only=True)
    recorded = json.loads(recipe(type(config)(), free=free)) | json.loads(state["config"])
    current = json.loads(recipe(config, free=free))
    changed = [f"{k} {recorded.get(k)!r} then, {current.get(k)!r} now" for k in sorted(set(recorded) | set(current))
               if k not in free and recorded.get(k) != current.get(k)]
    if changed:
        raise HPMError(f"{path} was written with a different recipe ({'; '.join(changed)}{f'; {why}' if why else ''})"
                       "; resume with the same options or use a new run directory")
    return state
