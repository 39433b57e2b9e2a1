"""timm and RobustBench backbones with pretrained weights from local files, offline; and how each is installed.

No test here touches the network: HF_HUB_OFFLINE is set and opening a socket fails the test.
"""
import json
import re
import socket
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from safetensors.torch import save_file

import hpm
from hpm.errors import HPMError, OfflineError
from hpm.sources.external import robustbench_checkpoint_path

REPO = Path(__file__).resolve().parents[1]
SIZE = (3, 64, 64)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE, empty Hugging Face and torch.hub caches under tmp_path, and no sockets."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(socket.socket, "connect", lambda *a, **k: pytest.fail("network touched"))
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("network touched"))
    return tmp_path / "hf-cache"


def random_resnet18():
    import timm

    torch.manual_seed(0)
    return timm.create_model("resnet18", pretrained=False).eval()


def reference_logits(model, x):
    cfg = model.pretrained_cfg
    mean, std = (torch.tensor(cfg[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    return model((x - mean) / std)


def test_timm_loads_pretrained_weights_from_a_local_safetensors_file(tmp_path, offline):
    ref = random_resnet18()
    file = tmp_path / "resnet18.safetensors"
    save_file(ref.state_dict(), str(file))
    model = hpm.wrap("timm:resnet18", head="fc", source_options={"file": str(file)}, input_size=SIZE)
    x = torch.rand(2, *SIZE)
    assert torch.allclose(model(x), reference_logits(ref, x), atol=1e-4)
    assert model.backbone_spec.options == {"file": str(file)}


def test_a_checkpoint_of_a_timm_model_from_a_relative_weights_file_reloads_from_another_directory(
        tmp_path, offline, monkeypatch):
    (tmp_path / "work").mkdir()
    save_file(random_resnet18().state_dict(), str(tmp_path / "work" / "resnet18.safetensors"))
    monkeypatch.chdir(tmp_path / "work")
    model = hpm.wrap("timm:resnet18", head="fc", source_options={"file": "resnet18.safetensors"}, input_size=SIZE)
    model.save_pretrained(tmp_path / "ckpt")
    monkeypatch.chdir(tmp_path)
    x = torch.rand(2, *SIZE)
    assert torch.equal(hpm.load(tmp_path / "ckpt")(x), model(x))


def test_timm_offline_takes_the_weights_from_the_hugging_face_cache(offline):
    import timm

    ref = random_resnet18()
    repo = timm.models.get_pretrained_cfg("resnet18").hf_hub_id  # the Hub repo timm downloads from
    commit = "0" * 40
    folder = offline / f"models--{repo.replace('/', '--')}"
    (folder / "snapshots" / commit).mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    save_file(ref.state_dict(), str(folder / "snapshots" / commit / "model.safetensors"))
    model = hpm.wrap("timm:resnet18", head="fc", input_size=SIZE)
    x = torch.rand(2, *SIZE)
    assert torch.allclose(model(x), reference_logits(ref, x), atol=1e-4)


def test_timm_offline_without_local_weights_fails_at_once_naming_the_file_option(offline):
    with pytest.raises(OfflineError, match=r"HF_HUB_OFFLINE is set.*source_options=\{'file'"):
        hpm.wrap("timm:resnet18")


def test_timm_unreachable_hub_fails_at_once_naming_the_file_option(offline, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("hpm.network.network_available", lambda *a, **k: False)
    with pytest.raises(OfflineError, match=r"huggingface.co is unreachable.*'file'"):
        hpm.wrap("timm:resnet18")


def test_timm_hub_ids_offline_fail_at_once(offline, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)  # set after import: the Hub goes online
    with pytest.raises(OfflineError, match="start Python with HF_HUB_OFFLINE=1"):
        hpm.wrap("timm:hf-hub:timm/resnet18.a1_in1k")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # the Hub's offline mode: its (empty) cache
    with pytest.raises(OfflineError, match="could not fetch weights"):
        hpm.wrap("timm:hf-hub:timm/resnet18.a1_in1k")


def test_timm_bad_weights_files_are_named(tmp_path, offline):
    with pytest.raises(HPMError, match="does not exist"):
        hpm.wrap("timm:resnet18", source_options={"file": str(tmp_path / "missing.safetensors")})
    (tmp_path / "w.safetensors").touch()
    with pytest.raises(HPMError, match="architecture name"):
        hpm.wrap("timm:hf-hub:timm/resnet18.a1_in1k", source_options={"file": str(tmp_path / "w.safetensors")})


def test_a_timm_weights_file_gives_every_weight_its_classifier_included(tmp_path, offline):
    import timm

    torch.manual_seed(0)
    mine = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()  # a fine-tuned CIFAR-10 model
    file = tmp_path / "mine.safetensors"
    save_file(mine.state_dict(), str(file))
    model = hpm.wrap("timm:resnet18", head="fc", source_options={"file": str(file), "num_classes": 10},
                     input_size=SIZE)
    x = torch.rand(2, *SIZE)
    assert torch.equal(model.fc.weight, mine.fc.weight)
    assert torch.allclose(model(x), reference_logits(mine, x), atol=1e-4)


def test_a_timm_training_checkpoint_gives_its_state_dict_and_says_it_left_the_averaged_copy(tmp_path, offline):
    import timm

    torch.manual_seed(0)
    mine = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    weights = mine.state_dict()
    averaged = {k: v + 1 if v.is_floating_point() else v for k, v in weights.items()}
    torch.save({"state_dict": {f"module.{k}": v for k, v in weights.items()}, "state_dict_ema": averaged,
                "epoch": 3}, tmp_path / "checkpoint.pth")
    with pytest.warns(UserWarning, match="an averaged copy under 'state_dict_ema'; hpm loads 'state_dict'"):
        model = hpm.wrap("timm:resnet18", head="fc", source_options={"file": str(tmp_path / "checkpoint.pth"),
                                                                     "num_classes": 10}, input_size=SIZE)
    assert torch.equal(model.fc.weight, mine.fc.weight)
    old = {k: v for k, v in weights.items() if not k.endswith("num_batches_tracked")}  # saved before they counted
    torch.save(old, tmp_path / "old.pth")
    model = hpm.wrap("timm:resnet18", head="fc", source_options={"file": str(tmp_path / "old.pth"), "num_classes": 10},
                     input_size=SIZE)
    assert torch.equal(model.fc.weight, mine.fc.weight)


def test_a_timm_weights_file_of_another_architecture_or_class_count_is_refused(tmp_path, offline):
    import timm

    file = tmp_path / "resnet18-10.safetensors"
    save_file(timm.create_model("resnet18", pretrained=False, num_classes=10).state_dict(), str(file))
    with pytest.raises(HPMError, match=r"not a state dict of resnet34 with 10 classes: .*\d+ missing"):
        hpm.wrap("timm:resnet34", source_options={"file": str(file), "num_classes": 10})
    with pytest.raises(HPMError, match=r"resnet18 with 1000 classes: .*2 of another shape \(e.g. fc.weight\)"
                                       r".*num_classes=K"):
        hpm.wrap("timm:resnet18", source_options={"file": str(file)})


@pytest.mark.parametrize("source, options, message", [
    ("timm:resnet18", {"pretraind": False}, r"unknown source option\(s\) 'pretraind'; its options: pretrained"),
    ("torchvision:resnet18", {"weight": None}, r"unknown source option\(s\) 'weight'; its options: weights"),
    ("pyautoattack", {"file": "w.pt"}, r"unknown source option\(s\) 'file'; its options: none"),
    ("timm:resnet18", {"file": "w.safetensors", "pretrained": False}, r"weights file and pretrained=False"),
])
def test_source_options_a_loader_would_ignore_are_refused(source, options, message, offline):
    with pytest.raises(HPMError, match=message):
        hpm.wrap(source, source_options=options)


def test_timm_pretrained_weights_with_another_class_count_warn_that_the_classifier_is_new(offline):
    import timm

    repo = timm.models.get_pretrained_cfg("resnet18").hf_hub_id
    _cached_hub_repo(offline, repo, {"model.safetensors": lambda p: save_file(random_resnet18().state_dict(), str(p))})
    with pytest.warns(UserWarning, match="num_classes=10: its pretrained weights score 1000 classes, so timm gives "
                                         "it a new classifier at random") as caught:
        hpm.wrap("timm:resnet18", head="hpm", source_options={"num_classes": 10}, input_size=SIZE)
    assert any(w.filename == __file__ for w in caught)  # pointed at the caller's line


class _RunsOnUnpickling:
    """An object whose unpickling calls a function: what a hostile weights file holds."""

    def __reduce__(self):
        return (print, ("unpickled",))


def test_timm_torch_files_load_only_when_they_hold_tensors_alone(tmp_path, offline, capsys):
    ref = random_resnet18()
    torch.save(ref.state_dict(), tmp_path / "plain.pth")
    model = hpm.wrap("timm:resnet18", head="fc", source_options={"file": str(tmp_path / "plain.pth")},
                     input_size=SIZE)
    x = torch.rand(2, *SIZE)
    assert torch.allclose(model(x), reference_logits(ref, x), atol=1e-4)
    torch.save({"state_dict": _RunsOnUnpickling()}, tmp_path / "hostile.pth")
    with pytest.raises(HPMError, match=r"holds more than tensors.*GLOBAL print\).*safetensors"):
        hpm.wrap("timm:resnet18", source_options={"file": str(tmp_path / "hostile.pth")})
    assert "unpickled" not in capsys.readouterr().out


def _cached_hub_repo(cache, repo, files):
    """``files`` (name -> writer of that path) as a download of ``repo`` in the Hugging Face cache ``cache``."""
    commit = "1" * 40
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "snapshots" / commit).mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    for name, write in files.items():
        write(folder / "snapshots" / commit / name)


@pytest.mark.parametrize("hostile", [False, True])
def test_a_hub_repo_naming_its_own_torch_weights_file_is_read_weights_only_first(offline, hostile, capsys):
    ref = random_resnet18()
    config = {"architecture": "resnet18", "num_classes": 1000, "pretrained_cfg": {"hf_hub_filename": "weights.bin"}}
    weights = {"state_dict": _RunsOnUnpickling()} if hostile else ref.state_dict()
    _cached_hub_repo(offline, "someone/resnet18", {"config.json": lambda p: p.write_text(json.dumps(config)),
                                                   "weights.bin": lambda p: torch.save(weights, p)})
    if hostile:
        with pytest.raises(HPMError, match=r"weights.bin holds more than tensors"):
            hpm.wrap("timm:hf-hub:someone/resnet18", input_size=SIZE)
        assert "unpickled" not in capsys.readouterr().out
    else:
        model = hpm.wrap("timm:hf-hub:someone/resnet18", head="fc", input_size=SIZE)
        x = torch.rand(2, *SIZE)
        assert torch.allclose(model(x), reference_logits(ref, x), atol=1e-4)


def test_a_torch_weights_file_cut_short_is_named_as_such(tmp_path, offline):
    torch.save(random_resnet18().state_dict(), tmp_path / "whole.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "whole.pth").read_bytes()[:1000])
    with pytest.raises(HPMError, match="does not read as a torch file .*is it complete"):
        hpm.wrap("timm:resnet18", source_options={"file": str(tmp_path / "cut.pth")})


def test_a_timm_that_cannot_import_the_installed_hub_gets_the_fix_named(offline, monkeypatch):
    """timm before 1.0.21 with huggingface_hub 2 says the Hub is not installed; hpm names the real fix."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("hpm.network.network_available", lambda *a, **k: True)
    monkeypatch.setattr("timm.models._hub._has_hf_hub", False)  # what timm concludes from the failed import
    with pytest.raises(HPMError, match=re.escape("'timm>=1.0.21'")):
        hpm.wrap("timm:resnet18", input_size=SIZE)


def test_robustbench_loads_from_a_local_model_dir_offline(tmp_path, offline):
    from hpm._compat import import_robustbench_utils

    import_robustbench_utils()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    name, options = "Sehwag2021Proxy_R18", {"model_dir": str(tmp_path / "models"), "threat_model": "L2"}
    torch.manual_seed(0)
    arch = model_dicts[BenchmarkDataset.cifar_10][ThreatModel.L2][name]["model"]().eval()
    target = robustbench_checkpoint_path(name, options["model_dir"], "cifar10", "L2")
    target.parent.mkdir(parents=True)
    torch.save(arch.state_dict(), target)
    model = hpm.wrap(f"robustbench:{name}", head="fc", source_options=options)
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(model(x), arch(x), atol=1e-4)


def test_a_robustbench_file_holding_more_than_tensors_is_refused_unopened(tmp_path, offline, capsys):
    from hpm._compat import import_robustbench_utils

    import_robustbench_utils()
    name, options = "Sehwag2021Proxy_R18", {"model_dir": str(tmp_path / "models"), "threat_model": "L2"}
    target = robustbench_checkpoint_path(name, options["model_dir"], "cifar10", "L2")
    target.parent.mkdir(parents=True)
    torch.save({"state_dict": _RunsOnUnpickling()}, target)
    with pytest.raises(HPMError, match=r"holds more than tensors \(GLOBAL print\).*save its state dict"):
        hpm.wrap(f"robustbench:{name}", source_options=options)
    assert "unpickled" not in capsys.readouterr().out


def test_robustbench_sources_without_the_extra_name_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "robustbench", None)  # as if not installed
    with pytest.raises(HPMError, match=re.escape('pip install "hybrid-prototype-mixing[robustbench]"')):
        hpm.wrap("robustbench:Sehwag2021Proxy_R18")


def test_robustbench_is_an_extra_the_tests_install_and_the_default_install_brings_timm():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {Requirement(r).name for r in project["dependencies"]}
    assert "timm" in names and "robustbench" not in names and "setuptools" not in names
    extras = project["optional-dependencies"]
    assert {"robustbench", "setuptools", "huggingface_hub"} <= {Requirement(r).name for r in extras["robustbench"]}
    test = [Requirement(r) for r in extras["test"]]
    assert any(r.name == project["name"] and "robustbench" in r.extras for r in test)
