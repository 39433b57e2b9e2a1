"""MixedNUTS: the map of the robust logits, the mixture with a hard-max standard branch, the attack surrogates that
replace the hard max, the authors' selection of the map and alpha, and its checkpoint."""
import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hpm
from hpm.attacks import default_plan
from hpm.cli import main
from hpm.errors import CheckpointError, HPMError
from hpm.evaluation import AttackConfig, evaluate_model
from hpm.nuts import MixedNUTS, RobustLogitMap, mapped_margins, standardise
from hpm.data import ImageTensorDataset
from hpm.train import nuts as selecting
from hpm.train.nuts import Grid, LowestMargin, attacked_logits, select_map, selection_logits

from conftest import TinyMLP


def nuts(alpha=0.6, scale=1.5, power=2.0, bias=-0.5, seed=0):
    torch.manual_seed(seed)
    return MixedNUTS(TinyMLP(), TinyMLP(), alpha, RobustLogitMap(scale, power, bias)).eval()


def test_the_map_standardises_the_logits_then_applies_gelu_power_and_scale():
    logits = torch.randn(5, 10, dtype=torch.float64) * 3 + 1
    z = (logits - logits.mean(1, keepdim=True)) / logits.std(1, keepdim=True)  # unbiased, as the authors
    u = F.gelu(z - 0.5)
    expected = 1.5 * u.sign() * u.abs() ** 2.0
    assert torch.allclose(RobustLogitMap(1.5, 2.0, -0.5).mapped(logits), expected, atol=1e-6)
    assert torch.allclose(standardise(logits).mean(1), torch.zeros(5, dtype=torch.float64), atol=1e-9)
    with pytest.raises(ValueError, match=r"scale must be in \(0, "):
        RobustLogitMap(0, 1, 0)
    with pytest.raises(ValueError, match=r"power in \[1, "):  # below 1, |u|^p has no gradient at u = 0
        RobustLogitMap(1, 0.5, 0)


def test_the_deployed_output_mixes_the_standard_prediction_as_a_hard_max_with_the_mapped_robust_softmax():
    model, x = nuts(), torch.rand(6, 3, 32, 32)
    g, h = model.standard(x), model.robust(x)
    mapped = model.robust_map.mapped(h).softmax(-1).float()
    expected = 0.4 * F.one_hot(g.argmax(1), g.shape[1]).float() + 0.6 * mapped
    assert torch.allclose(model(x).exp(), expected, atol=1e-6)
    assert torch.allclose(model(x, "mapped").exp(), 0.4 * g.softmax(-1) + 0.6 * mapped, atol=1e-6)


def test_the_adaptive_attack_is_the_authors_blend_end_to_end_at_its_own_weight():
    model = MixedNUTS(TinyMLP(), TinyMLP(), 0.99, RobustLogitMap(1.5, 2.0, -0.5), attack_alpha=0.6).eval()
    x = torch.rand(6, 3, 32, 32)
    g, h = model.standard(x), model.robust(x)
    blend = 0.4 * g.softmax(-1) + 0.6 * (0.9 * h.softmax(-1) + 0.1 * model.robust_map.mapped(h).softmax(-1).float())
    assert torch.allclose(model(x, "adaptive").exp(), blend, atol=1e-6)  # so any loss's gradient is the blend's
    assert nuts(alpha=0.7).attack_alpha == 0.7  # not given: the deployed alpha
    with pytest.raises(ValueError, match="attack_alpha must be in"):
        MixedNUTS(TinyMLP(), TinyMLP(), 0.5, RobustLogitMap(1, 1, 0), attack_alpha=1.5)


def test_the_robust_branch_decides_where_its_mapped_margin_exceeds_one_minus_alpha_over_alpha():
    model, x = nuts(alpha=0.5), torch.rand(64, 3, 32, 32)
    with torch.no_grad():
        margin = mapped_margins(model.robust(x), model.robust_map)
        robust_wins = margin > (1 - model.alpha) / model.alpha
        follows_robust = model(x).argmax(1) == model.robust(x).argmax(1)
    assert follows_robust[robust_wins].all()


def test_the_hard_max_passes_no_gradient_and_bpda_passes_the_softmax_gradient_at_the_deployed_value():
    model = nuts()
    x = torch.rand(4, 3, 32, 32, requires_grad=True)
    y = torch.arange(4)
    g_hard, = torch.autograd.grad(F.nll_loss(model(x), y), list(model.standard.parameters())[:1], allow_unused=True)
    assert g_hard is None  # the standard branch is not even in the deployed output's graph: masked
    bpda, mapped = model(x, "bpda"), model(x, "mapped")
    assert torch.equal(bpda, model(x))  # forward: the deployed mixture itself
    g_bpda, = torch.autograd.grad(F.nll_loss(bpda, y), x)
    g_mapped, = torch.autograd.grad(F.nll_loss(mapped, y), x)
    assert torch.allclose(g_bpda, g_mapped) and g_bpda.abs().max() > 0


def test_its_attacks_are_the_surrogates_of_the_hard_max_and_each_raw_branch():
    plan = {s.name for s in default_plan(nuts())}
    assert {"apgd-ce/adaptive", "apgd-ce/bpda", "apgd-ce/mapped", "apgd-ce/standard", "apgd-ce/robust"} <= plan
    assert {"apgd-t/adaptive", "apgd-t/bpda"} <= plan  # the authors' adaptive attack runs targeted too
    assert "square" in plan


def test_the_app_says_which_branch_the_mixture_followed_and_how_the_margin_compares_with_the_cutoff():
    from hpm import interactive as demo
    model, x = nuts(alpha=0.5), torch.rand(1, 3, 32, 32)
    model.classes = list("abcd")
    text = demo.nuts_decision(model, x)
    with torch.no_grad():
        mixture, standard, robust = (int(model(x, m).argmax()) for m in ("hard", "standard", "robust"))
    assert text.startswith(f"The mixture predicts {'abcd'[mixture]}, ")
    assert ("both branches'" in text) == (standard == robust) and "against the cutoff (1 − α)/α = 1.000" in text
    assert demo.nuts_decision(MixedNUTS(TinyMLP(), TinyMLP(), 0.0, RobustLogitMap(1, 1, 0)).eval(), x)  # alpha 0


def test_the_sanity_checks_catch_a_saturated_map_and_an_attack_that_leaves_the_standard_branch_out():
    x = torch.rand(8, 3, 32, 32)
    fine = dict((name, passed) for name, passed, _ in nuts().pitfall_checks(x))
    assert fine == {"mapped_robust_branch_not_saturated": True, "adaptive_surrogate_has_gradient": True,
                    "standard_branch_has_gradient": True}
    saturated = dict((name, passed) for name, passed, _ in nuts(scale=1e4, power=4).pitfall_checks(x))
    assert saturated["mapped_robust_branch_not_saturated"] is False
    robust_only = MixedNUTS(TinyMLP(), TinyMLP(), 0.6, RobustLogitMap(1.5, 2.0, -0.5), attack_alpha=1.0).eval()
    checks = dict((name, passed) for name, passed, _ in robust_only.pitfall_checks(x))
    assert checks["adaptive_surrogate_has_gradient"] and checks["standard_branch_has_gradient"] is False


def test_selection_takes_the_cutoff_at_the_beta_level_and_the_map_that_lets_fewest_wrong_margins_through():
    torch.manual_seed(0)
    right = torch.randn(400, 10, dtype=torch.float64)
    right[:, 0] += 4  # confident and right
    wrong = torch.randn(100, 10, dtype=torch.float64)
    wrong[:, 1] += 1  # less confident
    grid = Grid(n=3)
    chosen = select_map(right, wrong, beta=98.5, grid=grid)
    margins = mapped_margins(right, chosen.robust_map()).numpy()
    assert chosen.cutoff == pytest.approx(np.percentile(margins, 1.5))
    assert chosen.alpha == pytest.approx(1 / (1 + chosen.cutoff))
    assert (margins >= chosen.cutoff).mean() >= 0.985
    for s in grid.values()[0]:  # no map of the grid lets fewer wrong margins through
        for c in grid.values()[1]:
            for p in grid.values()[2]:
                m = RobustLogitMap(float(s), float(p), float(c))
                cut = min(float(np.percentile(mapped_margins(right, m).numpy(), 1.5)), 1 - 1e-9)
                assert chosen.objective <= float((mapped_margins(wrong, m) >= cut).double().mean())
    top = right.softmax(-1).topk(2, dim=-1).values  # the attack's weight: the same selection without the map
    attack_cutoff = np.percentile((top[:, 0] - top[:, 1]).numpy(), 5)
    assert chosen.attack_beta == 95 and chosen.attack_alpha == pytest.approx(1 / (1 + attack_cutoff))
    with pytest.raises(ValueError, match="needs attacked images"):
        select_map(right[:0], wrong)


def test_the_selection_attack_keeps_per_image_the_logits_of_the_lowest_margin_input_it_met():
    tracker = LowestMargin(torch.nn.Identity(), torch.tensor([0, 1]))
    first, second = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 1.0]]), torch.tensor([[3.0, 2.0, 0.0], [0.0, 1.0, 0.0]])
    tracker(first), tracker(second)
    assert torch.equal(tracker.logits, torch.stack([second[0], first[1]]))  # row 0 lower in the second, row 1 not
    assert (tracker.margin > 0).all()
    tracker(torch.tensor([[0.0, 1.0, 0.0], [0.0, 3.0, 0.0]]))  # row 0 misclassified: a negative margin
    assert tracker.margin[0] < 0 and torch.equal(tracker.logits[1], first[1])
    with pytest.raises(RuntimeError, match="tracks a batch of 2 rows"):
        tracker(first[:1])


def test_the_selection_attack_attacks_the_clean_correct_images_then_apgd_t_those_still_standing(monkeypatch):
    import hpm.train.nuts as selection
    torch.manual_seed(0)
    robust = TinyMLP().eval()
    x = torch.rand(12, 3, 32, 32)
    with torch.no_grad():
        clean = robust(x)
    y = clean.argmax(1)
    y[:3] = (y[:3] + 1) % clean.shape[1]  # three images misclassified clean
    calls, run_attack, steps = [], selection.run_attack, []

    def spy(spec, batch, xb, yb, **kwargs):
        calls.append((spec.name, len(xb)))
        return run_attack(spec, batch, xb, yb, **kwargs)
    monkeypatch.setattr(selection, "run_attack", spy)
    adv, clean_out, labels = attacked_logits(robust, x, y, eps=32 / 255, n_iter=5, target_classes=2, batch_size=12,
                                             on_step=lambda: steps.append(1))
    assert len(steps) == 6 + (2 * 6 if len(calls) == 2 else 0)  # n_iter + 1 steps a run: CE, then two classes
    assert torch.allclose(clean_out, clean) and torch.equal(labels, y)
    assert torch.equal(adv[:3], clean[:3])  # not attacked: their clean logits

    def plain(logits):  # the tracked margin: true class minus best other of the standardised softmax
        p = standardise(logits).softmax(-1)
        return p.gather(1, y[:, None]).squeeze(1) - p.scatter(1, y[:, None], -1.0).amax(1)
    assert (plain(adv)[3:] <= plain(clean)[3:] + 1e-6).all() and (plain(adv)[3:] < plain(clean)[3:] - 1e-3).any()
    standing = int((adv[3:].argmax(1) == y[3:]).sum())
    assert calls[0] == ("apgd-ce/deployed", 9)  # the clean-correct images
    assert [name for name, _ in calls[1:]] in ([], ["apgd-t/deployed"]) and all(n >= standing for _, n in calls[1:])
    assert len(calls) == 1 or calls[1][1] < 9  # APGD-T only on those APGD-CE left standing


def test_an_evaluation_runs_every_surrogate_and_judges_on_the_deployed_mixture():
    model, x = nuts(), torch.rand(6, 3, 32, 32)
    y = model(x).argmax(1)
    report = evaluate_model(model, x, y, attack=AttackConfig(n_iter=2, square_queries=5, n_target_classes=1),
                            batch_sizes=[6], progress=False)
    assert {c.name: c.passed for c in report.checks}["adaptive_surrogate_has_gradient"]
    names = [a.name for a in next(iter(report.results.values())).per_attack]
    assert "apgd-ce/adaptive" in names and "apgd-ce/bpda" in names
    assert report.model_info["head"].startswith("MixedNUTS (alpha 0.6")


def test_hpm_mix_nuts_selects_on_training_images_saves_and_loads_the_same_mixture(two_checkpoints, tiny_data_root,
                                                                                   tmp_path):
    standard, robust = two_checkpoints
    out = tmp_path / "nuts"
    with pytest.warns(UserWarning, match="selection images are classified correctly under the selection attack"):
        assert main(["mix", "--standard", standard, "--robust", robust, "--nuts", "--data", str(tiny_data_root),
                     "--n-select", "20", "--select-iters", "2", "--select-targets", "1", "--batch-size", "10",
                     "--out", str(out)]) == 0  # too few images for a real selection: it says so
    config = json.loads((out / "config.json").read_text())
    selection = config["robust_map"]["selection"]
    assert "training images" in selection["images"] and selection["attack"].startswith("APGD-CE, then APGD-T")
    assert "lowest margin met at any iterate" in selection["attack"]
    assert 0 < config["alpha"] <= 1 and config["alpha"] == pytest.approx(1 / (1 + selection["cutoff"]))
    loaded = hpm.load(out)
    assert isinstance(loaded, MixedNUTS) and loaded.robust_map.config() == {
        k: config["robust_map"][k] for k in ("scale", "power", "bias")}
    assert loaded.attack_alpha == config["robust_map"]["attack_alpha"] == selection["attack_alpha"]
    card = (out / "README.md").read_text()
    assert "MixedNUTS (Bai et al., training-free)" in card and "## How alpha and the map were selected" in card
    assert f"98.5% of their margins after the map stay at or above it ({selection['cutoff']:.4g})" in card
    assert f"weighs the robust branch in its gradient by {selection['attack_alpha']:.4g}" in card
    assert selection["commands"][0] in card.split("## Reproduce")[1]  # the selection is how to rebuild it
    assert len(list((tmp_path / "nuts.run").glob("selection-*.safetensors"))) == 2  # a rerun resumes from these
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(hpm.load(out)(x), loaded(x))


def test_the_selection_resumes_from_its_batch_files_and_attacks_again_for_another_model_or_other_labels(
        two_checkpoints, tmp_path, monkeypatch):
    robust = hpm.load(two_checkpoints[1])
    images = ImageTensorDataset(torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8), torch.arange(6),
                                robust.classes, "six random images")
    settings = dict(eps=8 / 255, n_iter=2, target_classes=1, batch_size=4)
    first = selection_logits(robust, images, tmp_path, **settings)
    assert [len(t) for t in first] == [6, 6, 6] and len(list(tmp_path.glob("selection-*.safetensors"))) == 2
    with monkeypatch.context() as m:
        m.setattr(selecting, "attacked_logits", lambda *a, **k: pytest.fail("a stored batch was attacked again"))
        assert all(torch.equal(a, b) for a, b in zip(first, selection_logits(robust, images, tmp_path, **settings)))
    with torch.no_grad():
        next(robust.parameters()).add_(0.01)  # another model under the same name: its own batches
    selection_logits(robust, images, tmp_path, **settings)
    assert len(list(tmp_path.glob("selection-*.safetensors"))) == 4
    relabelled = ImageTensorDataset(images.images, images.labels.flip(0), images.classes, images.source)
    selection_logits(robust, relabelled, tmp_path, **settings)  # other labels under the same name: attacked again
    assert len(list(tmp_path.glob("selection-*.safetensors"))) == 6


def test_a_module_that_declares_nothing_has_a_fingerprint_of_its_weights_and_class():
    from hpm.defence import model_fingerprint
    plain = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    before = model_fingerprint(plain)
    assert model_fingerprint(copy.deepcopy(plain)) == before
    with torch.no_grad():
        plain[1].bias.add_(1)
    assert model_fingerprint(plain) != before


GOOD_MAP = {"scale": 1.0, "power": 2.0, "bias": 0.0}


@pytest.mark.parametrize("robust_map, message", [
    ({"scale": 1.0}, "finite numbers scale, power and bias"),
    ({**GOOD_MAP, "attack_alpha": True}, "finite numbers scale, power and bias"),
    ({**GOOD_MAP, "attack_alpha": "0.9"}, "finite numbers scale, power and bias"),
    ({**GOOD_MAP, "scale": True}, "finite numbers scale, power and bias"),
    ({**GOOD_MAP, "scale": float("inf")}, "finite numbers scale, power and bias"),
    ({**GOOD_MAP, "colour": "red"}, "finite numbers scale, power and bias"),
    ({**GOOD_MAP, "scale": 1e308}, r"scale must be in \(0, 10000\]"),
    ({**GOOD_MAP, "power": 1e6}, r"power in \[1, 16\]"),
    ({**GOOD_MAP, "bias": 1e300}, r"bias in \[-10, 10\]"),
    ({**GOOD_MAP, "standard": "softmax"}, "only as its authors do, as a 'hard max'"),
])
def test_a_robust_map_without_finite_numbers_in_range_or_with_another_standard_branch_is_refused(
        two_checkpoints, tmp_path, robust_map, message):
    standard, robust = two_checkpoints
    main(["mix", "--standard", standard, "--robust", robust, "--alpha", "0.5", "--out", str(tmp_path / "m")])
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["robust_map"] = robust_map
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message):
        hpm.load(tmp_path / "m")


def test_hpm_info_writes_mixednuts_formula(two_checkpoints, tmp_path, capsys):
    standard, robust = (hpm.load(path) for path in two_checkpoints)
    MixedNUTS(standard, robust, 0.9, RobustLogitMap(2.0, 1.5, -0.5)).save_pretrained(tmp_path / "nuts")
    assert main(["info", str(tmp_path / "nuts")]) == 0
    assert ("MixedNUTS, (1 - 0.9) onehot(argmax standard) + 0.9 softmax(h~), h~ = 2 sign(u) |u|^1.5, "
            "u = GELU(standardised robust logits -0.5)") in capsys.readouterr().out


def test_the_map_takes_any_real_numbers_in_range():
    assert RobustLogitMap(np.float32(2.0), np.int64(2), np.float64(-0.5)).config() == {
        "scale": 2.0, "power": 2.0, "bias": -0.5}


def test_a_robust_map_takes_no_temperature(two_checkpoints, tmp_path):
    standard, robust = two_checkpoints
    main(["mix", "--standard", standard, "--robust", robust, "--alpha", "0.5", "--out", str(tmp_path / "m")])
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config.update(robust_map=GOOD_MAP, temperature=5)
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="temperature 1 .its map replaces the temperature"):
        hpm.load(tmp_path / "m")


def test_a_selection_without_images_to_select_on_names_the_fix_and_a_thin_one_warns(monkeypatch):
    robust = TinyMLP().eval()
    attacked = torch.tensor([[2.0, 0.0, 0.0]] * 3)  # 3 images still right under attack
    clean = torch.tensor([[2.0, 0.0, 0.0]] * 2 + [[0.0, 2.0, 0.0]])  # 1 clean image wrong
    monkeypatch.setattr(selecting, "selection_logits",
                        lambda *a, **k: (attacked, clean, torch.zeros(3, dtype=torch.long)))
    images = ImageTensorDataset(torch.zeros(3, 3, 32, 32, dtype=torch.uint8), torch.zeros(3, dtype=torch.long),
                                [str(i) for i in range(3)], "three images")
    with pytest.warns(UserWarning, match=r"only 3 of the 3 .* fewer than the 68 .*--n-select"):
        selecting.select_mixednuts(TinyMLP().eval(), robust, images, "unused", eps=8 / 255)
    monkeypatch.setattr(selecting, "selection_logits",
                        lambda *a, **k: (attacked[:2], clean[:2], torch.zeros(2, dtype=torch.long)))
    with pytest.raises(HPMError, match=r"of 2, got 2 and 0: select on more images \(images; hpm mix --n-select"):
        selecting.select_mixednuts(TinyMLP().eval(), robust, images, "unused", eps=8 / 255)


def test_a_mixednuts_built_in_python_from_a_selection_saves_with_a_card_that_says_how_it_was_selected(
        two_checkpoints, tmp_path):
    standard, robust = (hpm.load(path) for path in two_checkpoints)
    chosen = select_map(torch.tensor([[4.0, 0.0, 0.0], [3.0, 1.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.5]]),
                        grid=Grid(n=2))
    model = MixedNUTS(standard, robust, chosen.alpha, RobustLogitMap(chosen.scale, chosen.power, chosen.bias),
                      selection=chosen.record())  # without the images and the attack, which the CLI adds
    card = (model.save_pretrained(tmp_path / "nuts") / "README.md").read_text()
    assert "By the authors' procedure, on images not recorded. Attack: not recorded. The 2 images" in card
