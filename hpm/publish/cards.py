"""``hpm card``: evaluation reports recorded in a checkpoint's ``config.json``, and its model card rewritten."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..checkpoint import read_config, write_config
from ..errors import HPMError
from ..model_card import model_card
from ..units import eps_text
from .compare import worst_case_rows
from .metrics import load_report, protocol_text, report_metrics


def worst_case_metrics(paths: list[str | Path]) -> dict[str, dict]:
    """``config.json`` robust-accuracy entries of several reports of one model on the same samples (a report,
    then extra attacks run later): their per-sample worst case, per evaluation batch size of the first."""
    reports = [load_report(p) for p in paths]
    a, order_seed = reports[0].config.attack, reports[0].config.order_seed
    order = "" if order_seed is None else f", order seed {order_seed}"
    out = {}
    for row in worst_case_rows("", [Path(p) for p in paths]):
        name = (f"robust_accuracy ({a.norm} {eps_text(a.eps)}, {row['protocol']} (worst case of "
                f"{len(paths)} reports), n {row['n']}, bs {row['batch_size']}{order})")
        out[name] = {
            "value": row["robust"], "ci95": row["ci95"], "norm": a.norm, "eps": a.eps,
            "protocol": "per-sample worst case of " + "; and ".join(protocol_text(r) for r in reports),
            "split": reports[0].config.data.get("source"), "n": row["n"], "batch_size": row["batch_size"],
            "report": " + ".join(map(str, paths)), "commands": [r.command for r in reports],
            **({} if order_seed is None else {"order_seed": order_seed})}
    return out


def record_evaluations(checkpoint: str | Path, reports: Sequence[str | Path], *,
                       worst_cases: Sequence[Sequence[str | Path]] = (), command: str | None = None) -> dict[str, dict]:
    """Add the metrics of ``reports`` (and of each group of ``worst_cases``: reports of the same samples, whose
    per-sample worst case is recorded as one robust accuracy) to a checkpoint's ``config.json`` and regenerate
    its model card.

    The weights are not touched. A metric of the same name is replaced (a rerun supersedes). ``command``
    (the ``hpm card`` call) is stored beside each new metric so the card can cite it. Returns the checkpoint's
    metrics after the update.
    """
    directory = Path(checkpoint)
    if not directory.is_dir():
        raise HPMError(f"{directory}: not a checkpoint directory")
    config = read_config(directory)
    new = [report_metrics(load_report(path), path) for path in reports]
    new += [worst_case_metrics(group) for group in worst_cases]
    for metrics in new:
        for name, metric in metrics.items():
            config.metrics[name] = metric | ({"recorded_with": command} if command else {})
    write_config(directory, config, model_card(config))
    return config.metrics
