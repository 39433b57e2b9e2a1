"""Your own defence under hpm's evaluation: a small CIFAR-10 network whose BatchNorm normalises with the statistics
of the test batch it is given, evaluated as if it were per-sample and as the batch-dependent model it is.

Test-batch BatchNorm (as in test-time adaptation) makes one image's prediction depend on the other images of its
batch. Evaluated as a per-sample model, it is attacked and judged at one batch size only, as if no one could put
other images beside the attacked one. Declared batch-dependent (``hpm.Defence(..., batch_dependent=True)``), it is
evaluated at batch sizes 1, 16 and 256, every adversarial batch is judged on the deployed network, a per-sample
surrogate (the same weights with BatchNorm's running statistics) is attacked beside it, and whole-batch attacks
perturb every image of a batch at once.

    python examples/batch_dependent_defence.py --data ../shared/data                 # trains, then evaluates
    hpm eval examples/batch_dependent_defence.py:load --batch-dependent \\
        --surrogate running-stats=examples/batch_dependent_defence.py:load_surrogate --data ../shared/data --n 100 \\
        --out runs/tbn.json                                                           # the same from the CLI

The network is trained with FGSM-RS at 8/255 (Wong et al.'s fast adversarial training) for ``--epochs`` epochs on
``--n-train`` training images; its weights go to ``--weights`` (safetensors; ``load()`` reads them from there or
from ``$HPM_EXAMPLE_WEIGHTS``), the two reports to ``--out``. Rerunning reuses the weights and resumes the reports.
"""
from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

import hpm
from hpm.data import Subset, load_dataset
from hpm.errors import HPMError
from hpm.evaluation.protocol import resolve_plan

WEIGHTS = Path(os.environ.get("HPM_EXAMPLE_WEIGHTS", "results/examples/batch-dependent-defence.safetensors"))
EPS = 8 / 255
WHOLE_BATCH = ["batch:apgd-ce/deployed", "batch:apgd-dlr/deployed", "batch:apgd-margin/deployed"]


class BatchStatisticsNorm(nn.BatchNorm2d):
    """BatchNorm that normalises with the statistics of the batch it is given, in training and at test time. It
    still keeps running statistics, which the per-sample surrogate (``use_batch_statistics = False``) uses."""

    use_batch_statistics = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not self.use_batch_statistics:
            return super().forward(x)
        return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)


def build() -> nn.Module:
    """A small CIFAR-10 network (four conv blocks, 0.3 M parameters) with test-batch BatchNorm."""
    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), BatchStatisticsNorm(c_out), nn.ReLU(),
                nn.MaxPool2d(2)]

    return nn.Sequential(*block(3, 32), *block(32, 64), *block(64, 128), *block(128, 128), nn.Flatten(),
                         nn.Linear(128 * 2 * 2, 10))


def load(weights: str | Path = WEIGHTS) -> nn.Module:
    """The trained network, as deployed (test-batch BatchNorm): the factory ``hpm eval`` calls."""
    path = Path(weights)
    if not path.is_file():
        raise HPMError(f"{path}: no trained weights; run python examples/batch_dependent_defence.py first (or set "
                       "HPM_EXAMPLE_WEIGHTS)")
    model = build()
    model.load_state_dict(load_file(path))
    return model.eval()


def per_sample_surrogate(model: nn.Module) -> nn.Module:
    """The same weights with BatchNorm's running statistics: a differentiable per-sample stand-in."""
    surrogate = copy.deepcopy(model)
    for m in surrogate.modules():
        if isinstance(m, BatchStatisticsNorm):
            m.use_batch_statistics = False
    return surrogate.eval()


def load_surrogate() -> nn.Module:
    """:func:`per_sample_surrogate` of :func:`load`: the ``--surrogate`` factory."""
    return per_sample_surrogate(load())


def train(data: str | None, n_train: int, epochs: int, batch_size: int = 128, seed: int = 0) -> nn.Module:
    """FGSM-RS at 8/255 (step 10/255, uniform start) with SGD and a one-cycle learning rate, on a class-balanced
    subset of the training set."""
    torch.manual_seed(seed)
    train_set = load_dataset("cifar10", "train", data)
    keep = Subset(n=min(n_train, len(train_set)), mode="uniform", seed=seed).indices(len(train_set))
    x_all, y_all = train_set.tensors(keep)
    model = build()
    steps = epochs * -(-len(y_all) // batch_size)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    for epoch in range(epochs):
        model.train()
        start, order = time.perf_counter(), torch.randperm(len(y_all))
        for idx in order.split(batch_size):
            x = augment(x_all[idx])
            y = y_all[idx]
            delta = ((torch.rand_like(x) * 2 - 1) * EPS).requires_grad_(True)
            grad, = torch.autograd.grad(F.cross_entropy(model((x + delta).clamp(0, 1)), y), delta)
            x_adv = (x + (delta + 10 / 255 * grad.sign()).clamp(-EPS, EPS)).clamp(0, 1).detach()
            loss = F.cross_entropy(model(x_adv), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
        print(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}, {time.perf_counter() - start:.0f} s")
    return model.eval()


def augment(x: torch.Tensor) -> torch.Tensor:
    """Horizontal flips (each image with probability 1/2) and a random crop with 4-pixel padding (one offset for
    the whole batch)."""
    flip = torch.rand(len(x)) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    i, j = torch.randint(0, 9, (2,))
    return padded[:, :, i:i + 32, j:j + 32]


def evaluate(model: nn.Module, args: argparse.Namespace) -> dict[str, hpm.EvalReport]:
    """The two evaluations: declared per-sample (the mistake) and declared batch-dependent (with the per-sample
    surrogate and whole-batch attacks), on the same images and budget."""
    test = load_dataset("cifar10", "test", args.data)
    x, y = test.tensors(torch.arange(min(args.n, len(test))))
    budget = dict(eps=EPS, n_iter=args.iters, square_queries=args.square_queries, n_target_classes=3)
    common = dict(data_info={"dataset": "cifar10", "split": "test", "source": test.source, "n": len(y)},
                  check_n=args.check_n, checks=args.check_n > 0, progress=not args.quiet)
    out = Path(args.out)
    as_if_per_sample = hpm.evaluate_model(model, x, y, attack=hpm.AttackConfig(**budget), batch_sizes=[256],
                                          model_id="test-batch BatchNorm, declared per-sample",
                                          out=out / "tbn-as-per-sample.json", **common)
    defence = hpm.Defence(model, batch_dependent=True, name="test-batch BatchNorm",
                          surrogates={"running-stats": per_sample_surrogate(model)}, input_size=(3, 32, 32))
    plan = [s.name for s in resolve_plan(defence, hpm.AttackConfig(**budget))]
    declared = hpm.evaluate_model(defence, x, y, attack=hpm.AttackConfig(**budget, attacks=plan + WHOLE_BATCH),
                                  model_id="test-batch BatchNorm, declared batch-dependent",
                                  out=out / "tbn-batch-dependent.json", **common)
    return {"as if per-sample": as_if_per_sample, "batch-dependent": declared}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="local data root (default: $HPM_DATA_DIR)")
    parser.add_argument("--n-train", type=int, default=50000, help="training images (default: all 50,000)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--weights", default=str(WEIGHTS), help="where the trained weights go (safetensors)")
    parser.add_argument("--n", type=int, default=500, help="evaluation images (the first N test images)")
    parser.add_argument("--iters", type=int, default=40, help="APGD iterations")
    parser.add_argument("--square-queries", type=int, default=1000)
    parser.add_argument("--check-n", type=int, default=16, help="images of the sanity checks (0: none)")
    parser.add_argument("--out", default="results/examples", help="folder of the two reports")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    weights = Path(args.weights)
    if not weights.is_file():
        weights.parent.mkdir(parents=True, exist_ok=True)
        save_file(train(args.data, args.n_train, args.epochs).state_dict(), weights)
    for label, report in evaluate(load(weights), args).items():
        print(f"{label}: " + ", ".join(f"batch {bs}: clean {100 * r.clean_accuracy:.1f}%, robust "
                                       f"{100 * r.robust_accuracy:.1f}%" for bs, r in report.results.items()))


if __name__ == "__main__":
    try:
        main()
    except HPMError as e:
        raise SystemExit(f"error: {e}")
