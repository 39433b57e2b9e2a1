"""The modules a plain callable passed as a model carries or reaches.

A deep copy of a callable object, a ``functools.partial`` or a bound method copies the modules it holds, so they
can be evaluated as copies in eval mode like a module passed itself (:func:`modules_held`). A Python function is
copied as itself: the modules it reaches by name (closure cells, globals, defaults, and what those hold) are run
as they are, and an evaluation can only warn about them (:func:`modules_reached`).
"""
from __future__ import annotations

import functools
import inspect
import itertools
import sys
import types
from typing import Any, Callable, Iterable, Iterator

from torch import nn

DEPTH = 3  # how many steps from the callable :func:`modules_reached` and :func:`modules_held` follow
ITEMS = 100  # the items of a container they look at
LIBRARIES = frozenset({"torch", "torchvision", "timm", "numpy", "scipy", "pyautoattack", "robustbench", "hpm"})


def modules_held(fn: Callable) -> list[nn.Module]:
    """The modules a deep copy of ``fn`` copies with it: a bound method's object, a partial's function and
    arguments, a callable object's attributes (and the modules in lists, tuples and dicts among them)."""
    return distinct(_held(fn, DEPTH))


def modules_reached(fn: Callable) -> list[nn.Module]:
    """The modules a Python function reaches by name and a deep copy of it does not copy: its closure cells,
    the globals and module attributes it names, its defaults, and, a few steps on, what the functions, containers
    and plain objects among them hold (less those ``fn`` holds itself)."""
    held = modules_held(fn)
    return [m for m in distinct(_reached(fn, DEPTH)) if all(m is not h for h in held)]


def distinct(modules: Iterable[nn.Module]) -> list[nn.Module]:
    """``modules`` in order, each once (by identity: modules need not compare or hash by value)."""
    found: list[nn.Module] = []
    for m in modules:
        if all(m is not f for f in found):
            found.append(m)
    return found


def _held(value: Any, depth: int) -> Iterator[nn.Module]:
    """Modules inside ``value`` that a deep copy of it copies."""
    if isinstance(value, nn.Module):
        yield value
        return
    if depth == 0 or isinstance(value, (types.FunctionType, types.BuiltinFunctionType, type, types.ModuleType)):
        return
    if isinstance(value, types.MethodType):
        yield from _held(value.__self__, depth - 1)
    elif isinstance(value, functools.partial):
        yield from _each(_held, (value.func, *value.args, *value.keywords.values()), depth - 1)
    elif isinstance(value, (list, tuple, set, frozenset)):
        yield from _each(_held, value, depth - 1)
    elif isinstance(value, dict):
        yield from _each(_held, value.values(), depth - 1)
    elif isinstance(getattr(value, "__dict__", None), dict):
        yield from _each(_held, vars(value).values(), depth - 1)


def _each(follow: Callable[[Any, int], Iterator[nn.Module]], items: Iterable, depth: int) -> Iterator[nn.Module]:
    for item in itertools.islice(items, ITEMS):
        yield from follow(item, depth)


def _is_library(function: types.FunctionType) -> bool:
    """A function of the standard library or of a library hpm builds on: no user's module lives there."""
    root = (function.__module__ or "").partition(".")[0]
    return root in LIBRARIES or root in sys.stdlib_module_names


def _reached(value: Any, depth: int) -> Iterator[nn.Module]:
    """Modules a function reaches by name, and those held by what it reaches."""
    if isinstance(value, types.MethodType):
        value = value.__func__
    if not isinstance(value, types.FunctionType):
        yield from _held(value, depth)
        return
    if depth == 0 or _is_library(value):
        return
    try:
        names = inspect.getclosurevars(value)
    except ValueError:  # a closure cell not filled yet (a function that refers to itself before it is bound)
        return
    found = [*names.nonlocals.values(), *names.globals.values(), *(value.__defaults__ or ()),
             *(value.__kwdefaults__ or {}).values()]
    for item in found:
        if isinstance(item, types.ModuleType):  # mymodels.net: the attributes this code names there
            named = (getattr(item, n) for n in value.__code__.co_names if hasattr(item, n))
            yield from _each(_reached, (a for a in named if not isinstance(a, types.ModuleType)), depth - 1)
        else:
            yield from _reached(item, depth - 1)
