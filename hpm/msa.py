"""The evaluation entry point: model + data + attack config -> :class:`EvalReport` (+ JSON, Markdown, .npz)."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor, nn

from .checks import check_results, run_checks
from .data import Subset, load_dataset
from .errors import HPMError
from .evaluate import AttackConfig, load_results, merge_results, run_protocol, save_results
from .model import HPMClassifier
from .report import EvalReport, summarise


def output_paths(out: str | Path) -> tuple[Path, Path, Path]:
    """``report.json`` -> (``report.json``, ``report.md``, ``report.npz``)."""
    out = Path(out)
    if out.suffix != ".json":
        raise HPMError(f"--out must name a .json file; got {out}")
    return out, out.with_suffix(".md"), out.with_suffix(".npz")


def model_info(model: nn.Module) -> dict:
    if isinstance(model, HPMClassifier):
        spec = model.backbone_spec
        return {"head": model.head_type, "backbone": f"{spec.source}:{spec.name}", "dataset": model.dataset,
                "batch_dependent": model.head.batch_dependent, "context_size": model.context_size}
    return {"head": "plain classifier", "backbone": type(model).__name__, "batch_dependent": False}


def evaluate_model(model: nn.Module, x: Tensor, y: Tensor, *, attack: AttackConfig = AttackConfig(),
                   batch_sizes: tuple[int, ...] | list[int] = (256,), indices=None, data_info: dict | None = None,
                   model_id: str = "model", out: str | Path | None = None, checks: bool = True, check_n: int = 16,
                   shard: tuple[int, int] = (0, 1), device: torch.device | str | None = None,
                   progress: bool = True, command: str | None = None) -> EvalReport:
    """Run the MSA protocol (+ Square) on ``x, y`` at every batch size and build the report.

    Args:
        model: an :class:`hpm.HPMClassifier` (any head) or a plain ``images -> logits`` classifier.
        x, y: the evaluation subset in evaluation order (images in [0, 1]).
        attack: threat model, eps, iterations, restarts, attack plan, schedule, seed.
        batch_sizes: evaluation batch sizes (HPM predictions depend on the batch).
        out: ``report.json`` path; ``report.md`` and the resumable per-sample ``report.npz`` go beside it.
        checks: run the sanity checks (extra small attack runs on the first ``check_n`` samples).
        shard: ``(k, n)`` to evaluate every n-th batch only; merge the shards' ``.npz`` with :func:`merge_reports`.
        command: the command line to record in the report (so model cards can cite it).

    Example:
        >>> report = hpm.evaluate_model(model, x, y, attack=AttackConfig(eps=8/255), batch_sizes=[64, 256])
        >>> report.worst_case()   # {64: ..., 256: ...}
    """
    json_path, md_path, npz_path = output_paths(out) if out is not None else (None, None, None)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
    plan, results, _ = run_protocol(model, x, y, attack=attack, batch_sizes=list(batch_sizes), indices=indices,
                                    model_id=model_id, results_path=npz_path, shard=shard, device=device,
                                    progress=progress)
    found: list = []
    if checks:
        n = min(check_n, len(y))
        found += run_checks(model, x[:n], y[:n], attack, batch_size=min(min(batch_sizes), n), device=device)
    return _build_report(model, model_id, attack, batch_sizes, data_info, plan, results, found, device,
                         json_path, md_path, command)


def _build_report(model, model_id, attack, batch_sizes, data_info, plan, results, found, device, json_path, md_path,
                  command=None):
    summaries = {str(bs): summarise(results[bs], plan, attack.schedule) for bs in sorted(results)}
    found = [c for s in summaries.values() for c in check_results(s)] + list(found)
    config = {"attack": asdict(attack), "batch_sizes": sorted(batch_sizes), "data": data_info or {},
              "device": str(device or "cpu")}
    report = EvalReport(model=model_id, model_info=model_info(model) if model is not None else {}, config=config,
                        plan=[{"name": s.name, "kind": s.kind, "loss": s.loss, "surrogates": list(s.surrogates)}
                              for s in plan],
                        results=summaries, checks=[c.to_dict() for c in found], command=command)
    if json_path is not None:
        report.to_json(json_path)
        md_path.write_text(report.to_markdown())
    return report


def merge_reports(npz_paths: list[str | Path], out: str | Path, base_report: str | Path) -> EvalReport:
    """Merge per-sample results of shards of one evaluation and rebuild the report from them.

    ``base_report`` is one shard's JSON report (for the config and plan); checks are not re-run.
    """
    json_path, md_path, npz_path = output_paths(out)
    keys, merged = set(), None
    for p in npz_paths:
        key, res = load_results(Path(p))
        keys.add(key)
        merged = res if merged is None else merge_results(merged, res)
    if len(keys) != 1:
        raise HPMError("the results files come from different evaluations (config keys differ)")
    save_results(npz_path, merged, keys.pop())
    base = EvalReport.from_json(base_report)
    from .attacks import AttackSpec

    plan = [AttackSpec(p["name"], p["kind"], p["loss"], tuple(p["surrogates"])) for p in base.plan]
    attack = AttackConfig(**base.config["attack"])
    report = _build_report(None, base.model, attack, base.config["batch_sizes"], base.config["data"], plan, merged,
                           [], base.config["device"], json_path, md_path, base.command)
    report.model_info = base.model_info
    report.to_json(json_path)
    md_path.write_text(report.to_markdown())
    return report


def load_eval_data(dataset: str, split: str, data: str | None, subset: Subset) -> tuple[Tensor, Tensor, Tensor, dict]:
    """The chosen subset of a split as ``(x, y, indices, data_info)``."""
    ds = load_dataset(dataset, split, data)
    idx = subset.indices(len(ds))
    x, y = ds.tensors(idx)
    info = {"dataset": dataset, "split": split, "source": ds.source, "n": len(idx),
            "subset": asdict(subset) | {"n": len(idx)}}
    return x, y, idx, info
