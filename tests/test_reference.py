"""Heads on one backbone store it once: a checkpoint may name the checkpoint that stores its backbone (a path
beside it, a shipped checkpoint's name or a Hub id), and loading checks that backbone's weights by digest."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import hpm
from hpm.errors import CheckpointError
from hpm.heads import create_head
from hpm.model import HPMClassifier
from hpm.sources import BackboneSpec
from hpm.sources.zoo import build, split

OPTIONS = {"depth": 8, "width": 4, "num_classes": 10, "classifier": "fc"}


def _backbone_checkpoint(path, seed=0):
    """A trained-by-hpm backbone with its FC head: the checkpoint stores the backbone weights."""
    torch.manual_seed(seed)
    features, fc = split(build("cifar_resnet", OPTIONS))
    model = HPMClassifier(features, fc, create_head("fc", 16, 10), backbone_spec=BackboneSpec("hpm", "cifar_resnet",
                                                                                                OPTIONS))
    model.eval().save_pretrained(path)
    return path


def _head_on(backbone_dir, head="ncm"):
    base = hpm.load(backbone_dir)
    model = HPMClassifier(base.features, base.fc, create_head(head, 16, 10), backbone_spec=base.backbone_spec,
                          classes=base.classes)
    torch.nn.init.normal_(model.head.prototypes)
    return model.eval()


def test_a_head_saved_beside_its_backbone_names_it_and_loads_to_the_same_predictions(tmp_path):
    fc_dir = _backbone_checkpoint(tmp_path / "fc")
    model = _head_on(fc_dir).reference_backbone(fc_dir, relative_to=tmp_path / "ncm")
    model.save_pretrained(tmp_path / "ncm")
    config = json.loads((tmp_path / "ncm" / "config.json").read_text())
    assert config["backbone"]["source"] == "checkpoint" and config["backbone"]["name"] == "../fc"
    assert config["backbone_weights_included"] is False
    assert not any(k.startswith("features.") for k in load_file(tmp_path / "ncm" / "model.safetensors"))
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(hpm.load(tmp_path / "ncm")(x), model(x), atol=1e-5)


def test_a_loaded_head_saved_elsewhere_names_its_backbone_relative_to_its_new_folder(tmp_path):
    fc_dir = _backbone_checkpoint(tmp_path / "fc")
    _head_on(fc_dir).reference_backbone(fc_dir, relative_to=tmp_path / "ncm").save_pretrained(tmp_path / "ncm")
    loaded = hpm.load(tmp_path / "ncm")
    loaded.save_pretrained(tmp_path / "copies" / "ncm")
    config = json.loads((tmp_path / "copies" / "ncm" / "config.json").read_text())
    assert config["backbone"]["name"] == "../../fc"
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(hpm.load(tmp_path / "copies" / "ncm")(x), loaded(x))


def test_a_head_is_never_saved_over_the_checkpoint_that_stores_its_backbone(tmp_path):
    fc_dir = _backbone_checkpoint(tmp_path / "fc")
    with pytest.raises(CheckpointError, match="saved over the checkpoint that stores its backbone"):
        _head_on(fc_dir).reference_backbone(fc_dir, relative_to=fc_dir)
    named = _head_on(fc_dir).reference_backbone(fc_dir)  # named relative to the working directory
    with pytest.raises(CheckpointError, match="stores the backbone this model names"):
        named.save_pretrained(fc_dir)
    _head_on(fc_dir).reference_backbone(fc_dir, relative_to=tmp_path / "ncm").save_pretrained(tmp_path / "ncm")
    loaded = hpm.load(tmp_path / "ncm")
    with pytest.raises(CheckpointError, match="stores the backbone this model names"):
        loaded.save_pretrained(fc_dir)
    with pytest.raises(CheckpointError, match="stores the backbone this model names"):
        loaded.with_head(create_head("cosine", 16, 10)).save_pretrained(fc_dir)  # as hpm train builds a head
    assert hpm.load(fc_dir).backbone_spec.source == "hpm"  # still the backbone's own checkpoint


def test_a_backbone_whose_weights_changed_is_refused_with_a_message_saying_so(tmp_path):
    fc_dir = _backbone_checkpoint(tmp_path / "fc")
    _head_on(fc_dir).reference_backbone(fc_dir, relative_to=tmp_path / "ncm").save_pretrained(tmp_path / "ncm")
    weights = load_file(fc_dir / "model.safetensors")
    weights["features.net.stem.0.weight"] += 0.01  # retrained, or a moved branch
    save_file(weights, str(fc_dir / "model.safetensors"))
    with pytest.raises(CheckpointError, match="not the ones this head was trained on"):
        hpm.load(tmp_path / "ncm")


def test_a_head_cannot_name_a_checkpoint_holding_another_backbone_or_none(tmp_path):
    fc_dir, other = _backbone_checkpoint(tmp_path / "fc"), _backbone_checkpoint(tmp_path / "other", seed=1)
    with pytest.raises(CheckpointError, match="other backbone weights"):
        _head_on(fc_dir).reference_backbone(other, relative_to=tmp_path)
    hpm.wrap("pyautoattack", head="ncm").save_pretrained(tmp_path / "from-source")
    with pytest.raises(CheckpointError, match="does not store its backbone"):
        _head_on(fc_dir).reference_backbone(tmp_path / "from-source", relative_to=tmp_path)


def test_a_head_naming_a_hub_backbone_loads_from_the_hub_cache(tmp_path, monkeypatch):
    from hub_cache import write_hub_cache
    fc_dir = _backbone_checkpoint(tmp_path / "fc")
    write_hub_cache(tmp_path / "hub", "someone/backbone", {"1" * 40: fc_dir}, {"main": "1" * 40})
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    model = _head_on(fc_dir).reference_backbone(f"someone/backbone@{'1' * 40}", relative_to=tmp_path / "ncm")
    model.save_pretrained(tmp_path / "ncm")
    assert json.loads((tmp_path / "ncm" / "config.json").read_text())["backbone"]["name"] == \
        f"someone/backbone@{'1' * 40}"
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(hpm.load(tmp_path / "ncm")(x), model(x), atol=1e-5)


def test_hpm_train_on_a_checkpoint_that_stores_its_backbone_names_it_unless_told_to_store_a_copy(tmp_path,
                                                                                                  tiny_data_root):
    from hpm.cli import main
    fc_dir, data = _backbone_checkpoint(tmp_path / "fc"), tiny_data_root
    common = ["train", str(fc_dir), "--head", "ncm", "--mode", "fit", "--data", str(data), "--n-test", "8"]
    assert main([*common, "--out", str(tmp_path / "named")]) == 0
    assert main([*common, "--out", str(tmp_path / "copy"), "--store-backbone"]) == 0
    named = json.loads((tmp_path / "named" / "config.json").read_text())
    copy = json.loads((tmp_path / "copy" / "config.json").read_text())
    assert (named["backbone"]["source"], named["backbone"]["name"]) == ("checkpoint", "../fc")
    assert copy["backbone"]["source"] == "hpm" and copy["backbone_weights_included"] is True
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(hpm.load(tmp_path / "named")(x), hpm.load(tmp_path / "copy")(x), atol=1e-5)


def test_pushing_a_head_that_names_a_local_backbone_needs_the_backbone_s_hub_copy(tmp_path, fake_hub):
    from hpm.errors import HPMError
    fc_dir = _backbone_checkpoint(tmp_path / "fc")
    model = _head_on(fc_dir).reference_backbone(fc_dir, relative_to=tmp_path / "ncm")
    with pytest.raises(HPMError, match="push that checkpoint first"):
        model.push_to_hub("me/ncm")
    model.push_to_hub("me/ncm", backbone_repo="me/fc@v1")
    pushed = json.loads(fake_hub.added["config.json"])["backbone"]
    assert pushed["name"] == "me/fc@v1"
    assert pushed["options"] == model.backbone_spec.options  # the same digest
    assert model.backbone_spec.name == "../fc"  # the model itself is unchanged


def test_no_two_shipped_checkpoints_store_the_same_backbone():
    """A shipped head or mixed branch on a shipped backbone names it (``python scripts/reference_backbones.py``
    rewrites one that stores a copy), which keeps the repository and the wheel lean."""
    from hpm.hub import shipped_checkpoints
    from hpm.sources.reference import stored_backbones

    stored = stored_backbones(shipped_checkpoints().values())
    twice = {digest[:12]: [d.name + (f" [{part}]" if part else "") for d, part in copies]
             for digest, copies in stored.items() if len(copies) > 1}
    assert not twice
    assert len(stored) >= 5  # the backbones trained by hpm: ResNet-20s from scratch, FGSM-RS, DP-NP...


def _config_naming(directory, name, digest="0" * 64):
    """Rewrite the head checkpoint in ``directory`` to name the backbone checkpoint ``name`` (with ``digest``)."""
    config = json.loads((directory / "config.json").read_text())
    options = {"features_sha256": digest} if digest else {}
    config["backbone"] = {"source": "checkpoint", "name": name, "options": options}
    (directory / "config.json").write_text(json.dumps(config))


def test_a_named_backbone_needs_its_digest_and_a_relative_path_a_shipped_name_or_a_hub_id(tmp_path):
    fc_dir = _backbone_checkpoint(tmp_path / "fc")
    _head_on(fc_dir).reference_backbone(fc_dir, relative_to=tmp_path / "ncm").save_pretrained(tmp_path / "ncm")
    _config_naming(tmp_path / "ncm", "../fc", digest=None)
    with pytest.raises(CheckpointError, match="without the digest"):
        hpm.load(tmp_path / "ncm")
    _config_naming(tmp_path / "ncm", str(fc_dir.resolve()))
    with pytest.raises(CheckpointError, match="by the path"):
        hpm.load(tmp_path / "ncm")
    _config_naming(tmp_path / "ncm", "../no-such-fc")
    with pytest.raises(CheckpointError, match="neither beside it"):
        hpm.load(tmp_path / "ncm")


def test_a_checkpoint_from_the_hub_cannot_name_a_folder_of_this_machine(tmp_path, monkeypatch):
    """Whoever writes a Hub checkpoint must not make ``hpm.load`` (or the app) read local folders."""
    from hub_cache import write_hub_cache
    (tmp_path / "cache").mkdir()
    fc_dir = _backbone_checkpoint(tmp_path / "cache" / "fc")  # beside the snapshots, where "../../../fc" leads
    head = _head_on(fc_dir).reference_backbone(fc_dir, relative_to=tmp_path / "ncm")
    head.save_pretrained(tmp_path / "ncm")
    _config_naming(tmp_path / "ncm", "../../../fc", digest=head.backbone_spec.options["features_sha256"])
    write_hub_cache(tmp_path / "cache", "someone/ncm", {"2" * 40: tmp_path / "ncm"}, {"main": "2" * 40})
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match="from the Hub: only those"):
        hpm.load("someone/ncm")


def test_a_shipped_head_names_its_backbone_checkpoint_and_its_card_says_so():
    model = hpm.load("cifar10-resnet20w32-fgsmrs-20ep-hpm-full")
    spec, config = model.backbone_spec, model.checkpoint_config
    assert (spec.source, spec.name) == ("checkpoint", "cifar10-resnet20w32-fgsmrs-20ep-fc")
    assert not config.backbone_weights_included
    card = (hpm.hub.shipped_checkpoints()["cifar10-resnet20w32-fgsmrs-20ep-hpm-full"] / "README.md").read_text()
    assert "stored in the checkpoint `cifar10-resnet20w32-fgsmrs-20ep-fc`" in card
