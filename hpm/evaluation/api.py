"""The evaluation entry point: model + data + attack config -> :class:`EvalReport` (+ JSON, Markdown, .npz)."""
from __future__ import annotations

import numbers
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import Tensor, nn

from ..data import Subset, load_dataset
from ..devices import describe, fp32_judging, resolve
from ..errors import HPMError
from ..defence import declare, evaluation_copy, same_scores
from . import dist
from .checks import (
    CONVENTION_IMAGES,
    SQUARE_QUERIES,
    check_against_card,
    check_batch_independent,
    check_deterministic,
    check_input_convention,
    check_randomness_averaged,
    check_results,
    check_run_factors,
    run_checks,
)
from .config import AttackConfig, is_positive_integer
from .expect import Expectation, expectation_bar
from .inputs import check_evaluation_inputs
from .protocol import is_batch_dependent, model_identity, run_protocol, sizes_that_differ
from .report import WRONG_NUMBER_CHECKS, Check, EvalConfig, EvalReport, package_versions, summarise
from .samples import SampleResults, read_run, save_results


PER_SAMPLE_BATCH_SIZES = (256,)  # a per-sample model: the batch size changes the speed only
BATCH_CURVE = (1, 16, 256)  # a batch-dependent model: its accuracy is a curve over the evaluation batch size


def default_batch_sizes(model: nn.Module) -> list[int]:
    """The evaluation batch sizes of :func:`evaluate_model` when none are given: a curve for batch-dependent
    models (whose predictions change with the batch), a single size otherwise."""
    return list(BATCH_CURVE if is_batch_dependent(model) else PER_SAMPLE_BATCH_SIZES)


def output_paths(out: str | Path, create_folder: bool = False) -> tuple[Path, Path, Path]:
    """``report.json`` -> (``report.json``, ``report.md``, ``report.npz``); ``create_folder``: make their folder."""
    out = Path(out)
    if out.suffix != ".json":
        raise HPMError(f"--out must name a .json file; got {out}")
    if create_folder:
        out.parent.mkdir(parents=True, exist_ok=True)
    return out, out.with_suffix(".md"), out.with_suffix(".npz")


def model_info(model: nn.Module) -> dict:
    """What the report records about ``model``: what it declares (:class:`hpm.defence.Declared`)."""
    return declare(model).describe()


def evaluate_model(model: nn.Module | Callable[[Tensor], Tensor], x: Tensor, y: Tensor, *,
                   attack: AttackConfig | None = None, batch_sizes: tuple[int, ...] | list[int] | None = None,
                   batch_dependent: bool | None = None, surrogates: Mapping[str, Callable] | None = None,
                   indices=None, data_info: dict | None = None, model_id: str = "model",
                   out: str | Path | None = None, checks: bool = True, check_n: int = 16,
                   shard: tuple[int, int] = (0, 1), device: torch.device | str | None = None, progress: bool = True,
                   command: str | None = None, distributed: bool = False,
                   expect: Expectation | None = None) -> EvalReport | None:
    """Run the MSA protocol (+ Square) on ``x, y`` at every batch size and build the report, on a copy of the model
    in eval mode on ``device`` (the module passed is left as it was).

    Args:
        model: the deployed ``images -> scores`` model: an :class:`hpm.HPMClassifier`, a mixed classifier, an
            :class:`hpm.Defence`, or any ``nn.Module`` or function (declared with the next two arguments).
        x, y: float images ``[N, C, H, W]`` in [0, 1] and integer labels ``[N]``, in evaluation order; checked
            first (:func:`hpm.evaluation.inputs.check_evaluation_inputs`).
        attack: threat model, budget, plan, schedule, seed (default ``AttackConfig()``).
        batch_sizes: default :func:`default_batch_sizes` (1, 16, 256 for a batch-dependent model, else 256); a
            size above ``len(y)`` is one batch of all images, reported as ``len(y)``.
        batch_dependent, surrogates: for a plain model, as :class:`hpm.Defence` takes them (hpm's models and a
            Defence declare their own).
        out: ``report.json`` path; ``report.md`` and the resumable per-sample ``report.npz`` go beside it.
        checks: run the sanity checks on the first ``check_n`` samples, 2 at least (else the forward-only ones).
        shard: ``(k, n)`` to evaluate every n-th batch only; merge the shards' ``.npz`` with :func:`merge_reports`.
        command: the command line to record in the report (so model cards can cite it).
        distributed: share the batches among the ranks of a torchrun job (:mod:`hpm.evaluation.dist`; every
            rank calls this; rank 0 returns the one report, the others None).
        expect: an :class:`hpm.evaluation.expect.Expectation` told the work as it finishes; with ``progress``, a
            top-level bar shows the time it expects left.

    Example:
        >>> hpm.evaluate_model(model, x, y, attack=AttackConfig(eps=8/255), batch_sizes=[64, 256]).worst_case()
    """
    json_path, md_path, npz_path = output_paths(out, create_folder=True) if out is not None else (None,) * 3
    model, attack, y, batch_sizes, run_device, check_n = _prepare(model, x, y, attack, batch_sizes, batch_dependent,
                                                                  surrogates, indices, device, distributed, check_n)
    rank, world = dist.init_distributed(run_device) if distributed else (0, 1)
    early = _input_checks(model, x, y, attack, min(batch_sizes), check_n, run_device, warn=rank == 0)
    bar = _expectation_bar(expect, checks, check_n, len(y), batch_sizes, progress and rank == 0)
    try:
        with fp32_judging():  # robustness is judged in plain float32 (no TF32 on the GPU)
            plan, runs = _evaluate_share(model, x, y, attack=attack, batch_sizes=list(batch_sizes), indices=indices,
                                         model_id=model_id, npz_path=npz_path, part=dist.rank_part(shard, rank, world),
                                         rank=rank, world=world, device=run_device, progress=progress, expect=expect)
            if runs is None:
                return None  # not rank 0: rank 0 checks and writes the report
            key, results = dist.merge_runs(runs)
            if npz_path is not None and world > 1:
                save_results(npz_path, results, key, *model_identity(model, x, run_device))  # as one run writes it
            found = early + (_sanity_checks(model, x, y, attack, batch_sizes, check_n, run_device, progress, expect)
                             if checks else _forward_checks(model, x[:check_n].to(run_device)))
            config = EvalConfig(attack=attack, batch_sizes=sorted(batch_sizes), data=data_info or {},
                                device=str(run_device))
            report = _report(model, model_id, config, plan, results, found, command)
        return write_report(report, json_path, md_path)
    finally:
        if bar is not None:
            bar.close()
        if distributed:
            dist.shutdown()


def _forward_checks(model: nn.Module, x: Tensor) -> list[Check]:
    """The checks that take forward passes only (without ``checks``): is the model deterministic, and, where it
    is, does it score each image alone as inside the batch (a randomized model's two passes differ anyway)."""
    deterministic = check_deterministic(model, x)
    return [deterministic, check_batch_independent(model, x, bool(deterministic.passed))]


def _input_checks(model: nn.Module, x: Tensor, y: Tensor, attack: AttackConfig, batch_size: int, check_n: int,
                  device: torch.device, warn: bool = True) -> list[Check]:
    """The forward-only checks of what the model takes and how it is attacked, run before the attacks: the input
    convention and chance level (:func:`check_input_convention`), state and randomness
    (:func:`check_randomness_averaged`); one that says the numbers will be wrong is warned of at once (``warn``),
    so that the attack budget need not be spent to learn it."""
    with fp32_judging():  # as the evaluation judges
        found = check_input_convention(model, x[:CONVENTION_IMAGES].to(device), y[:CONVENTION_IMAGES], batch_size)
        found.append(check_randomness_averaged(model, x[:check_n].to(device), attack.eot_iter))
    for check in (c for c in found if warn and c.passed is False and c.name.startswith(WRONG_NUMBER_CHECKS)):
        warnings.warn(f"{check.name}: {check.detail}; the numbers this evaluation reports will be marked probably "
                      "wrong", stacklevel=3)
    return found


def _report(model: nn.Module, model_id: str, config: EvalConfig, plan: list, results: dict[int, SampleResults],
            found: list[Check], command: str | None) -> EvalReport:
    """:func:`build_report` of an evaluation just run, with the hardware it ran on and the card's clean check."""
    hardware = {k: str(v) for k, v in describe(torch.device(config.device)).items() if k != "device"}
    report = build_report(model_id, model_info(model), config, plan, results, found, command, hardware=hardware)
    report.checks += [c for s in report.results.values() if (c := check_against_card(model, s))]
    return report


def _batch_sizes(batch_sizes) -> list[int]:
    """``batch_sizes`` (integers, or one integer) as a list, or an :class:`HPMError` saying what to give: a
    fractional or boolean size would otherwise be truncated to another batch size than the one asked for."""
    sizes = [batch_sizes] if isinstance(batch_sizes, numbers.Integral) else batch_sizes
    try:
        sizes = list(sizes)
    except TypeError:
        sizes = []
    if not sizes or not all(is_positive_integer(s) for s in sizes):
        raise HPMError(f"batch_sizes must be positive integers, e.g. [16, 256]; got {batch_sizes!r}")
    return [int(s) for s in sizes]


def _prepare(model, x: Tensor, y: Tensor, attack: AttackConfig | None, batch_sizes, batch_dependent: bool | None,
             surrogates: Mapping[str, Callable] | None, indices, device, distributed: bool,
             check_n: int) -> tuple[nn.Module, AttackConfig, Tensor, list[int], torch.device, int]:
    """Everything checked before anything runs: the declared model's evaluation copy on its device, the attack
    config, the labels as int64, the batch sizes really run, the run's device, and the images the checks run on
    (two at least: ``batch_independent`` compares two images alone and together)."""
    if not is_positive_integer(check_n):
        raise HPMError(f"check_n must be a positive integer (the images the sanity checks run on); got {check_n!r}")
    model = declare(model, batch_dependent=batch_dependent, surrogates=surrogates)
    attack = AttackConfig() if attack is None else attack
    if not isinstance(attack, AttackConfig):
        raise HPMError(f"attack must be an hpm.AttackConfig; got {type(attack).__name__}")
    attack.validate()
    check_evaluation_inputs(model, x, y)
    if indices is not None and len(indices) != len(y):
        raise HPMError(f"indices must give the dataset index of each of the {len(y)} images; got {len(indices)}")
    sizes = sizes_that_differ(default_batch_sizes(model) if batch_sizes is None else _batch_sizes(batch_sizes),
                              len(y))
    run_device = dist.rank_device(resolve(device, model)) if distributed else resolve(device, model)
    copy = evaluation_copy(model, run_device)  # the caller's module stays as given
    return copy, attack, y.long(), sizes, run_device, max(check_n, 2)


def _expectation_bar(expect: Expectation | None, checks: bool, check_n: int, n: int, batch_sizes,
                     progress: bool):
    """Tell ``expect`` about the sanity checks to come and put its bar on top (None without either)."""
    if expect is None:
        return None
    if checks:
        rows = min(check_n, n)
        expect.add_checks(rows, min(max(batch_sizes), rows), check_run_factors(), SQUARE_QUERIES)  # as run_checks
    return expectation_bar(expect) if progress else None


def _evaluate_share(model: nn.Module, x: Tensor, y: Tensor, *, npz_path: Path | None, part: tuple[int, int],
                    rank: int, world: int, progress: bool, **protocol) -> tuple[list, list[dist.Run] | None]:
    """Evaluate this process's batches (a shard, or a rank's share of one) with a resumable results file; return
    the plan and every part's ``(config key, results)`` on rank 0 (None on the other ranks)."""
    plan, results, key = run_protocol(model, x, y, results_path=dist.rank_results_path(npz_path, rank, world),
                                      shard=part, progress=progress and rank == 0, **protocol)
    return plan, dist.gather_runs(key, results, world)


def _sanity_checks(model: nn.Module, x: Tensor, y: Tensor, attack: AttackConfig, batch_sizes, check_n: int,
                   device, progress: bool, expect: Expectation | None = None) -> list:
    """The sanity checks' extra attack runs on the first ``check_n`` samples, in as few batches as the evaluation
    batch sizes allow (they check the protocol, not the batch dependence); each run is reported to ``expect``."""
    n = min(check_n, len(y))
    found = run_checks(model, x[:n], y[:n], attack, batch_size=min(max(batch_sizes), n), device=device,
                       progress=progress, on_run_done=expect.check_run_done if expect is not None else None)
    if expect is not None:
        expect.checks_done()
    return found


def build_report(model_id: str, info: dict, config: EvalConfig, plan: list, results: dict[int, SampleResults],
                 found: list[Check], command: str | None, hardware: dict | None = None) -> EvalReport:
    """The report of per-sample ``results``: summaries per batch size, and the checks that read them first;
    ``hardware`` (GPU name, CUDA and cuDNN versions, determinism settings) joins the package versions."""
    transfer = info.get("transfer_targets") or ()
    summaries = {str(bs): summarise(results[bs], plan, config.attack.schedule, transfer) for bs in sorted(results)}
    found = [c for s in summaries.values() for c in check_results(s, config.attack.square_queries)] + list(found)
    return EvalReport(model=model_id, model_info=info, config=config, plan=list(plan), results=summaries,
                      checks=list(found), command=command, versions=package_versions() | (hardware or {}))


def write_report(report: EvalReport, json_path: Path | None, md_path: Path | None) -> EvalReport:
    """Write ``report`` as JSON and Markdown (nothing when ``json_path`` is None); returns it."""
    if json_path is not None:
        report.to_json(json_path)
        md_path.write_text(report.to_markdown())
    return report


def merge_reports(npz_paths: list[str | Path], out: str | Path, base_report: str | Path) -> EvalReport:
    """Merge per-sample results of shards of one evaluation and rebuild the report from them (the same merge
    as rank 0 does under torchrun).

    ``base_report`` is one shard's JSON report (for the config and plan); its checks of the model (every shard
    runs them on the same first images) are carried over, not re-run, and those that read the numbers are redone.
    """
    json_path, md_path, npz_path = output_paths(out)
    runs = [read_run(Path(p)) for p in npz_paths]
    key, merged = dist.merge_runs([(run.config_key, run.results) for run in runs])  # as rank 0 merges the ranks
    fingerprints = {run.fingerprint for run in runs} - {None}
    if len(fingerprints) > 1:
        raise HPMError(f"{', '.join(map(str, npz_paths))}: shards of different models (their weights or constants "
                       "differ)")
    probes = [run.scores for run in runs if run.records_scores]
    if not all(same_scores(probe, probes[0]) for probe in probes):
        raise HPMError(f"{', '.join(map(str, npz_paths))}: shards of different models (their scores on the first "
                       "images differ, though their weights and constants agree)")
    save_results(npz_path, merged, key, next(iter(fingerprints), None), probes[0] if probes else None)
    base = EvalReport.from_json(base_report)
    of_the_model = [c for c in base.checks if "[bs=" not in c.name]  # per batch size: rebuilt from the merge
    report = build_report(base.model, base.model_info, base.config, base.plan, merged, of_the_model, base.command)
    return write_report(report, json_path, md_path)


def load_eval_data(dataset: str, split: str, data: str | None, subset: Subset) -> tuple[Tensor, Tensor, Tensor, dict]:
    """The chosen subset of a split as ``(x, y, indices, data_info)``."""
    ds = load_dataset(dataset, split, data)
    idx = subset.indices(len(ds))
    x, y = ds.tensors(idx)
    info = {"dataset": dataset, "split": split, "source": ds.source, "n": len(idx),
            "subset": asdict(subset) | {"n": len(idx)}}
    return x, y, idx, info
