"""Cost ratios of the evaluation, measured in one run on this machine and printed.

1. One ensemble-surrogate APGD step (FC oracle + soft hybrid, summed losses, one shared backbone pass)
   vs one FC-oracle APGD step, on the pyautoattack ResNet-18 with an HPM head, timed in alternation
   (FC, ensemble, FC, ensemble, ...) so that drift of the machine's speed cannot bias the ratio. Target: <= 1.10.
2. The HPM head's forward time vs the backbone's forward time (ResNet-18, batch 256). Target: <= 3%.

    python benchmarks/bench_eval.py [--batch 64] [--iters 10] [--repeats 5]
"""
import argparse

import torch

import hpm
from hpm.attacks import BatchFeatures, parse_attacks, run_attack
from timing import interleaved_seconds, median_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64, help="APGD batch size")
    parser.add_argument("--iters", type=int, default=10, help="APGD iterations per timed run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--head-batch", type=int, default=256, help="batch size of the forward-time comparison")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = hpm.wrap("pyautoattack", head="hpm")
    model.head.init_prototypes(torch.randn(100, 512).abs(), torch.arange(100) % 10)
    x = torch.rand(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    batch = BatchFeatures(model, None)

    def apgd(target: str):
        spec, = parse_attacks([f"apgd-ce/{target}"], model)
        return lambda: run_attack(spec, batch, x, y, norm="Linf", eps=8 / 255, n_iter=args.iters, seed=0,
                                  num_classes=10)

    fc, ens, ratio = interleaved_seconds(apgd("fc"), apgd("ensemble"), args.repeats)
    print(f"APGD step, batch {args.batch}: FC oracle {1000 * fc / args.iters:.1f} ms, ensemble (FC + soft) "
          f"{1000 * ens / args.iters:.1f} ms, ratio {ratio:.3f} (median of {args.repeats} interleaved pairs; "
          f"target <= 1.10)")

    xb = torch.rand(args.head_batch, 3, 32, 32)
    with torch.no_grad():
        z = model.forward_features(xb)
        backbone = median_seconds(lambda: model.forward_features(xb), args.repeats)
        head = median_seconds(lambda: model.forward_head(z, mode="hard"), args.repeats * 20)
    print(f"forward, batch {args.head_batch}: backbone {1000 * backbone:.1f} ms, FC + HPM head {1000 * head:.2f} ms, "
          f"head / backbone {100 * head / backbone:.2f}% (target <= 3%)")


if __name__ == "__main__":
    main()
