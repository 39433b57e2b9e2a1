"""App timings on this machine with the default shipped model, printed:

1. wall time from ``python app.py`` to the first served page;
2. median time of a 20-step APGD attack (MSA ensemble) on one CIFAR-10 image (target <= 2 s);
3. cost of an attack step inside a context of 64 cached samples vs without context (target <= 1.2x);
4. the server's peak resident memory while it refuses a 13000 x 13000 PNG sent to /predict (target: under
   +300 MB; the image would take 500 MB decoded);
5. end-to-end browser time of a default attack (20-step APGD ensemble on an uploaded CIFAR-sized image, from the
   click on Run attack to the verdict on the page), in Debian's Chromium (target <= 3 s);
6. the same attack end to end through the app's API (``gradio_client``, /attack, context of 64 as the page's
   default): median seconds per call (target on a GPU: <= 100 ms).

    HPM_DATA_DIR=../shared/data python benchmarks/bench_app.py [--repeats 7] [--model NAME] [--no-browser]
        [--json results/benchmarks/app-cpu.json]

The app runs where it chooses (the first CUDA GPU when there is one); ``--model`` names a shipped checkpoint
(default: the app's default model) for every measurement.
"""
import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hpm import interactive as demo  # noqa: E402
from timing import median_seconds  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(model: str, timeout: float = 180) -> tuple[subprocess.Popen, str, float]:
    """``python app.py`` on a free port with ``model`` as its default: the process, its URL and the seconds until
    it served its first page."""
    port = free_port()
    env = {**os.environ, "HPM_DEFAULT_MODEL": model, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1", "NO_PROXY": "127.0.0.1,localhost"}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    while time.perf_counter() - start < timeout:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200 and b"gradio" in r.read().lower():
                    return proc, url, time.perf_counter() - start
        except OSError:
            time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("the app did not serve a page in time")


def peak_rss_refusing_a_bomb(proc: subprocess.Popen, url: str, folder: Path, model: str) -> tuple[float, str]:
    """Growth of the server's resident memory (MB, sampled every 5 ms) while /predict refuses a 13000^2 PNG."""
    import threading

    import psutil
    from gradio_client import Client, handle_file
    from PIL import Image

    bomb = folder / "bomb.png"
    Image.new("1", (13_000, 13_000)).save(bomb)
    server, client = psutil.Process(proc.pid), Client(url, verbose=False)
    base, peak, running = server.memory_info().rss, [0], [True]

    def sample():
        while running[0]:
            peak[0] = max(peak[0], server.memory_info().rss)
            time.sleep(0.005)

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        client.predict(handle_file(str(bomb)), f"checkpoints/{model}", False, 8,
                       api_name="/predict")
        message = "accepted (!)"
    except Exception as e:  # the refusal is the expected outcome
        message = str(e).splitlines()[0]
    running[0] = False
    thread.join()
    return (peak[0] - base) / 2**20, message


def browser_attack_seconds(url: str, folder: Path, repeats: int) -> float:
    """Median seconds from the click on Run attack (defaults) to the verdict on the page, in headless Chromium."""
    import statistics

    from PIL import Image
    from playwright.sync_api import sync_playwright

    times = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/lib/chromium/chromium",
                                    args=["--headless=new", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        for i in range(repeats + 1):  # a fresh page and image each round; round 0 warms the caches up
            page.goto(url)
            image = folder / f"upload{i}.png"
            Image.new("RGB", (32, 32), (120, 40 + 10 * i, 200)).save(image)
            page.locator("input[type=file]").first.set_input_files(str(image))
            page.locator("#current-image img").wait_for(timeout=60_000)  # shown: not part of the attack's time
            start = time.perf_counter()
            page.get_by_role("button", name="Run attack").click()
            page.locator("#attack-summary").get_by_text("fooled").first.wait_for(timeout=120_000)
            times.append(time.perf_counter() - start)
        browser.close()
    return statistics.median(times[1:])


def api_attack_seconds(url: str, folder: Path, model: str, repeats: int) -> float:
    """Median seconds of one /attack call through ``gradio_client``: the page's default attack (20-step APGD
    ensemble, 8/255, context of 64) on a CIFAR-sized PNG, upload and returned images included."""
    from gradio_client import Client, handle_file
    from PIL import Image

    client = Client(url, verbose=False)
    image = folder / "api-upload.png"
    Image.new("RGB", (32, 32), (120, 60, 200)).save(image)
    return median_seconds(lambda: client.predict(handle_file(str(image)), f"checkpoints/{model}", "ensemble", 8, 20,
                                                 1000, True, 64, api_name="/attack"), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--model", default="cifar10-resnet18-hpm-clean", help="a shipped checkpoint's name")
    parser.add_argument("--no-browser", action="store_true", help="skip the Chromium measurement")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    import json
    import tempfile

    from hpm.devices import best_available, describe

    result = {"model": args.model, "hardware": describe(best_available()), "torch": torch.__version__}
    proc, url, startup = start_app(args.model)
    result["startup_s"] = startup
    print(f"python app.py -> first page served: {startup:.1f} s")
    try:
        with tempfile.TemporaryDirectory() as folder:
            growth, message = peak_rss_refusing_a_bomb(proc, url, Path(folder), args.model)
            result["bomb_peak_mb"] = growth
            print(f"server memory while refusing a 13000x13000 PNG on /predict: peak +{growth:.0f} MB "
                  f"(target < 300 MB: {'met' if growth < 300 else 'NOT met'}); answer: {message}")
            api = result["api_attack_s"] = api_attack_seconds(url, Path(folder), args.model, args.repeats)
            print(f"API /attack (20-step APGD ensemble, 32x32 upload, context of 64) on {result['hardware']['device']}"
                  f": median {1000 * api:.0f} ms over {args.repeats} calls (target on a GPU <= 100 ms)")
            if not args.no_browser:
                seconds = result["browser_attack_s"] = browser_attack_seconds(url, Path(folder), args.repeats)
                print(f"browser, click on Run attack (defaults: 20-step APGD ensemble, 32x32 upload, context of 64) "
                      f"to verdict: median {seconds:.2f} s over {args.repeats} runs (target <= 3 s: "
                      f"{'met' if seconds <= 3 else 'NOT met'})")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    model = demo.load_cached(str(REPO / "checkpoints" / args.model), str(best_available()))
    try:
        images, _, _ = demo.gallery_samples("cifar10", 65)
        source = "CIFAR-10 test image 0"
    except Exception:  # no data root: same cost with a random image
        images, source = torch.rand(65, 3, 32, 32), "a random 32x32 image (no data root)"
    x, context = images[:1], demo.make_context(model, images[1:65], "64 test images")

    def attack(ctx):
        return lambda: demo.attack_image(model, x, attack="ensemble", eps=8 / 255, steps=20, context=ctx)

    alone = median_seconds(attack(None), args.repeats)
    with_context = median_seconds(attack(context), args.repeats)
    print(f"library call, 20-step APGD (ensemble) on {source}, alone: median {alone:.2f} s over {args.repeats} runs "
          f"(target <= 2 s: {'met' if alone <= 2 else 'NOT met'})")
    print(f"same attack inside a context of 64 cached samples: {with_context:.2f} s, ratio {with_context / alone:.3f} "
          f"(target <= 1.2)")
    result |= {"library_attack_s": alone, "library_attack_in_context_s": with_context}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
