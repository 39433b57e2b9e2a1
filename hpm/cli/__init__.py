"""The ``hpm`` command line: ``hpm train | train-backbone | eval | analyze | predict | attack | card | info | push``.

One module per command group registers its parsers; shared arguments live in :mod:`.common`. Bad arguments
and bad files end with a one-line ``hpm: error: ...`` and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import shlex
import sys

from ..errors import HPMError
from ..version import __version__
from . import analyze, checkpoints, evaluate, interactive, train


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage too; keep it short)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``hpm`` parser: every command group registers its subcommands."""
    parser = _Parser(prog="hpm", description="Hybrid Prototype Mixing: wrap, fine-tune, evaluate and publish "
                                             "l2 re-classifiers for robust models.")
    parser.add_argument("--version", action="version", version=f"hpm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for group in (train, evaluate, analyze, interactive, checkpoints):
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one ``hpm`` command; returns its exit status (2 with a one-line message for user errors)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = "hpm " + shlex.join(sys.argv[1:] if argv is None else argv)  # recorded in cards/reports
    try:
        return args.func(args)
    except HPMError as e:
        print(f"hpm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hpm: interrupted (adversarial training and evaluation resume from their saved state)", file=sys.stderr)
        return 130
