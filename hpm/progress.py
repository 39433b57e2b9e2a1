"""Progress bars that suit where they are read: tqdm on a terminal, plain lines in a log file.

On a terminal the bars redraw in place and may stack (``position``). Without one (output redirected to a file, a
CI log, ``nohup``) redrawing would write a line per update and stacked bars would interleave, so a bar writes a
whole line at most every :data:`LOG_INTERVAL` seconds (and when it starts and ends), never stacked.
"""
from __future__ import annotations

import sys
from typing import IO

from tqdm.auto import tqdm

LOG_INTERVAL = 30.0  # seconds between two lines of one bar in a log


def on_terminal(stream: IO | None = None) -> bool:
    """True when ``stream`` (default: standard error, where bars go) is a terminal."""
    stream = stream if stream is not None else sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


class _Lines:
    """A file for tqdm that turns each redraw (``\\r`` + the bar) into one line of its own."""

    def __init__(self, stream: IO):
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(iterable=None, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)`` on a terminal; in a log, the same bar as lines at most every
    :data:`LOG_INTERVAL` seconds, without its ``position`` (nothing is stacked in a file)."""
    if on_terminal(kwargs.get("file")):
        return tqdm(iterable, **kwargs)
    kwargs["position"] = 0  # tqdm would stack it under the open bars, with cursor moves
    kwargs["file"] = _Lines(kwargs.get("file") or sys.stderr)
    kwargs.setdefault("mininterval", LOG_INTERVAL)
    kwargs.setdefault("ncols", 120)
    return tqdm(iterable, ascii=True, dynamic_ncols=False, **kwargs)
