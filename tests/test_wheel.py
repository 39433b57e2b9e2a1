"""What a pip user gets: the wheel, installed into a fresh environment outside the repository, loads a shipped
checkpoint by name and serves the app with ``hpm app``."""
import os
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import REPO
from ui.conftest import _free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A virtual environment holding only the wheel (its dependencies come from the system site-packages, so
    that torch is not downloaded again)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"  # a copy, so that no stale build/ of the checkout ends up in the wheel
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", "build", "runs", "artifacts", "*.egg-info",
                                                                "__pycache__", ".venv"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(root / "dist"), str(source)], check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(root / "venv")], check=True)
    wheel, = (root / "dist").glob("hpm-*.whl")
    # --ignore-installed: an hpm in the system site-packages (CI installs one) must not count as this wheel
    subprocess.run([str(root / "venv" / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps",
                    "--ignore-installed", str(wheel)], check=True, capture_output=True)
    outside = root / "elsewhere"
    outside.mkdir()
    return root / "venv" / "bin", outside


def test_the_wheel_loads_a_shipped_checkpoint_by_name_from_outside_the_repository(venv):
    bin_dir, outside = venv
    code = ("import hpm; m = hpm.load('cifar10-resnet18-hpm-clean'); "
            "print(hpm.__file__); print(m.head_type, m.checkpoint_config.metrics['clean_accuracy']['value'])")
    result = subprocess.run([str(bin_dir / "python"), "-c", code], cwd=outside, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    location, facts = result.stdout.strip().splitlines()
    assert location.startswith(str(bin_dir.parent)) and facts == "hpm 0.936"


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
