"""The expected time of an evaluation, as a specification: from the bound's timings, the clean accuracy and each
attack's break rate, corrected by the attacks' measured time, updated as batches finish; and what hpm eval says."""
import sys

import pytest

from hpm.attacks import AttackSpec
from hpm.evaluation import AttackConfig
from hpm.evaluation.checks import SQUARE_QUERIES, check_run_factors
from hpm.evaluation.estimate import PassTimes, attack_passes, bound_seconds
from hpm.evaluation.expect import MIN_IMAGES, SQUARE_BROKEN_SHARE, Expectation

from conftest import REPO

PLAN = [AttackSpec("apgd-ce/deployed", "apgd", "ce"), AttackSpec("apgd-dlr/deployed", "apgd", "dlr"),
        AttackSpec("apgd-t/deployed", "apgd", "dlr-targeted"), AttackSpec("square", "square")]
CONFIG = AttackConfig(n_iter=9, square_queries=100, n_target_classes=3)  # passes: 10, 10, 30 per image; 100 queries
TIMES = PassTimes(rows=[1, 10], step=[0.02, 0.11], query=[0.01, 0.046])  # a step: 0.01 s + 0.01 s per image


class Clock:
    """A clock the test moves by hand."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def expectation(schedule: str = "cumulative", **kwargs) -> Expectation:
    config = AttackConfig(**{**CONFIG.__dict__, "schedule": schedule})
    return Expectation(PLAN, config, TIMES, num_classes=10, clock=Clock(), **kwargs)


def apgd(a: int, images: float) -> float:
    """What the fake timings say attack ``a`` (an APGD) costs on ``images``."""
    return attack_passes(PLAN[a], CONFIG, 10) * TIMES.at("apgd", images)


def run_batch(e: Expectation, outcomes: list[tuple[int, int]], rows: int = 10, bs: int = 10,
              seconds: list[float] | None = None) -> None:
    """Report one batch: ``outcomes[a] = (attacked, broken)``, each attack taking the time the timings say
    (``seconds``: other times)."""
    for a, (attacked, broken) in enumerate(outcomes):
        model = apgd(a, attacked) if PLAN[a].kind == "apgd" else CONFIG.square_queries * TIMES.at(
            "square", (attacked - broken) + broken * SQUARE_BROKEN_SHARE)
        e.attack_done(bs, rows, a, attacked, broken, seconds[a] if seconds else model)
    e.batch_done(bs, rows)


def test_pass_times_interpolate_between_the_timed_batches_and_scale_below_one_image():
    assert TIMES.at("apgd", 1) == pytest.approx(0.02) and TIMES.at("apgd", 10) == pytest.approx(0.11)
    assert TIMES.at("apgd", 4) == pytest.approx(0.05) and TIMES.at("apgd", 0.5) == pytest.approx(0.01)
    assert TIMES.at("square", 20) == pytest.approx(0.086) and TIMES.at("square", 0) == 0


def test_before_any_attack_the_expectation_is_every_attack_on_every_image_and_never_above_the_bound():
    e = expectation()
    e.add_batches(10, [10, 10, 5])
    attacks, checks = e.remaining()
    bound = bound_seconds(TIMES, 25, PLAN, CONFIG, [10], 10)
    assert checks == 0 and attacks <= bound
    every = sum(apgd(a, r) for a in range(3) for r in (10, 10, 5)) + sum(100 * TIMES.at("square", r)
                                                                        for r in (10, 10, 5))
    assert attacks == pytest.approx(every)  # the bound counts the last batch of 5 as a full one: a little more
    assert not e.ready


def test_the_expectation_follows_the_clean_accuracy_and_each_attacks_break_rate():
    e = expectation()
    e.add_batches(10, [10, 10, 10])
    run_batch(e, [(8, 6), (2, 2), (0, 0), (0, 0)])  # 8 clean; the first attack breaks 6, the second the other 2
    attacks, _ = e.remaining()
    assert attacks == pytest.approx(2 * (apgd(0, 8) + apgd(1, 2)))  # nothing left for APGD-T and Square
    assert attacks < bound_seconds(TIMES, 30, PLAN, CONFIG, [10], 10) / 3


def test_an_attack_not_yet_run_on_any_image_is_assumed_to_break_nothing():
    e = expectation()
    e.add_batches(10, [10, 10])
    run_batch(e, [(10, 5), (5, 0), (5, 0), (5, 1)])  # a robust model: half survive everything
    attacks, _ = e.remaining()
    square = 100 * TIMES.at("square", 5 * (0.8 + 0.2 * SQUARE_BROKEN_SHARE))
    assert attacks == pytest.approx(apgd(0, 10) + apgd(1, 5) + apgd(2, 5) + square)
    e2 = expectation()
    e2.add_batches(10, [10, 10])
    run_batch(e2, [(10, 9), (1, 1), (0, 0), (0, 0)])
    e2.attack_done(10, 10, 0, 10, 5, apgd(0, 10))  # the second batch: 5 survive the first attack
    assert e2.remaining()[0] == pytest.approx(apgd(1, 5))  # APGD-DLR broke all it saw: nothing left after it


def test_under_the_independent_schedule_every_attack_runs_on_every_clean_correct_image():
    e = expectation("independent")
    e.add_batches(10, [10, 10])
    run_batch(e, [(10, 10), (10, 10), (10, 10), (10, 10)])
    square = 100 * TIMES.at("square", 10 * SQUARE_BROKEN_SHARE)
    assert e.remaining()[0] == pytest.approx(sum(apgd(a, 10) for a in range(3)) + square)


def test_measured_attack_times_correct_the_timings_per_kind_and_batch_size():
    e = expectation()
    e.add_batches(10, [10, 10])
    e.add_batches(5, [5, 5])
    run_batch(e, [(10, 0), (10, 0), (10, 0), (10, 10)], seconds=[2 * apgd(0, 10), 2 * apgd(1, 10),
                                                                2 * apgd(2, 10), 1.0])
    attacks, _ = e.remaining()
    square10, square5 = (100 * TIMES.at("square", r * SQUARE_BROKEN_SHARE) for r in (10, 5))
    square_rate = 1.0 / square10  # the measured/modelled Square time
    expected = 2 * sum(apgd(a, 10) for a in range(3)) + square_rate * square10  # batch size 10: its own
    expected += 2 * 2 * sum(apgd(a, 5) for a in range(3)) + 2 * square_rate * square5  # 5: the kind's
    assert attacks == pytest.approx(expected)


def test_the_expectation_is_updated_after_every_batch_and_first_said_once_enough_images_went_through():
    e = expectation()
    firsts, updates = [], []
    e.subscribe(lambda x: firsts.append(x.summary()), first=True)
    e.subscribe(lambda x: updates.append(x.remaining()[0]))
    e.add_batches(4, [4] * 8)
    left = [e.remaining()[0]]
    for k in range(8):
        e.clock.now += 1.0
        run_batch(e, [(4, 3), (1, 0), (1, 0), (1, 0)], rows=4, bs=4)
        left.append(e.remaining()[0])
        assert bool(firsts) == (4 * (k + 1) >= MIN_IMAGES)
    assert len(firsts) == 1 and firsts[0]["point"] == f"after the first {MIN_IMAGES} images went through every attack"
    assert firsts[0]["elapsed_seconds"] == MIN_IMAGES / 4 and firsts[0]["clean_rate"] == 1.0
    assert all(b < a for a, b in zip(left, left[1:])) and left[-1] == 0
    assert len(updates) == 1 + 8 * 5  # after add_batches, every attack and every batch


def test_a_large_first_batch_gives_an_expectation_after_its_first_attack():
    e = expectation()
    e.add_batches(100, [100, 100])
    e.attack_done(100, 100, 0, 90, 90, 1.0)
    assert e.ready and e.first["point"] == "after the first attack (apgd-ce/deployed) on the first 100 images"


def test_a_batch_resumed_after_its_first_attacks_is_expected_to_need_only_the_rest_at_their_break_rates():
    e = expectation()
    e.add_batches(10, [10, 10])
    e.resume_batch(10, 10, correct=8, attacked=[8, 4], broken=[4, 2])  # 8 clean; 2 left after two attacks
    square = 100 * TIMES.at("square", 2)  # Square has broken nothing yet: it is assumed to break nothing
    rest_of_resumed = apgd(2, 2) + square
    fresh = apgd(0, 8) + apgd(1, 4) + apgd(2, 2) + square  # the next batch at the resumed one's rates
    assert e.remaining()[0] == pytest.approx(rest_of_resumed + fresh)
    assert not e.ready  # no attack timed by this run yet
    e.attack_done(10, 10, 2, 2, 0, apgd(2, 2))
    assert e.remaining()[0] == pytest.approx(square + fresh)
    e.attack_done(10, 10, 3, 2, 0, square)
    e.batch_done(10, 10)
    assert e.through_all == 0 and not e.ready  # its images did not go through every attack in this run


def test_sanity_checks_are_priced_at_their_eps_and_counted_down_run_by_run():
    e = expectation()
    e.add_batches(10, [10])
    run_batch(e, [(10, 10), (0, 0), (0, 0), (0, 0)])  # a standard model: everything falls to the first attack
    e.add_checks(rows=10, batch_size=10, factors=check_run_factors(), square_queries=SQUARE_QUERIES)
    _, checks = e.remaining()
    at_eps = apgd(0, 10)
    assert checks > 3 * at_eps  # at 1x, 2x, the huge eps and the repeat: the first attack only; below eps, more
    assert checks < bound_seconds(TIMES, 10, PLAN, CONFIG, [10], 10) * 6
    for _ in range(6):
        before = e.remaining()[1]
        e.check_run_done()
        assert e.remaining()[1] < before
    assert e.remaining()[1] == 0


def test_hpm_eval_prints_the_bound_then_the_expectation_and_the_timing_script_reads_it(tiny_data_root, tmp_path,
                                                                                       capsys):
    from hpm.cli import main
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import time_examples
    finally:
        sys.path.remove(str(REPO / "scripts"))
    assert main(["eval", "pyautoattack", "--data", str(tiny_data_root), "--n", "4", "--iters", "2",
                 "--square-queries", "5", "--target-classes", "2", "--check-n", "4",
                 "--out", str(tmp_path / "r.json")]) == 0
    err = capsys.readouterr().err
    assert "hpm eval: attacks take at most ≈" in err and "hpm eval: expected ≈" in err
    assert err.index("attacks take at most") < err.index("hpm eval: expected") < err.index("sanity checks on 4")
    line = next(x for x in err.splitlines() if "hpm eval: expected" in x)
    said = time_examples.parse_expectation(line)
    assert said["point"] == "after the first 4 images went through every attack" and said["check_seconds"] >= 0
    assert "hpm eval overall" in err and "left" in err  # the live bar
