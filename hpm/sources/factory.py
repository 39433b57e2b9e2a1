"""A user's own model named on the command line: ``path/to/file.py:factory`` or ``package.module:factory``.

The ``module:attribute`` convention of uvicorn and gunicorn: the module is imported (a ``.py`` file by its path),
and the attribute is the model itself or a function (or class) that returns it when called without arguments.
Naming a file runs its code, as ``python file.py`` would (its folder joins ``sys.path``, so it imports its
neighbours): name only files you trust.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
import threading
from pathlib import Path

from ..errors import HPMError

_IMPORTING = threading.Lock()  # a file's import changes sys.path and sys.modules for its duration
_FACTORY = re.compile(r"^(?P<module>.+\.py|[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*):(?P<attr>[A-Za-z_]\w*)$")


def is_factory(text: str) -> bool:
    """True for ``file.py:NAME`` and ``package.module:NAME`` (source strings such as ``timm:NAME`` are told apart
    by their caller first)."""
    return bool(_FACTORY.match(str(text)))


def callables_in(path: str | Path) -> list[str]:
    """The public functions and classes a Python file defines at its top level (read, not run), for messages."""
    import ast

    try:
        tree = ast.parse(Path(path).read_text())
    except (OSError, SyntaxError, ValueError):
        return []
    return [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith("_")]


def load_factory(text: str):
    """The object ``file.py:NAME`` or ``package.module:NAME`` names, called when it is a function or a class (the
    factory returns the model).

    Raises:
        HPMError: a missing file or module, a missing attribute, or a factory that fails (its error is named).
    """
    match = _FACTORY.match(str(text))
    if match is None:
        raise HPMError(f"{text!r} is not FILE.py:FACTORY or package.module:FACTORY")
    module = _import(match["module"], text)
    attr = match["attr"]
    if not hasattr(module, attr):
        names = sorted(n for n in vars(module) if not n.startswith("_") and callable(vars(module)[n]))
        raise HPMError(f"{text}: {match['module']} has no attribute {attr!r}; its callables: "
                       f"{', '.join(names) or 'none'}")
    obj = getattr(module, attr)
    from torch import nn  # noqa: PLC0415 (torch only when a factory is loaded)

    if isinstance(obj, nn.Module):
        return obj
    if not callable(obj):
        raise HPMError(f"{text}: {attr} is a {type(obj).__name__}, neither a model (an nn.Module or a function "
                       "images -> scores) nor a factory that returns one")
    if not _takes(obj, 0):
        if not isinstance(obj, type) and _takes(obj, 1):
            return obj  # a function images -> scores: the model itself
        raise HPMError(f"{text}: {attr}{inspect.signature(obj)} needs arguments, and hpm calls a factory with none "
                       f"(or a model with the images alone): give them defaults, or add a factory that passes them, "
                       f"e.g. def load(): return {attr}(...)")
    try:
        made = obj()
    except Exception as e:  # the user's code: say where it failed, keep its traceback
        raise HPMError(f"{text}: calling {attr}() failed with {type(e).__name__}: {e}") from e
    if made is None:
        raise HPMError(f"{text}: {attr}() returned None; a factory returns the model (a missing return?)")
    return made


def _takes(fn, n: int) -> bool:
    """Whether ``fn`` can be called with ``n`` positional arguments (True when its signature cannot be read)."""
    try:
        inspect.signature(fn).bind(*range(n))
    except TypeError:
        return False
    except ValueError:  # no signature to read (a builtin): call it and see
        return True
    return True


def _import(module: str, text: str):
    if module.endswith(".py"):
        path = Path(module).expanduser()
        if not path.is_file():
            raise HPMError(f"{text}: no such file {path}")
        name = f"hpm_user_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:16]}"  # the same in every process
        spec = importlib.util.spec_from_file_location(name, path)
        loaded = importlib.util.module_from_spec(spec)
        folder = str(path.resolve().parent)
        with _IMPORTING:
            sys.modules[name] = loaded  # dataclasses and pickling look modules up by name
            if folder not in sys.path:  # its imports of its neighbours, now and when its factory runs
                sys.path.insert(0, folder)
            try:
                spec.loader.exec_module(loaded)
            except Exception as e:
                sys.modules.pop(name, None)
                raise HPMError(f"{text}: running {path} failed with {type(e).__name__}: {e}") from e
        return loaded
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise HPMError(f"{text}: cannot import {module} ({e}); is it installed, or on PYTHONPATH?") from None
