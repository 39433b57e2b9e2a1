"""Bring your own model or defence: what hpm promises a researcher who evaluates a classifier it does not know."""
from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import hpm
from hpm import AttackConfig, Defence, HPMError
from hpm.cli import main
from hpm.defence import declare

from conftest import TinyNet

REPO = Path(__file__).resolve().parents[1]
TINY = dict(n_iter=2, square_queries=5, n_target_classes=2)


def _images(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g), torch.arange(n) % 10


class BatchMeanNet(nn.Module):
    """Transductive on purpose: subtracts the batch's mean image before a tiny net, and records the batch sizes it
    was called with."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = TinyNet().eval()
        self.sizes: list[int] = []

    def forward(self, x):
        self.sizes.append(len(x))
        return self.net(x - x.mean(0, keepdim=True) + 0.5)


def _evaluate(model, x, y, **kwargs):
    kwargs.setdefault("attack", AttackConfig(eps=8 / 255, **TINY))
    return hpm.evaluate_model(model, x, y, checks=kwargs.pop("checks", False), progress=False, **kwargs)


# -- inputs are checked where they enter, with the fix in the message ---------------------------------------------

@pytest.mark.parametrize("make, fix", [
    (lambda x: x * 255, "divide by 255"),
    (lambda x: (x * 255).to(torch.uint8), r"x.float\(\) / 255"),
    (lambda x: (x - 0.5) / 0.25, "before normalising"),
    (lambda x: x[:, :1, :28, :28], "greyscale images"),
    (lambda x: x.permute(0, 2, 3, 1), "channels last"),
    (lambda x: x[0], r"one image: x\[None\]"),
    (lambda x: x / 255, "divided by 255 twice"),
    (lambda x: x.double(), r"float32 images .*x.float\(\)"),
    (lambda x: x.half(), r"float32 images .*x.float\(\)"),
])
def test_images_outside_what_the_model_takes_are_refused_with_the_fix(tiny_net, make, fix):
    model = hpm.wrap(tiny_net, head="fc")
    x, y = _images()
    with pytest.raises(HPMError, match=fix):
        _evaluate(model, make(x), y)


def test_channels_last_images_are_refused_with_the_permutation_for_a_model_without_an_input_size():
    x, y = _images()
    with pytest.raises(HPMError, match=r"channels last\? .*x.permute\(0, 3, 1, 2\)"):
        _evaluate(_linear(), x.permute(0, 2, 3, 1), y)


def test_values_just_above_one_are_refused_with_a_clamp_not_a_division(tiny_net):
    x, y = _images()
    with pytest.raises(HPMError, match=r"clamp them \(x.clamp\(0, 1\)\)"):
        _evaluate(tiny_net, x * 1.01, y)


@pytest.mark.parametrize("output, fix", [
    (lambda s: (s, None), "a tuple, not a tensor of scores"),
    (lambda s: s[:, 0], r"of shape \(2,\) for 2 images"),
    (lambda s: s * float("nan"), "NaN or infinite"),
    (lambda s: s[:, :5], "labels go up to 7 but the model scores 5 classes"),
    (lambda s: s.softmax(1), r"returned probabilities .*return logits or log-probabilities .*clamp_min"),
    (lambda s: s.bfloat16(), r"torch.bfloat16 scores; return float32 scores \(.float\(\) at the end"),
    (lambda s: s.half(), r"torch.float16 scores; return float32 scores"),
])
def test_what_a_model_returns_is_checked_on_the_first_batch(output, fix):
    net = _linear()
    x, y = _images()
    with pytest.raises(HPMError, match=fix):
        _evaluate(lambda images: output(net(images)), x, y)


@pytest.mark.parametrize("expects, back, fix", [
    (lambda x: x * 255, lambda t: t / 255,
     r"as 0-255 pixels \d+%: it expects 0-255 pixels: multiply its input by 255 inside its forward"),
    (lambda x: (x - 0.45) / 0.225, lambda t: t * 0.225 + 0.45,
     r"as ImageNet-normalised images \d+%: it expects normalised images: put the normalisation inside its forward"),
    (lambda x: 2 * x - 1, lambda t: (t + 1) / 2, r"as images in \[-1, 1\] \d+%: it expects images in \[-1, 1\]: "
                                                 r"map its input with 2 \* x - 1"),
])
def test_a_model_whose_forward_lacks_its_own_scaling_is_flagged_as_a_wrong_number(expects, back, fix):
    net = _linear()
    x, _ = _images(32)
    y = net(x).argmax(1)

    def trained_on_other_inputs(images):  # right on expects(x), the input it was trained on
        return net(back(images))

    with pytest.warns(UserWarning, match="input_convention: .* will be marked probably wrong"):  # before attacking
        report = _evaluate(trained_on_other_inputs, x, y, checks=False)  # given images in [0, 1], as hpm passes them
    convention = {c.name: c for c in report.checks}["input_convention"]
    assert convention.passed is False and re.search(fix, convention.detail)
    assert convention in report.wrong_number_checks
    fixed = _evaluate(lambda images: trained_on_other_inputs(expects(images)), x, y, checks=False)
    assert {c.name: c.passed for c in fixed.checks}["input_convention"] and not fixed.wrong_number_checks


def test_a_square_budget_too_small_to_see_masked_gradients_is_said_beside_the_black_box_check():
    x, y = _images()
    small = {c.name: c.detail for c in _evaluate(_linear(), x, y).checks}["black_box_vs_white_box[bs=8]"]
    assert "Square ran 5 queries, too few to see masked gradients (500 or more)" in small
    attack = AttackConfig(eps=8 / 255, **{**TINY, "square_queries": 500})
    enough = {c.name: c.detail for c in _evaluate(_linear(), x, y, attack=attack).checks}["black_box_vs_white_box[bs=8]"]
    assert "too few" not in enough


def test_a_model_at_chance_on_the_images_fails_clean_above_chance_naming_the_likely_causes():
    net = _linear()
    x, _ = _images(64)
    y = (net(x).argmax(1) + 1) % 10  # labels in another class order
    above = {c.name: c for c in _evaluate(net, x, y, checks=False).checks}["clean_above_chance"]
    assert above.passed is False and "labels in another class order?" in above.detail
    assert {c.name: c.passed for c in _evaluate(net, x, (y - 1) % 10, checks=False).checks}["clean_above_chance"]


def test_a_hard_decision_with_a_straight_through_gradient_is_scores_not_probabilities():
    net = _linear()
    x, y = _images()

    def straight_through(images):  # one-hot forward, softmax's gradient backward
        soft = net(images).softmax(1)
        return soft + (nn.functional.one_hot(soft.argmax(1), 10).float() - soft).detach()

    _evaluate(straight_through, x, y)


def test_labels_must_be_integers_of_the_models_classes(tiny_net):
    x, y = _images()
    with pytest.raises(HPMError, match="integer class labels"):
        _evaluate(tiny_net, x, y.float())
    with pytest.raises(HPMError, match=r"the model's are \[0, 9\]"):
        _evaluate(hpm.wrap(tiny_net, head="fc"), x, y + 5)


def test_eps_is_checked_when_the_config_is_built_and_may_be_written_as_on_the_command_line():
    assert AttackConfig(eps="8/255").eps == pytest.approx(8 / 255)
    with pytest.raises(HPMError, match="did you mean 8/255"):
        AttackConfig(eps=8)
    with pytest.raises(HPMError, match="did you mean 1/255"):
        AttackConfig(eps=1)  # any image within reach of any other
    with pytest.raises(HPMError, match=r"got 300 \(e.g. 8/255\)"):
        AttackConfig(eps=300)  # no radius in 1/255 steps either
    assert AttackConfig(norm="L2", eps=8).eps == 8  # an L2 radius above 1 is a radius
    with pytest.raises(HPMError, match="not a number or fraction"):
        AttackConfig(eps="8/255/2")
    with pytest.raises(HPMError, match="attacks must be a list"):
        AttackConfig(attacks="apgd-ce")


def test_the_command_line_refuses_an_eps_of_8_before_any_estimate(tmp_path, capsys):
    assert main(["eval", "pyautoattack", "--eps", "8", "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert "did you mean 8/255" in err and "attacks take at most" not in err


# -- the caller's module is left exactly as given --------------------------------------------------------------------

def test_the_module_evaluated_keeps_its_training_flag_gradients_and_statistics(tiny_net):
    tiny_net.train()
    before = {k: v.clone() for k, v in tiny_net.state_dict().items()}
    _evaluate(tiny_net, *_images(), checks=True, check_n=4)
    assert tiny_net.training and all(p.requires_grad for p in tiny_net.parameters())
    assert all(torch.equal(before[k], v) for k, v in tiny_net.state_dict().items())  # BatchNorm's stats too


def test_a_bound_forward_is_evaluated_as_its_module_a_copy_in_eval_mode(tiny_net):
    tiny_net.train()
    before = {k: v.clone() for k, v in tiny_net.state_dict().items()}
    with pytest.warns(UserWarning, match="BatchNorm2d layers are in training mode; hpm evaluates it in eval mode"):
        by_method = _evaluate(tiny_net.forward, *_images())
    assert all(torch.equal(before[k], v) for k, v in tiny_net.state_dict().items())
    assert by_method.worst_case() == _evaluate(tiny_net.eval(), *_images()).worst_case()


class Calls:
    """A callable object holding a module."""

    def __init__(self, net):
        self.net = net

    def __call__(self, images):
        return self.net(images)


@pytest.mark.parametrize("hold", [Calls, lambda net: functools.partial(lambda n, images: n(images), net)])
def test_a_callable_object_or_partial_is_evaluated_with_copies_of_the_modules_it_holds(tiny_net, hold):
    tiny_net.train()
    before = {k: v.clone() for k, v in tiny_net.state_dict().items()}
    with pytest.warns(UserWarning, match="BatchNorm2d layers are in training mode; hpm evaluates it in eval mode"):
        held = _evaluate(hold(tiny_net), *_images())
    assert all(torch.equal(before[k], v) for k, v in tiny_net.state_dict().items())
    assert held.worst_case() == _evaluate(tiny_net.eval(), *_images()).worst_case()


def test_a_function_calling_a_module_in_training_mode_is_warned_of_as_hpm_cannot_copy_it(tiny_net):
    tiny_net.train()
    nets = {"net": tiny_net}

    def helper(images):
        return nets["net"](images)

    for function in (lambda images: tiny_net(images), lambda images: helper(images)):  # by name, or a step away
        with pytest.warns(UserWarning, match="a function that calls a module whose BatchNorm2d layers are in "
                                             "training mode: .* its running statistics change; call .eval"):
            _evaluate(function, *_images())
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        tiny_net.eval()
        _evaluate(lambda images: tiny_net(images), *_images())  # in eval mode: nothing to warn of


class NoisyNet(nn.Module):
    """A randomized defence: Gaussian noise on the input, then a linear classifier; counts the forward passes of
    all its copies."""

    passes = 0

    def __init__(self):
        super().__init__()
        self.net = _linear()

    def forward(self, x):
        type(self).passes += 1
        return self.net(x + 0.05 * torch.randn_like(x))


def test_a_randomized_model_attacked_without_expectation_over_transformation_is_flagged_as_a_wrong_number():
    x, y = _images()
    report = _evaluate(NoisyNet(), x, y)
    averaged = {c.name: c for c in report.checks}["randomness_averaged"]
    assert averaged.passed is False and "eot_iter=20" in averaged.detail and averaged in report.wrong_number_checks
    assert {c.name: c.passed for c in _evaluate(_linear(), x, y).checks}["randomness_averaged"] is None


class AdaptingNet(nn.Module):
    """Test-time adaptation: each forward moves a buffer towards the batch's mean image."""

    def __init__(self):
        super().__init__()
        self.net = _linear()
        self.register_buffer("seen", torch.zeros(3, 32, 32))

    def forward(self, x):
        self.seen += 0.1 * (x.detach().mean(0) - self.seen)
        return self.net(x - self.seen)


def test_a_model_that_adapts_its_own_state_as_it_runs_fails_stateless_forward_whatever_eot_iter():
    x, y = _images()
    for eot_iter in (1, 4):
        attack = AttackConfig(eps=8 / 255, eot_iter=eot_iter, **TINY)
        report = _evaluate(AdaptingNet(), x, y, attack=attack)
        stateless = {c.name: c for c in report.checks}["stateless_forward"]
        assert stateless.passed is False and "changes the model's own state (deployed.seen)" in stateless.detail
        assert stateless in report.wrong_number_checks and "randomness_averaged" not in {c.name for c in report.checks}


class CachingNet(nn.Module):
    """Fills a buffer on its first call and only reads it after: a cache, not adaptation."""

    def __init__(self):
        super().__init__()
        self.net = _linear()
        self.register_buffer("offset", torch.full((1,), float("nan")))

    def forward(self, x):
        if torch.isnan(self.offset).all():
            self.offset.fill_(0.0)
        return self.net(x + self.offset)


def test_a_cache_filled_on_the_first_call_and_a_judge_only_random_model_are_not_flagged():
    x, y = _images()
    checks = {c.name: c.passed for c in _evaluate(CachingNet(), x, y).checks}
    assert "stateless_forward" not in checks and checks["randomness_averaged"] is None
    net = _linear()
    noisy_judge = Defence(lambda images: nn.functional.one_hot(NoisyNet()(images).argmax(1), 10).float(),
                          surrogates={"linear": net})  # random, but attacked only through a deterministic surrogate
    assert {c.name: c.passed for c in _evaluate(noisy_judge, x, y).checks}["randomness_averaged"] is None


def test_eot_judges_each_step_on_its_last_pass_as_autoattack_does():
    from hpm.attacks import AttackTarget, BatchFeatures, BreakRecorder

    x, y = _images()
    judged = []
    recorder = BreakRecorder(y)
    recorder.update = lambda images, scores: judged.append(len(images))
    target = AttackTarget(BatchFeatures(Defence(_linear()), None), ("hard",), recorder, judge_every=3)
    for _ in range(6):
        target(x)
    assert len(judged) == 2


def test_the_input_checks_take_a_one_channel_model_and_too_few_images_to_tell_chance():
    net = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 10)).eval()
    x, y = _images()
    checks = {c.name: c for c in _evaluate(net, x[:, :1], y).checks}
    assert checks["input_convention"].passed is not None
    two = {c.name: c for c in _evaluate(net, x[:2, :1], y[:2]).checks}["clean_above_chance"]
    assert two.passed is None and "2 images cannot tell 10 classes from chance" in two.detail


def test_eot_iter_averages_apgds_gradient_over_that_many_passes_and_is_part_of_the_configuration():
    x, y = _images()
    reports, passes = {}, {}
    for eot_iter in (1, 3):
        NoisyNet.passes = 0
        attack = AttackConfig(eps=8 / 255, attacks=["apgd-ce/deployed"], eot_iter=eot_iter, **TINY)
        reports[eot_iter] = _evaluate(NoisyNet(), x, y, attack=attack, batch_sizes=[8])
        passes[eot_iter] = NoisyNet.passes
    assert passes[3] - passes[1] == (TINY["n_iter"] + 1) * (3 - 1)  # one APGD run of n_iter + 1 steps, 3 passes each
    averaged = {c.name: c.passed for c in reports[3].checks}["randomness_averaged"]
    assert averaged and not reports[3].wrong_number_checks
    from hpm.attacks import parse_attacks
    from hpm.evaluation.samples import config_key
    plan, indices = parse_attacks(["apgd-ce/deployed"], Defence(_linear())), np.arange(8)
    keys = {e: config_key("m", AttackConfig(eot_iter=e), plan, indices, [8]) for e in (1, 3)}
    assert keys[1] != keys[3]
    with pytest.raises(HPMError, match="eot_iter must be an integer >= 1"):
        AttackConfig(eot_iter=0)


# -- batch dependence, declared ----------------------------------------------------------------------------------

def test_a_declared_batch_dependent_model_is_really_run_at_each_batch_size_and_the_report_says_so():
    model = BatchMeanNet()
    x, y = _images(20)
    report = _evaluate(Defence(model, batch_dependent=True), x, y)
    assert list(report.results) == ["1", "16", "20"]  # 256 > 20 images: one batch of 20, reported as 20
    assert report.model_info["batch_dependent"] and report.model_info["declared"]["batch_dependent"]
    assert "batch-dependent model" in report.to_markdown()
    assert model.sizes == []  # the evaluation ran a copy


def test_an_undeclared_batch_dependent_model_fails_its_check_and_the_command_exits_1(tmp_path, tiny_data_root):
    for checks, check_n in ((True, 4), (False, 4), (False, 1)):  # forward passes only: run even without the
        report = _evaluate(BatchMeanNet(), *_images(), checks=checks, check_n=check_n)  # sanity checks, on 2+ images
        check = next(c for c in report.checks if c.name == "batch_independent")
        assert check.passed is False and "batch_dependent=True" in check.detail
        assert report.to_markdown().count("These numbers are probably wrong") == 1
    factory = tmp_path / "mine.py"
    factory.write_text("import torch\n\ndef build():\n    torch.manual_seed(0)\n"
                       "    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))\n"
                       "    return lambda x: net(x - x.mean(0, keepdim=True))\n")
    args = ["eval", f"{factory}:build", "--data", str(tiny_data_root), "--n", "4", "--iters", "1",
            "--square-queries", "2", "--target-classes", "1", "--check-n", "4"]
    assert main(args + ["--out", str(tmp_path / "undeclared.json")]) == 1
    assert main(args + ["--batch-dependent", "--no-checks", "--out", str(tmp_path / "declared.json")]) == 0
    declared = json.loads((tmp_path / "declared.json").read_text())
    assert declared["model_info"]["declared"]["batch_dependent"] and list(declared["results"]) == ["1", "4"]


def test_whole_batch_attacks_need_a_declared_batch_dependent_model():
    x, y = _images()
    attack = AttackConfig(eps=8 / 255, attacks=["batch:apgd-ce/deployed"], **TINY)
    with pytest.raises(HPMError, match="declare batch_dependent=True"):
        _evaluate(BatchMeanNet(), x, y, attack=attack)
    report = _evaluate(Defence(BatchMeanNet(), batch_dependent=True), x, y, attack=attack, batch_sizes=[8])
    assert [a.name for a in report.results["8"].per_attack] == ["batch:apgd-ce/deployed"]
    assert "judged both ways" in report.to_markdown()


def test_a_whole_batch_attack_judges_each_row_alone_as_well():
    """The rows are judged with the perturbed batch and each with only its own perturbation, the others clean."""
    from hpm.attacks import BatchFeatures

    model = declare(BatchMeanNet(), batch_dependent=True)
    x, _ = _images(4)
    batch = BatchFeatures(model, None, clean_rows=x)
    z = x.clone()
    z[2] = 1 - z[2]
    alone = batch.scores_alone(z, torch.tensor([0, 2]))
    by_hand = [model.deployed.net((torch.where(torch.arange(4)[:, None, None, None] == i, z, x)) -
                         torch.where(torch.arange(4)[:, None, None, None] == i, z, x).mean(0, keepdim=True) + 0.5)[i]
               for i in (0, 2)]
    assert torch.allclose(alone, torch.stack(by_hand), atol=1e-6)


def test_attacked_rows_are_judged_at_their_places_in_the_evaluation_batch():
    from hpm.attacks import BatchFeatures

    order_matters = declare(lambda x: x.flatten(1)[:, :10] * torch.arange(1, len(x) + 1)[:, None],
                            batch_dependent=True)
    x, _ = _images(4)
    rows = torch.tensor([False, True, False, True])
    scores = BatchFeatures(order_matters, x[~rows], rows=rows).scores(x[rows], "hard")
    assert torch.allclose(scores, order_matters(x)[rows])


# -- surrogates: attack through them, judge on the deployed model ------------------------------------------------

def _linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)).eval()


def test_a_deployed_model_without_gradient_is_attacked_through_its_surrogates_and_judged_itself():
    net = _linear()

    def deployed(x):  # non-differentiable: one-hot of the network's decision
        with torch.no_grad():
            return nn.functional.one_hot(net(x).argmax(1), 10).float()

    x, _ = _images()
    y = net(x).argmax(1)  # every image clean-correct
    defence = Defence(deployed, surrogates={"net": net}, name="argmax defence")
    assert dict(defence.attack_targets) == {"net": ("net",)} and not defence.deployed_differentiable
    report = _evaluate(defence, x, y, attack=AttackConfig(eps=0.5, **TINY))
    assert [a.name for a in report.results["8"].per_attack] == ["apgd-ce/net", "apgd-dlr/net", "apgd-t/net",
                                                                "square"]
    assert report.results["8"].robust_accuracy < 1.0
    assert report.model_info["declared"] == {"batch_dependent": False, "surrogates": ["net"],
                                             "deployed_attacked_by_gradient": False, "input_size": None}
    assert "surrogates: net; deployed model: no input gradient" in report.to_markdown()
    with pytest.raises(HPMError, match="declare surrogates="):
        _evaluate(Defence(deployed), x, y)


def test_the_deployed_model_is_not_offered_to_apgd_when_it_has_no_gradient():
    net = _linear()
    defence = Defence(lambda x: net(x).detach(), surrogates={"net": net})
    with pytest.raises(HPMError, match="does not apply to this model.*its APGD targets are net"):
        _evaluate(defence, *_images(), attack=AttackConfig(eps=8 / 255, attacks=["apgd-ce/deployed"], **TINY))


def test_the_gradient_probe_runs_on_the_evaluations_images_and_a_failure_names_the_fix():
    big = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64 * 64, 10))
    x, y = torch.rand(4, 3, 64, 64), torch.arange(4)
    assert _evaluate(big, x, y).model_info["declared"]["deployed_attacked_by_gradient"]  # probed on 64x64 images
    with pytest.raises(HPMError, match="a model for another image size an input_size attribute"):
        Defence(big).attack_targets  # no images, no input size: a 32x32 probe fails


def test_surrogates_are_checked_before_anything_runs():
    net, x, y = _linear(), *_images()
    wider = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 100))
    with pytest.raises(HPMError, match="surrogate 'wide' scores 100 classes, the deployed model 10"):
        _evaluate(Defence(net, surrogates={"wide": wider}), x, y)
    with pytest.raises(HPMError, match="surrogate 'frozen' has no input gradient"):
        _evaluate(Defence(net, surrogates={"frozen": lambda images: net(images).detach()}), x, y)


def test_a_resumed_report_of_another_model_is_evaluated_again_not_reused(tmp_path):
    x, y = _images()
    first, second = _linear(), nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    y = second(x).argmax(1)  # every image clean-correct for the second model
    _evaluate(first, x, y, out=tmp_path / "r.json")
    with pytest.warns(UserWarning, match="evaluated again"):
        report = _evaluate(second, x, y, out=tmp_path / "r.json")
    assert report.results["8"].clean_accuracy == 1.0


class Gate(nn.Module):
    """A defence whose behaviour lives in a plain attribute: it scales the scores of a fixed network by ``k``."""

    def __init__(self, k: int):
        super().__init__()
        self.net, self.k = _linear(), k

    def forward(self, x):
        return self.net(x) * self.k - self.k * self.net(x)[:, :1]


def test_a_resumed_report_is_reused_only_when_the_models_scores_match_too(tmp_path):
    x, y = _images()
    _evaluate(Gate(1), x, y, out=tmp_path / "r.json")  # same class, same parameters: only the scores tell
    with pytest.warns(UserWarning, match="scores on the first images differ"):
        _evaluate(Gate(3), x, y, out=tmp_path / "r.json")
    first, second = _linear(), nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    _evaluate(lambda images: first(images), x, y, out=tmp_path / "f.json")  # functions: no parameters to digest
    with pytest.warns(UserWarning, match="scores on the first images differ"):
        _evaluate(lambda images: second(images), x, y, out=tmp_path / "f.json")


class Scaled(nn.Module):
    """A network whose input scale is a plain attribute: no hash of its parameters sees ``k``."""

    def __init__(self, k: float):
        super().__init__()
        torch.manual_seed(0)
        self.net, self.k = TinyNet().eval(), k

    def forward(self, x):
        return self.net(x * self.k)


def test_cached_features_are_reused_only_when_the_backbone_still_gives_them(tmp_path, monkeypatch):
    from hpm.data import ImageTensorDataset
    from hpm.train import extract_features

    monkeypatch.setenv("HPM_CACHE_DIR", str(tmp_path))
    images = ImageTensorDataset(torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8), torch.arange(8),
                                [str(i) for i in range(10)], "test")
    once, _ = extract_features(hpm.wrap(Scaled(1.0), head="ncm"), images, progress=False)
    halved, _ = extract_features(hpm.wrap(Scaled(0.5), head="ncm"), images, progress=False)
    assert not torch.allclose(once, halved)
    again, _ = extract_features(hpm.wrap(Scaled(0.5), head="ncm"), images, progress=False)
    assert torch.equal(again, halved)


class Noisy(nn.Module):
    """A randomized defence whose noise level is a plain attribute."""

    def __init__(self, sigma: float):
        super().__init__()
        self.net, self.sigma = _linear(), sigma

    def forward(self, x):
        return self.net(x + self.sigma * torch.randn_like(x))


def test_a_randomized_models_resume_compares_its_scores_under_one_seed(tmp_path):
    x, y = _images()
    averaged = AttackConfig(eps=8 / 255, eot_iter=2, **TINY)  # as a randomized model is attacked
    _evaluate(Noisy(0.01), x, y, attack=averaged, out=tmp_path / "r.json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same randomized model resumes without a word
        _evaluate(Noisy(0.01), x, y, attack=averaged, out=tmp_path / "r.json")
    with pytest.warns(UserWarning, match="scores on the first images differ"):
        _evaluate(Noisy(0.03), x, y, attack=averaged, out=tmp_path / "r.json")


def test_a_model_drawing_its_own_randomness_does_not_resume_a_deterministic_ones_results(tmp_path):
    x, y = _images()
    net, own = _linear(), torch.Generator().manual_seed(1)  # noise no global seed reaches
    _evaluate(lambda images: net(images), x, y, out=tmp_path / "r.json")
    with pytest.warns(UserWarning, match="only one of the two draws randomness of its own"):
        _evaluate(lambda images: net(images + 0.01 * torch.randn(images.shape, generator=own)), x, y,
                  out=tmp_path / "r.json")


def test_shards_of_models_whose_scores_differ_are_not_merged(tmp_path):
    x, y = _images()
    for k, gate in enumerate([Gate(1), Gate(3)]):  # same class and parameters: only the scores tell
        _evaluate(gate, x, y, batch_sizes=[4], shard=(k, 2), out=tmp_path / f"shard{k}.json")
    with pytest.raises(HPMError, match="shards of different models"):
        hpm.evaluation.merge_reports([tmp_path / "shard0.npz", tmp_path / "shard1.npz"], tmp_path / "all.json",
                                     tmp_path / "shard0.json")


def test_merged_shards_keep_the_checks_that_say_their_numbers_are_wrong(tmp_path):
    x, y = _images()
    for k in range(2):
        _evaluate(NoisyNet(), x, y, batch_sizes=[4], shard=(k, 2), out=tmp_path / f"shard{k}.json")
    merged = hpm.evaluation.merge_reports([tmp_path / "shard0.npz", tmp_path / "shard1.npz"], tmp_path / "all.json",
                                          tmp_path / "shard0.json")
    assert [c.name for c in merged.wrong_number_checks] == ["randomness_averaged"]
    assert main(["eval", "--merge", str(tmp_path / "shard0.npz"), str(tmp_path / "shard1.npz"),
                 "--out", str(tmp_path / "again.json")]) == 1


class Counting(nn.Module):
    """A defence that counts its calls in a plain attribute (a stateful defence)."""

    def __init__(self):
        super().__init__()
        self.net, self.calls = _linear(), 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


def test_recording_the_models_scores_for_a_resume_leaves_the_model_as_it_was():
    from hpm.defence import probe_scores

    model = Counting()
    probe_scores(model, _images()[0][:4])
    assert model.calls == 0


def test_log_probabilities_have_an_input_gradient_and_are_attacked_end_to_end():
    net = _linear()
    confident = Defence(lambda images: torch.log_softmax(50 * net(images), 1))  # its logsumexp is always 0
    assert confident.deployed_differentiable and "deployed" in confident.attack_targets


def test_a_head_whose_prototypes_were_never_fitted_is_refused(tiny_net, tmp_path, tiny_data_root, capsys):
    x, y = _images()
    with pytest.raises(HPMError, match="class prototypes were never fitted.*--mode fit"):
        _evaluate(hpm.wrap(tiny_net, head="hpm"), x, y)
    factory = tmp_path / "unfitted.py"
    factory.write_text("import sys\nsys.path.insert(0, %r)\nimport hpm\nfrom conftest import TinyNet\n\n"
                       "def build():\n    return hpm.wrap(TinyNet().eval(), head='ncm')\n" % str(REPO / "tests"))
    assert main(["eval", f"{factory}:build", "--data", str(tiny_data_root), "--n", "4", "--quick",
                 "--out", str(tmp_path / "r.json")]) == 2
    assert "never fitted" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_sizes": [2.5]}, r"batch_sizes must be positive integers.*got \[2.5\]"),
    ({"batch_sizes": [True]}, "batch_sizes must be positive integers"),
    ({"batch_sizes": [0]}, "batch_sizes must be positive integers"),
    ({"check_n": 0}, "check_n must be a positive integer"),
])
def test_evaluation_arguments_that_would_be_truncated_or_crash_are_refused(tiny_net, kwargs, message):
    with pytest.raises(HPMError, match=message):
        _evaluate(tiny_net, *_images(), **kwargs)
    assert _evaluate(tiny_net, *_images(), batch_sizes=4).config.batch_sizes == [4]  # or one integer


def test_a_randomized_model_evaluated_without_checks_is_called_nondeterministic_not_batch_dependent():
    net = _linear()
    report = _evaluate(lambda images: net(images + 0.01 * torch.randn_like(images)), *_images())
    checks = {c.name: c.passed for c in report.checks}
    assert checks["deterministic_forward"] is False and checks["batch_independent"] is None


class Pair(nn.Module):
    """Returns its logits with something else, as many research models do."""

    def __init__(self):
        super().__init__()
        self.net = TinyNet().eval()

    def forward(self, x):
        return self.net(x), None


@pytest.mark.parametrize("make, message", [
    (lambda: Pair(), "returned a tuple, not a tensor of scores"),
    (lambda: TinyNet().double().eval(), r"call .float\(\) on a model in another precision"),
])
def test_wrapping_a_model_that_cannot_be_split_names_what_the_split_needs(make, message):
    with pytest.raises(HPMError, match=message):
        hpm.wrap(make(), head="hpm")


class LinearThenSkip(nn.Module):
    """Ends in nn.Linear plus a zero vector: the probe cannot tell the two apart, the split can."""

    def __init__(self):
        super().__init__()
        self.body, self.fc = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 16)), nn.Linear(16, 10)
        self.register_buffer("skip", torch.zeros(10))

    def forward(self, x):
        return self.fc(self.body(x)) + self.skip


def test_a_model_that_uses_its_final_linears_output_after_it_is_refused_naming_the_fix():
    with pytest.raises(HPMError, match=r"final nn.Linear replaced by nn.Identity its forward fails .* end the forward "
                                       r"in the nn.Linear"):
        hpm.wrap(LinearThenSkip(), head="fc")


def _quantise(images):
    with torch.no_grad():  # unseen by autograd: only a comparison of the images tells
        images.mul_(255).round_().div_(255)
    return images


def test_a_model_that_writes_its_input_is_refused_and_leaves_the_callers_images_as_they_were():
    net, (x, y) = _linear(), _images()
    before = x.clone()
    with pytest.raises(HPMError, match=r"out-of-place operation \(x.clamp\(\)\)"):
        _evaluate(lambda images: net(images.mul_(2)), x, y)
    with pytest.raises(HPMError, match="changed its input images in place"):
        _evaluate(lambda images: net(_quantise(images)), x, y)
    assert torch.equal(x, before)


def test_wrap_refuses_a_dataset_or_class_names_that_do_not_fit_the_models_classes(tiny_net):
    with pytest.raises(HPMError, match="the model scores 10 classes, but cifar100 has 100"):
        hpm.wrap(tiny_net, dataset="cifar100")
    with pytest.raises(HPMError, match="classes gives 2 names, but the model scores 10 classes"):
        hpm.wrap(tiny_net, classes=["cat", "dog"])


def test_a_model_passed_in_training_mode_is_evaluated_in_eval_mode_with_a_warning(tiny_net):
    with pytest.warns(UserWarning, match="BatchNorm2d layers are in training mode; hpm evaluates it in eval mode") \
            as warned:
        _evaluate(tiny_net.train(), *_images())
    assert warned[0].filename == __file__  # the warning points at the caller's line

    class DropPath(nn.Module):  # timm's stochastic depth, as timm names it
        def forward(self, x):
            return x * (torch.rand(len(x), 1) > 0.1) / 0.9 if self.training else x

    with pytest.warns(UserWarning, match="DropPath layers are in training mode"):
        _evaluate(nn.Sequential(_linear(), DropPath()), *_images())


def test_two_surrogates_are_also_attacked_as_an_ensemble(tiny_net):
    defence = Defence(tiny_net, surrogates={"a": tiny_net, "b": TinyNet()})
    assert list(defence.attack_targets) == ["deployed", "a", "b", "ensemble"]
    assert defence.targeted_on == ("deployed", "a", "b")


def test_models_that_declare_their_own_refuse_other_declarations(tiny_net):
    model = hpm.wrap(tiny_net, head="hpm")
    assert declare(model) is model
    with pytest.raises(HPMError, match="declares its own"):
        declare(model, surrogates={"x": tiny_net})
    with pytest.raises(HPMError, match="declares its own"):
        declare(model, batch_dependent=False)  # an HPM head is batch-dependent
    with pytest.raises(HPMError, match="surrogate name"):
        Defence(tiny_net, surrogates={"deployed": tiny_net})


def test_a_clean_accuracy_far_below_the_cards_fails_its_check():
    from hpm.evaluation.checks import check_against_card

    card = SimpleNamespace(checkpoint_config=SimpleNamespace(metrics={
        "clean_accuracy": {"value": 0.9, "protocol": "clean", "n": 1000, "mode": "hard"}}))
    far = SimpleNamespace(batch_size=16, n=100, clean_accuracy=0.5)
    near = SimpleNamespace(batch_size=16, n=100, clean_accuracy=0.87)
    assert check_against_card(card, far).passed is False and "not normalised twice" in check_against_card(
        card, far).detail
    assert check_against_card(card, near).passed is True
    assert check_against_card(SimpleNamespace(), far) is None  # no card, no check
    batch_dependent = SimpleNamespace(batch_dependent=True, checkpoint_config=SimpleNamespace(metrics={
        "clean_accuracy": {"value": 0.9, "protocol": "clean", "n": 1000, "batch_size": 256}}))
    assert check_against_card(batch_dependent, SimpleNamespace(batch_size=256, n=100, clean_accuracy=0.5)).passed \
        is False
    # at a batch size the card does not record: held to its lowest value less an allowance (10 points)
    assert check_against_card(batch_dependent, far).passed is False
    assert "less 10 points for another batch size" in check_against_card(batch_dependent, far).detail
    assert check_against_card(batch_dependent, SimpleNamespace(batch_size=16, n=100, clean_accuracy=0.78)).passed


# -- one namespace for models in every command ---------------------------------------------------------------------

def test_every_kind_of_model_name_is_told_apart_and_a_typo_lists_the_closest_shipped_names(tmp_path):
    from hpm.model import model_kind

    assert model_kind("cifar10-resnet18-hpm-clean") == "checkpoint"
    assert model_kind("checkpoints/cifar10-resnet18-hpm-clean") == "checkpoint"
    assert model_kind(str(REPO / "checkpoints" / "cifar10-resnet18-ncm")) == "checkpoint"
    assert model_kind("someone/hpm-demo") == "checkpoint"
    assert [model_kind(s) for s in ("pyautoattack", "timm:resnet18", "robustbench:Standard")] == ["source"] * 3
    assert [model_kind(s) for s in ("my_model.py:build", "pkg.models:make")] == ["factory"] * 2
    with pytest.raises(HPMError, match="did you mean cifar10-resnet18-hpm-clean"):
        model_kind("cifar10-resnet18-hpm-clen")
    with pytest.raises(HPMError, match="did you mean cifar10-resnet18-hpm-clean"):
        hpm.load("cifar10-resnet18-hpm-clen")


def test_a_factory_file_is_a_model_for_load_and_info(tmp_path, capsys):
    factory = tmp_path / "my_model.py"
    factory.write_text("import torch\n\ndef build():\n    return torch.nn.Sequential(torch.nn.Flatten(), "
                       "torch.nn.Linear(3 * 32 * 32, 10))\n")
    assert isinstance(hpm.load(f"{factory}:build"), nn.Sequential)
    assert main(["info", f"{factory}:build"]) == 0
    assert "Sequential" in capsys.readouterr().out
    with pytest.raises(HPMError, match="no attribute 'make'; its callables: build"):
        hpm.load(f"{factory}:make")
    with pytest.raises(HPMError, match="no such file"):
        hpm.load(f"{tmp_path / 'missing.py'}:build")
    with pytest.raises(HPMError, match=r"name the factory in the file, .*my_model.py:NAME; it defines build"):
        hpm.load(str(factory))
    with pytest.raises(HPMError, match=r"a model source, not a checkpoint: hpm.wrap\('timm:resnet18'"):
        hpm.load("timm:resnet18")


def test_a_factory_that_needs_arguments_or_returns_nothing_is_named_with_the_fix(tmp_path):
    factory = tmp_path / "mine.py"
    factory.write_text("def sized(width, depth):\n    return None\n\ndef forgot():\n    model = 1\n\nCONFIG = {}\n\n"
                       "class Net:\n    def __init__(self, width):\n        pass\n\n"
                       "def classify(images):\n    return images.flatten(1)[:, :10]\n")
    with pytest.raises(HPMError, match=r"sized\(width, depth\) needs arguments, .* e.g. def load\(\): return "
                                       r"sized\(...\)"):
        hpm.load(f"{factory}:sized")
    with pytest.raises(HPMError, match=r"Net\(width\) needs arguments"):
        hpm.load(f"{factory}:Net")
    classify = hpm.load(f"{factory}:classify")  # a function of the images is the model itself
    assert classify.__name__ == "classify"
    with pytest.raises(HPMError, match=r"forgot\(\) returned None; a factory returns the model"):
        hpm.load(f"{factory}:forgot")
    with pytest.raises(HPMError, match=r"CONFIG is a dict, neither a model .* nor a factory"):
        hpm.load(f"{factory}:CONFIG")


def test_the_command_line_takes_a_factory_with_a_surrogate(tmp_path, tiny_data_root):
    factory = tmp_path / "defence.py"
    factory.write_text("import torch\n\ndef net():\n    torch.manual_seed(0)\n"
                       "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))\n\n"
                       "def deployed():\n    model = net()\n    return lambda x: model(x).detach()\n")
    out = tmp_path / "r.json"
    assert main(["eval", f"{factory}:deployed", "--surrogate", f"linear={factory}:net", "--data",
                 str(tiny_data_root), "--n", "4", "--iters", "1", "--square-queries", "2", "--target-classes", "1",
                 "--no-checks", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [p["name"] for p in report["plan"]] == ["apgd-ce/linear", "apgd-dlr/linear", "apgd-t/linear", "square"]
    assert report["model_info"]["declared"]["surrogates"] == ["linear"]


def test_hpm_train_takes_a_factory_and_a_shipped_checkpoints_name(tmp_path, tiny_data_root, monkeypatch, capsys):
    factory = tmp_path / "my_model.py"
    factory.write_text("import sys\nsys.path.insert(0, %r)\nfrom conftest import TinyNet\n\n"
                       "def build():\n    return TinyNet().eval()\n\n"
                       "def function():\n    net = TinyNet().eval()\n    return lambda x: net(x)\n" % str(REPO / "tests"))
    common = ["--mode", "fit", "--data", str(tiny_data_root)]
    assert main(["train", f"{factory}:build", "--head", "ncm", "--out", str(tmp_path / "mine"), *common]) == 0
    assert hpm.load(tmp_path / "mine", backbone=TinyNet()).head.prototypes.abs().sum() > 0
    assert main(["train", f"{factory}:function", "--head", "ncm", "--out", str(tmp_path / "fn"), *common]) == 2
    assert "this command needs an nn.Module classifier" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)  # a shipped name, not a folder of the clone
    assert main(["train", "cifar10-resnet20w32-fgsmrs-20ep-fc", "--head", "ncm", "--out", "shipped", *common]) == 0
    assert json.loads((tmp_path / "shipped" / "config.json").read_text())["backbone"]["name"] == \
        "cifar10-resnet20w32-fgsmrs-20ep-fc"  # named, not stored again


def test_predict_says_how_it_converted_an_image():
    from PIL import Image

    from hpm.images import describe_conversion, open_image

    grey = open_image(Image.new("L", (28, 28)))
    assert describe_conversion(grey, (3, 32, 32)) == ("converted from greyscale (L) to RGB; resized from 28x28 to "
                                                      "32x32 (short side 32)")
    assert describe_conversion(open_image(Image.new("RGB", (32, 32))), (3, 32, 32)) is None
    assert "centre-cropped to 32x32" in describe_conversion(open_image(Image.new("RGB", (64, 40))), (3, 32, 32))


# -- logs a file can hold --------------------------------------------------------------------------------------

def test_without_a_terminal_each_batch_size_logs_lines_not_stacked_bars(tiny_net, capsys):
    hpm.evaluate_model(tiny_net, *_images(), attack=AttackConfig(eps=8 / 255, **TINY), batch_sizes=[4, 8],
                       checks=False, progress=True)
    err = capsys.readouterr().err
    assert "\x1b[" not in err and "\r" not in err  # no cursor moves, no redraws
    lines = [line for line in err.splitlines() if line.startswith("bs=")]
    assert 1 <= len(lines) <= 4 and all("attacks" in line for line in lines)  # one stage bar, start and end


# -- the worked example --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_worked_example_runs_end_to_end_at_a_tiny_budget(tmp_path, tiny_data_root):
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "batch_dependent_defence.py"), "--data", str(tiny_data_root),
         "--n-train", "30", "--epochs", "1", "--weights", str(tmp_path / "w.safetensors"), "--n", "8", "--iters",
         "1", "--square-queries", "2", "--check-n", "4", "--out", str(tmp_path), "--quiet"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "as if per-sample: batch 8" in result.stdout and "batch-dependent: batch 1" in result.stdout
    declared = json.loads((tmp_path / "tbn-batch-dependent.json").read_text())
    assert {"batch:apgd-ce/deployed", "apgd-ce/running-stats"} <= {p["name"] for p in declared["plan"]}

    from hpm.publish.declared import declared_lines

    lines = declared_lines(tmp_path, {"reports": {"per-sample": "tbn-as-per-sample.json",
                                                  "batch-dependent": "tbn-batch-dependent.json"}})
    rows = [line for line in lines if line.startswith("| per-sample") or line.startswith("| batch-dependent")]
    assert [row.split(" | ")[3] for row in rows] == ["8", "1", "8"]  # the batch sizes run
    assert "| not run | – |" in rows[0]  # no whole-batch attack on a model declared per-sample
    assert any(line.startswith("- per-sample: ") for line in lines)  # its batch_independent check, quoted
