"""The app as a service: its memory over a long soak (``benchmarks/bench_soak.py``) and what a first visit's attack
does to the gallery (``scripts/first_visit.py``), from the JSON files those commands write."""
from __future__ import annotations

from pathlib import Path

from .benchmarks import load_results_file
from .metrics import pct


def soak_lines(data: dict) -> list[str]:
    """The soak's memory summary (retained memory at quiet points, the range while serving, threads) and
    per-request-kind latencies."""
    verdict = "met" if data["target_met"] else "**not met**"
    quiet = ", ".join(f"{p['rss_mb']:.0f}" for p in data["rss_quiet"] if p["requests"] >= data["warmup"])
    low, high = data["rss_serving_range_mb"]
    lines = ["| requests | clients | wall | RSS at the quiet points from the end of warm-up on, every 500 requests "
             "| change per 1,000 requests (fit) | largest deviation from the first | RSS while serving, after warm-up "
             "| server threads at the quiet points | unexpected errors | target (±20 MB, no error) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
             f"| {data['requests']:,} ({data['warmup']:,} warm-up) | {data['clients']} | {data['seconds'] / 60:.0f} min "
             f"| {quiet} MB | {data['rss_slope_mb_per_1000']:+.2f} MB | {data['rss_max_deviation_mb']:.1f} MB | "
             f"{low:.0f}–{high:.0f} MB | {'–'.join(map(str, data['threads_after_warmup']))} | "
             f"{data['unexpected_errors']} | {verdict} |", "",
             "| request | n | median | 90th percentile | 99th percentile |", "| --- | --- | --- | --- | --- |"]
    for kind, t in data["latency_s"].items():
        lines.append(f"| {kind.replace('_', ' ')} | {t['n']} | {t['p50']:.2f} s | {t['p90']:.2f} s | "
                     f"{t['p99']:.2f} s |")
    return lines


def first_visit_lines(data: dict) -> list[str]:
    """Each attack and radius of the first-visit grid: the share of gallery images whose FC and deployed heads it
    fooled, and the radius chosen."""
    lines = [f"`{data['model']}`, {data['images']}, classified {data['context']}, {data['steps']} APGD steps:", "",
             "| attack | ε | FC fooled | deployed fooled |", "| --- | --- | --- | --- |"]
    for c in sorted(data["cells"], key=lambda c: (c["attack"] != data["default_attack"], c["attack"], c["eps_255"])):
        n = len(c["fc_fooled"])
        lines.append(f"| {c['attack']} | {c['eps_255']:g}/255 | {sum(c['fc_fooled'])}/{n} ({pct(c['fc_share'])}%) | "
                     f"{sum(c['deployed_fooled'])}/{n} ({pct(c['deployed_share'])}%) |")
    chosen = data.get("chosen")
    lines.append("")
    lines.append(f"The app starts at ε = {chosen['eps_255']:g}/255 with the {chosen['attack']} attack on a model not "
                 f"adversarially trained: the smallest radius on the grid at which it fools the FC head on at least "
                 f"{pct(data['share_wanted'])}% of the gallery ({pct(chosen['fc_share'])}%)." if chosen else
                 f"No radius on the grid fools the FC head on {pct(data['share_wanted'])}% of the gallery.")
    return lines


def service_lines(root: Path, section: dict) -> list[str]:
    """A ``service`` section: the soak file and the first-visit file it names."""
    out = []
    for key, render, command in (("soak", soak_lines, "benchmarks/bench_soak.py"),
                                 ("first_visit", first_visit_lines, "scripts/first_visit.py")):
        data = load_results_file(root, section[key])
        out += (render(data) if data else [f"_Not measured yet (`{section[key]}`); run `{command}`._"]) + [""]
    return out[:-1]
