"""What a first visit to the app sees: the preselected attack of the default model and its FC oracle, at the default
number of steps and a grid of radii, on every gallery image, as the page runs it (the shipped samples, the default context batch),
and the share of images on which it fools the FC head and the deployed head. Chooses the radius the app starts at on
a model not adversarially trained: the smallest on the grid at which the preselected attack fools the FC head on at
least ``SHARE`` of the gallery. Resumable (each cell is written as it finishes).

    python scripts/first_visit.py [--out results/app/first-visit.json]

``tests/test_interactive.py`` checks that the app's defaults are the ones this file chose.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from tqdm import tqdm

from hpm import interactive as demo
from hpm.hub import shipped_checkpoints
from hpm.samples import samples_root

EPS_GRID_255 = [1, 2, 3, 4]  # radii measured, x 1/255 (below 1/255 no 8-bit image but the clean one is in the ball)
SHARE = 0.75  # "most gallery images": the FC head fooled on at least this share


def top1(scores: dict[str, float]) -> str:
    return max(scores, key=scores.get)


def measure_cell(model, x, context, attack: str, eps_255: float) -> dict:
    """One attack at one radius on every gallery image: who was fooled, per image."""
    fc, deployed = [], []
    for image in x:
        result = demo.attack_image(model, image[None], attack=attack, eps=eps_255 / 255, steps=demo.STEPS_DEFAULT,
                                   context=context)
        fc.append(top1(result.adversarial["fc"]) != top1(result.clean["fc"]))
        deployed.append(result.deployed_fooled)
    return {"attack": attack, "eps_255": eps_255, "steps": demo.STEPS_DEFAULT, "fc_fooled": fc,
            "deployed_fooled": deployed, "fc_share": sum(fc) / len(fc), "deployed_share": sum(deployed) / len(fc)}


def choose(cells: list[dict], attack: str) -> dict | None:
    """The smallest radius at which ``attack`` fools the FC head on at least :data:`SHARE` of the gallery."""
    ok = sorted((c for c in cells if c["attack"] == attack and c["fc_share"] >= SHARE), key=lambda c: c["eps_255"])
    return ok[0] if ok else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/app/first-visit.json"))
    args = parser.parse_args()
    samples = str(samples_root())
    source = str(shipped_checkpoints()[demo.DEFAULT_MODEL])
    model = demo.load_cached(source)
    x, y, classes = demo.gallery_samples(model.dataset, demo.GALLERY_SIZE, samples)
    use_context = demo.batch_dependent(model)
    context = demo.dataset_context(source, demo.CONTEXT_DEFAULT, None, samples) if use_context else demo.no_context()
    default_attack = demo.default_attack(demo.attack_choices(model))
    attacks = list(dict.fromkeys([default_attack, *(["fc"] if "fc" in demo.attack_choices(model) else [])]))
    done = json.loads(args.out.read_text()) if args.out.is_file() else {}
    same = (done.get("model"), done.get("context"), done.get("steps")) == (demo.DEFAULT_MODEL, context.description,
                                                                           demo.STEPS_DEFAULT)
    cells = [c for c in done.get("cells", []) if same and len(c["fc_fooled"]) == len(x)]  # else measured again
    todo = [(a, e) for a in attacks for e in EPS_GRID_255
            if not any(c["attack"] == a and c["eps_255"] == e for c in cells)]
    result = {"model": demo.DEFAULT_MODEL, "images": f"the gallery: the first {len(x)} shipped CIFAR-10 test samples",
              "context": context.description, "steps": demo.STEPS_DEFAULT, "share_wanted": SHARE,
              "default_attack": default_attack, "cells": cells}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for step in tqdm([*todo, None], desc="attack x radius"):  # None: the choice, written at the end too
        if step is not None:
            cells.append(measure_cell(model, x, context, *step))
        chosen = choose(cells, default_attack)
        result["chosen"] = chosen and {k: chosen[k] for k in ("attack", "eps_255", "steps", "fc_share",
                                                               "deployed_share")}
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    for c in sorted(cells, key=lambda c: (c["attack"], c["eps_255"])):
        print(f"{c['attack']:>9} eps {c['eps_255']:>4g}/255: FC fooled on {100 * c['fc_share']:5.1f}%, "
              f"deployed on {100 * c['deployed_share']:5.1f}% of {len(x)} images")
    print(f"chosen: {result.get('chosen')}")


if __name__ == "__main__":
    main()
