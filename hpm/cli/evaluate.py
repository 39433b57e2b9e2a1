"""``hpm eval``: the Mixed Surrogate Attack protocol + Square from the command line."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..errors import HPMError
from .common import (
    add_data_args,
    add_device_arg,
    add_model_arg,
    dataset_of,
    eps_arg,
    positive_int,
    resolve_device,
)


def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated integers expected, e.g. 1,16,64,256; got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1; got {text!r}")
    return sizes


def _surrogate(text: str) -> tuple[str, str]:
    """``--surrogate NAME=MODEL`` -> ``(NAME, MODEL)``."""
    name, eq, model = text.partition("=")
    if not (eq and name.strip() and model.strip()):
        raise argparse.ArgumentTypeError(f"give NAME=MODEL, e.g. frozen-bn=my_model.py:surrogate; got {text!r}")
    return name.strip(), model.strip()


def _shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(t) for t in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shard must look like K/N, e.g. 0/4; got {text!r}") from None
    if not 0 <= k < n:
        raise argparse.ArgumentTypeError(f"shard K/N needs 0 <= K < N; got {text!r}")
    return k, n


def _add_sample_args(e: argparse.ArgumentParser) -> None:
    """Which images are attacked, and in which order."""
    e.add_argument("--split", default="test", choices=["test", "test-jpeg", "train"],
                   help="default test (CIFAR-10: the lossless first-1000 subset when the data root has it)")
    e.add_argument("--n", "--num-samples", dest="n", type=positive_int, default=None,
                   help="number of samples (default: the whole split); under torchrun write --num-samples, since "
                        "torchrun's own parser refuses --n as an ambiguous abbreviation of its options")
    e.add_argument("--subset", default="first", choices=["first", "uniform"],
                   help="first N in order, or a fixed uniform random N (--subset-seed)")
    e.add_argument("--subset-seed", type=int, default=0)
    e.add_argument("--index-file", default=None, help="text or .npy file of dataset indices (overrides --n/--subset)")
    e.add_argument("--order-seed", type=int, default=None,
                   help="evaluate the chosen samples in a random order with this seed (batch-dependent heads: "
                        "which samples share a batch); default: dataset order")


def _add_attack_args(e: argparse.ArgumentParser) -> None:
    """The threat model, the attacks and their budgets."""
    e.add_argument("--norm", default="Linf", choices=["Linf", "L2"])
    e.add_argument("--eps", type=eps_arg, default=8 / 255, help="radius, e.g. 8/255 (default)")
    e.add_argument("--iters", type=positive_int, default=None, help="APGD iterations (default 40; AutoAttack 100)")
    e.add_argument("--restarts", type=positive_int, default=1, help="APGD restarts")
    e.add_argument("--eot-iter", type=positive_int, default=1,
                   help="a randomized model: APGD's gradient averaged over this many forward passes per step "
                        "(expectation over transformation; AutoAttack's rand version: 20)")
    e.add_argument("--square-queries", type=positive_int, default=None,
                   help="Square queries per sample (default 5000)")
    e.add_argument("--target-classes", type=positive_int, default=None,
                   help="APGD-T (apgd-t/TARGET attacks): top wrong classes targeted in turn (default 9, AutoAttack's)")
    e.add_argument("--attacks", default=None,
                   help="comma-separated attacks, e.g. apgd-ce/fc,apgd-dlr/ensemble,apgd-t/bpda,square: APGD with "
                        "loss ce, dlr, t (targeted, APGD-T) or margin (C&W) on a target the model's head offers (fc, soft, "
                        "ensemble, bpda, deployed; no target: on each target of the default plan, e.g. apgd-t "
                        "for the default plan's APGD-T runs); a batch: prefix perturbs the whole evaluation batch "
                        "jointly (batch-dependent heads); default: the model's plan (APGD-CE and -DLR on every target, "
                        "APGD-T on the FC oracle and the deployed model, Square)")
    e.add_argument("--batch-kappa", type=_kappa, default=0.5, metavar="KAPPA",
                   help="batch: attacks: a row's loss stops pulling the joint step once its surrogate margin exceeds "
                        "KAPPA (logit units; default 0.5), and each row is also judged with only its own "
                        "perturbation, the batch's other rows clean; 'none': the summed unclamped loss, judged on the "
                        "perturbed batch only (reports before this option)")
    e.add_argument("--no-targeted", action="store_true",
                   help="default plan without APGD-T: the paper's MSA + Square exactly")
    e.add_argument("--schedule", default="cumulative", choices=["cumulative", "independent"],
                   help="cumulative: each attack on the survivors (fast); independent: each on every clean-correct "
                        "sample (standalone accuracy per attack)")


def register(sub) -> None:
    """Add this module's commands to the ``hpm`` subparsers ``sub``."""
    e = sub.add_parser(
        "eval", help="evaluate robustness with MSA (APGD on surrogates, BPDA) + Square, per-sample worst case",
        description="Attack MODEL (a checkpoint directory, a Hub id, or pyautoattack / robustbench:NAME / timm:NAME "
                    "/ torchvision:NAME for the original FC model, or mixed(standard=MODEL,robust=MODEL,alpha=A[,T=T]) "
                    "for Bai et al.'s mixed classifier of two such models) with APGD-CE and APGD-DLR on the FC "
                    "oracle, the soft-hybrid surrogate, their ensemble and the deployed model (BPDA), APGD-T on the FC "
                    "oracle and the deployed model, then Square on the deployed model; every adversarial batch is "
                    "judged on the deployed model. Writes OUT (.json), OUT.md and the resumable per-sample OUT.npz. "
                    "Under torchrun the ranks share the batches (each resumable from OUT.rankR-of-W.npz) and rank 0 "
                    "writes the one report.")
    add_model_arg(e, required=False)
    e.add_argument("--batch-dependent", action="store_true",
                   help="your model's predictions depend on its batch (BatchNorm on test-batch statistics, test-time "
                        "adaptation, a transductive defence): evaluate it at each batch size (default 1,16,256), "
                        "keep the order, allow batch: attacks; hpm's own models declare theirs")
    e.add_argument("--surrogate", action="append", default=[], type=_surrogate, metavar="NAME=MODEL",
                   help="a differentiable stand-in for your model that APGD attacks, every adversarial batch judged "
                        "on MODEL (any model name: file.py:FACTORY, package.module:FACTORY, a checkpoint, a "
                        "source); may be repeated with different names")
    e.add_argument("--out", default=None, metavar="REPORT.json",
                   help="report path (required unless --estimate-only); .md and .npz are written beside it")
    add_data_args(e)
    _add_sample_args(e)
    _add_attack_args(e)
    e.add_argument("--batch-sizes", type=_batch_sizes, default=None, metavar="B1,B2,...",
                   help="evaluation batch sizes, e.g. 1,16,64,256; default: 1,16,256 for a batch-dependent head "
                        "(HPM: accuracy is a curve over the batch size), 256 otherwise")
    e.add_argument("--seed", type=int, default=0, help="attack seed")
    e.add_argument("--no-checks", action="store_true", help="skip the sanity checks (extra small attack runs)")
    e.add_argument("--quick", action="store_true",
                   help=f"a first look in minutes, not a number to publish: {QUICK_TEXT} where not given")
    e.add_argument("--estimate-only", action="store_true",
                   help="only say how long the attacks would take at most on this device (one attack step and one "
                        "query timed per batch size), print it as JSON on stdout and exit: nothing is attacked or "
                        "written")
    e.add_argument("--check-n", type=positive_int, default=16, help="samples used by the sanity checks")
    e.add_argument("--shard", type=_shard, default=(0, 1), metavar="K/N",
                   help="evaluate every N-th batch from K (independent processes or machines; under torchrun the "
                        "ranks split the shard's batches)")
    e.add_argument("--merge", nargs="+", default=None, metavar="SHARD.npz",
                   help="merge shards' per-sample results instead of attacking (needs one shard's .json beside it); "
                        "the same merge rank 0 does under torchrun")
    add_device_arg(e)
    e.set_defaults(func=_cmd_eval)


DEFAULTS = {"iters": 40, "square_queries": 5000, "target_classes": 9}  # options whose parser default is None
QUICK = {"n": 100, "iters": 20, "square_queries": 500, "target_classes": 3}  # --quick, plus --no-checks
QUICK_TEXT = " ".join(f"--{name.replace('_', '-')} {value}" for name, value in QUICK.items()) + " --no-checks"


def _fill_defaults(args) -> None:
    """The budget options the command line left out: ``--quick``'s values with it, the defaults without."""
    for name, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.no_checks = args.no_checks or args.quick


def _cmd_eval(args) -> int:
    started = time.perf_counter()  # the expectation counts the time from here
    from ..defence import evaluation_copy
    from ..evaluation import AttackConfig, dist, evaluate_model, merge_reports
    from ..evaluation.api import output_paths

    if not args.out and not args.estimate_only:
        raise HPMError("--out REPORT.json is required (unless --estimate-only is given)")
    if args.estimate_only and (args.merge or dist.under_torchrun()):
        raise HPMError("--estimate-only runs in one process and before attacks: drop it for --merge or torchrun")
    if args.merge and dist.under_torchrun():
        raise HPMError("--merge runs in one process; run it without torchrun")
    if args.merge:
        base = Path(args.merge[0]).with_suffix(".json")
        if not base.is_file():
            raise HPMError(f"--merge needs the shard's report {base} beside {args.merge[0]}")
        report = merge_reports(args.merge, args.out, base)
        print(report.to_markdown())
        return _exit_status(report)
    if not args.model:
        raise HPMError("MODEL is required (unless --merge is given)")
    _fill_defaults(args)
    if args.quick:
        print(f"hpm eval --quick: {QUICK_TEXT} (unless given): a first look, not a number to publish",
              file=sys.stderr)
    if args.out:
        output_paths(args.out)  # a bad --out is refused before anything runs
    attack = AttackConfig(norm=args.norm, eps=args.eps, n_iter=args.iters, n_restarts=args.restarts,
                          eot_iter=args.eot_iter, square_queries=args.square_queries,
                          n_target_classes=args.target_classes,
                          schedule=args.schedule, seed=args.seed, targeted=not args.no_targeted,
                          batch_kappa=args.batch_kappa,
                          attacks=[a.strip() for a in args.attacks.split(",")] if args.attacks else None)
    device = resolve_device(args.device)
    model = _declared_model(args)
    x, y, idx, info, sizes = _inputs(args, model, attack)
    model = evaluation_copy(model, device)  # made once: the estimate and the evaluation both run it
    if args.estimate_only:
        print(json.dumps(_print_estimate(model, x, attack, sizes, device, started)[0]))
        return 0
    expect = None if dist.under_torchrun() else _print_estimate(model, x, attack, sizes, device, started)[1]
    report = evaluate_model(model, x, y, attack=attack, batch_sizes=sizes, indices=idx.numpy(),
                            data_info=info, model_id=args.model, out=args.out, checks=not args.no_checks,
                            check_n=args.check_n, shard=args.shard, device=device,
                            command=args.command_line, distributed=dist.under_torchrun(), expect=expect)
    if report is None:  # under torchrun only rank 0 has the report
        return 0
    print(report.to_markdown())
    return _exit_status(report)


def _exit_status(report) -> int:
    """1 when a check says the numbers are wrong (:attr:`EvalReport.wrong_number_checks`; each is said on stderr),
    else 0."""
    wrong = report.wrong_number_checks
    for check in wrong:
        print(f"hpm eval: check {check.name} failed: {check.detail}", file=sys.stderr)
    return 1 if wrong else 0


def _inputs(args, model, attack):
    """``(x, y, indices, data info, batch sizes run)``: the images chosen, checked against the model, with its
    attacks checked against it, all before any estimate."""
    from ..data import Subset
    from ..evaluation import load_eval_data
    from ..evaluation.api import default_batch_sizes
    from ..evaluation.inputs import check_evaluation_inputs
    from ..evaluation.protocol import resolve_plan, sizes_that_differ

    subset = Subset(n=args.n, mode=args.subset, seed=args.subset_seed, index_file=args.index_file,
                    order_seed=args.order_seed)
    x, y, idx, info = load_eval_data(dataset_of(args, model), args.split, args.data, subset)
    check_evaluation_inputs(model, x, y)
    _check_classes(model, x[:2], dataset_of(args, model))
    resolve_plan(model, attack)  # attacks that do not apply to the model are refused before any estimate
    return x, y, idx, info, sizes_that_differ(args.batch_sizes or default_batch_sizes(model), len(y))


def _check_classes(model, x, dataset: str) -> None:
    """Refuse a model that scores another number of classes than the dataset has (a CIFAR-100 model on CIFAR-10
    labels would be evaluated without complaint)."""
    import torch

    from ..data import dataset_classes
    from ..defence import copy_module

    classes = dataset_classes(dataset)
    with torch.no_grad():
        k = copy_module(model).eval()(x.to(next(iter(model.parameters()), x).device)).shape[-1]
    if classes is not None and k != len(classes):
        raise HPMError(f"the model scores {k} classes, {dataset} has {len(classes)}: give --dataset, or a model "
                       f"for {dataset}")


def _declared_model(args):
    """MODEL as the evaluation sees it: loaded and declared (``--batch-dependent``, ``--surrogate``)."""
    from ..defence import declare
    from ..model import load_or_wrap

    names = [name for name, _ in args.surrogate]
    if twice := sorted({n for n in names if names.count(n) > 1}):
        raise HPMError(f"--surrogate: {', '.join(twice)} given twice; give each surrogate its own name")
    where = dict(model_dir=args.model_dir, dataset=args.dataset)
    return declare(load_or_wrap(args.model, **where), batch_dependent=True if args.batch_dependent else None,
                   surrogates={name: load_or_wrap(spec, **where) for name, spec in args.surrogate})


def _kappa(text: str) -> float | None:
    """``--batch-kappa``: a number >= 0, or ``none``."""
    if text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"give a number >= 0 or 'none'; got {text!r}")
    return value


def _print_estimate(model, x, attack, batch_sizes, device, started: float):
    """Say up front how long the attacks take at most on this device (one step and one query timed per batch
    size, and on one image); returns what was said (for ``--estimate-only``) and the :class:`Expectation` that
    says, once the first images went through the attacks, how long the evaluation is expected to take."""
    from ..evaluation.api import default_batch_sizes, model_info
    from ..evaluation.estimate import describe_estimate, time_evaluation
    from ..evaluation.expect import MIN_IMAGES, Expectation
    from ..evaluation.protocol import resolve_plan

    sizes = batch_sizes or default_batch_sizes(model)
    plan = resolve_plan(model, attack)
    timing = time_evaluation(model, x, plan, attack, sizes, model_info(model)["batch_dependent"], device)
    print(f"hpm eval: attacks take at most {describe_estimate(timing.bound)} on {device} ({len(x)} images, every "
          f"attack on every image; timed here: {timing.basis}); only the images still standing are attacked, so "
          f"usually far less (and a --shard or a resumed run does only part of it): the expected time follows once "
          f"{min(MIN_IMAGES, len(x))} images went through the attacks", file=sys.stderr)
    expect = Expectation(plan, attack, timing.times, timing.num_classes, started=started)
    expect.subscribe(_print_expectation, first=True)
    said = {"attack_seconds_at_most": round(timing.bound, 1), "device": str(device), "n": len(x),
            "batch_sizes": sizes, "basis": timing.basis}
    return said, expect


def _print_expectation(expect) -> None:
    """The first expectation, printed once (above the progress bars)."""
    from tqdm.auto import tqdm

    from ..evaluation.expect import describe_expectation

    tqdm.write(f"hpm eval: {describe_expectation(expect.first)}; the bound above assumes every attack on every "
               f"image; the overall bar keeps the expectation up to date", file=sys.stderr)
