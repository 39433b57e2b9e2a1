"""Soak test of the app as a Space serves it: N mixed requests from K ``gradio_client`` clients on loopback, the
server's resident memory traced, printed as its change per 1,000 requests after warm-up.

The server is ``python app.py`` with no data root, the Hub offline and empty caches (a Space's first start). Each
client plays one visitor after another (a new session every ``--visit`` requests, as a Space sees people come and
go) and sends, in a seeded random order: predictions alone and inside a context batch, 3-step
APGD attacks (each model's own attacks), 30-query Square attacks, model loads across four shipped checkpoints
(mixtures among them, so a session's page offers another model's attacks than the call names), Fig. 2, Fig. 3 and
Hub ids that do not exist; every image is a new upload. Writes the RSS trace, the errors by kind and per-endpoint
latency percentiles, and no unexpected error.

Two traces: RSS (and the server's thread count) every 50 requests while serving, and every 500 requests at a quiet
point: the clients hold their next request until none is in flight and the allocator has handed freed pages back
(one trim period), so that the sample is the memory the server retains, not the working memory of the requests it
happens to be serving. Target: every quiet sample after warm-up within +-20 MB of the quiet sample at the end of
warm-up, and no unexpected error; the range of the samples while serving is reported beside it.

    python benchmarks/bench_soak.py [--requests 10000] [--clients 8] [--warmup 1000] [--visit 8]
        [--json results/benchmarks/soak-cpu.json] [--trace results/benchmarks/soak-trace.json]

``--trace`` runs the server under ``tracemalloc`` (several times slower) and writes what grew between the end of
warm-up and the end: Python allocations by line, and live objects by type.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_app import free_port  # noqa: E402

MODELS = ["cifar10-resnet18-hpm-clean", "cifar10-resnet18-ncm", "cifar10-resnet20w32-fgsmrs-20ep-mixed-alpha0.8",
          "cifar10-preactresnet18-fgsmrs-15ep-hpm-full"]
MIX = {"predict": 30, "predict_context": 10, "attack_apgd": 25, "attack_square": 10, "load_model": 10,
       "fig2": 5, "fig3": 5, "bad_hub": 5}  # request kind -> weight
TARGET_MB = 20
SAMPLE_EVERY = 50  # requests between two RSS samples while serving
QUIET_EVERY = 500  # requests between two quiet samples (the warm-up must be a multiple)
QUIET_WAIT_S = 6.0  # after the last request finished: the app's trim period (5 s) and a margin


def start_server(root: Path, trace: Path | None, timeout: float = 300) -> tuple[subprocess.Popen, str]:
    """``python app.py`` as a Space starts it (no data root, Hub offline, empty caches) on a free port."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "HPM_DATA_DIR"}
    env.update(HPM_CACHE_DIR=str(root / "cache"), HF_HUB_CACHE=str(root / "hub"), HF_HUB_OFFLINE="1",
               GRADIO_TEMP_DIR=str(root / "gradio"), GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1",
               GRADIO_ANALYTICS_ENABLED="False", HF_HUB_DISABLE_TELEMETRY="1", NO_PROXY="127.0.0.1,localhost")
    command = [sys.executable, "app.py"] if trace is None else [sys.executable, __file__, "--serve-traced", str(trace)]
    server = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                              stderr=(root / "server.log").open("w"))
    url, start = f"http://127.0.0.1:{port}/", time.perf_counter()
    while time.perf_counter() - start < timeout:
        try:
            urllib.request.urlopen(url, timeout=2)
            return server, url
        except OSError:
            if server.poll() is not None:
                raise RuntimeError((root / "server.log").read_text()[-2000:])
            time.sleep(0.5)
    server.terminate()
    raise RuntimeError("the app served no page in time")


def serve_traced(out: Path) -> None:
    """Run app.py under tracemalloc; each SIGUSR1 records a snapshot, and from the second on writes what grew since
    the first (allocations by line, live objects by type) to ``out``."""
    import gc
    import runpy
    import tracemalloc

    tracemalloc.start(1)
    first: dict = {}

    def types() -> Counter:
        return Counter(type(o).__name__ for o in gc.get_objects())

    def record(*_):
        gc.collect()
        snapshot, counts = tracemalloc.take_snapshot(), types()
        if not first:
            first.update(snapshot=snapshot, types=counts)
            return
        stats = snapshot.compare_to(first["snapshot"], "lineno")[:30]
        grown = (counts - first["types"]).most_common(20)
        out.write_text(json.dumps({"allocations": [{"where": str(s.traceback[0]), "size_diff_kb": s.size_diff / 1024,
                                                    "count_diff": s.count_diff} for s in stats],
                                   "objects": dict(grown)}, indent=1) + "\n")

    signal.signal(signal.SIGUSR1, record)
    sys.argv = ["app.py"]
    runpy.run_path(str(REPO / "app.py"), run_name="__main__")


def memory(pid: int) -> dict:
    """The server's resident memory (MB) and thread count."""
    import psutil
    process = psutil.Process(pid)
    return {"rss_mb": process.memory_info().rss / 2**20, "threads": process.num_threads()}


class Soak:
    """The clients' shared state: which request comes next, what happened to each, the RSS traces."""

    def __init__(self, url: str, server: subprocess.Popen, args: argparse.Namespace, folder: Path):
        from hpm import interactive as demo

        self.url, self.server, self.folder, self.trace = url, server, folder, args.trace is not None
        self.n, self.warmup, self.visit = args.requests, args.warmup, args.visit
        self.attacks = {m: demo.attack_choices(demo.load_cached(str(REPO / "checkpoints" / m))) for m in MODELS}
        self.next = itertools.count()
        self.done, self.latency, self.errors = 0, defaultdict(list), Counter()
        self.trace_points: list[dict] = []
        self.quiet_points: list[dict] = []
        self.in_flight, self.paused = 0, False
        self.idle = threading.Condition()  # guards the counts and traces; notified as requests end and pauses end
        self.start = time.perf_counter()

    def ticket(self) -> int | None:
        """The next request's number (None when all are sent), after a quiet sample where one is due; the caller
        then has one request in flight until :meth:`finished`."""
        i = next(self.next)
        if i >= self.n:
            return None
        quiet = i > 0 and i % QUIET_EVERY == 0
        with self.idle:
            self.idle.wait_for(lambda: not self.paused)
            if quiet:
                self.paused = True
                self.idle.wait_for(lambda: self.in_flight == 0)
        if quiet:
            self.sample_quiet(i)
            with self.idle:
                self.paused = False
                self.idle.notify_all()
        with self.idle:
            self.in_flight += 1
        return i

    def sample_quiet(self, requests: int) -> None:
        """A quiet sample after ``requests`` requests, none in flight: one trim period, then RSS and threads."""
        time.sleep(QUIET_WAIT_S)
        with self.idle:
            self.quiet_points.append({"requests": requests, "seconds": time.perf_counter() - self.start,
                                      **memory(self.server.pid)})

    def finished(self, kind: str, seconds: float, error: str | None) -> None:
        with self.idle:
            self.in_flight -= 1
            self.idle.notify_all()
            self.done += 1
            self.latency[kind].append(seconds)
            if error is not None:
                self.errors[error] += 1
            if self.done % SAMPLE_EVERY == 0 or self.done in (1, self.warmup, self.n):
                self.trace_points.append({"requests": self.done, "seconds": time.perf_counter() - self.start,
                                          **memory(self.server.pid)})
            if self.trace and self.done in (self.warmup, self.n):
                self.server.send_signal(signal.SIGUSR1)
            if self.done % 500 == 0:
                print(f"  {self.done}/{self.n} requests, {time.perf_counter() - self.start:.0f} s, server RSS "
                      f"{self.trace_points[-1]['rss_mb']:.0f} MB, {self.trace_points[-1]['threads']} threads, errors "
                      f"{dict(self.errors)}", flush=True)


def image(folder: Path, rng: random.Random) -> str:
    """A new image file, as a visitor uploads one: random pixels, CIFAR-sized or a little larger."""
    from PIL import Image
    size = rng.choice([(32, 32), (32, 32), (64, 48), (96, 96)])
    path = folder / f"upload-{rng.getrandbits(64):016x}.png"
    Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3)).save(path)
    return str(path)


def send(client, soak: Soak, kind: str, rng: random.Random) -> None:
    """One request of ``kind``; raises what the client raised."""
    from gradio_client import handle_file
    model = rng.choice(MODELS)
    if kind in ("predict", "predict_context", "attack_apgd", "attack_square"):
        path = image(soak.folder, rng)
        context = kind == "predict_context" and "hpm" in model
        try:
            if kind.startswith("predict"):
                client.predict(handle_file(path), f"checkpoints/{model}", context, rng.choice([16, 64]),
                               api_name="/predict")
            else:
                attack = "square" if kind == "attack_square" else rng.choice(soak.attacks[model][:-1])
                client.predict(handle_file(path), f"checkpoints/{model}", attack, 2, 3, 30, False, 16,
                               api_name="/attack")
        finally:
            os.remove(path)
    elif kind == "load_model":
        client.predict(model, "", api_name="/load_model")
    elif kind == "fig2":
        client.predict(rng.sample(["2", "8", "32", "128", "512", "2048"], 3), api_name="/isotropic_cdf")
    elif kind == "fig3":
        client.predict(f"checkpoints/{rng.choice([m for m in MODELS if 'mixed' not in m])}",
                       api_name="/angle_statistics")
    else:
        client.predict(model, f"nobody/no-such-model-{rng.getrandbits(32):08x}", api_name="/load_model")


def error_kind(kind: str, error: Exception) -> str | None:
    """None for the error a request is meant to get (a Hub id that does not exist, offline); else its kind."""
    text = str(error)
    if kind == "bad_hub" and ("Hub" in text or "offline" in text or "network" in text):
        return None
    return f"{kind}: {type(error).__name__}: {text.splitlines()[0][:120] if text else ''}"


def client_loop(soak: Soak, seed: int) -> None:
    from gradio_client import Client
    rng, kinds, weights, client = random.Random(seed), list(MIX), list(MIX.values()), None
    for sent in itertools.count():
        if soak.ticket() is None:
            break
        kind = rng.choices(kinds, weights)[0]
        start, error = time.perf_counter(), None
        try:
            if client is None or sent % soak.visit == 0:  # the next visitor: a new session
                if client is not None:
                    client.close()
                client = None  # until the new one connects: a failure here is counted, and retried next time
                client = Client(soak.url, verbose=False)
            send(client, soak, kind, rng)
            if kind == "bad_hub":
                error = "bad_hub: accepted (!)"
        except Exception as e:  # every error is counted by kind; the expected ones are not
            error = error_kind(kind, e)
        soak.finished(kind, time.perf_counter() - start, error)
    if client is not None:
        client.close()


def summary(soak: Soak) -> dict:
    """Retained memory after warm-up (quiet samples: largest deviation from the one at the end of warm-up, change
    per 1,000 requests), the range while serving, errors and latencies."""
    import numpy as np
    from scipy.stats import linregress

    quiet = [p for p in soak.quiet_points if p["requests"] >= soak.warmup]
    base = quiet[0]["rss_mb"]  # the quiet sample at the end of warm-up
    fit = linregress([p["requests"] for p in quiet], [p["rss_mb"] for p in quiet])
    deviation = max(abs(p["rss_mb"] - base) for p in quiet)
    serving = [p["rss_mb"] for p in soak.trace_points if p["requests"] >= soak.warmup]
    unexpected = sum(soak.errors.values())
    return {"rss_after_warmup_mb": base, "rss_end_mb": quiet[-1]["rss_mb"],
            "rss_slope_mb_per_1000": 1000 * fit.slope, "rss_max_deviation_mb": deviation,
            "rss_serving_range_mb": [min(serving), max(serving)],
            "threads_after_warmup": [min(p["threads"] for p in quiet), max(p["threads"] for p in quiet)],
            "unexpected_errors": unexpected, "target_met": deviation <= TARGET_MB and unexpected == 0,
            "latency_s": {kind: {"n": len(t), **{f"p{q}": float(np.percentile(t, q)) for q in (50, 90, 99)}}
                          for kind, t in sorted(soak.latency.items())}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=1_000, help="requests before the memory baseline")
    parser.add_argument("--visit", type=int, default=8, help="requests per visitor (session)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the trace and the summary here")
    parser.add_argument("--trace", type=Path, help="run the server under tracemalloc; write what grew here")
    parser.add_argument("--serve-traced", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_traced:
        return serve_traced(args.serve_traced)
    if not 0 < args.warmup < args.requests or args.warmup % QUIET_EVERY or args.requests % QUIET_EVERY:
        parser.error(f"--warmup and --requests must be multiples of {QUIET_EVERY}, the warm-up shorter")
    from hpm.devices import best_available, describe

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        server, url = start_server(root, args.trace)
        try:
            soak = Soak(url, server, args, root)
            threads = [threading.Thread(target=client_loop, args=(soak, args.seed * 1000 + i))
                       for i in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            soak.sample_quiet(args.requests)  # the last quiet sample, after the last request
            if args.trace:
                time.sleep(30)  # the snapshot is taken by the server's main thread
        finally:
            server.terminate()
            server.wait(timeout=60)
        files = sum(1 for p in (root / "gradio").rglob("*") if p.is_file())
    result = {"requests": args.requests, "clients": args.clients, "warmup": args.warmup, "seed": args.seed,
              "requests_per_visitor": args.visit,
              "mix": MIX, "models": MODELS, "hardware": describe(best_available()), "traced": args.trace is not None,
              "seconds": time.perf_counter() - soak.start, "files_in_gradio_cache_at_end": files,
              **summary(soak), "errors": dict(soak.errors), "rss_quiet": soak.quiet_points,
              "rss_trace": soak.trace_points}
    print(f"{args.requests} requests from {args.clients} clients in {result['seconds']:.0f} s; server RSS at quiet "
          f"points: after {args.warmup} requests of warm-up {result['rss_after_warmup_mb']:.0f} MB, at the end "
          f"{result['rss_end_mb']:.0f} MB: {result['rss_slope_mb_per_1000']:+.1f} MB per 1,000 requests, largest "
          f"deviation {result['rss_max_deviation_mb']:.1f} MB (target +-{TARGET_MB} MB); while serving "
          "{:.0f}-{:.0f} MB; unexpected errors: ".format(*result["rss_serving_range_mb"])
          + f"{result['unexpected_errors']} -> target {'met' if result['target_met'] else 'NOT met'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
