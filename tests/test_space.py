"""The repository is a Hugging Face Space: README's front matter and requirements.txt are what the Space needs."""
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]


def front_matter() -> dict:
    text = (REPO / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_the_front_matter_pins_a_gradio_sdk_version_the_app_extra_allows_and_names_an_existing_app_file():
    meta = front_matter()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    [gradio] = [r for r in map(Requirement, project["optional-dependencies"]["app"]) if r.name == "gradio"]
    assert meta["sdk"] == "gradio" and gradio.specifier.contains(str(meta["sdk_version"]))
    assert (REPO / meta["app_file"]).is_file() and meta["app_file"] == "app.py"
    major, minor = map(int, str(meta["python_version"]).split("."))
    assert (major, minor) >= (3, 10)  # pyproject: requires-python >= 3.10
    assert {"title", "emoji", "colorFrom", "colorTo", "pinned", "license"} <= set(meta)


def test_requirements_are_the_packages_dependencies_since_the_space_imports_hpm_from_its_root():
    lines = [line for line in (REPO / "requirements.txt").read_text().splitlines() if line and not line.startswith("#")]
    assert lines == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert (REPO / "hpm" / "__init__.py").is_file()


def test_the_space_is_pushed_as_exactly_the_files_git_tracks_in_one_commit(fake_hub, monkeypatch):
    import shutil

    import pytest

    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git clone")
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    import push_space

    fake_hub.remote = [".gitattributes", "app.py", "a-file-git-no-longer-tracks.py"]
    assert push_space.main(["me/hpm-space", "--private"]) == 0
    assert fake_hub.created == ("me/hpm-space", "space", "gradio", True, True)
    assert sorted(fake_hub.added) == sorted(push_space.space_files())  # nothing git ignores (runs/, caches)
    assert {"app.py", "README.md", "requirements.txt", "hpm/__init__.py"} <= set(fake_hub.added)
    assert any(f.startswith("checkpoints/") and f.endswith(".safetensors") for f in fake_hub.added)
    assert fake_hub.deleted == ["a-file-git-no-longer-tracks.py"]
