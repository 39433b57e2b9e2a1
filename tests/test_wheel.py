"""What a pip user gets: the wheel, installed into a fresh environment outside the repository, loads a shipped
checkpoint by name and serves the app with ``hpm app``."""
import json
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO
from ui.conftest import _free_port

pytestmark = pytest.mark.slow


def site_packages() -> list[str]:
    """The running interpreter's site-packages folders: a virtual environment's own when the tests run in one,
    the system's otherwise (``venv --system-site-packages`` would see the base interpreter's in both cases)."""
    paths = sysconfig.get_paths()
    found = [*site.getsitepackages(), paths["purelib"], paths["platlib"]]
    if site.ENABLE_USER_SITE:
        found.append(site.getusersitepackages())
    return [d for d in dict.fromkeys(found) if os.path.isdir(d)]


def wheel_name() -> str:
    """The wheel's file name prefix: the distribution name of pyproject.toml, normalised as wheels spell it."""
    name = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["name"]
    return re.sub(r"[-_.]+", "_", name).lower()


WITHHELD = "cifar10-resnet20w16-scratch-l2"  # a small checkpoint the test's wheel leaves out, as it does the largest


def withhold(pyproject: Path, name: str) -> None:
    """Add ``name``'s weights to the ones ``pyproject`` keeps out of the wheel."""
    text = pyproject.read_text()
    listed = tomllib.loads(text)["tool"]["setuptools"]["exclude-package-data"]["hpm.checkpoints"]
    line = f'"hpm.checkpoints" = {json.dumps(listed)}'
    assert line in text, "pyproject.toml writes its withheld weights on one line"
    pyproject.write_text(text.replace(line, f'"hpm.checkpoints" = {json.dumps([*listed, f"{name}/model.safetensors"])}'))


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A virtual environment holding only the wheel, built from pyproject.toml with the weights of ``WITHHELD`` left
    out as well; its dependencies come from the running interpreter's site-packages (listed in a .pth file after
    the wheel's own folder, whose .pth files are not run, so an editable hpm there stays out), so that torch is not
    downloaded again."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"  # a copy, so that no stale build/ of the checkout ends up in the wheel
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", "build", "runs", "artifacts", "*.egg-info",
                                                                "__pycache__", ".venv"))
    withhold(source / "pyproject.toml", WITHHELD)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(root / "dist"), str(source)], check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
    wheel, = (root / "dist").glob(f"{wheel_name()}-*.whl")
    python = root / "venv" / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True)
    inner = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           check=True, capture_output=True, text=True).stdout.strip()
    (Path(inner) / "outer-site-packages.pth").write_text("\n".join(site_packages()) + "\n")
    outside = root / "elsewhere"
    outside.mkdir()
    return root / "venv" / "bin", outside


def _python_outside(venv, code: str, env: dict | None = None) -> str:
    """What the wheel's venv python prints running ``code`` from a folder outside the repository."""
    bin_dir, outside = venv
    result = subprocess.run([str(bin_dir / "python"), "-c", code], cwd=outside, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_the_wheel_loads_a_shipped_checkpoint_by_name_from_outside_the_repository(venv):
    bin_dir, _ = venv
    code = ("import hpm; m = hpm.load('cifar10-resnet18-hpm-clean'); "
            "print(hpm.__file__); print(m.head_type, m.checkpoint_config.metrics['clean_accuracy']['value'])")
    location, facts = _python_outside(venv, code).strip().splitlines()
    assert location.startswith(str(bin_dir.parent)) and facts == "hpm 0.936"


def test_a_shipped_head_finds_the_shipped_backbone_it_names_inside_the_wheel(venv):
    code = ("import hpm, torch; m = hpm.load('cifar10-resnet20w32-fgsmrs-20ep-hpm-full'); "
            "print(m.backbone_spec.source, m.backbone_spec.name, m(torch.zeros(2, 3, 32, 32)).shape[1])")
    assert _python_outside(venv, code).split() == ["checkpoint", "cifar10-resnet20w32-fgsmrs-20ep-fc", "10"]


def test_hpm_app_serves_the_demo_from_the_wheel(venv):
    bin_dir, outside = venv
    port = _free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "NO_PROXY": "127.0.0.1,localhost"}
    env.pop("HPM_DATA_DIR", None)
    log = outside / "app.log"
    server = subprocess.Popen([str(bin_dir / "hpm"), "app", "--port", str(port)], cwd=outside, env=env,
                              stdout=subprocess.DEVNULL, stderr=log.open("w"))
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as page:
                    assert page.status == 200 and b"Hybrid Prototype Mixing" in page.read()
                    return
            except OSError:
                assert server.poll() is None, log.read_text()[-2000:]
                time.sleep(0.5)
        pytest.fail("hpm app served no page within two minutes")
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_wheel_carries_the_sample_set(venv):
    bin_dir, _ = venv
    code = ("from hpm.samples import samples_root, load_samples; print(samples_root()); "
            "print(len(load_samples('cifar10')), len(load_samples('imagenet')))")
    env = {k: v for k, v in os.environ.items() if k != "HPM_DATA_DIR"}
    root, counts = _python_outside(venv, code, env).strip().splitlines()
    assert root.startswith(str(bin_dir.parent)) and root.endswith("hpm/assets") and counts == "300 10"


def test_a_checkpoint_whose_weights_the_wheel_leaves_out_ships_its_card_and_says_where_its_weights_are(venv):
    code = ("import hpm, hpm.webapp as app; from hpm.hub import shipped_checkpoints; "
            f"d = shipped_checkpoints()['{WITHHELD}']; print(sorted(p.name for p in d.iterdir() if p.is_file())); "
            f"print('{WITHHELD}' in app.CHECKPOINTS, 'cifar10-resnet18-hpm-clean' in app.CHECKPOINTS)\n"
            f"try: hpm.load('{WITHHELD}')\nexcept hpm.CheckpointError as e: print(e)")
    files, menu, message = _python_outside(venv, code).strip().splitlines()
    assert files == "['README.md', 'config.json']" and menu == "False True"  # the app offers only what it can load
    assert message.startswith(f"{WITHHELD}: its weights are not in the installed hpm") and "PyPI" in message


def test_the_wheel_stays_under_pypi_s_default_file_size_limit(venv):
    bin_dir, _ = venv
    wheel, = (bin_dir.parent.parent / "dist").glob(f"{wheel_name()}-*.whl")
    assert wheel.stat().st_size < 100 * 1024 ** 2  # PyPI refuses larger files unless a project is granted more
