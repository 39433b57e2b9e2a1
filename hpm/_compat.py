"""Compatibility shims, installed before third-party imports that need them.

PyPI ships AutoAttack as the module ``pyautoattack``, while ``robustbench==1.1.1`` imports ``autoattack``
(``from autoattack import AutoAttack``, ``from autoattack.state import EvaluationState``). Rather than
patching site-packages, :func:`install_autoattack_alias` registers an import hook that resolves
``autoattack`` and every ``autoattack.<sub>`` to the matching ``pyautoattack`` module object.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

_ALIAS, _TARGET = "autoattack", "pyautoattack"


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self._real_spec = module.__spec__
        return module

    def exec_module(self, module):
        # The target is already executed; importlib has just overwritten its __spec__ with the alias's,
        # which would break importlib.resources and reloads of the real package: put it back.
        module.__spec__ = self._real_spec


class _AutoAttackAlias(importlib.abc.MetaPathFinder):
    """Finds ``autoattack[.x]`` as ``pyautoattack[.x]`` when no real ``autoattack`` is installed."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _ALIAS and not fullname.startswith(_ALIAS + "."):
            return None
        real = _TARGET + fullname[len(_ALIAS):]
        if importlib.util.find_spec(real) is None:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(real))


def install_autoattack_alias() -> None:
    """Make ``import autoattack`` resolve to ``pyautoattack`` (idempotent; a real ``autoattack`` wins)."""
    if any(isinstance(f, _AutoAttackAlias) for f in sys.meta_path):
        return
    if _ALIAS not in sys.modules and importlib.util.find_spec(_ALIAS) is not None:
        return  # the original package is installed: use it
    sys.meta_path.append(_AutoAttackAlias())


def import_robustbench_utils():
    """Import ``robustbench.utils`` with the alias installed and its import-time noise silenced."""
    install_autoattack_alias()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import robustbench.utils as rb_utils
    return rb_utils
