"""The mixed classifier (Bai et al.): the mixture it computes, its gradients, the attacks it declares, and an
evaluation of it end to end."""
import json
import re
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import hpm
from hpm.attacks import default_plan, parse_attacks
from hpm.cli import main
from hpm.data import CIFAR10_CLASSES
from hpm.errors import CheckpointError, HPMError
from hpm.evaluation import AttackConfig, evaluate_model
from hpm.mixed import MixedClassifier, MixingNetwork
from hpm.model import load_or_wrap
from hpm.stages import FeatureTaps, stage_outputs

from conftest import TinyMLP, tiny_resnet


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


def test_a_saturated_robust_branch_is_detected_and_flagged_in_the_evaluation_report():
    x = torch.rand(8, 3, 32, 32)
    assert mixed(temperature=1e-6).robust_saturation(x) == 1.0
    assert mixed(temperature=1.0).robust_saturation(x) == 0.0
    for temperature, passed in ((1e-6, False), (1.0, True)):
        model = mixed(temperature=temperature)
        with torch.no_grad():
            y = model(x).argmax(1)
        report = evaluate_model(model, x, y, attack=AttackConfig(n_iter=2, square_queries=5, n_target_classes=1),
                                batch_sizes=[8], check_n=8, progress=False)
        check, = (c for c in report.checks if c.name == "robust_branch_not_saturated")
        assert check.passed is passed and "of 8 images" in check.detail


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


def test_a_mixed_model_is_written_as_text_wherever_a_model_is_named(two_checkpoints):
    standard, robust = two_checkpoints
    model = load_or_wrap(f"mixed(standard={standard},robust={robust},alpha=0.25,T=0.5)")
    assert isinstance(model, MixedClassifier) and (model.alpha, model.temperature) == (0.25, 0.5)
    assert model.names == (standard, robust) and model.dataset == "cifar10" and len(model.classes) == 10


@pytest.mark.parametrize("text, message", [
    ("mixed(standard=A,robust=B)", "missing alpha"),
    ("mixed(standard=A,robust=B,alpha=0.5,beta=1)", "unknown beta"),
    ("mixed(standard={0},robust={1},alpha=half)", "alpha and T must be numbers"),
    ("mixed(standard=A,robust=B,alpha=2)", r"alpha must be in \[0, 1\] and T > 0"),
])
def test_a_mistyped_mixed_model_gets_a_message(two_checkpoints, text, message):
    with pytest.raises(HPMError, match=message):
        load_or_wrap(text.format(*two_checkpoints))


def test_hpm_eval_attacks_a_mixed_model_and_its_report_says_what_it_is(two_checkpoints, tiny_data_root, tmp_path):
    standard, robust = two_checkpoints
    out = tmp_path / "mixed.json"
    assert main(["eval", f"mixed(standard={standard},robust={robust},alpha=0.5)", "--data", str(tiny_data_root),
                 "--n", "4", "--iters", "2", "--square-queries", "5", "--target-classes", "1", "--no-checks",
                 "--batch-sizes", "4", "--out", str(out)]) == 0
    info = json.loads(out.read_text())["model_info"]
    assert info["head"] == "mixed classifier (alpha 0.5, temperature 1)"
    assert info["backbone"] == f"standard {standard} + robust {robust}"


def test_hpm_mix_saves_a_checkpoint_that_loads_to_the_same_mixture(two_checkpoints, tmp_path):
    standard, robust = two_checkpoints
    out = tmp_path / "mixed"
    assert main(["mix", "--standard", standard, "--robust", robust, "--alpha", "0.7", "--temperature", "0.5",
                 "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded, built = hpm.load(out), load_or_wrap(f"mixed(standard={standard},robust={robust},alpha=0.7,T=0.5)")
    assert isinstance(loaded, MixedClassifier) and (loaded.alpha, loaded.temperature) == (0.7, 0.5)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), built(x), atol=1e-6)
    assert load_or_wrap(str(out)).names == (standard, robust)
    card = (out / "README.md").read_text()
    assert "mixed classifier (alpha 0.7, T 0.5)" in card and "gradients flow through both networks" in card


def test_hpm_mix_names_the_checkpoints_that_store_its_branches_backbones_unless_told_to_store_a_copy(
        two_checkpoints, tmp_path):
    from safetensors import safe_open

    standard, robust = two_checkpoints
    x = torch.rand(4, 3, 32, 32)
    outputs = []
    for out, extra in ((tmp_path / "named", []), (tmp_path / "stored", ["--store-backbone"])):
        assert main(["mix", "--standard", standard, "--robust", robust, "--alpha", "0.7", "--out", str(out),
                     *extra]) == 0
        config = json.loads((out / "config.json").read_text())
        with safe_open(str(out / "model.safetensors"), "pt") as weights:
            stored = {k.split(".")[0] for k in weights.keys() if ".features." in k}
        if extra:
            assert stored == {"standard", "robust"}
        else:
            assert stored == set()
            assert [config[b]["backbone"]["name"] for b in ("standard", "robust")] == ["../net0", "../net1"]
            assert all(config[b]["backbone"]["source"] == "checkpoint" for b in ("standard", "robust"))
        with torch.no_grad():
            outputs.append(hpm.load(out)(x))
    assert torch.equal(*outputs)


def test_hpm_mix_keeps_a_branch_that_names_its_backbone_by_a_relative_path_loadable_from_its_own_folder(
        two_checkpoints, tmp_path):
    standard, robust = two_checkpoints
    head = hpm.load(robust).reference_backbone(robust, relative_to=tmp_path / "heads" / "h1")
    head.save_pretrained(tmp_path / "heads" / "h1")  # names its backbone ../../net1
    out = tmp_path / "elsewhere" / "deeper" / "mixed"
    assert main(["mix", "--standard", standard, "--robust", str(tmp_path / "heads" / "h1"), "--alpha", "0.7",
                 "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["robust"]["backbone"]["name"] == "../../../net1"
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(hpm.load(out)(x), load_or_wrap(f"mixed(standard={standard},robust={robust},alpha=0.7)")(x))


@pytest.mark.parametrize("extra", [[], ["--store-backbone"]])
def test_hpm_mix_refuses_to_write_over_a_branch_checkpoint(two_checkpoints, capsys, extra):
    standard, robust = two_checkpoints
    assert main(["mix", "--standard", standard, "--robust", robust, "--alpha", "0.7", "--out", robust, *extra]) == 2
    assert "is one of the branches' checkpoints" in capsys.readouterr().err
    assert isinstance(hpm.load(robust), hpm.HPMClassifier)


def test_hpm_mix_storing_the_backbones_refuses_to_write_over_the_checkpoint_a_branch_names(two_checkpoints,
                                                                                               tmp_path, capsys):
    standard, robust = two_checkpoints
    head = tmp_path / "ncm"
    hpm.load(robust).reference_backbone(robust, relative_to=head).save_pretrained(head)  # names ../net1
    assert main(["mix", "--standard", standard, "--robust", str(head), "--alpha", "0.7", "--out", robust,
                 "--store-backbone"]) == 2
    assert "stores a branch's backbone" in capsys.readouterr().err
    assert isinstance(hpm.load(head), hpm.HPMClassifier)


def test_hpm_mix_refuses_branches_that_differ_before_its_selection_runs(two_checkpoints, tmp_path, capsys):
    standard, robust = two_checkpoints
    config = json.loads((Path(standard) / "config.json").read_text())
    (Path(standard) / "config.json").write_text(json.dumps({**config, "dataset": "cifar100"}))
    assert main(["mix", "--standard", standard, "--robust", robust, "--nuts", "--out", str(tmp_path / "m")]) == 2
    assert "the two branches differ in dataset" in capsys.readouterr().err
    with pytest.raises(HPMError, match="differ in dataset"):
        load_or_wrap(f"mixed(standard={standard},robust={robust},alpha=0.5)")


def test_a_mixture_naming_a_local_backbone_is_not_pushed_to_the_hub(two_checkpoints, tmp_path):
    standard, robust = two_checkpoints
    main(["mix", "--standard", standard, "--robust", robust, "--alpha", "0.7", "--out", str(tmp_path / "m")])
    with pytest.raises(HPMError, match="standard branch names its backbone checkpoint by the local path"):
        hpm.load(tmp_path / "m").push_to_hub("someone/mixed")


def test_a_loaded_mixture_saved_elsewhere_still_finds_its_branches_backbones(two_checkpoints, tmp_path):
    standard, robust = two_checkpoints
    main(["mix", "--standard", standard, "--robust", robust, "--alpha", "0.7", "--out", str(tmp_path / "m")])
    loaded = hpm.load(tmp_path / "m")
    loaded.save_pretrained(tmp_path / "a" / "b" / "copy")
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(hpm.load(tmp_path / "a" / "b" / "copy")(x), loaded(x))


@pytest.mark.parametrize("field, value", [("classes", CIFAR10_CLASSES[::-1]), ("dataset", "cifar100"),
                                          ("input_size", [3, 64, 64])])
def test_branches_that_differ_in_classes_dataset_or_input_size_are_refused(two_checkpoints, tmp_path, field, value):
    standard, robust = two_checkpoints
    out = tmp_path / "mixed"
    main(["mix", "--standard", standard, "--robust", robust, "--alpha", "0.5", "--out", str(out), "--store-backbone"])
    config = json.loads((out / "config.json").read_text())
    config["robust"]["classes"] = CIFAR10_CLASSES  # numbered classes name nothing, so are never compared
    config["standard"][field] = value
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=f"the two branches differ in {field}"):
        hpm.load(out)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(alpha=1.5), r"alpha must be a number in \[0, 1\]"),
    (lambda c: c.update(temperature="hot"), "temperature one > 0"),
    (lambda c: c.pop("robust"), "missing \\['robust'\\]"),
    (lambda c: c["standard"].pop("head"), "standard: missing keys \\['head'\\]"),
    (lambda c: c.update(colour="red"), "unknown \\['colour'\\]"),
])
def test_a_broken_mixed_config_is_refused_with_its_reason(two_checkpoints, tmp_path, edit, message):
    standard, robust = two_checkpoints
    out = tmp_path / "mixed"
    main(["mix", "--standard", standard, "--robust", robust, "--alpha", "0.5", "--out", str(out)])
    config = json.loads((out / "config.json").read_text())
    edit(config)
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message):
        hpm.load(out)


def test_mixed_weights_must_belong_to_a_branch(two_checkpoints, tmp_path):
    from safetensors.torch import load_file, save_file

    standard, robust = two_checkpoints
    out = tmp_path / "mixed"
    main(["mix", "--standard", standard, "--robust", robust, "--alpha", "0.5", "--out", str(out)])
    weights = load_file(str(out / "model.safetensors"))
    save_file({**weights, "extra.weight": torch.zeros(1)}, str(out / "model.safetensors"))
    with pytest.raises(CheckpointError, match="no part of the mixture"):
        hpm.load(out)
    del weights["robust.fc.weight"]
    save_file(weights, str(out / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model.safetensors \[robust\].*missing \['fc.weight'\]"):
        hpm.load(out)


# --- adaptive smoothing: alpha per input from a mixing network ---------------------------------------------
def adaptive(seed=0, alpha_range=(0.2, 0.95)):
    standard, robust = tiny_resnet(seed), tiny_resnet(seed + 1)
    torch.manual_seed(seed)
    mixer = MixingNetwork.for_branches(standard, robust, width=4, alpha_range=alpha_range)
    return MixedClassifier(standard, robust, temperature=0.5, mixer=mixer).eval()


def test_the_mixing_network_reads_the_first_two_resolution_stages_of_each_branch():
    model = adaptive()
    assert model.mixer.taps == (("net.blocks.0", "net.blocks.1"),) * 2  # depth 8: one block per stage
    assert model.mixer.channels == ((4, 8), (4, 8))
    assert stage_outputs(model.robust.features, (3, 32, 32)) == [("net.blocks.0", 4), ("net.blocks.1", 8),
                                                                  ("net.blocks", 16)]  # the outermost module


def first_two_stages(net, x):
    """A depth-8 zoo ResNet's first two stage outputs (one block each), computed by hand."""
    first = net.blocks[0](net.stem((x - net.mean) / net.std))
    return [first, net.blocks[1](first)]


def test_an_adaptive_mixture_weighs_each_input_by_its_own_alpha():
    model, x = adaptive(), torch.rand(6, 3, 32, 32)
    torch.nn.init.normal_(model.mixer.linear.weight, std=3.0)
    with torch.no_grad():
        maps = [first_two_stages(branch.features.net, x) for branch in (model.standard, model.robust)]
        alpha = 0.2 + 0.75 * torch.sigmoid(model.mixer.gamma(*maps))[:, None]
        expected = (1 - alpha) * model.standard(x).softmax(-1) + alpha * (model.robust(x) / 0.5).softmax(-1)
        assert torch.allclose(model(x).exp(), expected, atol=1e-6)
        assert alpha.std() > 0 and ((alpha > 0.2) & (alpha < 0.95)).all()
        lowest = 0.8 * model.standard(x).softmax(-1) + 0.2 * (model.robust(x) / 0.5).softmax(-1)
        assert torch.allclose(model(x, mode="lowest-alpha").exp(), lowest, atol=1e-6)
    assert list(model.attack_targets) == ["deployed", "standard", "robust", "lowest-alpha"]
    assert model.mixing_text == "adaptive α in [0.2, 0.95]"


def test_in_training_alpha_is_the_plain_sigmoid_of_gamma_with_the_training_constants():
    model, x = adaptive(), torch.rand(16, 3, 32, 32)
    model.mixer.train()
    log_probs, gamma = model.mix(x)
    assert torch.allclose(gamma.mean(), torch.tensor(0.4), atol=1e-4)  # batch-normalised, then 2 γ + 0.4
    alpha = torch.sigmoid(gamma)[:, None]
    expected = (1 - alpha) * model.standard(x).softmax(-1) + alpha * (model.robust(x) / 0.5).softmax(-1)
    assert torch.allclose(log_probs.exp(), expected, atol=1e-6)
    # raw outputs beyond the batch mean ± 0.6 std are clamped to it: the extremes tie
    assert (gamma == gamma.max()).sum() >= 2 and (gamma == gamma.min()).sum() >= 2


def test_the_end_to_end_attack_differentiates_through_the_mixing_network_too():
    model, x = adaptive(), torch.rand(4, 3, 32, 32, requires_grad=True)
    torch.nn.functional.nll_loss(model(x), torch.tensor([0, 1, 2, 3])).backward()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.mixer.parameters())


def test_feature_maps_are_captured_per_thread_and_only_inside_a_capture():
    model = adaptive()
    taps = FeatureTaps(model.standard.features, ["net.blocks.0"])
    model.standard(torch.rand(1, 3, 32, 32))  # outside a capture: nothing is kept
    results = {}

    def run(n):
        with taps.capture() as captured:
            model.standard(torch.rand(n, 3, 32, 32))
            results[n] = taps.maps(captured)[0].shape[0]
    threads = [threading.Thread(target=run, args=(n,)) for n in (1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {1: 1, 2: 2, 3: 3}
    with pytest.raises(HPMError, match="no submodules"):
        FeatureTaps(model.standard.features, ["net.blocks.9"])


@pytest.mark.parametrize("alpha_range", [(0.0, 0.9), (0.5, 0.5), (0.2, 1.0)])
def test_a_mixing_range_must_keep_both_branches_in_play(alpha_range):
    with pytest.raises(ValueError, match="0 < lo < hi < 1"):
        MixingNetwork([["a", "b"]] * 2, [[4, 8]] * 2, alpha_range=alpha_range)


def test_a_mixture_has_either_a_fixed_alpha_or_a_mixing_network():
    with pytest.raises(ValueError, match="either"):
        MixedClassifier(TinyMLP(), TinyMLP())
    with pytest.raises(ValueError, match="hpm models"):
        MixedClassifier(TinyMLP(), TinyMLP(), mixer=MixingNetwork([["a", "b"]] * 2, [[4, 8]] * 2))


def test_the_mixer_loss_is_the_authors_weighted_bce_ce_and_product():
    from hpm.train.mixer import MixerConfig, mixer_loss
    log_probs, gamma = torch.log_softmax(torch.randn(4, 3), 1), torch.randn(4)
    labels, use_robust, weights = torch.tensor([0, 1, 2, 0]), torch.tensor([0.0, 0, 1, 1]), torch.tensor([2.0, 2, 1, 1])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(gamma, use_robust, reduction="none")
    ce = -log_probs[torch.arange(4), labels]
    config = MixerConfig(bce=1.0, ce=0.5, product=0.1)
    assert torch.allclose(mixer_loss(log_probs, gamma, labels, use_robust, weights, config),
                          (weights * (bce + 0.5 * ce + 0.1 * bce * ce)).mean())


def test_training_the_mixer_moves_only_the_mixer_and_resumes_per_epoch(tiny_data_root, tmp_path):
    from hpm.data import ImageTensorDataset, load_dataset
    from hpm.train.mixer import MixerConfig, train_mixer
    model, data = adaptive(), load_dataset("cifar10", "train", str(tiny_data_root))
    branches = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("mixer.")}
    mixer_before = {k: v.clone() for k, v in model.mixer.state_dict().items()}
    config = MixerConfig(epochs=1, batch_size=10, steps=2)
    before = torch.get_rng_state()
    history = train_mixer(model, data, config, tmp_path / "run", progress=False)
    assert torch.equal(torch.get_rng_state(), before)  # its own generators only
    assert [h["epoch"] for h in history] == [1]
    assert 0 < history[0]["mean_alpha_clean"] < 1  # the training-mode alpha, sigmoid(gamma), not yet rescaled
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in branches.items())
    assert any(not torch.equal(v, model.mixer.state_dict()[k]) for k, v in mixer_before.items())
    trained = {k: v.clone() for k, v in model.mixer.state_dict().items()}
    again = train_mixer(adaptive(), data, config, tmp_path / "run", progress=False)  # the run is complete: resumed
    assert again == history
    with pytest.raises(HPMError, match=r"different recipe \(steps 2 then, 3 now\)"):
        train_mixer(adaptive(), data, MixerConfig(epochs=1, batch_size=10, steps=3), tmp_path / "run", progress=False)
    fewer = ImageTensorDataset(data.images[:-10], data.labels[:-10], data.classes, data.source)
    with pytest.raises(HPMError, match="other training images"):
        train_mixer(adaptive(), fewer, config, tmp_path / "run", progress=False)
    assert all(torch.equal(v, model.mixer.state_dict()[k]) for k, v in trained.items())


def test_the_authors_mixing_network_has_two_preactivation_blocks_per_stage_as_wide_as_both_branches(tmp_path):
    standard, robust = tiny_resnet(0), tiny_resnet(1)
    mixer = MixingNetwork.for_branches(standard, robust, width=None, blocks=2, block="preact")
    assert [type(b).__name__ for b in mixer.reduce_first] == ["PreActBlock"] * 2
    assert mixer.reduce_first[0].conv1.out_channels == 8 + 8  # both branches' second-stage channels
    assert isinstance(mixer.project_second, torch.nn.Identity)  # the second-stage maps are added as they are
    assert [stage[-1].conv2.out_channels for stage in mixer.body] == [32, 64] and mixer.linear.in_features == 64
    model = MixedClassifier(standard, robust, mixer=mixer).eval()
    loaded = hpm.load(model.save_pretrained(tmp_path / "authors"))
    assert loaded.mixer.config() == mixer.config()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    compact = MixingNetwork.for_branches(standard, robust, width=16)  # as wide, but projected: the compact layout
    assert isinstance(compact.project_second, torch.nn.Conv2d)
    with pytest.raises(ValueError, match="block one of"):
        MixingNetwork.for_branches(standard, robust, block="bottleneck")


def test_the_authors_training_attack_makes_one_cross_entropy_and_one_batch_per_target_class_inside_random_radii():
    from hpm.train.mixer_attack import RandomizedAttack, randomized_apgd
    model, x, y = adaptive(), torch.rand(6, 3, 32, 32), torch.arange(6)
    attack = RandomizedAttack(eps=8 / 255, target_classes=2, iters_df=3)
    before = torch.get_rng_state()
    batches = randomized_apgd(model, x, y, attack, torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), before)  # APGD's random start drawn from the given generator
    assert len(batches) == 3
    for adv in batches:
        assert adv.shape == x.shape and 0 <= adv.min() and adv.max() <= 1
        assert (adv - x).abs().amax() <= 1.1 * 8 / 255 + 1e-6
    again = randomized_apgd(model, x, y, attack, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(batches, again))
    assert len(randomized_apgd(model, x, y, RandomizedAttack(target_classes=20, iters_df=1),
                               torch.Generator().manual_seed(0))) == 10  # every other class once, no more
    with pytest.raises(ValueError, match="radius factors"):
        RandomizedAttack(radius_range=(1.1, 0.4))


def test_the_training_attack_sees_the_training_constants_whatever_the_evaluation_ones():
    mixer = adaptive().mixer.train()
    mixer.eval_gamma = (3.0, 20.0)  # the authors' deployment constants
    with mixer.attacked_in_training():
        assert not mixer.training and mixer.eval_gamma == mixer.train_gamma == (2.0, 0.4)
    assert mixer.training and mixer.eval_gamma == (3.0, 20.0)


def test_the_authors_training_attack_sees_alpha_over_all_of_zero_to_one_not_the_deployed_range():
    mixer = adaptive().mixer.eval()
    gamma = torch.tensor([-30.0, 0.0, 30.0])
    lo, hi = mixer.alpha_range
    assert torch.allclose(mixer.alpha(gamma), torch.tensor([lo, (lo + hi) / 2, hi]))  # deployed: shrunk
    with mixer.attacked_in_training(full_alpha=True):
        assert torch.allclose(mixer.alpha(gamma), torch.sigmoid(gamma))
        log_alpha, log_rest = mixer.log_weights(gamma)
        assert torch.allclose(log_alpha.squeeze(1), F.logsigmoid(gamma)) and log_rest[2] < -20
    assert not mixer.full_alpha and not mixer.training  # restored


def test_training_the_mixer_resumes_inside_an_epoch_to_the_same_mixer(tiny_data_root, tmp_path, monkeypatch):
    from hpm.data import load_dataset
    from hpm.train import mixer as training
    data = load_dataset("cifar10", "train", str(tiny_data_root))
    config = training.MixerConfig(epochs=1, batch_size=6, attack="apgd", target_classes=1, iters_df=2,
                                  warmup=0.04, save_seconds=0)  # a state after every step
    straight = adaptive()
    training.train_mixer(straight, data, config, tmp_path / "straight", progress=False)
    step, calls = training._step, []

    def killed_after_two_steps(*args):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return step(*args)

    monkeypatch.setattr(training, "_step", killed_after_two_steps)
    with pytest.raises(KeyboardInterrupt):
        training.train_mixer(adaptive(), data, config, tmp_path / "resumed", progress=False)
    monkeypatch.setattr(training, "_step", step)
    resumed = adaptive()
    history = training.train_mixer(resumed, data, config, tmp_path / "resumed", progress=False)
    assert all(torch.equal(v, resumed.mixer.state_dict()[k]) for k, v in straight.mixer.state_dict().items())
    straight_history = json.loads((tmp_path / "straight" / "mixer-history.json").read_text())
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in history] == \
        [{k: v for k, v in h.items() if k != "seconds"} for h in straight_history]
    assert history[0]["mean_alpha_adversarial"] > 0  # averaged over the 1 + target_classes adversarial batches


def test_a_short_run_recomputes_the_mixers_norm_statistics_on_its_last_training_batches(tiny_data_root, tmp_path):
    from hpm.data import load_dataset
    from hpm.train import mixer as training
    from safetensors.torch import load_file
    data = load_dataset("cifar10", "train", str(tiny_data_root))
    config = training.MixerConfig(epochs=1, batch_size=6, steps=1, recalibrate_steps=2)
    model = adaptive()
    training.train_mixer(model, data, config, tmp_path / "run", progress=False)
    kept = sorted((tmp_path / "run").glob("recalibration-*.safetensors"))
    steps = len(data) // 6
    assert [f.name for f in kept] == [f"recalibration-{s:06d}.safetensors" for s in (steps - 2, steps - 1)]
    batches = [load_file(str(f))["images"] for f in kept]
    assert all(len(b) == 12 for b in batches)  # 6 clean and their 6 adversarial images, as trained on
    norm = model.mixer.norm
    mean, var = norm.running_mean.clone(), norm.running_var.clone()
    seen = []  # what the output norm receives in training mode (inner norms on batch statistics: fixed weights)
    hook = model.mixer.norm.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    model.mixer.train()
    with torch.no_grad():
        for b in batches:
            model.mix(b)
    hook.remove()
    # cumulative averages of the batch statistics, not the momentum-0.01 trace of training
    assert torch.allclose(mean, torch.stack([r.mean(0) for r in seen]).mean(0), atol=1e-5)
    assert torch.allclose(var, torch.stack([r.var(0) for r in seen]).mean(0), rtol=1e-4)
    assert norm.momentum == 0.01  # restored


def test_hpm_mix_adaptive_trains_saves_and_loads_the_same_mixture(two_checkpoints, tiny_data_root, tmp_path):
    standard, robust = two_checkpoints
    out = tmp_path / "adaptive"
    assert main(["mix", "--standard", standard, "--robust", robust, "--adaptive", "--data", str(tiny_data_root),
                 "--batch-size", "10", "--steps", "1", "--out", str(out)]) == 0
    loaded = hpm.load(out)
    assert loaded.mixer is not None and loaded.alpha is None
    config = json.loads((out / "config.json").read_text())
    assert config["alpha"] is None and config["mixer"]["alpha_range"] == [0.2, 0.95]
    assert config["training"]["history"][0]["epoch"] == 1 and (tmp_path / "adaptive.run" / "mixer-state.pt").is_file()
    card = (out / "README.md").read_text()
    assert "adaptive mixed classifier (alpha in [0.2, 0.95], T 1)" in card and "## Mixing network training" in card
    assert re.search(r"- epoch 1: clean accuracy .* \(training images, training attack\); \d+ s on \w+", card)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(hpm.load(out)(x), loaded(x))
    with pytest.raises(SystemExit):  # a fixed alpha or a mixing network, not both
        main(["mix", "--standard", standard, "--robust", robust, "--adaptive", "--alpha", "0.5", "--out", str(out)])
    with pytest.raises(SystemExit):
        main(["mix", "--standard", standard, "--robust", robust, "--adaptive", "--lr", "0", "--out", str(out)])


def test_hpm_mix_adaptive_with_the_authors_recipe_records_their_network_and_attack(two_checkpoints, tiny_data_root,
                                                                                     tmp_path, capsys):
    standard, robust = two_checkpoints
    out = tmp_path / "authors"
    assert main(["mix", "--standard", standard, "--robust", robust, "--adaptive", "--recipe", "authors",
                 "--target-classes", "0", "--data", str(tiny_data_root), "--batch-size", "15", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["mixer"]["width"], config["mixer"]["blocks"], config["mixer"]["block"]) == (None, 2, "preact")
    training = config["training"]
    assert (training["attack"], training["target_classes"], training["warmup"]) == ("apgd", 0, 0.04)
    assert main(["mix", "--standard", standard, "--robust", robust, "--adaptive", "--target-classes", "-1",
                 "--out", str(out)]) == 2
    assert "--target-classes counts targeted runs, 0 or more; got -1" in capsys.readouterr().err


@pytest.mark.parametrize("taps, channels, message", [
    ([["net.blocks.0", "net.blocks.7"]] * 2, [[4, 8]] * 2, r"no submodules \['net.blocks.7'\]"),
    ([["net.blocks.1", "net.blocks.0"]] * 2, [[4, 8]] * 2, r"\[4, 8\] channels .* they have \[8, 4\]")])
def test_a_mixing_network_that_does_not_fit_its_branches_is_refused_on_loading(tmp_path, taps, channels, message):
    out = adaptive().save_pretrained(tmp_path / "adaptive")
    config = json.loads((out / "config.json").read_text())
    config["mixer"] |= {"taps": taps, "channels": channels}
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message):
        hpm.load(out)


def test_an_adaptive_mixture_is_evaluated_through_its_mixer_and_at_its_lowest_alpha_and_checked_for_a_pinned_mixer():
    model, x = adaptive(), torch.rand(8, 3, 32, 32)
    with torch.no_grad():
        y = model(x).argmax(1)
    report = evaluate_model(model, x, y, attack=AttackConfig(n_iter=2, square_queries=5, n_target_classes=1),
                            batch_sizes=[8], check_n=8, progress=False)
    assert "apgd-ce/lowest-alpha" in [a.name for a in report.results["8"].per_attack]
    assert report.model_info["head"] == ("mixed classifier (adaptive alpha in [0.2, 0.95], evaluation constants (2, 0.4), "
                                         "temperature 0.5)")
    check, = (c for c in report.checks if c.name == "mixer_not_saturated")
    assert check.passed


def test_the_demo_shows_the_alpha_the_mixing_network_gives_the_clean_and_the_adversarial_image():
    from hpm import interactive as demo
    model, x = adaptive(), torch.rand(1, 3, 32, 32)
    torch.nn.init.normal_(model.mixer.linear.weight, std=3.0)
    with torch.no_grad():
        maps = [first_two_stages(branch.features.net, x) for branch in (model.standard, model.robust)]
        expected = float(0.2 + 0.75 * torch.sigmoid(model.mixer.gamma(*maps)))
    assert demo.adaptive_alpha(model, x) == pytest.approx(expected, abs=1e-6)
    result = demo.attack_image(model, x, attack="deployed", eps=8 / 255, steps=2)
    assert result.alpha == (demo.adaptive_alpha(model, result.x), demo.adaptive_alpha(model, result.x_adv))
    fixed = MixedClassifier(hpm.wrap(TinyMLP(), head="fc"), hpm.wrap(TinyMLP(), head="fc"), alpha=0.75).eval()
    for other in (fixed, hpm.wrap(TinyMLP(), head="fc")):  # a fixed α is in the mixture's name
        assert demo.adaptive_alpha(other, x) is None
        assert demo.attack_image(other, x, attack="deployed", eps=8 / 255, steps=2).alpha is None


def test_hpm_predict_and_attack_report_an_adaptive_mixtures_alpha(tmp_path, capsys):
    from PIL import Image
    directory = adaptive().save_pretrained(tmp_path / "adaptive")
    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32), (200, 30, 10)).save(image)
    assert main(["predict", str(directory), str(image)]) == 0
    assert re.search(r"mixing weight on the robust branch: alpha\(x\) = 0\.\d{3}\n", capsys.readouterr().out)
    assert main(["attack", str(directory), str(image), "--attack", "lowest-alpha", "--steps", "2",
                 "--out", str(tmp_path / "out")]) == 0
    alpha = json.loads((tmp_path / "out" / "result.json").read_text())["alpha"]
    assert len(alpha) == 2 and all(0.2 <= a <= 0.95 for a in alpha)


def test_the_alpha_analysis_gives_alpha_on_clean_images_and_on_their_attacked_versions(
        tiny_data_root, tmp_path, capsys):
    from hpm.evaluation.mixer_alpha import main as alpha_analysis
    directory, out = adaptive().save_pretrained(tmp_path / "adaptive"), tmp_path / "alpha.json"
    assert alpha_analysis([str(directory), "--data", str(tiny_data_root), "--n", "8", "--iters", "2",
                           "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    clean, attacked = result["alpha"]["clean"], result["alpha"]["attacked"]
    assert clean["n"] == 8 and 0.2 <= clean["min"] <= clean["median"] <= clean["max"] <= 0.95
    assert attacked["n"] == round(8 * result["clean_accuracy"])  # the clean-correct images only, as evaluated
    assert result["alpha"]["attacked_fooled"]["n"] + result["alpha"]["attacked_not_fooled"]["n"] == attacked["n"]
    assert result["alpha"]["fooled_robust_branch_correct"]["n"] <= result["alpha"]["attacked_fooled"]["n"]
    assert 0 <= result["robust_branch_accuracy_on_attacked"] <= 1
    assert result["attack"]["names"] == ["apgd-ce/deployed", "apgd-ce/lowest-alpha"]  # through α, and pushing it down
    for name in result["attack"]["names"]:
        assert result["alpha"][f"attacked_by_{name}"]["n"] == attacked["n"]
    assert attacked["n"] == 0 or attacked["min"] >= min(result["alpha"][f"attacked_by_{name}"]["min"]
                                                       for name in result["attack"]["names"]) - 1e-6  # one of theirs
    assert set(result["saturated_sigmoid_share"]) == {"clean", "attacked"}
    fixed = MixedClassifier(tiny_resnet(0), tiny_resnet(1), alpha=0.5)
    with pytest.raises(SystemExit):
        alpha_analysis([str(fixed.save_pretrained(tmp_path / "fixed")), "--out", str(out)])
    assert "is not an adaptive mixed classifier (one with a mixing network)" in capsys.readouterr().err


def test_the_evaluation_constants_of_a_mixing_network_can_be_set_and_a_copy_with_other_constants_written(
        two_checkpoints, tiny_data_root, tmp_path):
    import subprocess
    import sys

    from conftest import REPO
    standard, robust = two_checkpoints
    out = tmp_path / "adaptive"
    assert main(["mix", "--standard", standard, "--robust", robust, "--adaptive", "--data", str(tiny_data_root),
                 "--batch-size", "10", "--steps", "1", "--eval-gamma", "3", "20", "--out", str(out)]) == 0
    assert hpm.load(out).mixer.eval_gamma == (3.0, 20.0) and hpm.load(out).mixer.train_gamma == (2.0, 0.4)
    copy = tmp_path / "copy"
    subprocess.run([sys.executable, str(REPO / "scripts" / "adaptive_eval_constants.py"), str(out), "--eval-gamma",
                    "2", "0.4", "--out", str(copy)], check=True, capture_output=True)
    again = hpm.load(copy)
    assert again.mixer.eval_gamma == (2.0, 0.4) and again.checkpoint_config.metrics == {}
    assert "from [3.0, 20.0] to [2.0, 0.4]" in again.checkpoint_config.training["eval_gamma_changed"]
    assert all(torch.equal(v, hpm.load(out).mixer.state_dict()[k]) for k, v in again.mixer.state_dict().items())
