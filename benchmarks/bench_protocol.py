"""The evaluation protocol's cost on this machine: printed, and written as JSON with ``--json``.

1. Overhead: wall time of ``hpm.evaluate_model`` (the default plan: MSA + APGD-T + Square; sanity checks off;
   AutoAttack's budget by default: APGD 100 iterations, APGD-T 9 target classes, Square 5000 queries)
   divided by the time its backbone passes alone take. A hook on the backbone counts every pass (its batch size,
   and whether a gradient flows back through it); each is priced at the median time of such a pass (forward, or
   forward + backward) timed alone at that batch size. Everything else (heads, losses, AutoAttack's bookkeeping,
   the results file) is the overhead. Target: <= 1.15.
2. Throughput: images per second of that evaluation vs AutoAttack's standard version (``pyautoattack``: APGD-CE,
   APGD-T, FAB-T, Square 5000) on the same model (its deployed view), images and batch size.
3. On CUDA: peak GPU memory of one default-plan evaluation batch vs the batch size.

    HPM_DATA_DIR=../shared/data python benchmarks/bench_protocol.py [--model CHECKPOINT] [--n 32] [--device cuda]
        [--json results/benchmarks/protocol-cpu.json]
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import hpm  # noqa: E402
from hpm.data import load_dataset  # noqa: E402
from hpm.devices import describe, fp32_judging  # noqa: E402
from hpm.evaluation import AttackConfig, evaluate_model  # noqa: E402
from timing import median_seconds, waited  # noqa: E402

DEFAULT_MODEL = "checkpoints/cifar10-resnet20w32-fgsmrs-20ep-hpm-full"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_backbone_passes(model: hpm.HPMClassifier) -> tuple[list, object]:
    """A list that fills with ``(batch size, gradient flows)`` for every backbone pass, and the hook's handle."""
    passes = []

    def hook(_module, _inputs, output):
        passes.append((output.shape[0], output.requires_grad))

    return passes, model.features.register_forward_hook(hook)


def price_passes(model: hpm.HPMClassifier, passes: list, device: torch.device, repeats: int) -> float:
    """Seconds the counted backbone passes take alone: each batch size seen is timed (forward without gradient,
    or forward + backward to the input only), on a power-of-two grid up to the largest and interpolated in
    between."""
    largest = max(b for b, _ in passes)
    grid = sorted({2 ** k for k in range(int(np.log2(largest)) + 1)} | {largest})
    x = torch.rand(largest, *model.input_size, device=device)

    def forward(b):
        with torch.no_grad():
            model.features(x[:b])

    def forward_backward(b):  # the input gradient only, as APGD takes it
        xb = x[:b].clone().requires_grad_(True)
        torch.autograd.grad(model.features(xb).sum(), xb)

    cost = {}
    for grad, fn in ((False, forward), (True, forward_backward)):
        times = [median_seconds(waited(lambda b=b: fn(b), device), repeats) for b in grid]
        sizes = np.array([b for b, g in passes if g == grad])
        cost[grad] = float(np.interp(sizes, grid, times).sum()) if len(sizes) else 0.0
    return cost[False] + cost[True]


def overhead(model, x, y, attack: AttackConfig, batch: int, device: torch.device, repeats: int) -> dict:
    """Item 1: the evaluation's wall time, its backbone passes and the ratio."""
    passes, handle = count_backbone_passes(model)
    with tempfile.TemporaryDirectory() as folder:
        synchronize(device)
        start = time.perf_counter()
        report = evaluate_model(model, x, y, attack=attack, batch_sizes=[batch], checks=False,
                                progress=False, out=Path(folder) / "report.json")
        synchronize(device)
        wall = time.perf_counter() - start
    handle.remove()
    with fp32_judging():  # priced as the evaluation ran them
        backbone = price_passes(model, passes, device, repeats)
    summary = report.results[str(batch)]
    return {"wall_s": wall, "backbone_s": backbone, "ratio": wall / backbone, "backward_priced": "input gradient",
            "passes_forward": sum(1 for _, g in passes if not g), "passes_backward": sum(1 for _, g in passes if g),
            "images_per_s": len(y) / wall, "clean_accuracy": summary.clean_accuracy,
            "robust_accuracy": summary.robust_accuracy, "plan": [str(s) for s in report.plan]}


def autoattack_standard(model, x, y, batch: int, device: torch.device) -> dict:
    """Item 2: AutoAttack's standard version on the deployed view of ``model``, same images and batch size."""
    from pyautoattack import AutoAttack

    view = model.deployed().eval()
    attack = AutoAttack(view, norm="Linf", eps=8 / 255, version="standard", device=device, seed=0)
    with fp32_judging():
        synchronize(device)
        start = time.perf_counter()
        x_adv, _ = attack.run_standard_evaluation(x.to(device), y.to(device), batch_size=batch)
        synchronize(device)
        wall = time.perf_counter() - start
        robust = []
        with torch.no_grad():
            for i in range(0, len(y), batch):
                robust.append(view(x_adv[i:i + batch].to(device)).argmax(1).cpu() == y[i:i + batch])
    return {"wall_s": wall, "images_per_s": len(y) / wall, "robust_accuracy": float(torch.cat(robust).float().mean())}


def peak_memory(model, x, y, batches: list[int], device: torch.device) -> dict:
    """Item 3: peak GPU memory (MiB) of one default-plan evaluation of the first ``b`` images, per batch size ``b``."""
    peaks = {}
    for b in batches:
        if b > len(y):
            break
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        evaluate_model(model, x[:b], y[:b], attack=AttackConfig(eps=8 / 255, n_iter=5, square_queries=10),
                       batch_sizes=[b], checks=False, progress=False)
        peaks[b] = torch.cuda.max_memory_allocated(device) / 2**20
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint directory or model source")
    parser.add_argument("--data", default=os.environ.get("HPM_DATA_DIR", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--n", type=int, default=32, help="lossless CIFAR-10 test images (the first N)")
    parser.add_argument("--batch", type=int, default=None, help="evaluation batch size (default: N)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--iters", type=int, default=100, help="APGD iterations")
    parser.add_argument("--square-queries", type=int, default=5000)
    parser.add_argument("--target-classes", type=int, default=9, help="APGD-T's top wrong classes")
    parser.add_argument("--repeats", type=int, default=5, help="timings per backbone pass size")
    parser.add_argument("--memory-batches", default="64,128,256,512,1000", help="CUDA only")
    parser.add_argument("--skip-autoattack", action="store_true")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    device = torch.device(args.device)
    model = hpm.load(args.model, device=device).eval()
    x, y = load_dataset("cifar10", "test", args.data).tensors(np.arange(args.n))
    batch = args.batch or args.n
    result = {"model": args.model, "n": args.n, "batch_size": batch, "hardware": describe(device),
              "torch": torch.__version__, "cpu_threads": torch.get_num_threads()}
    attack = AttackConfig(eps=8 / 255, n_iter=args.iters, square_queries=args.square_queries,
                          n_target_classes=args.target_classes)
    result["attack"] = attack.budget()

    def save() -> None:  # after every item, so that a run stopped early keeps what it measured
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2) + "\n")

    result["overhead"] = overhead(model, x, y, attack, batch, device, args.repeats)
    save()
    o = result["overhead"]
    print(f"hpm.evaluate_model, default plan ({attack.budget()}), {args.n} images, batch {batch}, {device}: "
          f"{o['wall_s']:.1f} s "
          f"({o['images_per_s']:.2f} images/s); its {o['passes_forward']} forward and {o['passes_backward']} "
          f"forward+backward backbone passes alone: {o['backbone_s']:.1f} s; ratio {o['ratio']:.3f} (target <= 1.15)")
    if not args.skip_autoattack:
        aa = result["autoattack_standard"] = autoattack_standard(model, x, y, batch, device)
        print(f"AutoAttack standard on the deployed view, same images and batch: {aa['wall_s']:.1f} s "
              f"({aa['images_per_s']:.2f} images/s); hpm's full protocol / AutoAttack time: "
              f"{o['wall_s'] / aa['wall_s']:.2f}; robust accuracy hpm {100 * o['robust_accuracy']:.1f}% vs "
              f"AutoAttack {100 * aa['robust_accuracy']:.1f}%")
        save()
    if device.type == "cuda":
        full = load_dataset("cifar10", "test", args.data)
        xm, ym = full.tensors(np.arange(len(full)))
        peaks = result["peak_memory_mib"] = peak_memory(model, xm, ym, [int(b) for b in args.memory_batches.split(",")],
                                                        device)
        print("peak GPU memory per evaluation batch: " + ", ".join(f"{b}: {m:.0f} MiB" for b, m in peaks.items()))
        save()


if __name__ == "__main__":
    main()
