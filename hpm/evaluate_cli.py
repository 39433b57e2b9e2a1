"""``hpm eval``: the Mixed Surrogate Attack protocol from the command line."""
from __future__ import annotations


def add_eval_parser(sub) -> None:
    """Register ``hpm eval`` (filled in with the MSA protocol)."""
