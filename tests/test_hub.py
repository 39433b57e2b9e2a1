"""Checkpoints: exact file set, bit-exact round trips, strict loading, clear errors, Hub I/O without network."""
import json
import time

import pytest
import torch

import hpm
from hpm.errors import CheckpointError, HPMError, OfflineError
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
    with pytest.raises(CheckpointError, match="backbone=YourNet()"):
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


def test_push_to_hub_uploads_the_saved_directory_in_one_commit(fake_hub):
    url = hpm.wrap("pyautoattack", head="hpm").push_to_hub("me/hpm-test", private=True)
    assert url == "https://hub/me/hpm-test/commit/1"
    assert fake_hub.created == ("me/hpm-test", "model", None, True, True)
    assert sorted(fake_hub.added) == ["README.md", CONFIG_NAME, WEIGHTS_NAME] and fake_hub.deleted == []


def test_an_upload_fails_within_seconds_when_the_hub_is_unreachable(monkeypatch, tmp_path):
    from hpm.hub import upload_files
    (tmp_path / "a.txt").write_text("a")
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "https://huggingface.co")
    monkeypatch.setattr("hpm.network.network_available", lambda host, port=443, timeout=3.0: False)
    with pytest.raises(OfflineError, match="cannot reach huggingface.co to upload to 'me/x'; nothing was uploaded"):
        upload_files(tmp_path, ["a.txt"], "me/x")


def _http_error(status: int) -> Exception:
    from types import SimpleNamespace

    from huggingface_hub.errors import HfHubHTTPError
    error = HfHubHTTPError.__new__(HfHubHTTPError)  # its constructor's arguments differ between versions
    Exception.__init__(error, f"{status} from the Hub")
    error.response = SimpleNamespace(status_code=status)
    return error


@pytest.mark.parametrize("failure, error, message", [
    (_http_error(401), HPMError, r"refused the upload to 'me/x' \(HTTP 401.*check your token"),
    (_http_error(500), HPMError, r"refused the upload to 'me/x' \(HTTP 500: 500 from the Hub\)$"),
    (ConnectionResetError("reset by peer"), OfflineError, "uploading to 'me/x' failed.*reset by peer"),
    (ValueError("bad front matter"), HPMError, "was not made: bad front matter"),
], ids=["unauthorised", "server-error", "connection-lost", "refused-locally"])
def test_an_upload_the_hub_refuses_or_loses_says_why(fake_hub, tmp_path, failure, error, message):
    from hpm.hub import upload_files
    (tmp_path / "a.txt").write_text("a")
    fake_hub.fail = failure
    with pytest.raises(error, match=message):
        upload_files(tmp_path, ["a.txt"], "me/x")


def test_an_upload_names_missing_files_and_a_mirror_deletes_what_it_does_not_list(fake_hub, tmp_path):
    from hpm.hub import upload_files
    (tmp_path / "a.txt").write_text("a")
    with pytest.raises(HPMError, match=r"1 of the files to upload are not files under .*missing.bin"):
        upload_files(tmp_path, ["a.txt", "missing.bin"], "me/x")
    fake_hub.remote = [".gitattributes", "a.txt", "old.txt"]
    upload_files(tmp_path, ["a.txt"], "me/x")
    assert fake_hub.deleted == []
    upload_files(tmp_path, ["a.txt"], "me/x", mirror=True)
    assert fake_hub.deleted == ["old.txt"] and fake_hub.added == {"a.txt": b"a"}


def test_a_card_names_the_architecture_hpm_trained():
    from hpm.model_card import _backbone_text
    preact = {"source": "hpm", "name": "preact_resnet18", "options": {"num_classes": 10, "classifier": "fc"}}
    resnet = {"source": "hpm", "name": "cifar_resnet", "options": {"depth": 20, "width": 32, "classifier": "fc"}}
    assert _backbone_text(preact).startswith("a PreAct ResNet-18")
    assert _backbone_text(resnet).startswith("a CIFAR ResNet-20 of first-stage width 32")
    assert "None" not in _backbone_text(preact) + _backbone_text(resnet)


def test_a_hub_only_lookup_never_reads_a_local_folder_of_the_same_name(tmp_path, monkeypatch):
    from hpm.hub import download_checkpoint
    (tmp_path / "owner" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OfflineError, match="cannot reach the Hugging Face Hub"):
        download_checkpoint("owner/name")  # a local directory of that name exists, and is ignored
    with pytest.raises(CheckpointError, match="not a Hub repo id"):
        download_checkpoint("./owner/name")


def _two_revisions(tmp_path):
    """A Hub cache holding ``someone/hpm-demo``: ``main`` has an HPM head, tag ``v1`` (an older commit) an NCM head."""
    from hub_cache import write_hub_cache
    old, new = tmp_path / "v1", tmp_path / "main"
    hpm.wrap("pyautoattack", head="ncm").save_pretrained(old)
    hpm.wrap("pyautoattack", head="hpm").save_pretrained(new)
    commits = {"1" * 40: old, "2" * 40: new}
    write_hub_cache(tmp_path / "hub", "someone/hpm-demo", commits, {"main": "2" * 40, "v1": "1" * 40})
    return tmp_path / "hub"


def test_a_checkpoint_in_the_hub_cache_loads_offline_by_repo_id_and_at_a_pinned_revision(tmp_path):
    """The success path as users meet it: HF_HUB_CACHE and HF_HUB_OFFLINE=1 set, nothing monkeypatched."""
    import os
    import subprocess
    import sys
    cache = _two_revisions(tmp_path)
    script = ("import hpm; heads = [hpm.load('someone/hpm-demo').head_type, "
              "hpm.load('someone/hpm-demo', revision='v1').head_type, hpm.load('someone/hpm-demo@v1').head_type, "
              f"hpm.load('someone/hpm-demo', revision='{'1' * 40}').head_type]; print(heads)")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['hpm', 'ncm', 'ncm', 'ncm']"


def test_a_revision_missing_from_the_cache_fails_fast_naming_it(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(_two_revisions(tmp_path)))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(OfflineError, match="'someone/hpm-demo' at revision 'v2'"):
        hpm.load("someone/hpm-demo@v2")
    with pytest.raises(CheckpointError, match="pins revision 'v1' but revision='main'"):
        hpm.load("someone/hpm-demo@v1", revision="main")


def test_a_mistyped_path_whose_folder_exists_is_a_path_and_the_message_lists_the_checkpoints_there(tmp_path,
                                                                                                   monkeypatch):
    hpm.wrap("pyautoattack", head="ncm").save_pretrained(tmp_path / "checkpoints" / "real-one")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="checkpoints/typo: no such checkpoint directory; checkpoints in "
                                              "checkpoints: real-one$"):
        hpm.load("checkpoints/typo")
