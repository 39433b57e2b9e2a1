"""Published numbers come from reports: hpm card, the README results section, sweep plots, paper scripts."""
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hpm

from hpm.train.scratch import BackboneConfig, to_hpm
from hpm.cli import main
from hpm.errors import HPMError
from hpm.publish.compare import (combined_robust, comparison_rows, mcnemar_exact, missed_by_apgd_ce, paired_robust,
                                 protocol_gaps)
from hpm.publish.metrics import load_report, protocol_name, report_metrics
from hpm.publish.readme import compact_plan, reports_table
from hpm.units import eps_text
from hpm.sources.zoo import build

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    config = BackboneConfig(depth=8, width=4)
    model = to_hpm(build("cifar_resnet", config.architecture()), config, classes=None, dataset="cifar10")
    return model.save_pretrained(tmp_path / "ck")


def _eval(checkpoint, data, out, *extra):
    assert main(["eval", str(checkpoint), "--data", str(data), "--n", "4", "--iters", "2", "--square-queries", "5",
                 "--no-checks", "--batch-sizes", "4", "--out", str(out), *extra]) == 0
    return load_report(out)


def test_eps_is_written_in_units_of_1_over_255():
    assert [eps_text(e / 255) for e in (0.25, 0.5, 1, 8)] == ["0.25/255", "0.5/255", "1/255", "8/255"]
    assert eps_text(0.007) == "0.007"


def test_card_records_report_numbers_with_protocol_and_commands(checkpoint, tiny_data_root, tmp_path, capsys):
    ce = _eval(checkpoint, tiny_data_root, tmp_path / "ce.json", "--attacks", "apgd-ce/deployed", "--eps", "1/255")
    full = _eval(checkpoint, tiny_data_root, tmp_path / "full.json", "--eps", "8/255", "--no-targeted")
    assert protocol_name(ce) == "APGD-CE" and protocol_name(full) == "full"
    assert ce.command.startswith("hpm eval ") and "--attacks apgd-ce/deployed" in ce.command
    assert main(["card", str(checkpoint), "--eval", str(tmp_path / "ce.json"), str(tmp_path / "full.json")]) == 0
    metrics = json.loads((checkpoint / "config.json").read_text())["metrics"]
    m = metrics["robust_accuracy (Linf 8/255, full, n 4, bs 4)"]
    assert m["value"] == full.results["4"].robust_accuracy and m["ci95"] == full.results["4"].robust_ci95
    assert "apgd-dlr/deployed" in m["protocol"] and m["command"] == full.command
    assert "robust_accuracy (Linf 1/255, APGD-CE, n 4, bs 4)" in metrics
    card = (checkpoint / "README.md").read_text()
    assert card.startswith("---\n") and ce.command in card and full.command in card and "hpm card " in card
    assert f"{100 * full.results['4'].clean_accuracy:.1f}%" in card


def test_card_refuses_a_file_that_is_not_a_report(checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": 1}')
    assert main(["card", str(checkpoint), "--eval", str(bad)]) == 2
    assert "not an hpm evaluation report" in capsys.readouterr().err
    assert "robust" not in (checkpoint / "config.json").read_text()  # nothing half-written


def test_readme_results_section_is_generated_from_the_reports():
    result = subprocess.run([sys.executable, "scripts/results_section.py", "--check"], cwd=REPO, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr


def test_a_shuffled_evaluation_order_is_recorded_and_named_wherever_its_numbers_appear(checkpoint, tiny_data_root,
                                                                                       tmp_path):
    given = _eval(checkpoint, tiny_data_root, tmp_path / "given.json", "--attacks", "apgd-ce/deployed")
    shuffled = _eval(checkpoint, tiny_data_root, tmp_path / "shuffled.json", "--attacks", "apgd-ce/deployed",
                     "--order-seed", "1")
    assert shuffled.config.data["subset"]["order_seed"] == 1 and "--order-seed 1" in shuffled.command
    assert any(name.endswith("bs 4, order seed 1)") for name in report_metrics(shuffled))
    assert not any("order" in name for name in report_metrics(given))
    table = reports_table(tmp_path, [{"label": "a", "report": "given.json"}, {"label": "b", "report": "shuffled.json"}])
    assert "| 4 | dataset |" in table[2] and "| 4 | shuffled (seed 1) |" in table[3]


def test_a_plan_is_written_compactly_in_tables_without_losing_an_attack():
    assert compact_plan(["apgd-ce/fc", "apgd-dlr/fc", "apgd-ce/bpda", "apgd-dlr/bpda", "apgd-t/fc", "square"]) == \
        "apgd-ce, apgd-dlr on fc, bpda; apgd-t on fc; square"
    assert compact_plan(["apgd-t/fc", "batch:apgd-ce/ensemble"]) == "apgd-t on fc; batch:apgd-ce on ensemble"


def test_sweep_plot_reads_reports(checkpoint, tiny_data_root, tmp_path):
    for eps in ("1", "2"):
        _eval(checkpoint, tiny_data_root, tmp_path / f"tiny-fc-eps{eps}-apgdce.json", "--eps", f"{eps}/255",
              "--attacks", "apgd-ce/deployed")
    result = subprocess.run([sys.executable, str(REPO / "scripts/plot_sweep.py"), str(tmp_path / "tiny-*.json"),
                             "--out", str(tmp_path / "fig"), "--no-png"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    html = (tmp_path / "fig.html").read_text()
    assert "fc, APGD-CE" in html


def test_protocol_gaps_pair_apgd_ce_alone_with_the_full_protocol(checkpoint, tiny_data_root, tmp_path):
    ce = _eval(checkpoint, tiny_data_root, tmp_path / "ce.json", "--attacks", "apgd-ce/deployed", "--eps", "1/255")
    full = _eval(checkpoint, tiny_data_root, tmp_path / "full.json", "--eps", "1/255")
    other_eps = _eval(checkpoint, tiny_data_root, tmp_path / "full2.json", "--eps", "2/255")
    [gap] = protocol_gaps(comparison_rows([("fc", ce), ("fc", full), ("fc", other_eps)]))
    r_ce, r_full = ce.results["4"], full.results["4"]
    assert (gap["apgd_ce"], gap["full"]) == (r_ce.robust_accuracy, r_full.robust_accuracy)
    assert gap["gap"] == r_ce.robust_accuracy - r_full.robust_accuracy and gap["eps"] == 1 / 255
    assert gap["breaks"] == {a.name: a.first_broken for a in r_full.per_attack if a.first_broken}
    assert sum(gap["breaks"].values()) == round(4 * (r_full.clean_accuracy - r_full.robust_accuracy))
    missed = missed_by_apgd_ce(tmp_path / "ce.json", tmp_path / "full.json", 4)
    survived_ce, survived_full = paired_robust(tmp_path / "ce.json", 4), paired_robust(tmp_path / "full.json", 4)
    n_missed = sum(survived_ce[i] and not survived_full[i] for i in survived_ce)
    assert set(missed) <= {p.name for p in full.plan} and bool(missed) == (n_missed > 0)
    assert sum(missed.values()) >= n_missed  # a sample broken by several attacks counts for each


def test_mcnemar_counts_only_discordant_samples():
    a = {0: True, 1: True, 2: False, 3: True, 4: False}
    b = {0: True, 1: False, 2: False, 3: False, 4: False}
    result = mcnemar_exact(a, b)
    assert (result["a_only"], result["b_only"]) == (2, 0) and result["p_value"] == pytest.approx(0.5)
    assert mcnemar_exact(a, a)["p_value"] == 1.0
    strong = mcnemar_exact({i: True for i in range(20)}, {i: False for i in range(20)})
    assert strong["p_value"] == pytest.approx(2 * 0.5 ** 20)
    with pytest.raises(HPMError, match="same samples"):
        mcnemar_exact(a, {0: True})


def test_paired_robust_reads_the_per_sample_results_beside_a_report(checkpoint, tiny_data_root, tmp_path):
    report = _eval(checkpoint, tiny_data_root, tmp_path / "r.json", "--eps", "1/255")
    robust = paired_robust(tmp_path / "r.json", 4)
    assert sorted(robust) == [0, 1, 2, 3] and sum(robust.values()) == round(4 * report.results["4"].robust_accuracy)
    with pytest.raises(HPMError, match="batch size 8"):
        paired_robust(tmp_path / "r.json", 8)


def test_ce_saturation_script_writes_counts_per_model(checkpoint, tiny_data_root, tmp_path):
    out = tmp_path / "saturation.json"
    result = subprocess.run([sys.executable, str(REPO / "scripts/ce_saturation.py"), f"tiny={checkpoint}", "--data",
                             str(tiny_data_root), "--n", "4", "--out", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    tiny = data["models"]["tiny"]
    assert data["data"]["n"] == tiny["n"] == 4 and 0 <= tiny["zero_loss"] <= tiny["clean_correct"] <= 4
    assert data["command"].startswith("python scripts/ce_saturation.py tiny=")
    bad = subprocess.run([sys.executable, str(REPO / "scripts/ce_saturation.py"), "tiny", "--out", str(out)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "NAME=MODEL" in bad.stderr


@pytest.mark.slow
def test_paper_tables_script_runs_on_a_random_init_zoo_checkpoint(tiny_data_root, tmp_path):
    """The full-scale Table 1 command on a locally written random-init WRN-28-10 (Cui2023Decoupled's
    architecture), two images, a single fine-tuning step: every stage runs and writes its files."""
    from hpm._compat import import_robustbench_utils

    import_robustbench_utils()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    name = "Cui2023Decoupled_WRN-28-10"
    torch.manual_seed(0)
    arch = model_dicts[BenchmarkDataset.cifar_10][ThreatModel.Linf][name]["model"]()
    weights = tmp_path / "models" / "cifar10" / "Linf" / f"{name}.pt"
    weights.parent.mkdir(parents=True)
    torch.save(arch.state_dict(), weights)
    env = {**os.environ, "DEVICE": "cpu", "MODEL_DIR": str(tmp_path / "models"), "DATA": str(tiny_data_root),
           "RUN": str(tmp_path / "run"), "OUT": str(tmp_path / "out"), "N": "2", "N_TRAIN": "30", "BATCH": "2",
           "MAX_STEPS": "1", "ITERS": "2", "SQUARE": "5", "BS": "2", "MODELS_cifar10": name}
    result = subprocess.run(["bash", str(REPO / "scripts/paper_tables.sh"), "cifar10"], env=env, cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    for head in ("fc", "hpm"):
        assert load_report(tmp_path / "out" / f"cifar10-{name}-{head}.json").results["2"].n == 2
    metrics = json.loads((tmp_path / "run" / f"cifar10-{name}-hpm" / "config.json").read_text())["metrics"]
    assert "robust_accuracy (Linf 8/255, full, n 2, bs 2)" in metrics


def test_several_reports_of_one_model_combine_per_sample_into_their_worst_case(checkpoint, tiny_data_root, tmp_path):
    _eval(checkpoint, tiny_data_root, tmp_path / "ce.json", "--eps", "2/255", "--attacks", "apgd-ce/deployed")
    _eval(checkpoint, tiny_data_root, tmp_path / "t.json", "--eps", "2/255", "--attacks", "apgd-t/deployed",
          "--target-classes", "2")
    ce, t = paired_robust(tmp_path / "ce.json", 4), paired_robust(tmp_path / "t.json", 4)
    assert combined_robust([tmp_path / "ce.json", tmp_path / "t.json"], 4) == {i: ce[i] and t[i] for i in ce}
    _eval(checkpoint, tiny_data_root, tmp_path / "other.json", "--subset", "uniform")  # 4 other images
    with pytest.raises(HPMError, match="different samples"):
        combined_robust([tmp_path / "ce.json", tmp_path / "other.json"], 4)


def test_a_sweeps_extra_apgd_t_report_joins_its_full_report_per_sample_in_tables_and_cards(checkpoint,
                                                                                          tiny_data_root, tmp_path):
    from hpm.publish.sweeps import sweep_rows
    ce, full = tmp_path / "tiny-hpm-eps2-apgdce.json", tmp_path / "tiny-hpm-eps2-full.json"
    extra = tmp_path / "tiny-hpm-eps2-targeted.json"
    _eval(checkpoint, tiny_data_root, ce, "--eps", "2/255", "--attacks", "apgd-ce/deployed")
    _eval(checkpoint, tiny_data_root, full, "--eps", "2/255", "--no-targeted")
    assert [r["protocol"] for r in sweep_rows({"hpm": [ce, full]})[1]] == ["APGD-CE", "full"]  # nothing to join yet
    _eval(checkpoint, tiny_data_root, extra, "--eps", "2/255", "--attacks", "apgd-t", "--target-classes", "2")
    _, rows = sweep_rows({"hpm": [ce, full, extra]})
    assert [r["protocol"] for r in rows] == ["APGD-CE", "full", "full + APGD-T"]  # the extra report: no own row
    worst = combined_robust([full, extra], 4)
    assert rows[2]["robust"] == sum(worst.values()) / 4 <= rows[1]["robust"]
    [gap] = protocol_gaps(rows)
    assert gap["full_path"] == full and gap["full"] == rows[1]["robust"]  # which attack broke what: one report's
    assert main(["card", str(checkpoint), "--eval", str(full), "--worst-case", str(full), str(extra)]) == 0
    metrics = json.loads((checkpoint / "config.json").read_text())["metrics"]
    joined = metrics["robust_accuracy (Linf 2/255, full + APGD-T (worst case of 2 reports), n 4, bs 4)"]
    assert joined["value"] == rows[2]["robust"] and joined["protocol"].startswith("per-sample worst case of ")
    assert "APGD-T towards the 2 top wrong classes" in joined["protocol"]
    card = (checkpoint / "README.md").read_text()
    assert load_report(extra).command in card and load_report(full).command in card  # both, to reproduce it


def test_reports_of_different_radii_or_a_single_report_have_no_per_sample_worst_case(checkpoint, tiny_data_root,
                                                                                     tmp_path, capsys):
    _eval(checkpoint, tiny_data_root, tmp_path / "eps1.json", "--eps", "1/255")
    _eval(checkpoint, tiny_data_root, tmp_path / "eps2.json", "--eps", "2/255", "--attacks", "apgd-t")
    before = (checkpoint / "config.json").read_text()
    eps1, eps2 = str(tmp_path / "eps1.json"), str(tmp_path / "eps2.json")
    assert main(["card", str(checkpoint), "--worst-case", eps1, eps2]) == 2
    assert "differ in eps" in capsys.readouterr().err
    assert main(["card", str(checkpoint), "--worst-case", eps1]) == 2
    assert "needs two or more reports" in capsys.readouterr().err
    assert (checkpoint / "config.json").read_text() == before  # nothing recorded


def _time_examples_script():
    """``scripts/time_examples.py`` as a module."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import time_examples
    finally:
        sys.path.remove(str(REPO / "scripts"))
    return time_examples


def test_readme_time_per_example_was_measured_on_the_examples_readme_gives_now():
    script = _time_examples_script()
    timed = json.loads((REPO / "results/timing/examples-cpu.json").read_text())
    assert [e["command"] for e in timed["examples"]] == [shlex.join(script.with_options(argv, out=None))
                                                         for argv in script.readme_examples(REPO / "README.md")]


def test_readme_timed_examples_are_commands_hpm_eval_accepts():
    script = _time_examples_script()
    readme_examples, with_options = script.readme_examples, script.with_options
    from hpm.cli import build_parser
    examples = readme_examples(REPO / "README.md")
    assert len(examples) >= 2 and any("--quick" in e for e in examples)
    for argv in examples:
        args = build_parser().parse_args(with_options(argv, out="x.json", device="cpu")[1:])
        assert args.func.__module__ == "hpm.cli.evaluate"
    assert with_options(["hpm", "eval", "m", "--out", "a", "--n", "3"], out=None, data="d") == \
        ["hpm", "eval", "m", "--n", "3", "--data", "d"]
    assert with_options(["hpm", "eval", "m", "--out=a", "--data", "x"], out="b") == \
        ["hpm", "eval", "m", "--data", "x", "--out", "b"]


def test_readme_time_per_example_shows_each_device_measured_and_says_which_is_not(tmp_path):
    from hpm.publish.readme import timing_lines
    expected = {"seconds": 60.0, "printed_at_seconds": 12.0, "remaining_seconds": 48, "point": "after ..."}
    timing = {"command": "python scripts/time_examples.py", "device": "cpu", "created": "2026-01-02T03:04:05+00:00",
              "machine": {"processor": "Some CPU", "cores": 2, "torch_threads": 2, "torch": "2.x"},
              "conditions": "a training job at nice 10",
              "examples": [{"command": "hpm eval m --quick", "estimate": {"attack_seconds_at_most": 1800.0},
                            "run": {"wall_seconds": 76.0, "attack_seconds": 67.0, "expected": expected}},
                           {"command": "hpm eval m --n 200", "estimate": {"attack_seconds_at_most": 18000.0}}],
              "robust_check": {"command": "hpm eval robust --n 100", "estimate": {"attack_seconds_at_most": 9000.0},
                               "run": {"wall_seconds": 600.0, "attack_seconds": 500.0, "expected": expected}},
              "quickstart": {"command": "python examples/quickstart.py", "wall_seconds": 700.0}}
    (tmp_path / "cpu.json").write_text(json.dumps(timing))
    old = {**timing, "examples": [{"command": "hpm eval m --quick", "estimate": {"attack_seconds_at_most": 900.0},
                                   "run": {"wall_seconds": 30.0, "attack_seconds": 20.0}}]}  # before expectations
    del old["robust_check"], old["conditions"], old["quickstart"]
    (tmp_path / "cuda.json").write_text(json.dumps(old))
    table = "\n".join(timing_lines(tmp_path, {"files": {"CPU": "cpu.json", "GPU": "cuda.json"}}))
    assert ("| `hpm eval m --quick` | ≈ 30 min | ≈ 60 s (said at 12 s) | ≈ 76 s (attacks ≈ 67 s), 1.27× expected "
            "| ≈ 15 min | — | ≈ 30 s (attacks ≈ 20 s) |") in table
    assert ("| `hpm eval m --n 200` | ≈ 5.0 h | not run | not run | not measured | not measured | not measured |"
            in table)
    assert ("| `hpm eval robust --n 100` (robust check, not a README example) | ≈ 2.5 h | ≈ 60 s (said at 12 s) | "
            "≈ 10 min (attacks ≈ 8 min), 10.00× expected | not measured | not measured | not measured |") in table
    quickstart = ("| `python examples/quickstart.py` (a first run: empty cache) | – | – | ≈ 12 min | – | – "
                  "| not measured |")
    assert quickstart in table
    assert "- CPU: Some CPU, 2 cores" in table and "Meanwhile: a training job at nice 10" in table
    (tmp_path / "cuda.json").unlink()
    table = "\n".join(timing_lines(tmp_path, {"files": {"CPU": "cpu.json", "GPU": "cuda.json"}}))
    assert "- GPU: not measured (no results file `cuda.json`)." in table


def test_every_timed_example_and_the_robust_check_finished_within_3x_of_what_it_first_expected():
    timed = json.loads((REPO / "results/timing/examples-cpu.json").read_text())
    assert "robust_check" in timed, ("results/timing/examples-cpu.json predates expected times: regenerate it with "
                                     "python scripts/time_examples.py --data ../shared/data --quickstart")
    runs = [e["run"] for e in [*timed["examples"], timed["robust_check"]]]
    assert timed["robust_check"]["command"] == _time_examples_script().ROBUST_CHECK
    for run in runs:
        ratio = run["wall_seconds"] / run["expected"]["seconds"]
        assert 1 / 3 <= ratio <= 3 and run["measured_over_expected"] == pytest.approx(ratio, abs=0.01)
        # said before most of the run: after the first 16 images went through every attack, or on a first batch of
        # 64 or more (one batch of 200 here), after the first attack went through it, past half of that run
        assert run["expected"]["printed_at_seconds"] < 0.75 * run["wall_seconds"] and run["expected"]["point"]


def test_readme_benchmark_table_reads_what_the_benchmarks_write_and_says_what_is_not_measured(tmp_path):
    """bench_protocol's own measurement of a tiny model feeds the table: a schema change breaks this test."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import bench_protocol
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    from hpm import AttackConfig
    from hpm.publish.benchmarks import benchmark_lines
    from test_evaluate import tiny_hpm

    model, x, y = tiny_hpm(n=4)
    attack = AttackConfig(n_iter=2, square_queries=5, n_target_classes=1)
    measured = bench_protocol.overhead(model, x, y, attack, 4, torch.device("cpu"), repeats=1)
    assert measured["passes_forward"] >= 1 and measured["passes_backward"] >= 2 and measured["ratio"] > 0
    protocol = {"model": "checkpoints/tiny", "n": 4, "batch_size": 4, "hardware": {"device": "cpu"},
                "torch": "2.x", "cpu_threads": 2, "attack": attack.budget(), "overhead": measured}
    (tmp_path / "protocol.json").write_text(json.dumps(protocol))
    (tmp_path / "tests.txt").write_text("6 passed, 1 warning in 13.51s\n")
    lines = benchmark_lines(tmp_path, {"files": {"CPU": {"protocol": "protocol.json"},
                                                 "GPU": {"protocol": "missing.json", "tests": "tests.txt"}}})
    table = "\n".join(lines)
    row = next(line for line in lines if line.startswith("| `hpm.evaluate_model` wall time"))
    assert f"**{measured['ratio']:.2f}** (tiny, 4 images, batch 4, APGD 2 iterations" in row
    assert row.endswith("| not measured |")
    assert "| gpu-marked tests (`pytest -m gpu`) | pass | not measured | 6 passed in 13.5 s |" in table
    assert "- CPU: CPU, 2 CPU threads, torch 2.x; files: `protocol.json`." in table


def test_defences_are_compared_on_the_same_images_and_budget_against_the_first_row(checkpoint, tiny_data_root,
                                                                                  tmp_path):
    from hpm.plots import defences_figure
    from hpm.publish.defences import defence_rows, defences_table

    for name, extra in (("fc", ()), ("other", ("--seed", "1")), ("more", ("--iters", "3")),
                        ("others", ("--subset", "uniform"))):
        _eval(checkpoint, tiny_data_root, tmp_path / f"{name}.json", "--eps", "8/255", "--batch-sizes", "4", *extra)
    entries = [{"label": "FC", "reports": ["fc.json"]},
               {"label": "mixed, α = 0.5", "group": "mixed", "point": "α = 0.5", "reports": ["other.json"]},
               {"label": "DPNP", "missing": "not trained yet"}]
    rows = defence_rows(tmp_path, entries, batch_size=4)
    assert [r.label for r in rows] == ["FC", "mixed, α = 0.5"] and rows[1].group == "mixed"
    fc = paired_robust(tmp_path / "fc.json", 4)
    assert rows[0].robust == sum(fc.values()) / 4 and rows[0].robust_test["p_value"] == 1.0  # itself
    assert rows[1].robust_test == mcnemar_exact(paired_robust(tmp_path / "other.json", 4), fc)
    lines = defences_table(tmp_path, {"entries": entries, "figure": "figures/defences"})
    assert lines[2].startswith("| FC | 4 | 4 |") and "| DPNP | – | – | not measured |" in "\n".join(lines)
    assert "- **DPNP**: not trained yet" in lines
    with pytest.raises(HPMError, match="APGD iterations"):  # another budget is another protocol
        defence_rows(tmp_path, [entries[0], {"label": "x", "reports": ["more.json"]}], batch_size=4)
    with pytest.raises(HPMError, match="other images"):
        defence_rows(tmp_path, [entries[0], {"label": "x", "reports": ["others.json"]}], batch_size=4)
    _eval(checkpoint, tiny_data_root, tmp_path / "eps4.json", "--eps", "4/255", "--batch-sizes", "4")
    with pytest.raises(HPMError, match="x: .*differ in eps"):  # a row's extra report joins per sample: same threat
        defence_rows(tmp_path, [entries[0], {"label": "x", "reports": ["fc.json", "eps4.json"]}], batch_size=4)
    from dataclasses import asdict
    figure = defences_figure([asdict(r) for r in rows])
    assert [t.name for t in figure.data] == ["FC", "mixed"] and list(figure.data[1].text) == ["α = 0.5"]
    lone = {"group": "NCM (`checkpoints/ncm`)", "point": "", "clean": 0.7, "clean_ci": (0.6, 0.8), "robust": 0.3,
            "robust_ci": (0.2, 0.4)}
    trace, = defences_figure([lone]).data  # the legend names a lone point, without the checkpoint it cites
    assert trace.name == "NCM" and trace.mode == "markers"


def test_an_extra_report_at_one_batch_size_joins_only_that_batch_sizes_row(checkpoint, tiny_data_root, tmp_path):
    from hpm.publish.compare import worst_case_rows
    from hpm.publish.readme import comparison_lines, comparison_table
    fc_model = hpm.load(checkpoint)
    head = hpm.create_head("hpm", fc_model.fc.in_features, fc_model.fc.out_features)
    head.init_prototypes(torch.randn(20, fc_model.fc.in_features), torch.arange(20) % 10)  # fitted, if not well
    batch_dependent = hpm.HPMClassifier(fc_model.features, fc_model.fc, head, backbone_spec=fc_model.backbone_spec,
                                        dataset="cifar10").eval().save_pretrained(tmp_path / "hpm")
    _eval(checkpoint, tiny_data_root, tmp_path / "fc.json", "--eps", "2/255", "--attacks", "apgd-ce/deployed")
    _eval(batch_dependent, tiny_data_root, tmp_path / "plan.json", "--eps", "2/255", "--attacks", "apgd-ce/deployed",
          "--batch-sizes", "1,4")
    _eval(batch_dependent, tiny_data_root, tmp_path / "extra.json", "--eps", "2/255", "--attacks", "apgd-t/deployed",
          "--target-classes", "2")
    entry = {"label": "x", "fc": "fc.json", "hpm": ["plan.json", "extra.json"]}
    rows = [row.split(" | ") for row in comparison_table(tmp_path, [entry])[2:]]
    assert [r[4] for r in rows] == ["1", "4"]  # the extra report ran at batch size 4 only
    plan, extra = (protocol_name(load_report(tmp_path / f)) for f in ("plan.json", "extra.json"))
    assert rows[0][1] == plan and rows[1][1] == f"{plan} + {extra}"
    alone, worst = paired_robust(tmp_path / "plan.json", 1), combined_robust([tmp_path / "plan.json",
                                                                             tmp_path / "extra.json"], 4)
    assert rows[0][8] == f"{100 * sum(alone.values()) / 4:.1f}" and rows[1][8] == f"{100 * sum(worst.values()) / 4:.1f}"
    budget = comparison_lines(tmp_path, {"compact": True, "entries": [entry]})[-1]
    assert budget.startswith("Budget, as those reports record it: APGD 2 iterations") and " + APGD 2 " in budget
    [joined_row] = worst_case_rows("x", [tmp_path / "plan.json", tmp_path / "extra.json"])  # the shared size only
    assert joined_row["batch_size"] == 4 and joined_row["robust"] == sum(worst.values()) / 4
    named = comparison_table(tmp_path, [entry | {"protocol": "plan + extra"}])[2:]
    assert [r.split(" | ")[1] for r in named] == [plan, "plan + extra"]  # a name for all reports, where all joined
    _eval(batch_dependent, tiny_data_root, tmp_path / "shuffled.json", "--eps", "2/255", "--attacks",
          "apgd-t/deployed", "--target-classes", "2", "--order-seed", "1")
    with pytest.raises(HPMError, match="differ in evaluation order"):
        comparison_table(tmp_path, [entry | {"hpm": ["plan.json", "shuffled.json"]}])


def test_a_trained_backbone_is_set_beside_the_published_numbers_of_its_recipe(tmp_path):
    from hpm.publish.literature import literature_lines
    # the literature check of the shipped PreAct FC: 78.6% clean, 41.8% robust
    shutil.copy(REPO / "results/eval/preact/pa18-fc-apgdt-n1000-eps8.json", tmp_path / "ours.json")
    (tmp_path / "published.json").write_text(json.dumps({"recipe": "FGSM-RS", "entries": [
        {"source": "Paper A", "evaluation": "PGD-50, all 10000 images", "clean_accuracy": 0.8,
         "robust_accuracy": 0.4}]}))
    (tmp_path / "shift.json").write_text(json.dumps({"mean_absolute_pixel_error_255": 5.8, "checkpoints": [
        {"checkpoint": "runs/x", "n": 1000, "lossless_accuracy": 0.785, "jpeg_accuracy": 0.777, "mcnemar_exact_p": 0.12,
         "jpeg_test_set": {"n": 10000, "accuracy": 0.769}}]}))
    section = {"file": "published.json", "entries": [{"label": "ours", "report": "ours.json"}], "shift": ["shift.json"],
               "shift_labels": {"runs/x": "another schedule"}}
    lines = literature_lines(tmp_path, section)
    assert lines[2] == "| Paper A (published) | PGD-50, all 10000 images | 80.0 | 40.0 | |"
    assert lines[3].startswith("| ours | Linf eps 8/255: apgd-ce/deployed, apgd-t/deployed (APGD 100 iterations")
    assert lines[3].endswith("1000 images of `test-first1000.npz`, batch size 250 | 78.6 | 41.8 | 38.7–44.9 |")
    assert "- ours vs Paper A: clean -1.4, robust +1.8" in lines
    assert "| `runs/x` (another schedule) | 78.5 (n 1000) | 77.7 | 0.12 | 76.9 (n 10000) |" in lines
    assert lines[-1].endswith("per pixel: 5.80/255 in `shift.json`.")
    section["entries"] = [{"label": "hpm", "report": "results/eval/preact/pa18-hpm-full-full-eps8.json"}]
    with pytest.raises(HPMError, match="3 evaluation batch sizes"):  # a batch-dependent head's numbers need theirs
        literature_lines(REPO, section | {"file": "results/literature/preact-resnet18-fgsmrs.json", "shift": []})


def test_a_mixture_is_set_beside_its_authors_published_trade_off_over_its_own_robust_network(tmp_path):
    from hpm.publish.defences import defence_rows
    from hpm.publish.tradeoff import tradeoff_lines
    for name, report in (("fc", "robust/r20w32e20-fc-full-eps8"), ("mixer", "mixed/mixed-adaptive-gamma3-20-T1-eps8"),
                         ("ncm", "robust/r20w32e20-ncm-full-eps8"), ("fixed", "mixed/mixed-alpha0.9-T1-eps8")):
        for suffix in (".json", ".npz"):
            shutil.copy(REPO / f"results/eval/{report}{suffix}", tmp_path / f"{name}{suffix}")
    accuracies = {"clean_accuracy": 0.93, "robust_accuracy": 0.71, "evaluation": "AutoAttack"}
    published = {"dataset": "cifar10", "eps": "8/255", "entries": [
        {"id": "smoothing", "defence": "adaptive smoothing", "source": "Paper B", "head": "mixed classifier (adaptive",
         "mixture": accuracies | {"clean_accuracy": 0.95, "robust_accuracy": 0.68}, "robust_base": accuracies}]}
    (tmp_path / "published.json").write_text(json.dumps(published))
    fc = {"label": "FC", "reports": ["fc.json"]}
    entries = [fc, {"label": "mixer", "published": "smoothing", "reports": ["mixer.json"]}]
    section = {"published": "published.json", "entries": entries}

    def lines(entries, **changes):
        return tradeoff_lines(tmp_path, section | changes | {"entries": entries}, defence_rows(tmp_path, entries))

    row, = [line for line in lines(entries) if line.startswith("| mixer |")]  # 81.6 / 38.2 over FC's 77.6 / 39.0
    assert row == ("| mixer | adaptive smoothing: 93.0 / 71.0 → 95.0 / 68.0 | +2.0 / -3.0 | "
                   "77.6 / 39.0 → 81.6 / 38.2 | clean +4.0 points (McNemar p = 1.1e-05, more than chance); "
                   "robust -0.8 points (McNemar p = 0.42, not separable from chance at this n) |")
    assert ("- adaptive smoothing, Paper B: the mixture evaluated by AutoAttack; the robust network evaluated by "
            "AutoAttack.") in lines(entries)
    with pytest.raises(HPMError, match="its robust branch is .*-fc, not the baseline row's .*-ncm"):
        lines([{"label": "NCM", "reports": ["ncm.json"]}, entries[1]])  # against another network: no trade-off
    with pytest.raises(HPMError, match="declares 'mixed classifier \\(alpha 0.9.*not a mixture of the published kind"):
        lines([fc, {"label": "fixed", "published": "smoothing", "reports": ["fixed.json"]}])
    with pytest.raises(HPMError, match="no published entry 'nuts'"):  # checked on rows not measured yet too
        lines([*entries, {"label": "MixedNUTS", "published": "nuts", "missing": "later"}])
    (tmp_path / "other.json").write_text(json.dumps(published | {"eps": "4/255"}))
    with pytest.raises(HPMError, match="evaluated on cifar10 at 8/255, the published numbers are on cifar10 at 4/255"):
        lines(entries, published="other.json")
    del published["entries"][0]["mixture"]["evaluation"]
    (tmp_path / "other.json").write_text(json.dumps(published))
    with pytest.raises(HPMError, match="entry 'smoothing' lacks mixture.evaluation"):
        lines(entries, published="other.json")
    assert lines(entries, published=None) == []


def test_a_figure_that_shares_a_sections_entries_names_those_not_measured_yet(tmp_path):
    from hpm.publish.readme import figure_lines

    (tmp_path / "fig.png").write_bytes(b"png")
    section = {"figure": "fig", "alt": "defences", "entries": [
        {"label": "FC", "reports": ["fc.json"]}, {"label": "Adv-DPNP", "missing": "its training"},
        {"label": "average margin", "missing": "its training"}]}
    lines = figure_lines(tmp_path, section)
    assert lines[0] == "![defences](fig.png)"
    assert lines[-1] == "Not measured yet, so not in the figure: Adv-DPNP; average margin."
    assert figure_lines(tmp_path, {**section, "entries": section["entries"][:1]}) == ["![defences](fig.png)"]
