"""Cost ratios of the evaluation, measured in one run on this machine and printed.

1. One ensemble-surrogate APGD step (FC oracle + soft hybrid, summed losses, one shared backbone pass)
   vs one FC-oracle APGD step, on the pyautoattack ResNet-18 with an HPM head, timed in alternation
   (FC, ensemble, FC, ensemble, ...) so that drift of the machine's speed cannot bias the ratio. Target: <= 1.10.
2. The HPM head's forward time vs the backbone's forward time (ResNet-18, batch 256). Target: <= 3%.

    python benchmarks/bench_eval.py [--batch 64] [--iters 10] [--repeats 5] [--device cuda] [--model CHECKPOINT]
        [--json results/benchmarks/eval-cpu.json] [--profile]

``--profile`` prints, for one run of each attack, PyTorch's profiler table of the operators that took the most
time: where an ensemble step's extra time goes (the soft head and its loss beside the shared backbone pass).

``--model`` times a shipped checkpoint's backbone and head instead (e.g. where the ResNet-18's weights are absent).
"""
import argparse
import json
from pathlib import Path

import torch

import hpm
from hpm.attacks import BatchFeatures, parse_attacks, run_attack
from hpm.devices import describe, fp32_judging
from timing import interleaved_seconds, median_seconds, waited


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64, help="APGD batch size")
    parser.add_argument("--iters", type=int, default=10, help="APGD iterations per timed run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--head-batch", type=int, default=256, help="batch size of the forward-time comparison")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="pyautoattack",
                        help="pyautoattack (its ResNet-18 with an HPM head on random prototypes) or a checkpoint")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--profile", action="store_true", help="print the top operators of each attack")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.model == "pyautoattack":
        model = hpm.wrap("pyautoattack", head="hpm")
        model.head.init_prototypes(torch.randn(100, 512).abs(), torch.arange(100) % 10)
    else:
        model = hpm.load(args.model)
    model = model.to(device).eval()
    print(f"{args.model} on {describe(device)}")
    x = torch.rand(args.batch, *model.input_size, device=device)
    y = torch.randint(0, model.num_classes, (args.batch,), device=device)
    batch = BatchFeatures(model, None)

    def apgd(target: str):
        spec, = parse_attacks([f"apgd-ce/{target}"], model)

        def run():
            with fp32_judging():
                run_attack(spec, batch, x, y, norm="Linf", eps=8 / 255, n_iter=args.iters, seed=0,
                           num_classes=model.num_classes)
        return waited(run, device)

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        for target in ("fc", "ensemble"):
            run = apgd(target)
            run()  # warm-up
            with profile(activities=activities) as prof:
                run()
            sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
            print(f"--- APGD on {target}, {args.iters} iterations, batch {args.batch}")
            print(prof.key_averages().table(sort_by=sort, row_limit=12))
    fc, ens, ratio = interleaved_seconds(apgd("fc"), apgd("ensemble"), args.repeats)
    print(f"APGD step, batch {args.batch}: FC oracle {1000 * fc / args.iters:.1f} ms, ensemble (FC + soft) "
          f"{1000 * ens / args.iters:.1f} ms, ratio {ratio:.3f} (median of {args.repeats} interleaved pairs; "
          f"target <= 1.10)")

    xb = torch.rand(args.head_batch, *model.input_size, device=device)

    with torch.no_grad(), fp32_judging():
        z = model.forward_features(xb)
        backbone = median_seconds(waited(lambda: model.forward_features(xb), device), args.repeats)
        head = median_seconds(waited(lambda: model.forward_head(z, mode="hard"), device), args.repeats * 20)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"model": args.model, "hardware": describe(device), "torch": torch.__version__,
                                         "batch": args.batch, "iters": args.iters, "repeats": args.repeats,
                                         "fc_step_s": fc / args.iters, "ensemble_step_s": ens / args.iters,
                                         "ratio": ratio, "head_batch": args.head_batch, "backbone_forward_s": backbone,
                                         "head_forward_s": head, "head_share": head / backbone}, indent=2) + "\n")
    print(f"forward, batch {args.head_batch}: backbone {1000 * backbone:.1f} ms, FC + HPM head {1000 * head:.2f} ms, "
          f"head / backbone {100 * head / backbone:.2f}% (target <= 3%)")


if __name__ == "__main__":
    main()
