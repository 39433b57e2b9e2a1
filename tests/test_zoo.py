"""Zoo backbones trained by hpm: architecture, l2 classifier export, resumable (adversarial) training."""
import json

import numpy as np
import pytest
import torch

import hpm
from hpm.train.scratch import (BackboneConfig, augment, fgsm_rs, one_cycle_schedule, to_hpm, train_backbone,
                               training_summary)
from hpm.data import ImageTensorDataset
from hpm.errors import HPMError
from hpm.sources.zoo import CifarResNet, L2Classifier, PreActResNet18, PrototypeClassifier, build


def _images(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % 10
    return ImageTensorDataset(x, y, [str(i) for i in range(10)], "synthetic")


def test_resnet_depth_width_and_feature_size():
    net = CifarResNet(depth=8, width=4)
    assert net.num_features == 16 and net(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in net.modules()) == 1 + 6 + 2  # stem, 3 blocks x 2, 2 projections
    with pytest.raises(HPMError, match="6n\\+2"):
        CifarResNet(depth=10)
    with pytest.raises(HPMError, match="unknown options"):
        build("cifar_resnet", {"depth": 8, "colour": "red"})


def test_preact_resnet18_is_the_fast_adversarial_training_literature_s_network():
    net = PreActResNet18()
    assert sum(p.numel() for p in net.parameters()) == 11_172_170  # as Wong et al.'s PreActResNet18 (10 classes)
    assert net.num_features == 512 and net(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 1 + 8 * 2 + 3 and convs[0].out_channels == 64  # stem, 8 blocks x 2, 3 projections
    assert isinstance(net.bn, torch.nn.BatchNorm2d)  # the final BN-ReLU before pooling
    with pytest.raises(HPMError, match="unknown options"):
        build("preact_resnet18", {"depth": 18})


def test_preact_resnet18_computes_what_robustbench_s_rice_et_al_architecture_computes():
    """Weight for weight, RobustBench's PreActResNet-18 of Rice et al. 2020 (pre-activated projection shortcut,
    final BN-ReLU): the same parameter shapes in the same order, the same logits."""
    from hpm._compat import install_autoattack_alias
    install_autoattack_alias()
    from robustbench.model_zoo.architectures.resnet import PreActBlockV2, PreActResNet
    torch.manual_seed(0)
    theirs = PreActResNet(PreActBlockV2, [2, 2, 2, 2], bn_before_fc=True).eval()
    ours = PreActResNet18().eval()
    mine = {k: v for k, v in ours.state_dict().items() if k not in ("mean", "std")}
    assert [tuple(v.shape) for v in mine.values()] == [tuple(v.shape) for v in theirs.state_dict().values()]
    for value in theirs.state_dict().values():
        if value.is_floating_point():
            value.copy_(torch.randn_like(value).abs() if value.ndim == 1 else torch.randn_like(value) * 0.05)
    ours.load_state_dict({**dict(zip(mine, theirs.state_dict().values())), "mean": ours.mean, "std": ours.std})
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        expected = theirs((x - ours.mean) / ours.std)
        assert torch.allclose(ours(x), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_l2_classifier_and_its_linear_twin_predict_the_same_class():
    head = L2Classifier(16, 10)
    torch.nn.init.normal_(head.centres)
    z = torch.randn(100, 16)
    expected = -torch.cdist(z, head.centres)
    assert torch.allclose(head(z), expected, atol=1e-4)
    assert torch.equal(head.as_linear()(z).argmax(1), expected.argmax(1))


@pytest.mark.parametrize("classifier, head", [("fc", "fc"), ("l2", "ncm"), ("dpnp", "dpnp")])
def test_export_to_hpm_keeps_the_trained_predictions_and_round_trips(tmp_path, classifier, head):
    config = BackboneConfig(depth=8, width=4, classifier=classifier, adversarial="fgsm-rs")
    net = build("cifar_resnet", config.architecture()).eval()
    if classifier == "l2":
        torch.nn.init.normal_(net.classifier.centres)
    x = torch.rand(8, 3, 32, 32)
    with torch.no_grad():
        before = net(x)
    model = to_hpm(net, config, classes=None, dataset="cifar10")
    assert model.head_type == head
    with torch.no_grad():
        assert torch.allclose(model(x), before, atol=1e-4)
    model.save_pretrained(tmp_path / "ck")
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["backbone_weights_included"] is True
    with torch.no_grad():
        assert torch.allclose(hpm.load(tmp_path / "ck")(x), before, atol=1e-4)


def test_dpnp_prototypes_are_the_classifier_weights_on_one_sphere():
    head = PrototypeClassifier(16, 10, radius=3.0)
    assert torch.allclose(head.prototypes.norm(dim=1), torch.full((10,), 3.0))
    z = torch.randn(50, 16)
    scores = head(z)
    half_sq_distances = -0.5 * torch.cdist(z, head.prototypes) ** 2
    assert torch.allclose(scores.softmax(1), half_sq_distances.softmax(1), atol=1e-5)  # the same classifier
    linear = head.as_linear()
    assert linear.bias is None and torch.allclose(linear(z), scores, atol=1e-5)


def test_dpnp_needs_adversarial_training():
    with pytest.raises(HPMError, match="fgsm-rs"):
        BackboneConfig(classifier="dpnp")


def test_dpnp_training_runs_resumes_and_exports_its_radius(tmp_path):
    cfg = BackboneConfig(depth=8, width=4, classifier="dpnp", epochs=1, batch_size=16, adversarial="fgsm-rs",
                         guard_images=8, guard_steps=2, bf16=False, dpnp_radius=2.5)
    net, history = train_backbone(cfg, _images(), tmp_path / "run", progress=False)
    assert history[0]["loss"] > 0 and float(net.classifier.radius) == 2.5
    model = to_hpm(net, cfg, classes=None, dataset="cifar10")
    assert torch.allclose(model.fc.weight.norm(dim=1), torch.full((10,), 2.5), atol=1e-5)
    recipe = training_summary(cfg, history, "synthetic")
    assert recipe["dpnp_radius"] == 2.5 and "margin_reg" not in recipe  # the recipe names what it used
    assert "dpnp_radius" not in training_summary(BackboneConfig(), history, "synthetic")


def test_one_cycle_rises_from_zero_to_the_peak_then_falls_to_zero():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.2)
    schedule = one_cycle_schedule(opt, 100, BackboneConfig(lr=0.2, warmup=0.4))
    lrs = []
    for _ in range(101):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert lrs[0] == 0 and max(lrs) == pytest.approx(0.2) and lrs.index(max(lrs)) == 40 and lrs[-1] == 0
    assert np.allclose(np.diff(lrs[:41]), 0.2 / 40) and np.allclose(np.diff(lrs[40:]), -0.2 / 60)  # linear


def test_with_half_warmup_and_cycled_momentum_the_schedule_is_torch_s_cyclic_lr_as_wong_et_al_configure_it():
    from hpm.train.scratch import cycle_momentum
    ours = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.2, momentum=0.9)
    config = BackboneConfig(lr=0.2, warmup=0.5, momentum=0.9, momentum_at_peak=0.8)
    schedule = one_cycle_schedule(ours, 100, config)
    theirs = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.2, momentum=0.9)
    cyclic = torch.optim.lr_scheduler.CyclicLR(theirs, base_lr=0.0, max_lr=0.2, step_size_up=50, step_size_down=50)
    for _ in range(100):
        cycle_momentum(ours, config)
        assert ours.param_groups[0]["lr"] == pytest.approx(theirs.param_groups[0]["lr"], abs=1e-12)
        assert ours.param_groups[0]["momentum"] == pytest.approx(theirs.param_groups[0]["momentum"], abs=1e-12)
        for optimizer in (ours, theirs):
            optimizer.step()
        schedule.step()
        cyclic.step()


@pytest.mark.parametrize("options", [{"momentum_at_peak": 1.5}, {"warmup": 1.0}, {"lr": 0.0}])
def test_a_schedule_that_cannot_be_run_is_refused(options):
    with pytest.raises(HPMError, match=f"{next(iter(options))} must be"):
        BackboneConfig(**options)


def test_augment_crops_and_flips_without_changing_shape_or_values():
    x = torch.rand(16, 3, 32, 32)
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert set(out.unique().tolist()) <= set(x.unique().tolist()) | {0.0}


def test_fgsm_rs_stays_in_the_ball_and_the_image_range():
    net = CifarResNet(depth=8, width=4).eval()
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    x_adv = fgsm_rs(net, x, y, 8 / 255, 10 / 255, torch.Generator().manual_seed(0), bf16=False)
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1


def test_training_killed_after_an_epoch_resumes_to_the_same_weights(tmp_path):
    data = _images()
    cfg = BackboneConfig(depth=8, width=4, epochs=2, batch_size=16, adversarial="fgsm-rs", guard_images=8,
                         guard_steps=2, bf16=False)

    def kill(record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_backbone(cfg, data, tmp_path / "run", progress=False, on_epoch=kill)
    assert json.loads((tmp_path / "run" / "history.json").read_text())[0]["epoch"] == 1
    resumed, history = train_backbone(cfg, data, tmp_path / "run", progress=False)
    assert [h["epoch"] for h in history] == [1, 2] and (tmp_path / "run" / "backbone.safetensors").is_file()
    fresh, _ = train_backbone(cfg, data, tmp_path / "fresh", progress=False)
    for a, b in zip(resumed.state_dict().values(), fresh.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)
    with pytest.raises(HPMError, match="different recipe"):
        train_backbone(BackboneConfig(**{**cfg.__dict__, "epochs": 3}), data, tmp_path / "run", progress=False)


def test_training_killed_mid_epoch_resumes_with_the_same_batches_and_draws(tmp_path):
    data = _images()
    cfg = BackboneConfig(depth=8, width=4, epochs=2, batch_size=8, adversarial="fgsm-rs", guard_images=8,
                         guard_steps=2, bf16=False)
    saves = []
    real_save = torch.save

    def killing_save(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)
        saves.append(obj.get("step"))
        if obj.get("step") == 3 and obj["epoch"] == 1:  # three batches into the second epoch
            raise KeyboardInterrupt

    torch.save = killing_save
    try:
        with pytest.raises(KeyboardInterrupt):
            train_backbone(cfg, data, tmp_path / "run", progress=False, save_every=3)
    finally:
        torch.save = real_save
    assert saves == [3, 6, None, 3]  # every 3 steps within an epoch (8 steps each), and at its end
    resumed, history = train_backbone(cfg, data, tmp_path / "run", progress=False, save_every=3)
    fresh, fresh_history = train_backbone(cfg, data, tmp_path / "fresh", progress=False)
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[1]["loss"] == pytest.approx(fresh_history[1]["loss"], rel=1e-5)  # running sums carried over
    for a, b in zip(resumed.state_dict().values(), fresh.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)


def test_a_preact_resnet18_run_records_its_architecture_and_exports_512_d_features(tmp_path):
    cfg = BackboneConfig(arch="preact_resnet18", epochs=1, batch_size=32, adversarial="fgsm-rs", nesterov=False,
                         guard_images=8, guard_steps=1, channels_last=True)
    net, history = train_backbone(cfg, _images(), tmp_path / "run", progress=False)
    model = to_hpm(net, cfg, classes=None, dataset="cifar10")
    assert model.backbone_spec.name == "preact_resnet18" and model.num_features == 512
    summary = training_summary(cfg, history, "synthetic")
    assert summary["arch"] == "preact_resnet18" and "depth" not in summary and summary["nesterov"] is False
    model.save_pretrained(tmp_path / "ck")
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(hpm.load(tmp_path / "ck")(x), model(x), atol=1e-5)


def test_backbone_training_neither_reseeds_nor_draws_from_the_process_wide_generator(tmp_path):
    cfg = BackboneConfig(depth=8, width=4, epochs=1, batch_size=16, adversarial="fgsm-rs", guard_images=8,
                         guard_steps=2, bf16=False)
    before = torch.get_rng_state()
    first, _ = train_backbone(cfg, _images(), tmp_path / "a", progress=False)
    assert torch.equal(torch.get_rng_state(), before)
    torch.rand(3)  # another stream position: the same seed still gives the same network
    again, _ = train_backbone(cfg, _images(), tmp_path / "b", progress=False)
    for a, b in zip(first.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_the_average_margin_regulariser_enters_the_recipe_and_old_runs_resume_without_it(tmp_path):
    data = _images()
    cfg = BackboneConfig(depth=8, width=4, epochs=2, batch_size=16, bf16=False)

    def kill(record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_backbone(cfg, data, tmp_path / "run", progress=False, on_epoch=kill)
    state_path = tmp_path / "run" / "state.pt"
    state = torch.load(state_path, weights_only=True)
    old = json.loads(state["config"])
    for key in ("margin_reg", "margin_tau"):  # a run directory written before the option existed
        del old[key]
    state["config"] = json.dumps(old)
    torch.save(state, state_path)
    _, history = train_backbone(cfg, data, tmp_path / "run", progress=False)
    assert [h["epoch"] for h in history] == [1, 2]
    regularised = BackboneConfig(**{**cfg.__dict__, "margin_reg": 1.0})
    with pytest.raises(HPMError, match="different recipe"):
        train_backbone(regularised, data, tmp_path / "run", progress=False)
    plain, _ = train_backbone(cfg, data, tmp_path / "plain", progress=False)
    with_reg, _ = train_backbone(regularised, data, tmp_path / "reg", progress=False)
    assert not torch.equal(plain.stem[0].weight, with_reg.stem[0].weight)
    with pytest.raises(HPMError, match="margin_tau"):
        BackboneConfig(margin_tau=0)


@pytest.mark.parametrize("options, head", [(["--margin-reg", "0.5", "--margin-tau", "2", "--warmup", "0.5",
                                             "--momentum-at-peak", "0.8"], "fc"),
                                           (["--classifier", "dpnp", "--dpnp-weights", "0.1,1,0.5"], "dpnp")])
def test_train_backbone_cli_trains_each_defence_and_records_its_recipe(tiny_data_root, tmp_path, options, head):
    from hpm.cli import main
    out = tmp_path / "ck"
    assert main(["train-backbone", "--data", str(tiny_data_root), "--run-dir", str(tmp_path / "run"), "--out", str(out),
                 "--depth", "8", "--width", "4", "--epochs", "1", "--batch-size", "10", "--adversarial", "fgsm-rs",
                 "--no-bf16", *options]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["head"]["type"] == head and hpm.load(out).head_type == head
    recipe = config["training"]
    assert (recipe["margin_reg"], recipe["margin_tau"]) == (0.5, 2.0) if head == "fc" else recipe["dpnp_consistency"] == 0.5
    assert (recipe["warmup"], recipe.get("momentum_at_peak")) == ((0.5, 0.8) if head == "fc" else (0.4, None))


def test_dpnp_weights_must_be_three_non_negative_numbers(tmp_path, capsys):
    from hpm.cli import main
    with pytest.raises(SystemExit):
        main(["train-backbone", "--run-dir", str(tmp_path), "--out", str(tmp_path), "--dpnp-weights", "1,2"])
    assert "ALIGN,REPEL,CONSISTENCY" in capsys.readouterr().err
