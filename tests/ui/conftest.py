"""One app per test session, started in-process on a free loopback port (UI-TESTING.md recipe)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts" / "screenshots"
CHROMIUM = Path("/usr/lib/chromium/chromium")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def app_url():
    for key, value in {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1", "GRADIO_SHARE": "False",
                       "NO_PROXY": "127.0.0.1,localhost"}.items():
        os.environ[key] = value
    data = Path(os.environ.get("HPM_TEST_DATA", REPO.parent / "shared" / "data"))
    if (data / "cifar10" / "test-first1000.npz").is_file():
        os.environ["HPM_DATA_DIR"] = str(data)
    sys.path.insert(0, str(REPO))
    import app as app_module

    port = _free_port()
    app_module.app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, **app_module.LAUNCH)
    yield f"http://127.0.0.1:{port}/"
    app_module.app.close()


@pytest.fixture(scope="session")
def app_without_data(tmp_path_factory):
    """``python app.py`` as a Space or a newcomer starts it: no HPM_DATA_DIR and an empty cache (the dataset hosts
    and the Hub are unreachable, as offline). Its Hub cache holds one ImageNet checkpoint, someone/tiny-imagenet.
    Yields the page's address and the app's cache directory."""
    from hub_cache import write_hub_cache, write_tiny_imagenet_checkpoint
    root = tmp_path_factory.mktemp("app-without-data")
    write_hub_cache(root / "hub", "someone/tiny-imagenet", {"3" * 40: write_tiny_imagenet_checkpoint(root / "ckpt")},
                    {"main": "3" * 40})
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "HPM_DATA_DIR"}
    env.update(HPM_CACHE_DIR=str(root / "cache"), HF_HUB_CACHE=str(root / "hub"), HF_HUB_OFFLINE="1",
               GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1", GRADIO_ANALYTICS_ENABLED="False",
               HF_HUB_DISABLE_TELEMETRY="1", GRADIO_SHARE="False", NO_PROXY="127.0.0.1,localhost")
    log = root / "app.log"
    server = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                              stderr=log.open("w"))
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                if server.poll() is not None:
                    pytest.fail(f"app.py exited: {log.read_text()[-2000:]}")
                time.sleep(0.5)
        else:
            pytest.fail(f"app.py served no page within two minutes: {log.read_text()[-2000:]}")
        yield url, root / "cache"
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1 , EXCLUDE localhost"])
        yield b
        b.close()


@pytest.fixture
def page(browser, app_url):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(app_url)
    page.get_by_text("Hybrid Prototype Mixing — attack FC vs HPM live").wait_for(timeout=30_000)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield page
    context.close()


@pytest.fixture
def imagenet_hub_id(tmp_path, monkeypatch):
    """An ImageNet-shaped checkpoint served from a Hub cache (the app takes Hub ids and shipped names only)."""
    from hub_cache import write_hub_cache, write_tiny_imagenet_checkpoint
    write_hub_cache(tmp_path / "hub", "someone/tiny-imagenet", {"3" * 40: write_tiny_imagenet_checkpoint(
        tmp_path / "ckpt")}, {"main": "3" * 40})
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    sys.modules["hpm.webapp"]._hub_snapshot.cache_clear()  # looked up in this test's cache, not an earlier one's
    return "someone/tiny-imagenet"
