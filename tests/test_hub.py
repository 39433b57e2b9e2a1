"""Checkpoints: exact file set, bit-exact round trips, strict loading, clear errors, Hub I/O without network."""
import json
import time

import pytest
import torch

import hpm
from hpm.errors import CheckpointError, OfflineError
from hpm.checkpoint import CONFIG_NAME, WEIGHTS_NAME

from conftest import TinyNet


def trained_like(model):
    """Give every head tensor a non-trivial value so a round trip is a real test."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for t in list(model.head.parameters()) + list(model.head.buffers()) + list(model.fc.parameters()):
            t.copy_(torch.randn(t.shape, generator=g))
    return model


@pytest.mark.parametrize("head", ["hpm", "ncm", "cosine", "fc"])
def test_round_trip_of_a_rebuildable_backbone_is_bit_exact(head, tmp_path):
    model = trained_like(hpm.wrap("pyautoattack", head=head))
    model.save_pretrained(tmp_path, metrics={"clean_accuracy": {"value": 0.5, "protocol": "clean", "n": 8}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", CONFIG_NAME, WEIGHTS_NAME]
    loaded = hpm.load(tmp_path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    x = torch.rand(4, 3, 32, 32)
    assert torch.equal(model(x), loaded(x))
    assert loaded.checkpoint_config.metrics["clean_accuracy"]["value"] == 0.5


def test_rebuildable_backbones_are_referenced_not_copied(tmp_path):
    from safetensors.torch import load_file
    hpm.wrap("pyautoattack", head="hpm").save_pretrained(tmp_path)
    keys = load_file(str(tmp_path / WEIGHTS_NAME)).keys()
    assert not any(k.startswith("features.") for k in keys)
    assert {"fc.weight", "fc.bias", "head.prototypes", "head.mixer.weight", "head.mixer.bias"} <= set(keys)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["backbone"] == {"source": "pyautoattack", "name": "resnet18", "options": {}}
    assert config["head"]["type"] == "hpm" and config["classes"][0] == "airplane"


def test_arbitrary_module_backbone_is_saved_and_reloads_with_backbone_argument(tmp_path):
    torch.manual_seed(0)
    net = TinyNet()
    model = trained_like(hpm.wrap(net, head="hpm"))
    model.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="backbone=your_module"):
        hpm.load(tmp_path)
    loaded = hpm.load(tmp_path, backbone=TinyNet())  # fresh weights: the checkpoint's replace them
    x = torch.rand(3, 3, 32, 32)
    assert torch.equal(model(x), loaded(x))


def test_missing_weights_file_is_reported(tmp_path):
    hpm.wrap("pyautoattack", head="hpm").save_pretrained(tmp_path)
    (tmp_path / WEIGHTS_NAME).unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        hpm.load(tmp_path)


def test_a_pickle_is_never_unpickled(tmp_path):
    model = hpm.wrap("pyautoattack", head="hpm")
    model.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / WEIGHTS_NAME)  # a pickle disguised as safetensors
    with pytest.raises(CheckpointError, match="never unpickles"):
        hpm.load(tmp_path)
    (tmp_path / WEIGHTS_NAME).unlink()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        hpm.load(tmp_path)


def test_wrong_shapes_and_keys_are_listed(tmp_path):
    from safetensors.torch import load_file, save_file
    hpm.wrap("pyautoattack", head="hpm").save_pretrained(tmp_path)
    state = load_file(str(tmp_path / WEIGHTS_NAME))
    state["head.prototypes"] = torch.zeros(10, 7)
    save_file(state, str(tmp_path / WEIGHTS_NAME))
    with pytest.raises(CheckpointError, match=r"head.prototypes: file \(10, 7\)"):
        hpm.load(tmp_path)
    del state["head.prototypes"]
    save_file(state, str(tmp_path / WEIGHTS_NAME))
    with pytest.raises(CheckpointError, match="missing.*head.prototypes"):
        hpm.load(tmp_path)


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"backbone": {}, "head": {"type": "svm"}, "input_size": [3, 32, 32], "classes": []}', "head.type"),
    ('{"head": {"type": "hpm"}}', "missing keys"),
])
def test_bad_config_files_get_clear_errors(tmp_path, text, message):
    hpm.wrap("pyautoattack", head="hpm").save_pretrained(tmp_path)
    (tmp_path / CONFIG_NAME).write_text(text)
    with pytest.raises(CheckpointError, match=message):
        hpm.load(tmp_path)


def test_nonexistent_path_that_is_not_a_repo_id(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        hpm.load(tmp_path / "nope")


def test_hub_id_offline_fails_fast_naming_the_repo_and_suggesting_a_local_path(monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("offline")
    monkeypatch.setattr("huggingface_hub.snapshot_download", offline)
    start = time.monotonic()
    with pytest.raises(OfflineError, match=r"someone/hpm-cifar10.*local checkpoint directory"):
        hpm.load("someone/hpm-cifar10")
    assert time.monotonic() - start < 5


def test_hub_id_downloads_only_the_checkpoint_files(monkeypatch, tmp_path):
    hpm.wrap("pyautoattack", head="ncm").save_pretrained(tmp_path)
    calls = {}

    def fake_download(repo_id, **kwargs):
        calls.update(kwargs, repo_id=repo_id)
        return str(tmp_path)
    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_download)
    assert hpm.load("someone/hpm-ncm").head_type == "ncm"
    assert calls["repo_id"] == "someone/hpm-ncm"
    assert set(calls["allow_patterns"]) == {"config.json", "model.safetensors", "README.md"}


def test_push_to_hub_uploads_the_saved_directory_in_one_commit(monkeypatch):
    uploaded = {}

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=False, exist_ok=False):
            uploaded["created"] = (repo_id, private, exist_ok)

        def upload_folder(self, repo_id, folder_path, commit_message):
            from pathlib import Path
            uploaded["files"] = sorted(p.name for p in Path(folder_path).iterdir())
            return type("Info", (), {"commit_url": f"https://hub/{repo_id}/commit/1"})()
    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    url = hpm.wrap("pyautoattack", head="hpm").push_to_hub("me/hpm-test", private=True)
    assert url == "https://hub/me/hpm-test/commit/1"
    assert uploaded == {"created": ("me/hpm-test", True, True), "files": ["README.md", CONFIG_NAME, WEIGHTS_NAME]}


def test_model_card_has_hub_metadata_and_a_generated_results_table(tmp_path):
    metrics = {"robust_accuracy": {"value": 0.421, "protocol": "MSA+Square, Linf 8/255", "n": 200, "batch_size": 64}}
    hpm.wrap("pyautoattack", head="hpm").save_pretrained(tmp_path, metrics=metrics,
                                                         training={"commands": ["hpm train pyautoattack --out x"]})
    card = (tmp_path / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: hpm" in card and "- cifar10" in card
    assert "| robust_accuracy | 42.1% |  | MSA+Square, Linf 8/255 | 200 | 64 |" in card
    assert "hpm train pyautoattack --out x" in card


def test_a_hub_only_lookup_never_reads_a_local_folder_of_the_same_name(tmp_path, monkeypatch):
    from hpm.hub import download_checkpoint
    (tmp_path / "owner" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OfflineError, match="cannot reach the Hugging Face Hub"):
        download_checkpoint("owner/name")  # a local directory of that name exists, and is ignored
    with pytest.raises(CheckpointError, match="not a Hub repo id"):
        download_checkpoint("./owner/name")
