"""Shared timing helper of the benchmark scripts."""
import statistics
import time

import torch


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_seconds(fn_a, fn_b, repeats: int) -> tuple[float, float, float]:
    """Time ``fn_a`` and ``fn_b`` in alternation (A, B, A, B, ...) after one warm-up call of each, so that a
    machine that speeds up or slows down during the run biases neither. Returns the median time of each and
    the median of the per-round ratios ``b / a``."""
    fn_a(), fn_b()
    a, b = [], []
    for _ in range(repeats):
        for fn, times in ((fn_a, a), (fn_b, b)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(a), statistics.median(b), statistics.median(tb / ta for ta, tb in zip(a, b))


def waited(fn, device):
    """``fn`` followed by waiting for ``device`` (a CUDA device runs asynchronously; a CPU needs no wait), so that
    timing it measures the work and not only its launch."""
    if device.type != "cuda":
        return fn

    def run():
        fn()
        torch.cuda.synchronize(device)
    return run
