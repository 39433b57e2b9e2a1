"""App timings on this machine with the default shipped model, printed:

1. wall time from ``python app.py`` to the first served page;
2. median time of a 20-step APGD attack (MSA ensemble) on one CIFAR-10 image (target <= 2 s);
3. cost of an attack step inside a context of 64 cached samples vs without context (target <= 1.2x).

    HPM_DATA_DIR=../shared/data python benchmarks/bench_app.py [--repeats 7]
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


def startup_seconds(timeout: float = 180) -> float:
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1", "NO_PROXY": "127.0.0.1,localhost"}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - start < timeout:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    if r.status == 200 and b"gradio" in r.read().lower():
                        return time.perf_counter() - start
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("the app did not serve a page in time")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(f"python app.py -> first page served: {startup_seconds():.1f} s")
    model = demo.load_cached(str(REPO / "checkpoints" / "cifar10-resnet18-hpm-clean"))
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
    print(f"20-step APGD (ensemble) on {source}, alone: median {alone:.2f} s over {args.repeats} runs "
          f"(target <= 2 s: {'met' if alone <= 2 else 'NOT met'})")
    print(f"same attack inside a context of 64 cached samples: {with_context:.2f} s, ratio {with_context / alone:.3f} "
          f"(target <= 1.2)")


if __name__ == "__main__":
    main()
