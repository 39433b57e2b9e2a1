"""What an evaluation is expected to take, and how much of it is left, updated while it runs.

The bound (:mod:`.estimate`) runs every attack on every image. The expectation follows what the protocol does:

- only clean-correct images are attacked (the clean accuracy seen so far);
- under the cumulative schedule each attack runs on the images that every earlier attack left standing (each
  attack's break rate seen so far, pooled over batches and batch sizes; an attack that has not run on any image
  yet is assumed to break nothing);
- APGD makes all of its passes on every image it attacks, broken or not (it has no early exit); Square stops
  querying an image once it is broken, so an image it breaks costs :data:`SQUARE_BROKEN_SHARE` of its budget;
- a pass over ``m`` images costs what the bound's timings say for ``m`` images (:class:`.estimate.PassTimes`),
  times a correction measured on the attacks that ran, per kind of attack and batch size (the attacks' own
  bookkeeping, the surrogate heads, a busy machine);
- every evaluation batch size run is a pass of its own over the images; the sanity checks are six more protocol
  runs on a few images (:func:`.checks.check_run_factors`), priced the same way at their eps: the evaluation's
  break rates at eps and above (at twice eps as at eps: more breaks only shorten it), a break rate shrunk towards
  none below eps, and every image falling to the first attack at the huge eps.
"""
from __future__ import annotations

import time
from typing import Callable

from tqdm.auto import tqdm

from .. import progress
from ..attacks import AttackSpec
from .config import AttackConfig
from .estimate import PassTimes, attack_passes, describe_estimate

SQUARE_BROKEN_SHARE = 0.1  # of Square's query budget, spent on average on an image it breaks
MIN_IMAGES = 16  # the first expectation: once this many images went through every attack ...
BIG_BATCH = 64  # ... or the first attack ran on this many (a large first batch)


class Expectation:
    """Expected remaining seconds of an evaluation, updated from the work that finished.

    The protocol reports its work (:meth:`add_batches`, :meth:`resume_batch`, :meth:`attack_done`,
    :meth:`batch_done`, :meth:`add_checks`, :meth:`check_run_done`); :meth:`remaining` predicts the rest. Functions registered with
    :meth:`subscribe` are called after every report; those registered with ``first=True`` once, when the first
    expectation is :attr:`ready`.

    Example:
        >>> timing = time_evaluation(model, x, plan, attack, [16, 256], True, torch.device("cpu"))
        >>> expect = Expectation(plan, attack, timing.times, timing.num_classes)
        >>> expect.subscribe(lambda e: print(e.summary()), first=True)
        >>> evaluate_model(model, x, y, attack=attack, batch_sizes=[16, 256], expect=expect)
    """

    def __init__(self, plan: list[AttackSpec], attack: AttackConfig, times: PassTimes, num_classes: int, *,
                 started: float | None = None, clock: Callable[[], float] = time.perf_counter):
        self.plan, self.attack, self.times, self.num_classes = plan, attack, times, num_classes
        self.clock = clock
        self.started = clock() if started is None else started  # the run's start, on ``clock``
        self.pending: list[tuple[int, int]] = []  # (batch size, rows) of evaluation batches not started, in order
        self.current: tuple[int, int, int, float] | None = None  # (batch size, rows, next attack, images it attacks)
        self.current_resumed = False  # the current batch began in an interrupted run: not all of it timed here
        self.check_runs: list[float | None] = []  # eps factors of the sanity checks' runs left (None: a huge eps)
        self.check_rows = self.check_batch = self.check_queries = 0  # their images, batch size, Square budget
        self.total_rows = self.through_all = self.through_first = 0  # images: to run, past every / the first attack
        self.clean_seen = self.clean_correct = 0
        self.attacked = [0] * len(plan)  # per attack: images it ran on, and broke (pooled)
        self.broken = [0] * len(plan)
        self.measured: dict[tuple[str, int], float] = {}  # (attack kind, batch size) -> seconds the attacks took
        self.modelled: dict[tuple[str, int], float] = {}  # ... and what the uncorrected timings said for them
        self.first: dict | None = None  # :meth:`summary` when the first expectation was ready
        self._listeners: list[Callable[[Expectation], None]] = []
        self._on_first: list[Callable[[Expectation], None]] = []

    # --- what the protocol reports -------------------------------------------------------------------------------
    def add_batches(self, batch_size: int, rows: list[int]) -> None:
        """Evaluation batches of ``rows`` images each still to attack at ``batch_size``, in the order they run."""
        self.pending += [(batch_size, r) for r in rows]
        self.total_rows += sum(rows)
        self._changed()

    def add_checks(self, rows: int, batch_size: int, factors: list[float | None], square_queries: int) -> None:
        """The sanity checks will run the protocol on ``rows`` images in batches of ``batch_size``, once at each
        multiple ``factors`` of the evaluation's eps (None: an eps that breaks every image), with Square capped at
        ``square_queries`` (:func:`.checks.check_run_factors`)."""
        self.check_runs, self.check_rows, self.check_batch = list(factors), rows, batch_size
        self.check_queries = min(self.attack.square_queries, square_queries)
        self._changed()

    def attack_done(self, batch_size: int, rows: int, a: int, attacked: int, broken: int, seconds: float) -> None:
        """Attack ``a`` of the plan ran on ``attacked`` images of a batch of ``rows`` and broke ``broken``."""
        if a == 0:
            self._start(batch_size, rows)
            self.clean_seen, self.clean_correct = self.clean_seen + rows, self.clean_correct + attacked
            self.through_first += rows
        self.attacked[a] += attacked
        self.broken[a] += broken
        spec = self.plan[a]
        if attacked:
            key = (spec.kind, batch_size)
            model = self._model_seconds(spec, rows if spec.whole_batch else attacked, 1 - broken / attacked,
                                        self.attack.square_queries)
            self.measured[key] = self.measured.get(key, 0.0) + seconds
            self.modelled[key] = self.modelled.get(key, 0.0) + model
        survivors = attacked - broken if self.attack.schedule == "cumulative" else attacked  # the next one's
        self.current = (batch_size, rows, a + 1, survivors)
        self._changed()

    def resume_batch(self, batch_size: int, rows: int, correct: int, attacked: list[int], broken: list[int]) -> None:
        """A batch of ``rows`` images, ``correct`` of them clean-correct, resumes after the plan's first
        ``len(attacked)`` attacks, which an interrupted run made: attack ``a`` ran on ``attacked[a]`` images and
        broke ``broken[a]``. Their break rates count; their time, not measured by this run, does not, nor does the
        batch count towards the images that went through every attack here (:attr:`ready`)."""
        if not attacked:
            raise ValueError("resume_batch needs the outcome of at least one finished attack")
        self._start(batch_size, rows)
        self.clean_seen, self.clean_correct = self.clean_seen + rows, self.clean_correct + correct
        for a, (n, hit) in enumerate(zip(attacked, broken)):
            self.attacked[a] += n
            self.broken[a] += hit
        survivors = attacked[-1] - broken[-1] if self.attack.schedule == "cumulative" else correct
        self.current, self.current_resumed = (batch_size, rows, len(attacked), survivors), True
        self._changed()

    def batch_done(self, batch_size: int, rows: int) -> None:
        """Every attack of the plan ran on an evaluation batch of ``rows`` images."""
        if self.current is None:
            self._start(batch_size, rows)
        if not self.current_resumed:
            self.through_all += rows
        self.current, self.current_resumed = None, False
        self._changed()

    def check_run_done(self) -> None:
        """One protocol run of the sanity checks finished."""
        self.check_runs = self.check_runs[1:]
        self._changed()

    def checks_done(self) -> None:
        self.check_runs = []
        self._changed()

    def subscribe(self, fn: Callable[["Expectation"], None], first: bool = False) -> None:
        """Call ``fn(self)`` after every report, or (``first``) once, when the first expectation is ready."""
        (self._on_first if first else self._listeners).append(fn)

    # --- what it predicts ------------------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Enough seen for a first expectation: :data:`MIN_IMAGES` images (or all there are) through every attack,
        or the first attack on :data:`BIG_BATCH` images."""
        return self.total_rows > 0 and (self.through_all >= min(MIN_IMAGES, self.total_rows)
                                        or self.through_first >= BIG_BATCH)

    def elapsed(self) -> float:
        return self.clock() - self.started

    def remaining(self) -> tuple[float, float]:
        """Expected seconds left: ``(attacks of the evaluation, sanity checks)``."""
        attacks = sum(self._batch_seconds(bs, rows, 0, rows * self.clean_rate()) for bs, rows in self.pending)
        if self.current is not None:
            bs, rows, a, m = self.current
            attacks += self._batch_seconds(bs, rows, a, m)
        sizes = [min(self.check_batch, self.check_rows - s) for s in range(0, self.check_rows, self.check_batch or 1)]
        checks = sum(self._batch_seconds(self.check_batch, rows, 0, rows * self.clean_rate(), factor,
                                         self.check_queries)
                     for factor in self.check_runs for rows in sizes)
        return attacks, checks

    def clean_rate(self) -> float:
        """Clean accuracy seen so far (1 before any image: every image attacked)."""
        return self.clean_correct / self.clean_seen if self.clean_seen else 1.0

    def survival(self, a: int, factor: float | None = 1.0) -> float:
        """Expected share of the images attack ``a`` runs on that it leaves standing, at ``factor`` times the
        evaluation's eps (None: the checks' huge eps, where every image falls)."""
        attacked, broken = self.attacked[a], self.broken[a]
        if factor is None:
            return 0.0
        if attacked == 0:
            return 1.0  # not run on anything yet: assume it breaks nothing
        if factor >= 1:
            return 1 - broken / attacked
        return ((attacked - broken + 0.5) / (attacked + 1)) ** factor  # smaller eps: fewer breaks (a heuristic)

    def summary(self) -> dict:
        """The expectation now: seconds elapsed and left, how it was reached, what it rests on."""
        attacks, checks = self.remaining()
        elapsed = self.elapsed()
        if self.through_all >= min(MIN_IMAGES, self.total_rows):
            point = f"after the first {self.through_all} images went through every attack"
        else:
            point = f"after the first attack ({self.plan[0].name}) on the first {self.through_first} images"
        first_break = self.broken[0] / self.attacked[0] if self.plan and self.attacked[0] else None
        return {"elapsed_seconds": round(elapsed, 1), "remaining_seconds": round(attacks + checks, 1),
                "attack_seconds": round(attacks, 1), "check_seconds": round(checks, 1),
                "total_seconds": round(elapsed + attacks + checks, 1), "point": point,
                "clean_rate": self.clean_rate(), "first_attack_break_rate": first_break}

    # --- internals -------------------------------------------------------------------------------------------------
    def _start(self, batch_size: int, rows: int) -> None:
        if (batch_size, rows) in self.pending:
            self.pending.remove((batch_size, rows))

    def _changed(self) -> None:
        if self.first is None and self.ready:
            self.first = self.summary()
            for fn in self._on_first:
                fn(self)
        for fn in self._listeners:
            fn(self)

    def _batch_seconds(self, batch_size: int, rows: int, a0: int, m: float, factor: float | None = 1.0,
                       queries: int | None = None) -> float:
        """Expected seconds of attacks ``a0..`` on a batch of ``rows`` where attack ``a0`` attacks ``m`` images."""
        total = 0.0
        for a in range(a0, len(self.plan)):
            spec, s = self.plan[a], self.survival(a, factor)
            images, runs = (rows, min(m, 1.0)) if spec.whole_batch else (m, 1.0)
            total += runs * self._correction(spec.kind, batch_size) * self._model_seconds(
                spec, images, s, self.attack.square_queries if queries is None else queries)
            if self.attack.schedule == "cumulative":
                m *= s
        return total

    def _model_seconds(self, spec: AttackSpec, images: float, survival: float, queries: int) -> float:
        """Seconds the timed passes give for ``spec`` on ``images`` of which ``survival`` stay standing."""
        if spec.kind == "square":
            return queries * self.times.at("square", images * (survival + (1 - survival) * SQUARE_BROKEN_SHARE))
        return attack_passes(spec, self.attack, self.num_classes) * self.times.at(spec.kind, images)

    def _correction(self, kind: str, batch_size: int) -> float:
        """Measured / modelled seconds of the attacks that ran: of this kind at this batch size, else of this
        kind, else of any; 1 before any."""
        for keys in ([(kind, batch_size)], [k for k in self.modelled if k[0] == kind], list(self.modelled)):
            model = sum(self.modelled.get(k, 0.0) for k in keys)
            if model > 0:
                return sum(self.measured.get(k, 0.0) for k in keys) / model
        return 1.0


def describe_expectation(summary: dict) -> str:
    """The first expectation in words, for the command line."""
    rest = (f"clean {100 * summary['clean_rate']:.0f}%" + (
        f"; the first attack broke {100 * summary['first_attack_break_rate']:.0f}% of the images it attacked"
        if summary["first_attack_break_rate"] is not None else ""))
    total, left = describe_estimate(summary["total_seconds"]), describe_estimate(summary["remaining_seconds"])
    return (f"expected {total} in all, {left} more ({summary['remaining_seconds']:.0f} s: attacks "
            f"{summary['attack_seconds']:.0f} s, sanity checks {summary['check_seconds']:.0f} s), {summary['point']}, "
            f"{summary['elapsed_seconds']:.0f} s in ({rest})")


def expectation_bar(expect: Expectation, *, disable: bool = False, position: int = 0) -> tqdm:
    """A top-level bar over the whole evaluation: seconds elapsed of the expected total, and the time expected left
    (before the first expectation: the seconds elapsed)."""
    waiting = "{desc}: {n:.0f} s elapsed{postfix}"
    bar = progress.progress_bar(total=1.0, desc="hpm eval overall", position=position, leave=True,
                                disable=disable, bar_format=waiting)

    def update(e: Expectation) -> None:
        elapsed, left = e.elapsed(), sum(e.remaining())
        bar.total, bar.n = max(elapsed + left, 1e-9), elapsed
        if e.ready:
            bar.bar_format = "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s{postfix}"
            bar.set_postfix_str(f"expected {describe_estimate(left)} left", refresh=False)
        else:
            bar.set_postfix_str("the expected time follows once the first images went through every attack",
                                refresh=False)
        bar.update(0)  # redraws when its interval has passed (in a log: one line a while)

    if not disable:
        expect.subscribe(update)
        update(expect)
    return bar
