"""Time README's examples on this machine, so that README can say how long each takes on a CPU and on a GPU.

    python scripts/time_examples.py --data ../shared/data --quickstart         # CPU
    python scripts/time_examples.py --data ../shared/data --device cuda        # a GPU adds its column

For every `hpm eval` command of README's block marked `<!-- timed examples -->`, exactly as written but with its
report in a temporary folder: the upper bound `hpm eval ... --estimate-only` prints (every attack on every image,
one attack step and one query timed per batch size on this device), then the wall time of the command run in
full (`--estimate-only`: only the bounds, printed). Results go to results/timing/examples-DEVICE.json;
`python scripts/results_section.py` renders them into README.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- timed examples -->"
QUICKSTART = "python examples/quickstart.py --data ../shared/data"  # as README gives it


def readme_examples(readme: Path) -> list[list[str]]:
    """The `hpm eval` commands (as argument lists, comments dropped, continuation lines joined) of the code block
    that follows README's timed-examples marker."""
    text = readme.read_text()
    if MARKER not in text:
        raise SystemExit(f"{readme}: no {MARKER} marker before the examples to time")
    block = re.search(r"```bash\n(.*?)```", text[text.index(MARKER):], re.S)
    if block is None:
        raise SystemExit(f"{readme}: no ```bash block after {MARKER}")
    logical = block.group(1).replace("\\\n", " ").splitlines()
    return [shlex.split(line, comments=True) for line in logical if line.strip().startswith("hpm eval")]


def with_options(argv: list[str], **options: str | None) -> list[str]:
    """``argv`` with the given options' values replaced (``None``: the option and its value removed);
    ``out="x"`` stands for ``--out x``. Only for options that take a value (``--out x`` or ``--out=x``)."""
    flags = {"--" + name.replace("_", "-"): value for name, value in options.items()}
    kept, i = [], 0
    while i < len(argv):
        if argv[i] in flags:
            i += 2
            continue
        if argv[i].partition("=")[0] not in flags:
            kept.append(argv[i])
        i += 1
    return kept + [part for flag, value in flags.items() if value is not None for part in (flag, value)]


def hpm_command(argv: list[str]) -> list[str]:
    """``argv`` (``hpm eval ...``) as a command of this Python's ``hpm`` CLI."""
    return [sys.executable, "-m", "hpm.cli", *argv[1:]]


def estimate(argv: list[str], data: str, device: str) -> dict:
    """What ``hpm eval ... --estimate-only`` prints for the example on ``device``."""
    cmd = hpm_command(with_options(argv, out=None, data=data, device=device)) + ["--estimate-only"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(argv: list[str], data: str, device: str) -> dict:
    """The example run in full (its report in a temporary folder): wall time of the whole command and the
    attacks' own time as its report records it."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.json"
        cmd = hpm_command(with_options(argv, out=str(out), data=data, device=device))
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"{shlex.join(cmd)} failed:\n{done.stderr}")
        report = json.loads(out.read_text())
    attack_seconds = sum(a["seconds"] for r in report["results"].values() for a in r["per_attack"])
    return {"wall_seconds": round(wall, 1), "attack_seconds": round(attack_seconds, 1)}


def quickstart(data: str) -> dict:
    """Wall time of README's ``examples/quickstart.py`` command as a first run does it (empty cache: the training
    archive is extracted and decoded, the features computed)."""
    cmd = [sys.executable, *with_options(shlex.split(QUICKSTART)[1:], data=data)]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        done = subprocess.run(cmd + ["--out", str(Path(tmp) / "checkpoint")], cwd=ROOT, capture_output=True,
                              text=True, env={**os.environ, "HPM_CACHE_DIR": tmp})
        wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed:\n{done.stderr}")
    return {"command": QUICKSTART, "wall_seconds": round(wall, 1)}


def machine(device: str) -> dict:
    """The CPU (model, cores this process may use, torch's threads) and, on CUDA, the GPU."""
    import torch

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {"processor": cpu, "cores": cores, "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data", help="data root the examples read (README's)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:K]")
    parser.add_argument("--estimate-only", action="store_true",
                        help="only the bounds, printed: run no example in full, write no results file unless --out")
    parser.add_argument("--quickstart", action="store_true", help="also time examples/quickstart.py (CPU only)")
    parser.add_argument("--out", default=None, help="default: results/timing/examples-{cpu,cuda}.json")
    args = parser.parse_args(argv)
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    if args.quickstart and kind != "cpu":
        parser.error("examples/quickstart.py runs on the CPU only: time it without --device")
    data = str(Path(args.data).resolve())  # the examples run from the repository root
    examples = []
    for example in readme_examples(ROOT / "README.md"):
        entry = {"command": shlex.join(with_options(example, out=None)),
                 "estimate": estimate(example, data, args.device)}
        if not args.estimate_only:
            entry["run"] = run(example, data, args.device)
        examples.append(entry)
        print(json.dumps(entry), flush=True)
    if args.estimate_only and not args.out:
        return 0
    out = Path(args.out) if args.out else ROOT / "results" / "timing" / f"examples-{kind}.json"
    result = {"command": shlex.join(["python", "scripts/time_examples.py", *(argv if argv is not None else
                                                                             sys.argv[1:])]),
              "device": kind, "machine": machine(args.device), "examples": examples,
              "quickstart": quickstart(data) if args.quickstart else None,
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
