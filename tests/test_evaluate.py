"""The MSA protocol: every attack bites, worst case = AND of attacks, surrogate-wrong samples are attacked,
resume and merge reproduce an uninterrupted run, bad arguments are refused."""
import json

import numpy as np
import pytest
import torch

import hpm
from hpm.attacks import AttackTarget, BatchFeatures, BreakRecorder, SummedLossAPGD, default_plan, parse_attacks
from hpm.evaluation.checks import ce_saturation
from hpm.errors import HPMError
from hpm.evaluation import AttackConfig, run_protocol
from hpm.evaluation.samples import config_key, load_results, merge_results, save_results
from hpm.evaluation import evaluate_model

from conftest import TinyMLP

FAST = dict(n_iter=5, square_queries=100, eps=32 / 255)


def tiny_hpm(seed=0, n=16):
    """A tiny HPM classifier and images labelled by its own deployed predictions (clean accuracy 100%)."""
    torch.manual_seed(seed)
    model = hpm.wrap(TinyMLP(), head="hpm")
    x = torch.rand(n, 3, 32, 32)
    z = model.forward_features(x)
    model.head.init_prototypes(torch.cat([z, z]), torch.arange(2 * n) % 4)
    torch.nn.init.normal_(model.head.mixer.weight, std=0.2)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def tiny_fc(seed=0, n=16):
    torch.manual_seed(seed)
    net = TinyMLP().eval()
    x = torch.rand(n, 3, 32, 32)
    with torch.no_grad():
        y = net(x).argmax(1)
    return net, x, y


def test_default_plans_are_the_papers_msa_plus_targeted_apgd_on_the_fc_oracle_and_the_deployed_model():
    model, _, _ = tiny_hpm()
    msa = ["apgd-ce/fc", "apgd-dlr/fc", "apgd-ce/soft", "apgd-dlr/soft", "apgd-ce/ensemble", "apgd-dlr/ensemble",
           "apgd-ce/bpda", "apgd-dlr/bpda"]
    assert [s.name for s in default_plan(model, targeted=False)] == [*msa, "square"]
    assert [s.name for s in default_plan(model)] == [*msa, "apgd-t/fc", "apgd-t/bpda", "square"]
    net, _, _ = tiny_fc()
    assert [s.name for s in default_plan(net)] == ["apgd-ce/deployed", "apgd-dlr/deployed", "apgd-t/deployed",
                                                   "square"]
    assert [s.name for s in default_plan(net, targeted=False)] == ["apgd-ce/deployed", "apgd-dlr/deployed",
                                                                   "square"]


@pytest.mark.parametrize("attack", ["apgd-ce/fc", "apgd-dlr/fc", "apgd-ce/soft", "apgd-dlr/soft", "apgd-ce/ensemble",
                                    "apgd-dlr/ensemble", "apgd-ce/bpda", "apgd-dlr/bpda", "square"])
def test_each_attack_lowers_the_accuracy_of_an_undefended_tiny_hpm_model(attack):
    model, x, y = tiny_hpm()
    _, res, _ = run_protocol(model, x, y, attack=AttackConfig(attacks=[attack], **FAST), batch_sizes=[16],
                             progress=False)
    r = res[16]
    assert r.clean_correct.all() and r.robust.mean() < 0.75


@pytest.mark.parametrize("attack", ["apgd-ce/deployed", "apgd-dlr/deployed", "square"])
def test_each_attack_lowers_the_accuracy_of_a_plain_fc_model(attack):
    net, x, y = tiny_fc()
    _, res, _ = run_protocol(net, x, y, attack=AttackConfig(attacks=[attack], **FAST), batch_sizes=[8],
                             progress=False)
    assert res[8].robust.mean() < 0.75


@pytest.mark.parametrize("schedule", ["cumulative", "independent"])
def test_worst_case_is_the_and_of_the_per_attack_masks(schedule):
    model, x, y = tiny_hpm(seed=1)
    _, res, _ = run_protocol(model, x, y, attack=AttackConfig(schedule=schedule, **{**FAST, "eps": 2 / 255}),
                             batch_sizes=[8], progress=False)
    r = res[8]
    survives_each = ~r.broken  # [A, N]
    assert np.array_equal(r.robust, r.done & r.clean_correct & survives_each.all(0))
    if schedule == "independent":  # every attack ran on every clean-correct sample
        assert (r.attacked == r.clean_correct[None]).all()


def test_samples_a_surrogate_gets_wrong_but_the_deployed_model_gets_right_are_attacked():
    model, x, y = tiny_hpm(seed=2)
    with torch.no_grad():
        fc_wrong = (model(x, mode="fc").argmax(1) != y).numpy()
    assert fc_wrong.any(), "fixture must contain a surrogate-wrong, deployed-right sample"
    _, res, _ = run_protocol(model, x, y, attack=AttackConfig(attacks=["apgd-ce/fc"], **FAST), batch_sizes=[16],
                             progress=False)
    assert res[16].attacked[0][fc_wrong].all()


def test_batch_independent_models_are_evaluated_once_for_all_batch_sizes():
    net, x, y = tiny_fc()
    _, res, _ = run_protocol(net, x, y, attack=AttackConfig(**FAST), batch_sizes=[1, 4, 16], progress=False)
    assert np.array_equal(res[1].broken, res[16].broken) and np.array_equal(res[4].robust, res[16].robust)


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    model, x, y = tiny_hpm(seed=3)
    cfg = AttackConfig(**{**FAST, "eps": 4 / 255})
    _, full, _ = run_protocol(model, x, y, attack=cfg, batch_sizes=[4], progress=False)

    import hpm.evaluation.protocol as ev
    real, calls = ev.attack_batch, []

    def dies_on_third_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(ev, "attack_batch", dies_on_third_batch)
    path = tmp_path / "r.npz"
    with pytest.raises(KeyboardInterrupt):
        run_protocol(model, x, y, attack=cfg, batch_sizes=[4], results_path=path, progress=False)
    _, partial = load_results(path)
    assert partial[4].done.sum() == 8
    monkeypatch.setattr(ev, "attack_batch", real)
    _, resumed, _ = run_protocol(model, x, y, attack=cfg, batch_sizes=[4], results_path=path, progress=False)
    for name in ("done", "clean_correct", "attacked", "broken"):
        assert np.array_equal(getattr(resumed[4], name), getattr(full[4], name)), name


def killed_after_three_attacks(model, x, y, cfg, path, monkeypatch) -> None:
    """Run the protocol at batch size 16 into ``path`` and kill it as its fourth attack starts."""
    import hpm.evaluation.protocol as ev
    real, calls = ev.run_attack, []

    def dies_at_the_fourth_attack(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(ev, "run_attack", dies_at_the_fourth_attack)
    with pytest.raises(KeyboardInterrupt):
        run_protocol(model, x, y, attack=cfg, batch_sizes=[16], results_path=path, progress=False)
    monkeypatch.setattr(ev, "run_attack", real)


def test_a_run_killed_inside_a_batch_resumes_after_its_last_finished_attack(tmp_path, monkeypatch):
    model, x, y = tiny_hpm(seed=3)
    cfg = AttackConfig(**{**FAST, "eps": 4 / 255}, schedule="independent")  # every attack runs
    plan, full, _ = run_protocol(model, x, y, attack=cfg, batch_sizes=[16], progress=False)
    path = tmp_path / "r.npz"
    killed_after_three_attacks(model, x, y, cfg, path, monkeypatch)
    _, partial = load_results(path)
    assert not partial[16].done.any() and (partial[16].attacks_finished == 3).all()

    import hpm.evaluation.protocol as ev
    real, calls = ev.run_attack, []

    def counted(*args, **kwargs):
        calls.append(args[0].name)
        return real(*args, **kwargs)
    monkeypatch.setattr(ev, "run_attack", counted)
    _, resumed, _ = run_protocol(model, x, y, attack=cfg, batch_sizes=[16], results_path=path, progress=False)
    assert calls == [spec.name for spec in plan[3:]]  # the three finished attacks are not run again
    for name in ("done", "clean_correct", "attacked", "broken", "attacks_finished"):
        assert np.array_equal(getattr(resumed[16], name), getattr(full[16], name)), name


def test_a_batch_whose_clean_predictions_changed_since_the_interruption_starts_over(tmp_path, monkeypatch):
    model, x, y = tiny_hpm(seed=3)
    cfg = AttackConfig(**{**FAST, "eps": 4 / 255}, schedule="independent")
    path = tmp_path / "r.npz"
    killed_after_three_attacks(model, x, y, cfg, path, monkeypatch)
    _, full, _ = run_protocol(model, x, y, attack=cfg, batch_sizes=[16], progress=False)
    key, partial = load_results(path)
    partial[16].clean_correct[0] = not partial[16].clean_correct[0]  # as if saved by another device
    save_results(path, partial, key)
    with pytest.warns(UserWarning, match="3 finished attacks on this batch are run again"):
        _, resumed, _ = run_protocol(model, x, y, attack=cfg, batch_sizes=[16], results_path=path, progress=False)
    for name in ("clean_correct", "attacked", "broken"):
        assert np.array_equal(getattr(resumed[16], name), getattr(full[16], name)), name


def test_merging_refuses_runs_that_disagree_on_an_attack_both_finished(tmp_path, monkeypatch):
    model, x, y = tiny_hpm(seed=3)
    cfg = AttackConfig(**{**FAST, "eps": 4 / 255}, schedule="independent")
    path = tmp_path / "r.npz"
    killed_after_three_attacks(model, x, y, cfg, path, monkeypatch)
    _, full, _ = run_protocol(model, x, y, attack=cfg, batch_sizes=[16], progress=False)
    _, partial = load_results(path)
    assert merge_results(partial, full)[16].done.all()  # the finished run completes the interrupted one
    partial[16].broken[1, 0] = not partial[16].broken[1, 0]
    with pytest.raises(HPMError, match="disagree"):
        merge_results(partial, full)


def test_a_results_file_saved_only_per_batch_still_resumes(tmp_path):
    model, x, y = tiny_hpm(seed=3)
    cfg = AttackConfig(**{**FAST, "eps": 4 / 255})
    path = tmp_path / "r.npz"
    _, full, _ = run_protocol(model, x, y, attack=cfg, batch_sizes=[4], results_path=path, progress=False)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files if not k.endswith("attacks_finished")}
    arrays["bs4_done"][8:] = False  # two of four batches done, written before attacks were saved one by one
    np.savez(path, **arrays)
    _, old = load_results(path)
    assert list(old[4].attacks_finished) == [len(full[4].attack_names)] * 8 + [0] * 8
    _, resumed, _ = run_protocol(model, x, y, attack=cfg, batch_sizes=[4], results_path=path, progress=False)
    assert np.array_equal(resumed[4].robust, full[4].robust)


def test_two_shards_merge_into_the_full_run(tmp_path):
    model, x, y = tiny_hpm(seed=4)
    cfg = AttackConfig(**{**FAST, "eps": 4 / 255})
    _, full, _ = run_protocol(model, x, y, attack=cfg, batch_sizes=[4], progress=False)
    shards = [run_protocol(model, x, y, attack=cfg, batch_sizes=[4], shard=(k, 2), progress=False)[1]
              for k in range(2)]
    assert shards[0][4].done.sum() == 8
    merged = merge_results(*shards)
    assert np.array_equal(merged[4].robust, full[4].robust) and merged[4].done.all()


def test_resuming_with_different_settings_is_refused(tmp_path):
    model, x, y = tiny_hpm()
    path = tmp_path / "r.npz"
    run_protocol(model, x, y, attack=AttackConfig(attacks=["apgd-ce/fc"], **FAST), batch_sizes=[16],
                 results_path=path, progress=False)
    with pytest.raises(HPMError, match="different evaluation"):
        run_protocol(model, x, y, attack=AttackConfig(attacks=["square"], **FAST), batch_sizes=[16],
                     results_path=path, progress=False)


def test_ensemble_objective_is_the_sum_of_the_surrogates_losses():
    model, x, y = tiny_hpm()
    target = AttackTarget(BatchFeatures(model, None), ("fc", "soft"), BreakRecorder(y))
    out = target(x)
    assert out.shape == (16, 8)
    for objective, single in (("ce", lambda logits: torch.nn.functional.cross_entropy(logits, y, reduction="none")),
                              ("dlr", None)):
        apgd = SummedLossAPGD(target, 4, objective, eps=0.1, n_iter=1)
        expected = (single(model(x, mode="fc")) + single(model(x, mode="soft")) if single else
                    apgd.__class__.__mro__[1].dlr_loss(apgd, model(x, mode="fc"), y)
                    + apgd.__class__.__mro__[1].dlr_loss(apgd, model(x, mode="soft"), y))
        assert torch.allclose(apgd.dlr_loss(out, y), expected, atol=1e-5)


def test_attacked_rows_share_the_batch_with_the_fixed_clean_rows():
    model, x, y = tiny_hpm()
    z = model.forward_features(x)
    batch = BatchFeatures(model, z[10:])
    assert torch.allclose(batch.scores(z[:10], "hard"), model(x)[:10], atol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    ({"eps": 0}, "positive"), ({"eps": 2.0}, "below 1"), ({"n_iter": 0}, ">= 1"), ({"norm": "L1"}, "Linf, L2"),
    ({"schedule": "greedy"}, "cumulative, independent"), ({"attacks": ["apgd-ce/mine"]}, "unknown attack")])
def test_invalid_attack_settings_are_refused(kwargs, message):
    model, x, y = tiny_hpm()
    with pytest.raises(HPMError, match=message):
        run_protocol(model, x, y, attack=AttackConfig(**{**FAST, **kwargs}), batch_sizes=[4], progress=False)


def test_surrogate_attacks_need_a_model_that_has_them():
    net, _, _ = tiny_fc()
    with pytest.raises(ValueError, match="does not apply to this model"):
        parse_attacks(["apgd-ce/ensemble"], net)


def test_report_holds_everything_and_round_trips(tmp_path):
    model, x, y = tiny_hpm()
    out = tmp_path / "report.json"
    report = evaluate_model(model, x, y, attack=AttackConfig(**{**FAST, "eps": 2 / 255}), batch_sizes=[4, 16],
                            out=out, check_n=8, progress=False, data_info={"source": "synthetic", "n": 16,
                                                                            "subset": "all"})
    data = json.loads(out.read_text())
    assert set(data["results"]) == {"4", "16"}
    r = hpm.EvalReport.from_json(out).results["16"]  # typed, validated on reading
    lo, hi = r.robust_ci95
    assert lo <= r.robust_accuracy <= hi and r.clean_accuracy == 1.0
    assert [a.name for a in r.per_attack][-1] == "square" and all(a.seconds >= 0 for a in r.per_attack)
    assert sum(a.first_broken for a in r.per_attack) == r.n - round(r.robust_accuracy * r.n)
    assert {c["name"] for c in data["checks"]} >= {"deterministic_forward", "ce_not_saturated", "monotone_in_eps",
                                                    "large_eps_breaks_all", "repeatable", "robust_le_clean[bs=4]"}
    assert all(c["passed"] in (True, None) for c in data["checks"]), data["checks"]
    assert data["versions"]["pyautoattack"] == "0.2.0" and data["config"]["attack"]["n_iter"] == 5
    md = out.with_suffix(".md").read_text()
    assert "| eval batch size | n | clean | robust (worst case) | 95% CI |" in md
    assert out.with_suffix(".npz").exists()
    assert hpm.EvalReport.from_json(out).worst_case() == report.worst_case()


@pytest.mark.parametrize("argv, message", [
    (["--eps", "-1"], "must be >= 0"), (["--iters", "0"], "must be >= 1"), (["--n", "0"], "must be >= 1"),
    (["--batch-sizes", "16,x"], "comma-separated"), (["--shard", "2/2"], "0 <= K < N"),
    (["--out", "r.txt"], ".json")])
def test_eval_cli_rejects_bad_arguments_in_one_line(argv, message, capsys, tiny_data_root):
    from hpm.cli import main
    base = ["eval", "pyautoattack", "--data", str(tiny_data_root), "--out", "r.json"]
    try:
        code = main(base + argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_eval_cli_subset_beyond_the_split_is_refused(capsys, tiny_data_root, tmp_path):
    from hpm.cli import main
    code = main(["eval", "pyautoattack", "--data", str(tiny_data_root), "--n", "25", "--out", str(tmp_path / "r.json")])
    assert code == 2 and "--n must be between 1 and 24" in capsys.readouterr().err


def test_eval_cli_end_to_end_on_a_plain_fc_model(tiny_data_root, tmp_path, capsys):
    from hpm.cli import main
    out = tmp_path / "fc.json"
    assert main(["eval", "pyautoattack", "--data", str(tiny_data_root), "--n", "4", "--iters", "2",
                 "--square-queries", "5", "--eps", "8/255", "--no-checks", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [p["name"] for p in data["plan"]] == ["apgd-ce/deployed", "apgd-dlr/deployed", "apgd-t/deployed", "square"]
    assert data["config"]["data"]["source"].endswith("test-first1000.npz")


def test_quick_fills_in_what_the_command_line_left_at_its_default_and_an_estimate_comes_first(tiny_data_root,
                                                                                              tmp_path, capsys):
    from hpm.cli import main
    out = tmp_path / "quick.json"
    assert main(["eval", "pyautoattack", "--data", str(tiny_data_root), "--quick", "--n", "4", "--iters", "2",
                 "--target-classes", "9", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    attack = data["config"]["attack"]
    assert attack["n_iter"] == 2 and attack["n_target_classes"] == 9  # given (9 is also the default): kept
    assert attack["square_queries"] == 500  # left out: --quick's
    assert list(data["results"]) == ["4"] and data["results"]["4"]["n"] == 4  # the batch size run: one batch of 4
    assert not any(check["name"] == "monotone_in_eps" for check in data["checks"])  # no extra check runs
    err = capsys.readouterr().err
    assert "a first look, not a number to publish" in err
    assert err.index("attacks take at most") < err.index("bs=4: 4 attacks")  # said before the attacks start
    assert "own=" in err  # each attack's own time, not the run's


def test_estimate_only_prints_the_bound_as_json_and_neither_attacks_nor_writes(tiny_data_root, tmp_path, capsys):
    from hpm.cli import main
    out = tmp_path / "work" / "report.json"
    out.parent.mkdir()
    assert main(["eval", "pyautoattack", "--data", str(tiny_data_root), "--n", "4", "--estimate-only",
                 "--out", str(out)]) == 0
    stdout, err = capsys.readouterr()
    said = json.loads(stdout)
    assert said["attack_seconds_at_most"] > 0 and said["n"] == 4 and said["device"] == "cpu"
    assert "attacks take at most" in err and "apgd-ce" not in err  # nothing attacked
    assert list(out.parent.iterdir()) == []  # no report, .md or .npz
    assert main(["eval", "--merge", str(tmp_path / "a.npz"), "--out", str(out), "--estimate-only"]) == 2
    assert "drop it for --merge" in capsys.readouterr().err


def test_a_report_path_is_required_unless_only_the_estimate_is_asked(tiny_data_root, capsys):
    from hpm.cli import main
    assert main(["eval", "pyautoattack", "--data", str(tiny_data_root), "--n", "4"]) == 2
    assert "--out REPORT.json is required (unless --estimate-only is given)" in capsys.readouterr().err


def test_the_estimate_counts_every_pass_of_every_attack_and_times_a_step_per_batch_size():
    from hpm.evaluation.estimate import estimate_seconds, forward_passes_per_image
    net, x, _ = tiny_fc()
    config = AttackConfig(n_iter=5, n_restarts=2, square_queries=7, n_target_classes=3)
    plan = default_plan(net)  # APGD-CE, APGD-DLR, APGD-T (3 targets), Square
    assert forward_passes_per_image(plan, config, num_classes=10) == (6 * 2 * (1 + 1 + 3), 7)
    seconds, basis = estimate_seconds(net, x, plan, config, [4, 8], True, torch.device("cpu"))
    assert seconds > 0 and "batch 4: step" in basis and "batch 8: step" in basis


def test_attacks_accept_non_contiguous_inputs():
    model, x, y = tiny_hpm()
    x_nc = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # same values, channels-last strides
    assert not x_nc.is_contiguous()
    _, res, _ = run_protocol(model, x_nc, y, attack=AttackConfig(**FAST), batch_sizes=[16], progress=False)
    assert res[16].done.all()


def test_ce_saturation_counts_samples_that_give_apgd_ce_no_loss_to_climb():
    net, x, y = tiny_fc()  # labels = predictions: every sample clean-correct
    mild = ce_saturation(net, x, y, batch_size=8)
    assert mild["clean_correct"] == len(y) and mild["zero_loss"] == 0 and mild["zero_gradient"] == 0

    class Scaled(torch.nn.Module):  # same argmax, margins x 1e4: the float32 softmax saturates
        def forward(self, inputs):
            return 1e4 * net(inputs)

    saturated = ce_saturation(Scaled(), x, y, batch_size=8)
    assert saturated["zero_loss"] == len(y) and saturated["median_margin"] == pytest.approx(1e4 * mild["median_margin"],
                                                                                           rel=1e-3)


def test_resume_key_ignores_the_square_budget_only_when_no_square_runs():
    net, _, _ = tiny_fc()
    apgd_only, full, idx = parse_attacks(["apgd-ce/deployed"], net), default_plan(net), np.arange(4)
    small, large = AttackConfig(square_queries=10), AttackConfig(square_queries=20)
    assert config_key("m", small, apgd_only, idx, [4]) == config_key("m", large, apgd_only, idx, [4])
    assert config_key("m", small, full, idx, [4]) != config_key("m", large, full, idx, [4])


def test_reports_of_the_first_format_are_still_read(tmp_path):
    model, x, y = tiny_hpm()
    report = evaluate_model(model, x, y, attack=AttackConfig(**FAST), batch_sizes=[8], checks=False, progress=False)
    old = json.loads(report.to_json())  # written as format 1 was: no version, a per-schedule key, no nulls
    del old["format_version"]
    old["model_info"]["context_size"] = 0
    for r in old["results"].values():
        r["per_target_cumulative"] = r.pop("per_target")
        for a in r["per_attack"]:
            del a["robust_accuracy_alone"]
    del old["config"]["attack"]["targeted"]  # reports before APGD-T joined the default plan
    (tmp_path / "old.json").write_text(json.dumps(old))
    again = hpm.EvalReport.from_json(tmp_path / "old.json")
    assert again.results == report.results and again.format_version == report.format_version
    assert again.config.attack.targeted is False  # their default plans had no APGD-T
    (tmp_path / "bad.json").write_text(json.dumps({**old, "results": {"8": {"n": 1}}}))
    with pytest.raises(HPMError, match="not an hpm evaluation report.*missing keys"):
        hpm.EvalReport.from_json(tmp_path / "bad.json")


def test_a_batch_dependent_head_is_evaluated_over_a_curve_of_batch_sizes_unless_told_otherwise():
    from hpm.evaluation.api import default_batch_sizes
    model, x, y = tiny_hpm()
    assert default_batch_sizes(model) == [1, 16, 256] and default_batch_sizes(tiny_fc()[0]) == [256]
    one = evaluate_model(model, x[:8], y[:8], attack=AttackConfig(attacks=["apgd-ce/fc"], **FAST), batch_sizes=[8],
                         checks=False, progress=False)
    assert "holds for its evaluation batch size (8) and dataset order only: one batch size measured" \
        in one.to_markdown()


def test_the_library_evaluates_in_one_process_unless_asked_to_share(monkeypatch):
    """A caller inside its own multi-rank job (WORLD_SIZE > 1) calling evaluate_model on one rank gets the
    whole evaluation in that process: sharing among ranks is opt-in (hpm eval opts in under torchrun)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    model, x, y = tiny_hpm()
    report = evaluate_model(model, x, y, attack=AttackConfig(**FAST), batch_sizes=[8], checks=False, progress=False)
    assert report.results["8"].n == len(y)


# --- attacks beyond the default plan: APGD-T and whole-batch attacks ------------------------------------
def test_targeted_and_whole_batch_attacks_are_parsed_for_the_heads_they_apply_to():
    model, _, _ = tiny_hpm()
    t, = parse_attacks(["apgd-t/bpda"], model)
    assert (t.kind, t.loss, t.surrogates, t.whole_batch) == ("apgd", "dlr-targeted", ("hard",), False)
    b, = parse_attacks(["batch:apgd-ce/ensemble"], model)
    assert b.whole_batch and b.surrogates == ("fc", "soft") and b.name == "batch:apgd-ce/ensemble"
    net, _, _ = tiny_fc()
    with pytest.raises(ValueError, match="only to batch-dependent models"):
        parse_attacks(["batch:apgd-ce/deployed"], net)
    with pytest.raises(ValueError, match="unknown attack"):
        parse_attacks(["apgd-x/fc"], model)


@pytest.mark.parametrize("attack", ["apgd-t/fc", "apgd-t/bpda", "batch:apgd-ce/bpda", "batch:apgd-t/ensemble"])
def test_targeted_and_whole_batch_attacks_only_ever_lower_accuracy(attack):
    model, x, y = tiny_hpm(seed=1)
    cfg = AttackConfig(**{**FAST, "eps": 8 / 255, "attacks": [attack], "n_target_classes": 3})
    _, res, _ = run_protocol(model, x, y, attack=cfg, batch_sizes=[8], progress=False)
    r = res[8]
    assert r.done.all() and not (r.broken[0] & ~r.attacked[0]).any()  # only attacked samples can be broken
    assert (r.robust <= r.clean_correct).all() and r.attacked[0].sum() == r.clean_correct.sum()


def test_apgd_t_budget_enters_the_resume_key_only_when_the_plan_has_apgd_t():
    model, x, y = tiny_hpm()
    idx = np.arange(len(y))
    plain, targeted = parse_attacks(["apgd-ce/fc"], model), parse_attacks(["apgd-t/fc"], model)
    a, b = AttackConfig(n_target_classes=9), AttackConfig(n_target_classes=3)
    assert config_key("m", a, plain, idx, [4]) == config_key("m", b, plain, idx, [4])
    assert config_key("m", a, targeted, idx, [4]) != config_key("m", b, targeted, idx, [4])


@pytest.mark.slow
@pytest.mark.data
def test_hpm_eval_of_a_shipped_checkpoint_reproduces_its_stored_per_sample_results(tmp_path):
    """The report in results/ was written before the package was re-laid out; the same command today must
    give the same outcome for every sample."""
    from conftest import REPO, shared_data_or_skip
    from hpm.cli import main
    data = shared_data_or_skip()
    stored = REPO / "results/eval/sweep/scratchresnet20w16-fc-eps0.25-apgdce.npz"
    assert main(["eval", str(REPO / "checkpoints/cifar10-resnet20w16-scratch-fc"), "--data", str(data), "--n", "200",
                 "--eps", "0.25/255", "--iters", "40", "--square-queries", "1000", "--batch-sizes", "200",
                 "--no-checks", "--attacks", "apgd-ce/deployed", "--out", str(tmp_path / "r.json")]) == 0
    _, again = load_results(tmp_path / "r.npz")
    _, before = load_results(stored)
    for name in ("indices", "labels", "done", "clean_correct", "attacked", "broken"):
        assert np.array_equal(getattr(again[200], name), getattr(before[200], name)), name


def test_attacks_are_pure_functions_of_inputs_and_seed_even_from_concurrent_threads():
    """Square and APGD restarts draw from PyTorch's global generator; runs in threads at once must still give
    exactly what each gives alone, and the caller's random stream must be left where it was."""
    from concurrent.futures import ThreadPoolExecutor

    from hpm.attacks import run_attack

    model, x, y = tiny_hpm(seed=3, n=4)
    batch = BatchFeatures(model, None)  # the attacked rows are the whole batch
    specs = parse_attacks(["square", "apgd-ce/bpda"], model)
    budget = dict(norm="Linf", eps=8 / 255, n_iter=5, n_restarts=2, square_queries=60, num_classes=4)

    def attack(job):
        spec, seed = job
        return run_attack(spec, batch, x, y, seed=seed, **budget).x_adv

    jobs = [(spec, seed) for spec in specs for seed in (0, 1)] * 3
    before = torch.get_rng_state()
    alone = [attack(job) for job in jobs]
    assert torch.equal(torch.get_rng_state(), before)
    with ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(attack, jobs))
    assert all(torch.equal(a, b) for a, b in zip(alone, together))
    assert not torch.equal(alone[0], alone[1])  # the seed matters


def test_an_attack_without_a_target_runs_on_every_target_the_default_plan_gives_it():
    hpm_model, _, _ = tiny_hpm()
    fc_net, _, _ = tiny_fc()
    assert [s.name for s in parse_attacks(["apgd-t"], hpm_model)] == ["apgd-t/fc", "apgd-t/bpda"]
    assert [s.name for s in parse_attacks(["apgd-t", "square"], fc_net)] == ["apgd-t/deployed", "square"]
    assert len(parse_attacks(["apgd-ce"], hpm_model)) == len(hpm_model.head.attack_targets)
    with pytest.raises(ValueError, match="unknown attack 'apgd-x'"):
        parse_attacks(["apgd-x"], hpm_model)


def test_attacks_run_in_plain_float32_whatever_the_callers_tf32_settings(monkeypatch):
    from hpm.evaluation import api
    model, x, y = tiny_hpm()
    seen, real = [], api.run_protocol

    def spy(*args, **kwargs):
        seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "run_protocol", spy)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    evaluate_model(model, x, y, attack=AttackConfig(**FAST), batch_sizes=[8], checks=False, progress=False)
    assert seen == [(False, False)] and torch.backends.cudnn.allow_tf32


# --- the strengthened whole-batch attack: per-row clamped loss, judged both ways, margin loss ------------
def test_a_row_past_the_clamp_keeps_its_loss_value_but_stops_pulling_the_step():
    from hpm.attacks import clamp_rows, margin
    logits = torch.tensor([[3.0, 0.0], [0.0, 0.2], [0.0, 5.0]], requires_grad=True)
    y = torch.tensor([0, 0, 0])
    assert margin(logits, y).tolist() == pytest.approx([-3.0, 0.2, 5.0])  # positive exactly when misclassified
    loss = clamp_rows(margin(logits, y), logits, y, kappa=0.5)
    assert loss.tolist() == pytest.approx([-3.0, 0.2, 5.0])
    loss.sum().backward()
    assert logits.grad[2].abs().sum() == 0 and logits.grad[:2].abs().sum() > 0  # row 2 is past kappa
    assert clamp_rows(loss, logits, y, kappa=None) is loss


def test_each_row_is_also_judged_with_only_its_own_perturbation_among_the_clean_others():
    model, x, y = tiny_hpm(seed=2)
    z_clean = model.forward_features(x).detach()
    z_adv = z_clean + torch.randn_like(z_clean)
    batch = BatchFeatures(model, None, clean_rows=z_clean)
    rows = torch.tensor([0, 5, 15])
    alone = batch.scores_alone(z_adv, rows)
    for i, scores in zip(rows.tolist(), alone):
        swapped = z_clean.clone()
        swapped[i] = z_adv[i]
        assert torch.allclose(scores, model.forward_head(swapped, mode="hard")[i], atol=1e-5)
    recorder = BreakRecorder(y)
    recorder.update_alone(x, z_adv, batch)
    fooled = batch.scores_alone(z_adv, torch.arange(len(y))).argmax(1) != y
    assert torch.equal(recorder.broken, fooled) and torch.equal(recorder.witness[fooled], x[fooled])


@pytest.mark.parametrize("attack", ["batch:apgd-margin/ensemble", "apgd-margin/bpda"])
def test_margin_loss_attacks_parse_and_only_ever_lower_accuracy(attack):
    model, x, y = tiny_hpm(seed=1)
    spec, = parse_attacks([attack], model)
    assert spec.loss == "margin" and spec.whole_batch == attack.startswith("batch:")
    _, res, _ = run_protocol(model, x, y, attack=AttackConfig(**{**FAST, "attacks": [attack]}), batch_sizes=[8],
                             progress=False)
    assert (res[8].robust <= res[8].clean_correct).all()


def test_the_clamped_twice_judged_whole_batch_attack_breaks_at_least_what_the_summed_one_does():
    model, x, y = tiny_hpm(seed=3)
    outcome = {}
    for kappa in (None, 0.5):
        cfg = AttackConfig(**{**FAST, "eps": 4 / 255, "attacks": ["batch:apgd-ce/ensemble"], "batch_kappa": kappa})
        _, res, _ = run_protocol(model, x, y, attack=cfg, batch_sizes=[16], progress=False)
        outcome[kappa] = res[16].robust
    assert outcome[0.5].sum() <= outcome[None].sum()


def test_the_whole_batch_clamp_enters_the_resume_key_only_when_the_plan_has_a_whole_batch_attack():
    model, _, _ = tiny_hpm()
    idx = np.arange(4)
    plain, whole = parse_attacks(["apgd-ce/fc"], model), parse_attacks(["batch:apgd-ce/fc"], model)
    a, b = AttackConfig(batch_kappa=0.5), AttackConfig(batch_kappa=None)
    assert config_key("m", a, plain, idx, [4]) == config_key("m", b, plain, idx, [4])
    assert config_key("m", a, whole, idx, [4]) != config_key("m", b, whole, idx, [4])


def test_reports_written_before_the_clamp_read_as_unclamped():
    from hpm.evaluation.report import EvalConfig
    config = EvalConfig.from_dict({"attack": {"eps": 0.03}, "batch_sizes": [4], "data": {}, "device": "cpu"}, "r")
    assert config.attack.batch_kappa is None and AttackConfig().batch_kappa == 0.5


def test_a_mixtures_samples_broken_only_by_attacking_a_branch_alone_flag_masked_end_to_end_gradients():
    from hpm.attacks import AttackSpec
    from hpm.evaluation.checks import check_results
    from hpm.evaluation.report import summarise
    from hpm.evaluation.samples import SampleResults
    plan = [AttackSpec("apgd-ce/deployed", "apgd"), AttackSpec("apgd-ce/standard", "apgd", surrogates=("standard",)),
            AttackSpec("square", "square")]
    r = SampleResults(4, [s.name for s in plan], np.arange(4), np.zeros(4, dtype=np.int64), np.ones(4, dtype=bool),
                      np.ones(4, dtype=bool))
    r.attacked[:, :3] = True  # the fourth sample: no end-to-end attack ran on it (cumulative schedule)
    r.broken[0, 0] = True  # end to end
    r.broken[1, 1] = True  # by the standard branch alone, missed end to end
    r.broken[1, 2] = r.broken[0, 2] = True  # both: not counted
    r.broken[1, 3] = True  # by the branch alone, but never attacked end to end: not counted
    summary = summarise(r, plan, "independent", transfer_targets=("standard", "robust"))
    assert summary.broken_only_by_transfer == 1
    check, = [c for c in check_results(summary) if c.name.startswith("end_to_end_vs_transfer")]
    assert check.passed is False and "1 sample(s) broken by a transfer attack" in check.detail
    plain = summarise(r, plan, "independent")  # a model without transfer targets: no such count, no such check
    assert plain.broken_only_by_transfer is None
    assert not [c for c in check_results(plain) if c.name.startswith("end_to_end_vs_transfer")]


EVERY_ATTACK = AttackConfig(**{**FAST, "eps": 4 / 255}, schedule="independent")


def test_a_model_changed_under_the_same_name_does_not_resume_another_models_results(tmp_path, monkeypatch):
    from hpm.defence import model_fingerprint
    from hpm.evaluation.samples import read_run
    from hpm.mixed import MixedClassifier
    model, x, y = tiny_hpm(seed=3)
    path = tmp_path / "r.npz"
    killed_after_three_attacks(model, x, y, EVERY_ATTACK, path, monkeypatch)
    assert read_run(path).fingerprint == model_fingerprint(model)
    changed, _, _ = tiny_hpm(seed=4)  # retrained: other weights, same name
    with pytest.warns(UserWarning, match="another model under the same name .* evaluated again from the start"):
        _, again, _ = run_protocol(changed, x, y, attack=EVERY_ATTACK, batch_sizes=[16], results_path=path,
                                   progress=False)
    _, fresh, _ = run_protocol(changed, x, y, attack=EVERY_ATTACK, batch_sizes=[16], progress=False)
    assert np.array_equal(again[16].broken, fresh[16].broken) and read_run(path).fingerprint == model_fingerprint(changed)
    branches = (hpm.wrap(TinyMLP(), head="fc"), hpm.wrap(TinyMLP(), head="fc"))
    reselected = [model_fingerprint(MixedClassifier(*branches, alpha=a)) for a in (0.5, 0.6)]
    assert reselected[0] != reselected[1]  # the same weights with another constant are another model


def test_results_written_before_fingerprints_still_resume(tmp_path, monkeypatch):
    from hpm.evaluation.samples import read_run
    model, x, y = tiny_hpm(seed=3)
    path = tmp_path / "r.npz"
    killed_after_three_attacks(model, x, y, EVERY_ATTACK, path, monkeypatch)
    key, results = load_results(path)
    save_results(path, results, key)  # as hpm wrote them before
    assert read_run(path).fingerprint is None
    import hpm.evaluation.protocol as ev
    real, calls = ev.run_attack, []
    monkeypatch.setattr(ev, "run_attack", lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # neither "evaluated again" nor "clean predictions differ"
        _, resumed, _ = run_protocol(model, x, y, attack=EVERY_ATTACK, batch_sizes=[16], results_path=path,
                                     progress=False)
    assert len(calls) == len(resumed[16].attack_names) - 3  # the three finished attacks were not run again
