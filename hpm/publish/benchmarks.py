"""README's speed-and-memory table: the JSON files that ``benchmarks/bench_eval.py``, ``bench_protocol.py`` and
``bench_app.py`` write with ``--json``, one column per device, each figure beside its target."""
from __future__ import annotations

import json
import re
from pathlib import Path

NOT_MEASURED = "not measured"


def load_results_file(root: Path, path: str | None):
    """A results file's contents (JSON, or text for a test log); None when it is missing."""
    if path is None or not (root / path).is_file():
        return None
    text = (root / path).read_text()
    return json.loads(text) if path.endswith(".json") else text


def _model(data: dict) -> str:
    name = data["model"].removeprefix("checkpoints/")
    return "pyautoattack ResNet-18, HPM head" if name == "pyautoattack" else name


def _ms(seconds: float) -> str:
    if seconds < 0.01:
        return f"{1000 * seconds:.2f} ms"
    return f"{1000 * seconds:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _ensemble(data: dict) -> str:
    return (f"**{data['ratio']:.3f}** ({_model(data)}, batch {data['batch']}: {_ms(data['fc_step_s'])} vs "
            f"{_ms(data['ensemble_step_s'])} per step)")


def _head(data: dict) -> str:
    share = data.get("head_share", data["head_forward_s"] / data["backbone_forward_s"])
    return (f"**{100 * share:.2f}%** ({_model(data)}, batch {data['head_batch']}: "
            f"{_ms(data['head_forward_s'])} vs {_ms(data['backbone_forward_s'])})")


def _overhead(data: dict) -> str:
    o, a = data["overhead"], data["attack"]
    return (f"**{o['ratio']:.2f}** ({_model(data)}, {data['n']} images, batch {data['batch_size']}, APGD "
            f"{a['n_iter']} iterations, APGD-T {a['n_target_classes']} classes, Square {a['square_queries']}: "
            f"{o['wall_s']:.1f} s vs {o['backbone_s']:.1f} s for its {o['passes_forward']} forward and "
            f"{o['passes_backward']} forward+backward backbone passes)")


def _throughput(data: dict) -> str:
    if "autoattack_standard" not in data:
        return NOT_MEASURED
    o, aa = data["overhead"], data["autoattack_standard"]
    return (f"{o['images_per_s']:.2f} vs {aa['images_per_s']:.2f} images/s (time ratio "
            f"{o['wall_s'] / aa['wall_s']:.2f}); robust accuracy {100 * o['robust_accuracy']:.1f}% vs "
            f"{100 * aa['robust_accuracy']:.1f}%")


def _memory(data: dict) -> str:
    peaks = data.get("peak_memory_mib")
    return ", ".join(f"{b}: {m:.0f} MiB" for b, m in peaks.items()) if peaks else "– (CUDA only)"


def _tests(log: str) -> str:
    found = re.search(r"(\d+) passed(?:, [^\n]*?)? in ([\d.]+)s", log)
    skipped = re.search(r"(\d+) skipped[^\n]* in ([\d.]+)s", log)
    if found:
        return f"{found[1]} passed in {float(found[2]):.1f} s"
    return f"{skipped[1]} skipped (no GPU)" if skipped else NOT_MEASURED


ROWS = [  # (what, target, results file kind, cell)
    ("one ensemble (FC + soft) APGD step / one FC-oracle step", "≤ 1.10", "eval", _ensemble),
    ("HPM head forward / backbone forward", "≤ 3%", "eval", _head),
    ("`hpm.evaluate_model` wall time / its backbone passes alone", "≤ 1.15", "protocol", _overhead),
    ("full protocol vs AutoAttack standard (same model, images, batch)", "–", "protocol", _throughput),
    ("peak GPU memory of one evaluation batch, per batch size", "–", "protocol", _memory),
    ("app: 20-step ensemble APGD on one 32×32 upload through the API (context 64)", "≤ 100 ms on a GPU", "app",
     lambda d: f"**{_ms(d['api_attack_s'])}** ({_model(d)})"),
    ("the same attack as a library call (`hpm.interactive.attack_image`, context 64)", "–", "app",
     lambda d: f"{_ms(d['library_attack_in_context_s'])}"),
    ("gpu-marked tests (`pytest -m gpu`)", "pass", "tests", _tests),
]


def benchmark_lines(root: Path, section: dict) -> list[str]:
    """The table of ``section["files"]`` (device label -> {kind -> results file}) and a line per device saying
    what it ran on and which files hold the figures."""
    devices = section["files"]
    data = {d: {kind: load_results_file(root, path) for kind, path in files.items()} for d, files in devices.items()}
    lines = ["| measurement | target | " + " | ".join(devices) + " |",
             "| --- | --- | " + " | ".join("---" for _ in devices) + " |"]
    for what, target, kind, cell in ROWS:
        cells = [cell(data[d][kind]) if data[d].get(kind) is not None else NOT_MEASURED for d in devices]
        lines.append(f"| {what} | {target} | " + " | ".join(cells) + " |")
    lines.append("")
    for d, files in devices.items():
        machine = next((v for v in data[d].values() if isinstance(v, dict) and "hardware" in v), None)
        if machine is None:
            lines.append(f"- {d}: not measured.")
            continue
        hw = machine["hardware"]
        threads = next((v["cpu_threads"] for v in data[d].values() if isinstance(v, dict) and "cpu_threads" in v),
                       None)
        where = hw.get("gpu", hw["device"].upper()) + (f", CUDA {hw['cuda']}" if "cuda" in hw else "")
        where += f", {threads} CPU threads" if threads else ""
        lines.append(f"- {d}: {where}, torch {machine['torch']}; files: "
                     + ", ".join(f"`{p}`" for p in files.values()) + ".")
    return lines
