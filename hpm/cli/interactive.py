"""``hpm predict`` and ``hpm attack``: what the app does to one image, from the command line; ``hpm app``: the app.

Images are decoded by the same guarded function as the app's uploads, so a bad file gets the same message.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import (
    add_data_args,
    add_device_arg,
    add_model_arg,
    dataset_of,
    eps_arg,
    positive_int,
    resolve_device,
)


def register(sub) -> None:
    """Add this module's commands to the ``hpm`` subparsers ``sub``."""
    p = sub.add_parser("predict", help="top-5 of the FC head and the deployed head for an image file",
                       description="Classify IMAGE (any format PIL reads; resized on its short side and centre-"
                                   "cropped to the model's input) with MODEL's original FC head and its deployed "
                                   "head, alone or inside a context of the first N test images (--context N).")
    _add_common(p)
    p.set_defaults(func=_cmd_predict)

    a = sub.add_parser("attack", help="attack an image file; write the adversarial PNG and a JSON of both heads",
                       description="Attack IMAGE with one attack of the protocol (label: the deployed model's clean "
                                   "prediction), judged on the deployed model. Writes OUT/adversarial.png (the "
                                   "model-input-sized adversarial image, lossless 8-bit) and OUT/result.json (clean "
                                   "and adversarial top-5 of both heads, whether the 8-bit PNG itself still fools "
                                   "the deployed model, the perturbation's size and the settings).")
    _add_common(a)
    a.add_argument("--attack", default=None,
                   help="fc, soft, ensemble, bpda, deployed or square, as the model's head offers them "
                        "(default: the ensemble where it exists, else the first)")
    a.add_argument("--eps", type=eps_arg, default=8 / 255, help="l_inf radius (default 8/255, at most 16/255)")
    a.add_argument("--steps", type=positive_int, default=20, help="APGD iterations, or Square queries (default 20)")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--out", required=True, metavar="DIR", help="directory for adversarial.png and result.json")
    a.set_defaults(func=_cmd_attack)

    w = sub.add_parser("app", help="serve the web demo (needs gradio: pip install 'hybrid-prototype-mixing[app]')",
                       description="Serve the web demo on http://HOST:PORT with the shipped checkpoints; --data "
                                   "(or $HPM_DATA_DIR) fills its sample gallery, context batch and Fig. 3, else "
                                   "the sample set shipped with hpm does (nothing is downloaded).")
    w.add_argument("--data", default=None, metavar="DIR",
                   help="local data root (default: $HPM_DATA_DIR; else the shipped sample set)")
    w.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: all)")
    w.add_argument("--port", type=positive_int, default=7860, help="port (default 7860)")
    w.set_defaults(func=_cmd_app)


def _add_common(p: argparse.ArgumentParser) -> None:
    add_model_arg(p)
    p.add_argument("image", help="image file")
    p.add_argument("--context", type=positive_int, default=None, metavar="N",
                   help="classify inside a batch with the first N test images of the model's dataset (needs data)")
    add_data_args(p)
    add_device_arg(p)


def _load(args: argparse.Namespace):
    """``(model, image tensor [1, 3, H, W], context)`` on the chosen device."""
    from .. import interactive
    from ..devices import device_of
    from ..images import describe_conversion, image_to_tensor, open_image
    from ..model import load_classifier

    image = open_image(Path(args.image))  # a bad file fails here, before any model is loaded
    model = load_classifier(args.model, model_dir=args.model_dir, dataset=args.dataset)
    model.to(resolve_device(args.device))
    if (converted := describe_conversion(image, model.input_size)) is not None:
        print(f"{args.image}: {converted} for the model's input", file=sys.stderr)
    x = image_to_tensor(image, model.input_size).to(device_of(model))
    context = interactive.no_context()
    if args.context:
        images, _, _ = interactive.gallery_samples(dataset_of(args, model), args.context, args.data)
        context = interactive.make_context(model, images, f"inside a batch with the first {len(images)} "
                                                          f"{model.dataset} test images")
    return model, x, context


def _print_top5(title: str, scores: dict[str, float]) -> None:
    print(f"{title}: " + ", ".join(f"{name} {100 * p:.1f}%" for name, p in scores.items()))


def _cmd_predict(args: argparse.Namespace) -> int:
    from .. import interactive

    model, x, context = _load(args)
    out = interactive.classify(model, x, context)
    reference, deployed = interactive.panel_labels(model)
    print(f"classified {context.description}")
    _print_top5(reference, out["fc"])
    _print_top5(deployed, out["deployed"])
    if (alpha := interactive.adaptive_alpha(model, x)) is not None:
        print(f"mixing weight on the robust branch: alpha(x) = {alpha:.3f}")
    return 0


def _cmd_attack(args: argparse.Namespace) -> int:
    from .. import interactive

    model, x, context = _load(args)
    attack = args.attack or interactive.default_attack(interactive.attack_choices(model))
    result = interactive.attack_image(model, x, attack=attack, eps=args.eps, steps=args.steps, context=context,
                                      seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    png = interactive.save_png(result.x_adv, out / "adversarial.png")
    saved = interactive.classify(model, png.to(x.device), context)
    description = interactive.attack_description(model, attack)
    png_label = max(saved["deployed"], key=saved["deployed"].get)
    record = {"model": args.model, "image": args.image, "attack": attack, "description": description,
              "eps": args.eps, "steps": args.steps, "seed": args.seed, "context": context.description,
              "attacked_label": model.classes[result.label], "clean": result.clean, "adversarial": result.adversarial,
              "surrogate_fooled": result.surrogate_fooled, "deployed_fooled": result.deployed_fooled,
              "linf": result.linf, "l2": result.l2, "alpha": result.alpha,
              "png": {"path": str(out / "adversarial.png"), "predictions": saved,
                      "linf": float((png - result.x).abs().max()),
                      "deployed_fooled": png_label != model.classes[result.label]},
              "command": args.command_line}
    (out / "result.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"{description}, eps {args.eps * 255:.3g}/255, classified {context.description}")
    deployed = interactive.panel_labels(model)[1]
    _print_top5(f"{deployed}, clean", result.clean["deployed"])
    _print_top5(f"{deployed}, adversarial", result.adversarial["deployed"])
    if result.alpha is not None:
        print("mixing weight on the robust branch: alpha(x) = {:.3f} clean, {:.3f} adversarial".format(*result.alpha))
    print(f"deployed model fooled: {'yes' if result.deployed_fooled else 'no'} (8-bit PNG: "
          f"{'yes' if record['png']['deployed_fooled'] else 'no'}); wrote {out}/adversarial.png and result.json")
    return 0


def _cmd_app(args: argparse.Namespace) -> int:
    import os

    from ..errors import HPMError

    if args.data is not None:
        if not Path(args.data).is_dir():
            raise HPMError(f"--data {args.data}: not a directory")
        os.environ["HPM_DATA_DIR"] = args.data  # read when the app is built, on import
    try:
        from ..webapp import LAUNCH, app
    except ImportError as e:
        if e.name not in ("gradio", "gradio_client"):
            raise
        raise HPMError("the app needs gradio: pip install 'hybrid-prototype-mixing[app]'") from None
    app.launch(server_name=args.host, server_port=args.port, **LAUNCH)
    return 0
