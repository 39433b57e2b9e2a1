"""A mixing defence's trade-off beside its authors' published one: the clean accuracy it gains and the robust
accuracy it gives up over the robust network it mixes in, here and in the authors' own models.

A ``defences`` section names the published numbers and each mixture row the published defence it is set beside::

    {"kind": "defences", ..., "published": "results/literature/mixing-defences.json",
     "entries": [{"label": "FC", "reports": [...]},                                    # the mixtures' robust branch
                 {"label": "MixedNUTS", "published": "mixednuts", "reports": [...]}]}

The published file (transcribed by hand, with its sources) gives its dataset, radius and, per defence, the mixture's
and its robust network's accuracies with the evaluation of each and the ``head`` its mixtures declare. The section's
baseline row must be the robust branch of every mixture set beside them, so that both differences are a mixture
minus the robust network it mixes in; a row whose report declares another kind of model, another robust branch,
dataset or radius is refused.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import HPMError
from ..units import eps_text
from .defences import DefenceRow
from .metrics import load_report, pct, points

SIGNIFICANCE = 0.05  # the level at which the words say a paired test separates a difference from chance
PUBLISHED_KEYS = ("id", "defence", "source", "head", "mixture", "robust_base")
ACCURACY_KEYS = ("clean_accuracy", "robust_accuracy", "evaluation")


def read_published(root: Path, path: str) -> dict:
    """The published file ``path`` (module docstring), its entries by id.

    Raises:
        HPMError: the file is missing or an entry lacks a field, naming the field.
    """
    try:
        published = json.loads((root / path).read_text())
    except (OSError, ValueError) as e:
        raise HPMError(f"{path}: cannot read the published numbers ({e})") from None
    for key in ("dataset", "eps", "entries"):
        if key not in published:
            raise HPMError(f"{path}: no {key!r}; the file names its dataset, its radius (e.g. \"8/255\") and entries")
    for entry in published["entries"]:
        lacking = [k for k in PUBLISHED_KEYS if k not in entry] + [
            f"{part}.{k}" for part in ("mixture", "robust_base") for k in ACCURACY_KEYS if k not in entry.get(part, {})]
        if lacking:
            raise HPMError(f"{path}: entry {entry.get('id', '?')!r} lacks {', '.join(lacking)}")
    return {**published, "entries": {e["id"]: e for e in published["entries"]}}


def _same_model(root: Path, a: str, b: str) -> bool:
    """Two names of one model, as paths from ``root`` (``./checkpoints/x`` is ``checkpoints/x``)."""
    return a == b or (root / a).resolve() == (root / b).resolve()


def _check_row(root: Path, row: DefenceRow, entry: dict, base_model: str, published: dict) -> None:
    """Refuse a row that is not a mixture of the published kind whose robust branch is ``base_model``, on the
    published dataset and radius."""
    report = load_report(root / row.reports[0])
    info = report.model_info
    standard, plus, robust = info.get("backbone", "").partition(" + robust ")
    if not info.get("head", "").startswith(entry["head"]) or not (plus and standard.startswith("standard ")):
        raise HPMError(f"{row.label}: its report declares {info.get('head')!r}, not a mixture of the published kind "
                       f"{entry['defence']!r} ({entry['head']}...); mark it with the entry of its own kind, or not at "
                       "all")
    if not _same_model(root, robust, base_model):
        raise HPMError(f"{row.label}: its robust branch is {robust}, not the baseline row's {base_model}; make the "
                       "robust network it mixes in the section's first entry, or drop `published` from this row")
    eps, dataset = eps_text(report.config.attack.eps), info.get("dataset")
    if (dataset, eps) != (published["dataset"], published["eps"]):
        raise HPMError(f"{row.label}: evaluated on {dataset} at {eps}, the published numbers are on "
                       f"{published['dataset']} at {published['eps']}")


def _in_words(what: str, delta: float, test: dict) -> str:
    """``"clean +4.0 points (McNemar p = 1.1e-05, more than chance)"``."""
    verdict = "more than chance" if test["p_value"] < SIGNIFICANCE else "not separable from chance at this n"
    return f"{what} {points(delta)} points (McNemar p = {test['p_value']:.2g}, {verdict})"


def _published_cells(entry: dict) -> list[str]:
    """The published columns of a row: robust network → mixture, and the two differences."""
    mix, rob = entry["mixture"], entry["robust_base"]
    return [f"{entry['defence']}: {pct(rob['clean_accuracy'])} / {pct(rob['robust_accuracy'])} → "
            f"{pct(mix['clean_accuracy'])} / {pct(mix['robust_accuracy'])}",
            f"{points(mix['clean_accuracy'] - rob['clean_accuracy'])} / "
            f"{points(mix['robust_accuracy'] - rob['robust_accuracy'])}"]


def tradeoff_lines(root: Path, section: dict, rows: list[DefenceRow]) -> list[str]:
    """The lines of a ``defences`` section (its measured ``rows``, the baseline first) that set each row marked
    ``published`` beside its authors' trade-off (module docstring); none when the section names no published file.

    Raises:
        HPMError: an entry names an unknown published id, or a marked row is not a mixture of the published kind
            of the baseline row's network on the published dataset and radius.
    """
    if not section.get("published") or not rows:
        return []
    published = read_published(root, section["published"])
    marked = {e["label"]: e["published"] for e in section["entries"] if "published" in e}
    unknown = sorted(set(marked.values()) - set(published["entries"]))
    if unknown:
        raise HPMError(f"no published entry {', '.join(map(repr, unknown))} in {section['published']} (it has "
                       f"{', '.join(published['entries'])})")
    base = rows[0]
    base_model = load_report(root / base.reports[0]).model
    lines, used = [], {}
    for row in (r for r in rows if r.label in marked):
        entry = used.setdefault(marked[row.label], published["entries"][marked[row.label]])
        _check_row(root, row, entry, base_model, published)
        lines.append(f"| {row.label} | " + " | ".join(_published_cells(entry)) + f" | {pct(base.clean)} / "
                     f"{pct(base.robust)} → {pct(row.clean)} / {pct(row.robust)} | "
                     f"{_in_words('clean', row.clean - base.clean, row.clean_test)}; "
                     f"{_in_words('robust', row.robust - base.robust, row.robust_test)} |")
    if not lines:
        return []
    head = ["", f"Beside the authors' published trade-off (`{section['published']}`, {published['dataset']} at "
                f"{published['eps']}): clean / robust accuracy in % of the robust network mixed in → of the mixture, "
                f"and the differences in points; here the robust network is the baseline row, {base.label}, on the "
                "images above.", "",
            f"| row | published: robust network → mixture | published Δ clean / Δ robust | here: {base.label} → "
            "mixture | here, paired on the same images |", "| --- | --- | --- | --- | --- |"]
    return head + lines + ["", "Published numbers, as their sources give them:", ""] + [
        _source_line(e) for e in used.values()]


def _source_line(entry: dict) -> str:
    """Where a published entry's numbers come from and how each was measured."""
    mix, rob = entry["mixture"], entry["robust_base"]
    mixture = f"the mixture ({mix['architecture']})" if mix.get("architecture") else "the mixture"
    robust = f"the robust network {rob['name']}" if rob.get("name") else "the robust network"
    robust += f" ({rob['source']})" if rob.get("source") else ""
    configuration = f" {entry['configuration'].rstrip('.')}." if entry.get("configuration") else ""
    return (f"- {entry['defence']}, {entry['source']}: {mixture} evaluated by {mix['evaluation']}; {robust} evaluated "
            f"by {rob['evaluation']}.{configuration}")
