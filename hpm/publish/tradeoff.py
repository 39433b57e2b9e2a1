"""A mixing defence's trade-off beside its authors' published one: the clean accuracy it gains and the robust
accuracy it gives up over the robust network it mixes in, here and in the authors' own CIFAR-10 models.

A ``defences`` section names the published numbers and each mixture row the published defence it is set beside::

    {"kind": "defences", ..., "published": "results/literature/mixing-defences.json",
     "entries": [{"label": "FC", "reports": [...]},                                    # the mixtures' robust branch
                 {"label": "MixedNUTS", "published": "mixednuts", "reports": [...]}]}

The section's baseline row must be the mixtures' robust branch (each mixture's report names it), so that both
differences are a mixture minus the robust network it mixes in; the published file (transcribed by hand, with its
sources) gives the same two differences for the authors' models.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import HPMError
from .defences import DefenceRow, defence_rows
from .metrics import load_report, pct, points

SIGNIFICANCE = 0.05  # the level at which the words say a paired test separates a difference from chance


def _robust_branch(root: Path, row: DefenceRow) -> str | None:
    """The robust network a mixture's report names (``standard A + robust B`` -> ``B``); None for another model."""
    standard, plus, robust = load_report(root / row.reports[0]).model_info.get("backbone", "").partition(" + robust ")
    return robust if plus and standard.startswith("standard ") else None


def _published(root: Path, path: str) -> dict[str, dict]:
    """The published entries of ``path`` by id."""
    return {e["id"]: e for e in json.loads((root / path).read_text())["entries"]}


def _in_words(what: str, delta: float, test: dict) -> str:
    """``"a clean gain of +4.0 points (McNemar p = 1.1e-05; more than chance)"``."""
    direction = "gain" if delta > 0 else "loss" if delta < 0 else "change"
    verdict = "more than chance" if test["p_value"] < SIGNIFICANCE else "not separable from chance at this n"
    return f"a {what} {direction} of {points(delta)} points (McNemar p = {test['p_value']:.2g}; {verdict})"


def tradeoff_lines(root: Path, section: dict) -> list[str]:
    """The lines of a ``defences`` section that set each row marked ``published`` beside its authors' trade-off
    (see the module docstring); none when the section names no published file.

    Raises:
        HPMError: a marked row is not a mixture of the baseline row's model, or names an unknown published id.
    """
    if not section.get("published"):
        return []
    rows = defence_rows(root, section["entries"], section.get("batch_size"))
    published, base = _published(root, section["published"]), rows[0]
    base_model = load_report(root / base.reports[0]).model
    marked = {e["label"]: e["published"] for e in section["entries"] if "published" in e and "missing" not in e}
    lines = []
    for row in (r for r in rows if r.label in marked):
        if marked[row.label] not in published:
            raise HPMError(f"{row.label}: no published entry {marked[row.label]!r} in {section['published']} "
                           f"(it has {', '.join(published)})")
        if _robust_branch(root, row) != base_model:
            raise HPMError(f"{row.label}: not a mixture whose robust branch is the baseline {base_model}; its gains "
                           "over the baseline would not be a trade-off against its own robust network")
        p = published[marked[row.label]]
        mix, rob = p["mixture"], p["robust_base"]
        lines.append(f"| {row.label} | {p['defence']}: {pct(rob['clean_accuracy'])} / {pct(rob['robust_accuracy'])} → "
                     f"{pct(mix['clean_accuracy'])} / {pct(mix['robust_accuracy'])} | "
                     f"{points(mix['clean_accuracy'] - rob['clean_accuracy'])} / "
                     f"{points(mix['robust_accuracy'] - rob['robust_accuracy'])} | "
                     f"{pct(base.clean)} / {pct(base.robust)} → {pct(row.clean)} / {pct(row.robust)} | "
                     f"{_in_words('clean', row.clean - base.clean, row.clean_test)}; "
                     f"{_in_words('robust', row.robust - base.robust, row.robust_test)} |")
    if not lines:
        return []
    head = ["", f"Beside the authors' published trade-off (`{section['published']}`: their CIFAR-10 models, the whole "
                f"test set, AutoAttack or their adaptive AutoAttack): clean / robust accuracy of the robust network "
                f"mixed in → of the mixture, in %, and the differences in points; here the robust network is the "
                f"baseline row, {base.label}, on the images above.", "",
            "| row | published: robust network → mixture | published Δ clean / Δ robust | here: "
            f"{base.label} → mixture | here, in words |", "| --- | --- | --- | --- | --- |"]
    return head + lines
