"""torchrun: the ranks share the evaluation batches, rank 0 gathers the per-sample outcomes and writes one report.

Under ``torchrun`` (``WORLD_SIZE`` > 1) rank ``r`` of ``w`` evaluates every ``w``-th batch from the ``r``-th (the
same split as ``--shard r/w``) and saves its outcomes after every attack to ``REPORT.rank{r}-of-{w}.npz`` beside
the report, so a killed job resumes per rank. Rank 0 then gathers every rank's outcomes, merges them with the
same code that merges ``--shard`` runs (:func:`merge_runs`), saves the union at ``REPORT.npz`` and writes the
one report. Outside torchrun everything here is a no-op: one process, one part, nothing gathered.
"""
from __future__ import annotations

import os
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

import torch

from ..errors import HPMError
from .samples import SampleResults, merge_results

# Ranks finish their shares at different times and wait in the gather; torchrun stops every rank when one
# fails, so a long collective timeout cannot leave a failed job hanging.
COLLECTIVE_TIMEOUT = timedelta(hours=24)

Run = tuple[str, dict[int, SampleResults]]  # (config key, {batch size: per-sample results}) of one part

_created_group = False  # whether this module initialised the process group (and so destroys it)


def under_torchrun() -> bool:
    """True when this process is one of several ranks: torchrun's variables with ``WORLD_SIZE`` > 1, or a
    process group the caller already initialised with more than one rank."""
    if not torch.distributed.is_available():
        return False
    if torch.distributed.is_initialized():
        return torch.distributed.get_world_size() > 1
    return all(v in os.environ for v in ("WORLD_SIZE", "RANK", "LOCAL_RANK")) and int(os.environ["WORLD_SIZE"]) > 1


def rank_device(device: torch.device | str) -> torch.device:
    """The device this rank uses: ``cuda`` becomes ``cuda:LOCAL_RANK``; other devices are kept."""
    device = torch.device(device)
    if device.type != "cuda" or "LOCAL_RANK" not in os.environ:
        return device
    local = int(os.environ["LOCAL_RANK"])
    if device.index is not None and device.index != local:
        raise HPMError(f"--device {device} under torchrun would put several ranks on one GPU; pass --device cuda "
                       "(rank r then uses cuda:LOCAL_RANK)")
    return torch.device("cuda", local)


def init_distributed(device: torch.device | str) -> tuple[int, int]:
    """Join (or, the first time, initialise) the process group; ``(rank, world size)``, ``(0, 1)`` outside torchrun.

    The backend is ``nccl`` for a CUDA ``device`` (already the rank's own, see :func:`rank_device`), else ``gloo``.
    """
    global _created_group
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_available():
        raise HPMError("launched as several ranks, but this torch build has no torch.distributed; run one "
                       "process, or split the work with --shard K/N and join it with --merge")
    if not under_torchrun():
        return 0, 1
    if not torch.distributed.is_initialized():
        device = torch.device(device)
        if device.type == "cuda":
            torch.cuda.set_device(device)  # NCCL's object collectives use the current device
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                             timeout=COLLECTIVE_TIMEOUT)
        _created_group = True
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def shutdown() -> None:
    """Destroy the process group if :func:`init_distributed` created it (a caller's own group is left alone)."""
    global _created_group
    if _created_group and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    _created_group = False


def rank_part(shard: tuple[int, int], rank: int, world: int) -> tuple[int, int]:
    """The batches rank ``rank`` of ``world`` evaluates within shard ``(k, n)``, as a part for ``batch_starts``.

    Shard ``k/n`` holds batches ``i`` with ``i % n == k``; its ``rank``-th share of ``world`` is every
    ``world``-th of those, i.e. ``i % (n * world) == k + n * rank``.
    """
    k, n = shard
    if not 0 <= k < n:
        raise HPMError(f"shard must be K/N with 0 <= K < N; got {k}/{n}")
    return k + n * rank, n * world


def rank_results_path(npz_path: Path | None, rank: int, world: int) -> Path | None:
    """``REPORT.npz`` -> ``REPORT.rank{rank}-of-{world}.npz`` (a rank's resumable outcomes); the report's own
    path in a single process."""
    if npz_path is None or world == 1:
        return npz_path
    return npz_path.with_name(f"{npz_path.stem}.rank{rank}-of-{world}.npz")


def gather_runs(key: str, results: dict[int, SampleResults], world: int) -> list[Run] | None:
    """Every rank's ``(config key, results)`` on rank 0, in rank order; None on the other ranks.

    With ``world == 1`` this process's own run, without any communication.
    """
    if world == 1:
        return [(key, results)]
    payload = (key, {bs: asdict(r) for bs, r in results.items()})  # plain dicts of numpy arrays
    rank = torch.distributed.get_rank()
    gathered: list | None = [None] * world if rank == 0 else None
    torch.distributed.gather_object(payload, gathered, dst=0)
    if rank != 0:
        return None
    return [(k, {bs: SampleResults(**fields) for bs, fields in res.items()}) for k, res in gathered]


def merge_runs(runs: list[Run]) -> Run:
    """The union of runs of one evaluation (ranks, shards); refused when they come from different evaluations."""
    if not runs:
        raise HPMError("no per-sample results to merge")
    keys = {key for key, _ in runs}
    if len(keys) != 1:
        raise HPMError("the results come from different evaluations (model, attacks, subset or batch sizes "
                       "differ: their config keys differ)")
    merged = runs[0][1]
    for _, results in runs[1:]:
        merged = merge_results(merged, results)
    return keys.pop(), merged
