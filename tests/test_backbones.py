"""Wrapping any classifier: the split is exact, every source works offline, bad models are refused."""
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

import hpm
from hpm.sources import BackboneSpec, split_classifier
from hpm.errors import HPMError, OfflineError



def test_split_of_any_module_reproduces_its_logits(tiny_net):
    x = torch.rand(3, 3, 32, 32)
    expected = tiny_net(x)
    features, fc = split_classifier(tiny_net, (3, 32, 32))
    assert isinstance(fc, nn.Linear) and fc.in_features == 16
    assert torch.allclose(fc(features(x)), expected, atol=1e-6)


def test_a_module_not_ending_in_linear_is_refused_with_an_explanation():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10), nn.Softmax(dim=1))
    with pytest.raises(HPMError, match="not the output of a final nn.Linear"):
        split_classifier(model, (3, 32, 32))


@pytest.mark.parametrize("head", ["hpm", "ncm", "cosine", "fc"])
def test_wrap_a_module_gives_a_classifier_whose_fc_mode_is_the_original_model(head, tiny_net):
    x = torch.rand(4, 3, 32, 32)
    original = tiny_net(x)
    model = hpm.wrap(tiny_net, head=head, classes=[f"c{i}" for i in range(10)])
    assert model.num_features == 16 and model.num_classes == 10 and model.head_type == head
    assert torch.allclose(model.fc_oracle()(x), original, atol=1e-6)
    assert model(x).shape == (4, 10)
    assert model.backbone_spec.source == "module"


def test_wrapped_backbone_is_frozen_and_stays_in_eval_mode(tiny_net):
    model = hpm.wrap(tiny_net, head="hpm")
    model.train()
    assert not model.features.training
    assert all(not p.requires_grad for p in model.features.parameters())
    assert all(p.requires_grad for p in model.head.parameters())


def test_mode_views_are_modules_fixed_to_one_forward_pass(tiny_net):
    model = hpm.wrap(tiny_net, head="hpm")
    model.head.init_prototypes(torch.randn(20, 16), torch.arange(20) % 10)
    x = torch.rand(5, 3, 32, 32)
    assert torch.equal(model.deployed()(x), model(x, mode="hard"))
    assert torch.equal(model.soft_surrogate()(x), model(x, mode="soft"))
    assert torch.equal(model.fc_oracle()(x), model(x, mode="fc"))
    model.mode = "soft"
    assert torch.equal(model(x), model(x, mode="soft"))
    with pytest.raises(ValueError):
        model.mode = "oracle"


def test_context_makes_single_image_predictions_well_defined(tiny_net):
    model = hpm.wrap(tiny_net, head="hpm")
    model.head.init_prototypes(torch.randn(20, 16), torch.arange(20) % 10)
    torch.nn.init.normal_(model.head.mixer.weight, std=0.3)
    x = torch.rand(6, 3, 32, 32)
    context = model.context_features(x[1:])
    assert context.shape == (5, 16)
    inside = model(x[:1], context=context)
    assert torch.allclose(inside, model.head(model.features(x), model.fc(model.features(x)))[:1], atol=1e-5)
    assert torch.allclose(model.deployed(context)(x[:1]), inside)
    assert not torch.allclose(model(x[:1]), inside)  # alone, the batch prototypes differ


def test_a_per_sample_head_ignores_the_context(tiny_net):
    model = hpm.wrap(tiny_net, head="ncm")
    model.head.init_prototypes(torch.randn(20, 16), torch.arange(20) % 10)
    x = torch.rand(6, 3, 32, 32)
    assert torch.equal(model(x[:1], context=model.context_features(x[1:])), model(x[:1]))


def test_wrapping_leaves_the_callers_module_as_it_was(tiny_net):
    x = torch.rand(3, 3, 32, 32)
    before = tiny_net(x)
    state = {k: v.clone() for k, v in tiny_net.state_dict().items()}
    model = hpm.wrap(tiny_net, head="hpm")
    assert isinstance(tiny_net.linear, nn.Linear)  # its final layer was not replaced
    assert torch.equal(tiny_net(x), before)  # model(x) still gives logits, not features
    model.fc.weight.data.add_(1.0)  # training the wrapped copy does not touch the original
    assert all(torch.equal(v, state[k]) for k, v in tiny_net.state_dict().items())
    hpm.load(model.save_pretrained(Path(tempfile.mkdtemp()) / "ck"), backbone=tiny_net)
    assert torch.equal(tiny_net(x), before)


def test_pyautoattack_resnet18_source_loads_its_shipped_weights():
    model = hpm.wrap("pyautoattack", head="fc")
    assert model.num_features == 512 and model.classes[0] == "airplane" and model.dataset == "cifar10"
    from pyautoattack.examples.resnet import ResNet18  # same weights, unsplit
    import importlib.resources
    ref = ResNet18().eval()
    with importlib.resources.as_file(importlib.resources.files("pyautoattack") / "examples" / "model_test.pt") as p:
        ref.load_state_dict(torch.load(p, map_location="cpu", weights_only=True))
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(model(x), ref(x), atol=1e-5)


def test_robustbench_zoo_model_loads_from_a_local_model_dir_without_network(tmp_path, monkeypatch):
    """A random-init checkpoint of a real zoo architecture, written where load_model looks for it."""
    from hpm._compat import import_robustbench_utils
    import_robustbench_utils()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    name = "Sehwag2021Proxy_R18"
    torch.manual_seed(0)
    arch = model_dicts[BenchmarkDataset.cifar_10][ThreatModel.Linf][name]["model"]().eval()
    target = tmp_path / "cifar10" / "Linf" / f"{name}.pt"
    target.parent.mkdir(parents=True)
    torch.save(arch.state_dict(), target)
    monkeypatch.setattr("hpm.network.network_available", lambda *a, **k: pytest.fail("network touched"))
    model = hpm.wrap(f"robustbench:{name}", head="hpm", source_options={"model_dir": str(tmp_path)})
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(model.fc_oracle()(x), arch(x), atol=1e-4)
    assert model.backbone_spec == BackboneSpec("robustbench", name, {"model_dir": str(tmp_path)})
    assert model.dataset == "cifar10"


def test_robustbench_model_missing_offline_fails_fast_naming_the_expected_path(tmp_path, monkeypatch):
    monkeypatch.setattr("hpm.network.network_available", lambda *a, **k: False)
    with pytest.raises(OfflineError, match="Sehwag2021Proxy_R18.pt"):
        hpm.wrap("robustbench:Sehwag2021Proxy_R18", source_options={"model_dir": str(tmp_path)})
    with pytest.raises(HPMError, match="no model"):
        hpm.wrap("robustbench:NoSuchModel2099", source_options={"model_dir": str(tmp_path)})


def test_timm_and_torchvision_models_wrap_with_their_normalisation_inside():
    m = hpm.wrap("timm:resnet10t", head="hpm", source_options={"pretrained": False}, input_size=(3, 64, 64))
    assert m.num_features == 512 and m.num_classes == 1000 and m.dataset == "imagenet"
    assert m(torch.rand(2, 3, 64, 64)).shape == (2, 1000)
    tv = hpm.wrap("torchvision:mobilenet_v3_small", head="ncm", source_options={"weights": None},
                  input_size=(3, 64, 64))
    assert tv.num_classes == 1000 and tv.classes[0] == "tench"


@pytest.mark.parametrize("name, weights, size", [
    ("inception_v3", "DEFAULT", (3, 299, 299)),
    ("efficientnet_b3", "IMAGENET1K_V1", (3, 300, 300)),
    ("resnet50", "ResNet50_Weights.IMAGENET1K_V2", (3, 224, 224)),
])
def test_torchvision_weights_bring_the_input_size_they_were_trained_at(monkeypatch, name, weights, size):
    import torchvision

    from hpm.sources.external import LOADERS

    asked = []

    def get_model(model_name, weights=None, **kwargs):  # no download: only the weights' preprocessing matters
        asked.append(weights)
        return nn.Identity()

    monkeypatch.setattr(torchvision.models, "get_model", get_model)
    _, input_size = LOADERS["torchvision"](name, {"weights": weights})
    assert input_size == size and asked[0].transforms().crop_size == [size[1]]
    for wrong in ("V9", "ResNet18_Weights.V9", "ResNet50_Weights.IMAGENET1K_V1",
                  torchvision.models.ResNet50_Weights.DEFAULT):  # unknown, or another model's
        with pytest.raises(HPMError, match="no weights .*; its weights: ResNet18_Weights.IMAGENET1K_V1"):
            LOADERS["torchvision"]("resnet18", {"weights": wrong})


def test_bad_source_strings_get_a_message_listing_the_forms():
    with pytest.raises(HPMError, match="robustbench:NAME"):
        hpm.wrap("resnet50")


def test_autoattack_alias_resolves_to_pyautoattack():
    from hpm._compat import install_autoattack_alias
    install_autoattack_alias()
    import autoattack
    import autoattack.state
    import pyautoattack
    assert autoattack is pyautoattack and autoattack.state.EvaluationState is pyautoattack.state.EvaluationState


def test_a_context_of_the_wrong_shape_is_refused_with_the_expected_shape(tiny_net):
    model = hpm.wrap(tiny_net, head="hpm")
    with pytest.raises(ValueError, match=r"context must be features \[m, 16\]"):
        model(torch.rand(1, 3, 32, 32), context=torch.rand(4, 3, 32, 32))
