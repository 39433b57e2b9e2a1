"""torchrun: two ranks share the batches and rank 0 writes the single-process report (per-sample outcomes bit for
bit, same results and checks); each rank resumes from its own file; --shard + --merge go through the same merge."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hpm.cli import main
from hpm.errors import HPMError
from hpm.evaluation import dist
from hpm.evaluation.samples import load_results, save_results

# eps 1/255: the tiny model keeps some samples robust, so every attack of the plan runs on some samples
ARGS = ["--batch-sizes", "4,8", "--iters", "3", "--square-queries", "10", "--eps", "1/255", "--check-n", "4"]
TIMEOUT = 180  # seconds per subprocess: a hung collective fails the test instead of hanging it


def _tiny_checkpoint(directory: Path) -> torch.nn.Module:
    """A CIFAR ResNet-8 (width 4) with an HPM head whose prototypes are fitted on random images, saved."""
    from hpm.heads import create_head
    from hpm.model import HPMClassifier
    from hpm.sources import BackboneSpec
    from hpm.sources.zoo import build, split

    torch.manual_seed(0)
    options = {"depth": 8, "width": 4, "num_classes": 10}
    features, fc = split(build("cifar_resnet", options))
    model = HPMClassifier(features, fc, create_head("hpm", fc.in_features, fc.out_features),
                          backbone_spec=BackboneSpec("hpm", "cifar_resnet", options), dataset="cifar10").eval()
    with torch.no_grad():
        model.head.init_prototypes(model.forward_features(torch.rand(40, 3, 32, 32)), torch.arange(40) % 10)
    model.save_pretrained(directory)
    return model


def _data_root(root: Path, model: torch.nn.Module) -> Path:
    """24 random test images labelled by the model's own predictions in batches of 8 (so attacks have work)."""
    x = np.random.default_rng(0).integers(0, 256, (24, 3, 32, 32), dtype=np.uint8)
    with torch.no_grad():
        y = torch.cat([model(chunk).argmax(1) for chunk in (torch.from_numpy(x).float() / 255).split(8)])
    (root / "cifar10").mkdir(parents=True)
    np.savez(root / "cifar10" / "test-first1000.npz", x=x, y=y.numpy().astype(np.uint8))
    return root


def _env() -> dict:
    """This process's environment (isolated cache, offline Hub) with one thread per rank."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "HPM_CACHE_DIR": os.environ["HPM_CACHE_DIR"]}


def _hpm_eval(cwd: Path, args: list[str], *, ranks: int = 1) -> str:
    """``hpm eval`` in a fresh process (``ranks`` > 1: under torchrun); its stdout."""
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)]
                if ranks > 1 else [sys.executable])
    done = subprocess.run([*launcher, "-m", "hpm.cli", "eval", *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _arrays(path: Path, timings: bool = False) -> dict[str, np.ndarray]:
    """The per-sample arrays of a results file (the wall times only when ``timings``)."""
    with np.load(path) as f:
        return {k: f[k] for k in f.files if timings or not k.endswith("_seconds")}


def _untimed(value):
    """A report's JSON with every wall-time field removed."""
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if "second" not in k and "time" not in k}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


def _assert_same_arrays(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


def test_torchrun_writes_the_single_process_report_and_resumes_per_rank(tmp_path):
    model = _tiny_checkpoint(tmp_path / "ck")
    data = _data_root(tmp_path / "data", model)
    common = ["ck", "--data", str(data), *ARGS]
    single_out = _hpm_eval(tmp_path, [*common, "--n", "24", "--out", "single.json"])
    # torchrun's own parser refuses --n (an ambiguous abbreviation of --nnodes, --nproc-per-node, ...)
    dist_args = [*common, "--num-samples", "24", "--out", "dist.json"]
    dist_out = _hpm_eval(tmp_path, dist_args, ranks=2)

    single, merged = _arrays(tmp_path / "single.npz"), _arrays(tmp_path / "dist.npz")
    _assert_same_arrays(single, merged)
    assert merged["bs8_done"].all() and merged["bs8_clean_correct"].all() and merged["bs8_broken"].any()
    assert merged["bs8_attacked"].any(1).all()  # every attack, Square last, ran on some samples
    one, two = json.loads((tmp_path / "single.json").read_text()), json.loads((tmp_path / "dist.json").read_text())
    assert _untimed(one["results"]) == _untimed(two["results"]) and one["checks"] == two["checks"]
    assert {c["name"] for c in two["checks"]} >= {"deterministic_forward", "repeatable", "monotone_in_eps"}
    # one report, printed once; the ranks' resumable outcomes beside it
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["dist.json", "single.json"]
    assert sorted(p.name for p in tmp_path.glob("*.md")) == ["dist.md", "single.md"]
    assert dist_out.count("## Sanity checks") == 1 and single_out.count("## Sanity checks") == 1
    rank_files = [tmp_path / f"dist.rank{r}-of-2.npz" for r in range(2)]
    assert load_results(rank_files[0])[1][4].done.sum() == 12  # batches 0, 2, 4 of six at batch size 4

    # a rerun finds every batch done: no rank attacks again (files untouched, wall times not added twice)
    stamps = [p.stat().st_mtime_ns for p in rank_files]
    before = _arrays(tmp_path / "dist.npz", timings=True)
    _hpm_eval(tmp_path, dist_args, ranks=2)
    assert [p.stat().st_mtime_ns for p in rank_files] == stamps
    _assert_same_arrays(before, _arrays(tmp_path / "dist.npz", timings=True))

    # rank 1 killed during its last batch of size 8: only rank 1 resumes, the report is unchanged
    key, partial = load_results(rank_files[1])
    partial[8].done[8:16] = False
    save_results(rank_files[1], partial, key)
    _hpm_eval(tmp_path, dist_args, ranks=2)
    assert rank_files[0].stat().st_mtime_ns == stamps[0] and rank_files[1].stat().st_mtime_ns != stamps[1]
    _assert_same_arrays(single, _arrays(tmp_path / "dist.npz"))
    assert _untimed(json.loads((tmp_path / "dist.json").read_text())["results"]) == _untimed(one["results"])


def test_shards_merge_into_the_single_process_outcomes(tmp_path, capsys):
    model = _tiny_checkpoint(tmp_path / "ck")
    common = ["eval", str(tmp_path / "ck"), "--data", str(_data_root(tmp_path / "data", model)), "--n", "24", *ARGS]
    assert main([*common, "--out", str(tmp_path / "single.json")]) == 0
    for k in range(2):
        assert main([*common, "--no-checks", "--shard", f"{k}/2", "--out", str(tmp_path / f"s{k}.json")]) == 0
    assert main(["eval", "--merge", str(tmp_path / "s0.npz"), str(tmp_path / "s1.npz"),
                 "--out", str(tmp_path / "all.json")]) == 0
    _assert_same_arrays(_arrays(tmp_path / "single.npz"), _arrays(tmp_path / "all.npz"))


def test_ranks_split_a_shard_and_results_files_are_named_per_rank(tmp_path):
    assert dist.rank_part((0, 1), 1, 4) == (1, 4)
    assert dist.rank_part((1, 3), 2, 2) == (7, 6)  # shard 1/3 = batches 1, 4, 7, ...; rank 2 of 2 takes 7, 13, ...
    with pytest.raises(HPMError, match="0 <= K < N"):
        dist.rank_part((2, 2), 0, 2)
    assert dist.rank_results_path(tmp_path / "r.npz", 1, 4) == tmp_path / "r.rank1-of-4.npz"
    assert dist.rank_results_path(tmp_path / "r.npz", 0, 1) == tmp_path / "r.npz"
    assert dist.init_distributed("cpu") == (0, 1) and not torch.distributed.is_initialized()


def test_runs_of_different_evaluations_are_not_merged():
    from hpm.evaluation.samples import SampleResults

    run = {4: SampleResults(4, ["square"], np.arange(4), np.zeros(4, dtype=np.int64))}
    with pytest.raises(HPMError, match="different evaluations"):
        dist.merge_runs([("a", run), ("b", run)])
