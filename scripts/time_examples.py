"""Time README's examples on this machine, so that README can say how long each takes on a CPU and on a GPU.

    python scripts/time_examples.py --data ../shared/data --quickstart         # CPU
    python scripts/time_examples.py --data ../shared/data --device cuda        # a GPU adds its column

For every `hpm eval` command of README's block marked `<!-- timed examples -->`, exactly as written but with its
report in a temporary folder, and for a robust checkpoint (ROBUST_CHECK: most images survive the first attack,
so the later attacks and Square run): the upper bound `hpm eval ... --estimate-only` prints (every attack on every
image, one attack step and one query timed per batch size on this device), then the command run in full: the
first expectation it prints (`hpm eval: expected ...`, once the first images went through every attack, or the
first attack through a large first batch) with the second of the run it appeared at, and the wall time
(`--estimate-only`: only the bounds, printed). The expected total is that second plus the time the line expects
left. Results go to results/timing/examples-DEVICE.json; `python scripts/results_section.py` renders them.
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
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- timed examples -->"
QUICKSTART = "python examples/quickstart.py --data ../shared/data"  # as README gives it
ROBUST_CHECK = ("hpm eval checkpoints/cifar10-resnet20w32-fgsmrs-20ep-hpm-full --data ../shared/data --n 100 "
                "--batch-sizes 16,256 --target-classes 3 --square-queries 1000")  # not a README example: most images
# survive the first attack, so the expectation must get the later attacks, Square and the checks right
EXPECTED = re.compile(r"hpm eval: expected .*? more \((\d+) s: attacks (\d+) s, sanity checks (\d+) s\), (after .*?), "
                      r"(\d+) s in \(")  # the first expectation hpm eval prints


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


def parse_expectation(line: str) -> dict | None:
    """The seconds left (in all, attacks, sanity checks) and the point of the run of an ``hpm eval: expected``
    line, or None for any other line."""
    m = EXPECTED.search(line)
    if m is None:
        return None
    left, attacks, checks, point, elapsed = m.groups()
    return {"remaining_seconds": int(left), "attack_seconds": int(attacks), "check_seconds": int(checks),
            "point": point, "command_elapsed_seconds": int(elapsed)}


def _stderr_lines(proc: subprocess.Popen, start: float, seen: list[tuple[float, str]]) -> None:
    """Read ``proc``'s stderr to its end, each line with the second of the run it arrived at."""
    for raw in iter(proc.stderr.readline, b""):
        seen.append((time.perf_counter() - start, raw.decode(errors="replace")))


def run(argv: list[str], data: str, device: str) -> dict:
    """The example run in full (its report in a temporary folder): the first expectation it printed, and when;
    the wall time of the whole command; the attacks' own time as its report records it; the load average of the
    machine before and after."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.json"
        cmd = hpm_command(with_options(argv, out=str(out), data=data, device=device))
        load_before, seen = os.getloadavg(), []
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        reader = threading.Thread(target=_stderr_lines, args=(proc, start, seen))
        reader.start()
        code = proc.wait()
        wall = time.perf_counter() - start
        reader.join()
        if code != 0:
            raise SystemExit(f"{shlex.join(cmd)} failed:\n{''.join(line for _, line in seen[-40:])}")
        report = json.loads(out.read_text())
    attack_seconds = sum(a["seconds"] for r in report["results"].values() for a in r["per_attack"])
    first = next(((at, said) for at, line in seen if (said := parse_expectation(line))), None)
    expected = None if first is None else {"seconds": round(first[0] + first[1]["remaining_seconds"], 1),
                                           "printed_at_seconds": round(first[0], 1), **first[1]}
    return {"wall_seconds": round(wall, 1), "attack_seconds": round(attack_seconds, 1), "expected": expected,
            "measured_over_expected": round(wall / expected["seconds"], 2) if expected else None,
            "load_average": {"before": [round(v, 2) for v in load_before],
                             "after": [round(v, 2) for v in os.getloadavg()]}}


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


def timed(example: list[str], data: str, args) -> dict:
    """One command's bound and (unless ``--estimate-only``) its full run, printed as it is done."""
    entry = {"command": shlex.join(with_options(example, out=None)), "estimate": estimate(example, data, args.device)}
    if not args.estimate_only:
        entry["run"] = run(example, data, args.device)
    print(json.dumps(entry), flush=True)
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data", help="data root the examples read (README's)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:K]")
    parser.add_argument("--estimate-only", action="store_true",
                        help="only the bounds, printed: run no example in full, write no results file unless --out")
    parser.add_argument("--quickstart", action="store_true", help="also time examples/quickstart.py (CPU only)")
    parser.add_argument("--no-robust-check", action="store_true", help=f"skip the robust checkpoint: {ROBUST_CHECK}")
    parser.add_argument("--conditions", default=None,
                        help="what else ran on the machine meanwhile, in words (recorded with the results)")
    parser.add_argument("--out", default=None, help="default: results/timing/examples-{cpu,cuda}.json")
    args = parser.parse_args(argv)
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    if args.quickstart and kind != "cpu":
        parser.error("examples/quickstart.py runs on the CPU only: time it without --device")
    data = str(Path(args.data).resolve())  # the examples run from the repository root
    examples = [timed(example, data, args) for example in readme_examples(ROOT / "README.md")]
    robust = None if args.no_robust_check else timed(shlex.split(ROBUST_CHECK), data, args)
    if args.estimate_only and not args.out:
        return 0
    out = Path(args.out) if args.out else ROOT / "results" / "timing" / f"examples-{kind}.json"
    result = {"command": shlex.join(["python", "scripts/time_examples.py", *(argv if argv is not None else
                                                                             sys.argv[1:])]),
              "device": kind, "machine": machine(args.device), "conditions": args.conditions,
              "examples": examples, "robust_check": robust,
              "quickstart": quickstart(data) if args.quickstart else None,
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
