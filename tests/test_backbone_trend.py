"""HPM − FC across robust backbones: the paired interval, refused mismatches, the figure, the generated section."""
import json
import math
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from hpm.errors import HPMError
from hpm.evaluation.samples import SampleResults, load_results, save_results
from hpm.plots import backbones_figure
from hpm.publish.backbones import (BackboneRow, backbone_row, backbone_rows, finding_lines, ncm_gap,
                                   newcombe_paired_ci, paired_difference, rank_correlation_test)
from hpm.publish.compare import combined_robust, mcnemar_exact
from hpm.publish.readme import BEGIN, END, render

REPO = Path(__file__).resolve().parents[1]
ROBUST = "results/eval/robust/"
Z = 1.959963984540054  # the 97.5% normal quantile
E20 = {"name": "20 ep", "fc": [ROBUST + "r20w32e20-fc-full-eps8.json"],
       "hpm": [ROBUST + "r20w32e20-hpm-full-eps8.json", ROBUST + "r20w32e20-hpm-wholebatch-eps8.json"],
       "diagnosis": "results/diagnosis/r20w32e20-fgsmrs.json"}


def wilson_by_hand(k: int, n: int) -> tuple[float, float]:
    """The Wilson score interval written out (Wilson 1927), independently of scipy."""
    p, z2 = k / n, Z * Z
    centre, half = p + z2 / (2 * n), Z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return (centre - half) / (1 + z2 / n), (centre + half) / (1 + z2 / n)


def newcombe_by_hand(both: int, a_only: int, b_only: int, neither: int) -> tuple[float, float]:
    """Newcombe's method 10 for paired data, spelled out step by step."""
    n = both + a_only + b_only + neither
    p1, p2 = (both + a_only) / n, (both + b_only) / n
    (l1, u1), (l2, u2) = wilson_by_hand(both + a_only, n), wilson_by_hand(both + b_only, n)
    a = both * neither - a_only * b_only
    num = a - n / 2 if a > n / 2 else (0 if a >= 0 else a)
    phi = num / math.sqrt((both + a_only) * (b_only + neither) * (both + b_only) * (a_only + neither))
    d = p1 - p2
    return (d - math.sqrt((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2),
            d + math.sqrt((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))


@pytest.mark.parametrize("table", [(1, 1, 7, 12), (59, 6, 16, 80), (300, 25, 53, 122), (10, 0, 3, 2), (4, 5, 5, 6)])
def test_the_paired_interval_is_newcombes_hybrid_score_interval(table):
    assert newcombe_paired_ci(*table) == pytest.approx(newcombe_by_hand(*table), abs=1e-12)


def test_the_paired_interval_on_cases_worked_by_hand():
    w = Z * Z / (500 + Z * Z)  # every answer the same: p = 1 has Wilson interval [1 - w, 1]
    assert newcombe_paired_ci(500, 0, 0, 0) == pytest.approx([-w, w], abs=1e-12)
    assert newcombe_paired_ci(0, 0, 0, 500) == pytest.approx([-w, w], abs=1e-12)
    lo, hi = newcombe_paired_ci(300, 25, 53, 122)
    assert lo < (25 - 53) / 500 < hi < 0  # contains the estimate; this discordance excludes zero
    assert newcombe_paired_ci(300, 53, 25, 122) == pytest.approx([-hi, -lo], abs=1e-12)  # swapping a and b
    # positive dependence narrows it: the same margins, concordant pairs, give a narrower interval than independent
    assert newcombe_paired_ci(100, 0, 50, 350)[1] - newcombe_paired_ci(100, 0, 50, 350)[0] < \
        newcombe_paired_ci(25, 75, 125, 275)[1] - newcombe_paired_ci(25, 75, 125, 275)[0]
    with pytest.raises(HPMError, match="counts"):
        newcombe_paired_ci(1, -1, 0, 3)


def test_the_paired_difference_counts_the_table_and_tests_like_mcnemar():
    a = {0: True, 1: True, 2: False, 3: False, 4: True}
    b = {0: True, 1: False, 2: True, 3: False, 4: False}
    out = paired_difference(a, b)
    assert out["delta"] == pytest.approx(1 / 5) and out["test"] == mcnemar_exact(a, b)
    assert out["ci"] == pytest.approx(newcombe_paired_ci(1, 2, 1, 1))
    with pytest.raises(HPMError, match="same samples"):
        paired_difference(a, {0: True})


def test_a_backbone_row_is_read_from_the_committed_reports():
    row = backbone_row(REPO, E20)
    hpm = combined_robust([REPO / p for p in E20["hpm"]], 250)
    fc = combined_robust([REPO / p for p in E20["fc"]], 250)
    assert row.n == 500 and row.batch_size == 250 and row.features == 128 and row.order_seed is None
    assert row.robust["delta"] == pytest.approx(sum(hpm.values()) / 500 - sum(fc.values()) / 500)
    assert row.robust["test"] == mcnemar_exact(hpm, fc)
    diagnosis = json.loads((REPO / E20["diagnosis"]).read_text())["models"]
    assert row.ncm_gap == pytest.approx(diagnosis["ncm (clean class means)"]["curve"]["1000"]["accuracy"]
                                        - diagnosis["fc"]["curve"]["1000"]["accuracy"])
    assert "cifar_resnet" in row.architecture and "width 32" in row.architecture


def _copy(tmp_path: Path, report: str, keep: int | None = None, **attack) -> str:
    """A copy of a committed report (and its per-sample results) with attack settings changed, or its per-sample
    results cut to the first ``keep`` images."""
    src = REPO / report
    data = json.loads(src.read_text())
    data["config"]["attack"].update(attack)
    out = tmp_path / src.name
    out.write_text(json.dumps(data))
    shutil.copy(src.with_suffix(".npz"), out.with_suffix(".npz"))
    if keep is not None:
        key, results = load_results(out.with_suffix(".npz"))
        cut = {bs: SampleResults(bs, r.attack_names, r.indices[:keep], r.labels[:keep], r.done[:keep],
                                 r.clean_correct[:keep], r.attacked[:, :keep], r.broken[:, :keep], r.seconds)
               for bs, r in results.items()}
        save_results(out.with_suffix(".npz"), cut, key)
    return str(out)


def test_reports_that_do_not_match_are_refused(tmp_path):
    with pytest.raises(HPMError, match="other images .500 vs 400 images, 400 in common"):
        backbone_row(REPO, {**E20, "hpm": [_copy(tmp_path, E20["hpm"][0], keep=400)]})
    with pytest.raises(HPMError, match="'eps'"):
        backbone_row(REPO, {**E20, "fc": [_copy(tmp_path, E20["fc"][0], eps=4 / 255)]})
    with pytest.raises(HPMError, match="APGD iterations"):
        backbone_row(REPO, {**E20, "fc": [_copy(tmp_path, E20["fc"][0], n_iter=100)]})
    with pytest.raises(HPMError, match="differ in model"):  # a worst case over two different heads
        backbone_row(REPO, {**E20, "hpm": [E20["hpm"][0], ROBUST + "r20w32e20-hpm-clean-full-eps8.json"]})
    with pytest.raises(HPMError, match="not of the FC report"):
        backbone_row(REPO, {**E20, "diagnosis": "results/diagnosis/r20w32-fgsmrs.json"})
    with pytest.raises(HPMError, match="no batch size 16"):
        backbone_row(REPO, {**E20, "batch_size": 16})
    with pytest.raises(HPMError, match="no such diagnosis"):
        ncm_gap(REPO, "results/diagnosis/none.json", "checkpoints/x")


def _row(name: str, fc_robust: float, robust_ci: list[float], clean_ci=(-0.09, -0.02), **kw) -> BackboneRow:
    diff = {"delta": sum(robust_ci) / 2, "ci": list(robust_ci), "test": {"p_value": 0.5, "a_only": 1, "b_only": 2}}
    clean = {**diff, "delta": sum(clean_ci) / 2, "ci": list(clean_ci)}
    fields = dict(name=name, architecture="hpm:cifar_resnet (depth 20, width 32)", features=128, dataset="cifar10",
                  norm="Linf", eps=8 / 255, n=500, batch_size=250, order_seed=None, protocol="full", fc_clean=0.75,
                  fc_robust=fc_robust, hpm_clean=0.7, hpm_robust=fc_robust + diff["delta"], clean=clean,
                  robust=diff, ncm_gap=-0.06, ncm_gap_n=1000, protocols={}, fc_reports=[], hpm_reports=[],
                  diagnosis=None)
    return BackboneRow(**{**fields, **kw})


def test_the_findings_are_generated_from_the_intervals_and_never_claim_a_trend_from_two_points():
    two = [_row("10 ep", 0.358, [-0.062, -0.006]), _row("20 ep", 0.39, [-0.048, 0.004])]
    supported, _, unsupported = finding_lines(two)
    assert "two backbones of one architecture, hpm:cifar_resnet (depth 20, width 32)" in supported
    assert "clean accuracy is below FC's on both backbones (95% interval below zero)" in supported
    assert "below FC's on 10 ep (95% interval below zero); not distinguishable from FC's on 20 ep" in supported
    assert "Two backbones are too few to test a trend" in unsupported and "intervals overlap" in unsupported
    assert "other architectures" in unsupported and "outside 35.8–39.0%" in unsupported
    one = finding_lines([replace(two[0], robust={**two[0].robust, "ci": [0.01, 0.05]})])
    assert "above FC's on the one backbone (95% interval above zero)" in one[0] and "One backbone" in one[2]
    three = two + [_row("PreAct-18", 0.45, [0.01, 0.05], architecture="hpm:preact_resnet18")]
    supported, _, unsupported = finding_lines(three)
    assert "two architectures" in supported and "architectures not listed" in unsupported
    assert "not attacked alike" not in supported
    supported = finding_lines([*two, replace(three[2], protocol="full + APGD-T + whole-batch")])[0]
    assert "not attacked alike (10 ep: full; 20 ep: full; PreAct-18: full + APGD-T + whole-batch)" in supported
    assert "Three backbones are too few to test a trend" in unsupported  # a perfect order has p = 2/3! = 0.33
    assert "permutation p = 0.33" in unsupported and "not all their 95% intervals overlap" in unsupported
    five = [_row(f"b{i}", 0.35 + i / 100, [-0.05 + i / 100, -0.01 + i / 100]) for i in range(5)]
    assert "rank correlation" in finding_lines(five)[2]  # 2/5! = 0.017: five points can show a trend
    assert "a monotone trend at the 5% level" in finding_lines(five)[2]


def test_the_rank_correlation_test_is_exact_for_few_points():
    assert rank_correlation_test([1, 2, 3], [1, 2, 3]) == pytest.approx((1.0, 2 / 6))  # 2 of 6 pairings as extreme
    assert rank_correlation_test([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx((-1.0, 2 / 24))


def test_the_figure_has_one_point_per_backbone_and_panel_with_its_interval():
    rows = [_row("10 ep", 0.358, [-0.062, -0.006]), _row("20 ep", 0.39, [-0.048, 0.004], ncm_gap=None)]
    fig = backbones_figure([asdict(r) for r in rows])
    assert [t.name for t in fig.data] == ["10 ep", "20 ep", "10 ep", "20 ep"]
    assert [t.showlegend for t in fig.data] == [True, True, False, False]
    assert [t.xaxis for t in fig.data] == ["x", "x", "x2", "x2"]
    robust = fig.data[2]
    assert list(robust.x) == [pytest.approx(35.8)] and list(robust.y) == [pytest.approx(-3.4)]
    assert list(robust.error_y.array) == [pytest.approx(2.8)] and list(robust.error_y.arrayminus) == [pytest.approx(2.8)]
    assert "bs 250" in robust.text[0] and "NCM − FC clean -6.0" in robust.text[0]
    assert "not measured" in fig.data[3].text[0]
    assert [s.y0 for s in fig.layout.shapes] == [0, 0]  # the zero line in each panel


def test_the_backbones_section_of_the_results_page_is_what_the_reports_say():
    manifest = json.loads((REPO / "results" / "manifest.json").read_text())
    section = next(s for s in manifest["sections"] if s["kind"] == "backbones")
    assert len(backbone_rows(REPO, section["entries"])) == len(section["entries"])
    document = REPO / "docs" / "results.md"
    block = render(REPO, [section], document)
    body = block[len(BEGIN):-len(END)].strip()
    assert body in document.read_text()  # scripts/results_section.py --check covers the whole page
    assert "](../results/figures/backbones.png)" in body and "McNemar p, robust" in body


def test_readmes_compact_view_reads_the_entries_of_the_full_section_it_names():
    from hpm.publish.readme import with_shared_entries
    full = {"kind": "backbones", "title": "All", "figure": "results/figures/backbones", "entries": [E20]}
    compact = {"kind": "backbones", "compact": True, "title": "Short", "entries_from": "All"}
    manifest = with_shared_entries({"headline": [compact], "sections": [full]})
    assert manifest["headline"][0]["entries"] is full["entries"] and manifest["headline"][0]["figure"] == full["figure"]
    body = render(REPO, manifest["headline"])
    assert "**What these numbers support.**" in body and "**What they do not support.**" in body
    assert "| backbone |" not in body and "Protocols, as the reports record them" not in body  # no table, no list
    with pytest.raises(HPMError, match="no section titled 'Gone'"):
        with_shared_entries({"headline": [{**compact, "entries_from": "Gone"}], "sections": [full]})
