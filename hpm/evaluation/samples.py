"""Per-sample outcomes of an evaluation: what each attack did to each sample, saved after every attack of a batch.

The ``.npz`` written here is the ground truth of a report: it resumes a killed run, merges runs over
different batches (shards, torchrun ranks) and feeds paired tests between models.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..attacks import AttackSpec
from ..errors import HPMError
from .config import AttackConfig


@dataclass
class SampleResults:
    """Per-sample outcomes of one evaluation batch size. ``A`` attacks, ``N`` samples."""

    batch_size: int
    attack_names: list[str]
    indices: np.ndarray  # [N] dataset indices, in evaluation order
    labels: np.ndarray  # [N]
    done: np.ndarray = field(default=None)  # [N] bool: evaluated
    clean_correct: np.ndarray = field(default=None)  # [N] bool
    attacked: np.ndarray = field(default=None)  # [A, N] bool: the attack ran on the sample
    broken: np.ndarray = field(default=None)  # [A, N] bool: the attack made the deployed model miss it
    seconds: np.ndarray = field(default=None)  # [A] wall time spent per attack (also on a batch not yet done)
    attacks_finished: np.ndarray = field(default=None)  # [N] int: attacks of the plan run on the sample's batch

    def __post_init__(self):
        n, a = len(self.indices), len(self.attack_names)
        for name, shape in (("done", (n,)), ("clean_correct", (n,)), ("attacked", (a, n)), ("broken", (a, n))):
            if getattr(self, name) is None:
                setattr(self, name, np.zeros(shape, dtype=bool))
        if self.seconds is None:
            self.seconds = np.zeros(a)
        if self.attacks_finished is None:  # a file written before runs were saved attack by attack
            self.attacks_finished = np.where(self.done, a, 0)
        self.attacks_finished = np.asarray(self.attacks_finished, dtype=np.int64)

    @property
    def robust(self) -> np.ndarray:
        """Per-sample worst case: clean-correct and broken by no attack (undone samples are False)."""
        return self.done & self.clean_correct & ~self.broken.any(0)

    def with_batch_size(self, batch_size: int) -> "SampleResults":
        """A copy labelled with another batch size (for batch-independent models, identical at every size)."""
        return SampleResults(batch_size, list(self.attack_names), self.indices, self.labels, self.done.copy(),
                             self.clean_correct.copy(), self.attacked.copy(), self.broken.copy(), self.seconds.copy(),
                             self.attacks_finished.copy())

    def first_broken_by(self) -> np.ndarray:
        """Index of the first attack (plan order) that broke each sample; -1 if none."""
        hit = self.broken.any(0)
        return np.where(hit, self.broken.argmax(0), -1)


def save_results(path: Path, results: dict[int, SampleResults], config_key: str,
                 fingerprint: str | None = None, scores: Tensor | None = None) -> None:
    """Atomically write all batch sizes' per-sample results to ``path`` (.npz), with the evaluated model's
    :func:`hpm.defence.model_fingerprint` and :func:`hpm.defence.probe_scores` when a fingerprint is given (its
    scores None: two seeded passes of the model differed, which is recorded too)."""
    arrays: dict[str, np.ndarray] = {"config_key": np.array(config_key)}
    if fingerprint is not None:
        arrays["model_fingerprint"] = np.array(fingerprint)
        if scores is None:
            arrays["model_scores_differ"] = np.array(True)
        else:
            arrays["model_scores"] = scores.numpy()
    for bs, r in results.items():
        p = f"bs{bs}_"
        arrays.update({p + "indices": r.indices, p + "labels": r.labels, p + "done": r.done,
                       p + "clean_correct": r.clean_correct, p + "attacked": r.attacked, p + "broken": r.broken,
                       p + "seconds": r.seconds, p + "attack_names": np.array(r.attack_names),
                       p + "attacks_finished": r.attacks_finished})
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


@dataclass(frozen=True)
class StoredRun:
    """What a results file written by :func:`save_results` holds, read at once."""

    config_key: str
    results: dict[int, SampleResults]
    fingerprint: str | None  # the model's :func:`hpm.defence.model_fingerprint`; None: written before they were kept
    records_scores: bool  # whether it records the model's :func:`hpm.defence.probe_scores` (False: written before)
    scores: Tensor | None  # those scores; None also when two seeded passes of the model differed


def read_run(path: Path) -> StoredRun:
    """Read a results file written by :func:`save_results`: its per-sample results and the identity of the model
    they are of."""
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise HPMError(f"{path}: not a per-sample results file ({e})") from None
    if "config_key" not in data:
        raise HPMError(f"{path}: not a per-sample results file (no config_key)")
    results = {}
    for key in data:
        if key.startswith("bs") and key.endswith("_done"):
            bs = int(key[2:-5])
            p = f"bs{bs}_"
            results[bs] = SampleResults(bs, [str(n) for n in data[p + "attack_names"]], data[p + "indices"],
                                        data[p + "labels"], data[p + "done"], data[p + "clean_correct"],
                                        data[p + "attacked"], data[p + "broken"], data[p + "seconds"],
                                        data.get(p + "attacks_finished"))
    fingerprint = str(data["model_fingerprint"]) if "model_fingerprint" in data else None
    scores = torch.from_numpy(data["model_scores"]) if "model_scores" in data else None
    return StoredRun(str(data["config_key"]), results, fingerprint,
                     "model_scores" in data or "model_scores_differ" in data, scores)


def load_results(path: Path) -> tuple[str, dict[int, SampleResults]]:
    """The configuration key and per-sample results of a results file (:func:`read_run`)."""
    run = read_run(path)
    return run.config_key, run.results


def merge_results(a: dict[int, SampleResults], b: dict[int, SampleResults]) -> dict[int, SampleResults]:
    """Union of two runs of the same configuration (e.g. two shards); overlapping samples must agree. Of a sample
    neither run finished, the run further through the plan is kept."""
    if set(a) != set(b):
        raise HPMError(f"runs cover different batch sizes: {sorted(a)} vs {sorted(b)}")
    merged = {}
    for bs in a:
        x, y = a[bs], b[bs]
        if not np.array_equal(x.indices, y.indices) or x.attack_names != y.attack_names:
            raise HPMError(f"batch size {bs}: the runs evaluated different samples or attacks")
        shared = np.minimum(x.attacks_finished, y.attacks_finished)  # attacks both runs finished, per sample
        both = np.arange(len(x.attack_names))[:, None] < shared[None, :]
        clean = (shared > 0) | (x.done & y.done)
        if not (np.array_equal(x.broken[both], y.broken[both])
                and np.array_equal(x.clean_correct[clean], y.clean_correct[clean])):
            raise HPMError(f"batch size {bs}: the runs disagree on samples both evaluated")
        take = y.attacks_finished > x.attacks_finished  # finished samples have run every attack
        merged[bs] = SampleResults(bs, x.attack_names, x.indices, x.labels, x.done | y.done,
                                   np.where(take, y.clean_correct, x.clean_correct),
                                   np.where(take, y.attacked, x.attacked), np.where(take, y.broken, x.broken),
                                   x.seconds + y.seconds, np.maximum(x.attacks_finished, y.attacks_finished))
    return merged


def config_key(model_id: str, attack: AttackConfig, plan: list[AttackSpec], indices: np.ndarray,
               batch_sizes: list[int]) -> str:
    """A digest of everything that determines the per-sample results (for resume and merge).

    A budget is left out when the plan has no attack that uses it (Square's queries, APGD-T's target classes,
    the whole-batch clamp), and so is a setting at the value every run had before it existed (one forward pass per
    APGD step), and so is the choice of default plan (the plan's names say it), so that adding such a setting never
    invalidates stored runs.
    """
    settings = asdict(attack)
    del settings["targeted"]  # the plan says it
    if not any(s.kind == "square" for s in plan):
        del settings["square_queries"]
    if not any(s.loss == "dlr-targeted" for s in plan):
        del settings["n_target_classes"]
    if not any(s.whole_batch for s in plan):
        del settings["batch_kappa"]
    if settings.get("eot_iter") == 1:
        del settings["eot_iter"]
    payload = json.dumps({"model": model_id, "attack": settings, "plan": [s.name for s in plan],
                          "indices": hashlib.sha256(indices.astype(np.int64).tobytes()).hexdigest(),
                          "batch_sizes": sorted(batch_sizes)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]
