"""The mixed classifier (Bai et al.): the mixture it computes, its gradients, the attacks it declares, and an
evaluation of it end to end."""
import pytest
import torch

from hpm.attacks import default_plan, parse_attacks
from hpm.evaluation import AttackConfig, evaluate_model
from hpm.mixed import MixedClassifier

from conftest import TinyMLP


def mixed(alpha=0.5, temperature=1.0, seed=0):
    torch.manual_seed(seed)
    return MixedClassifier(TinyMLP(), TinyMLP(), alpha=alpha, temperature=temperature).eval()


def test_the_output_is_the_log_of_the_mixed_probabilities():
    model, x = mixed(alpha=0.3, temperature=0.5), torch.rand(6, 3, 32, 32)
    expected = 0.7 * model.standard(x).softmax(-1) + 0.3 * (model.robust(x) / 0.5).softmax(-1)
    assert torch.allclose(model(x).exp(), expected, atol=1e-6)


def test_alpha_zero_and_one_are_the_standard_and_the_robust_branch():
    x = torch.rand(6, 3, 32, 32)
    standard_only, robust_only = mixed(alpha=0.0), mixed(alpha=1.0, temperature=2.0)
    assert torch.allclose(standard_only(x), standard_only(x, mode="standard"), atol=1e-6)
    assert torch.allclose(robust_only(x), (robust_only.robust(x) / 2.0).log_softmax(-1), atol=1e-6)


def test_an_attacker_differentiates_through_both_networks():
    model, x = mixed(alpha=0.5), torch.rand(4, 3, 32, 32, requires_grad=True)
    torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])).backward()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.standard.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.robust.parameters())


def test_it_declares_the_mixture_and_each_branch_as_attack_targets():
    model = mixed()
    names = [s.name for s in default_plan(model)]
    assert names == ["apgd-ce/deployed", "apgd-dlr/deployed", "apgd-ce/standard", "apgd-dlr/standard",
                     "apgd-ce/robust", "apgd-dlr/robust", "apgd-t/deployed", "square"]
    assert parse_attacks(["apgd-ce/robust"], model)[0].surrogates == ("robust",)
    with pytest.raises(ValueError, match="does not apply to this model"):
        parse_attacks(["apgd-ce/fc"], model)


def test_a_saturated_robust_branch_is_detected():
    x = torch.rand(8, 3, 32, 32)
    assert mixed(temperature=1e-6).robust_saturation(x) == 1.0
    assert mixed(temperature=1.0).robust_saturation(x) == 0.0


@pytest.mark.parametrize("alpha, temperature", [(-0.1, 1.0), (1.5, 1.0), (0.5, 0.0)])
def test_settings_out_of_range_are_refused(alpha, temperature):
    with pytest.raises(ValueError):
        mixed(alpha=alpha, temperature=temperature)


def test_an_evaluation_attacks_the_mixture_and_judges_every_attack_on_it():
    model, x = mixed(alpha=0.5), torch.rand(8, 3, 32, 32)
    with torch.no_grad():
        y = model(x).argmax(1)
    report = evaluate_model(model, x, y, attack=AttackConfig(n_iter=3, square_queries=10, n_target_classes=1),
                            batch_sizes=[8], checks=False, progress=False)
    summary = report.results["8"]
    assert summary.clean_accuracy == 1.0 and summary.robust_accuracy <= summary.clean_accuracy
    assert [a.name for a in summary.per_attack][:2] == ["apgd-ce/deployed", "apgd-dlr/deployed"]
