"""``hpm analyze``: the sensitivity analysis (Fig. 2 and Fig. 3) on a real model and dataset."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import HPMError
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
    a = sub.add_parser(
        "analyze", help="angle statistics of FC vs l2 heads, modelled vs empirical CDF, Fig. 2 and Fig. 3",
        description="Measure the angles between MODEL's test features and its FC class vectors (theta_c) and l2 "
                    "prototypes (theta_d), fit the truncated-normal model (Eq. 12), compare the modelled CDF (Eq. 13) "
                    "with the measured one, check Eq. 8 on adversarial feature perturbations, and write "
                    "angle_stats.json plus the figures into OUT: HTML that loads plotly.min.js from beside it "
                    "(offline), and PNG with --png.")
    add_model_arg(a)
    a.add_argument("--out", required=True, metavar="DIR", help="output directory")
    add_data_args(a)
    a.add_argument("--n", type=positive_int, default=None, help="test samples to measure (default: whole split)")
    a.add_argument("--prototypes", default="train", choices=["train", "head"],
                   help="l2 prototypes: class means of the training features (an NCM head on the same backbone; "
                        "default) or the model's own head prototypes")
    a.add_argument("--dims", default="2,8,32,128,512,2048", help="dimensions of the isotropic Fig. 2 curves")
    a.add_argument("--check-n", type=int, default=64, help="test images attacked for the Eq. 8 check (0: skip)")
    a.add_argument("--eps", type=eps_arg, default=8 / 255, help="Linf radius of that attack (default 8/255)")
    a.add_argument("--cdn-fallback", action="store_true",
                   help="the HTML also loads plotly.js from its CDN when plotly.min.js is not beside it (for pages "
                        "committed without the 4 MB bundle)")
    a.add_argument("--png", action="store_true",
                   help="also write PNGs (needs kaleido>=1.0 and a Chrome/Chromium, e.g. Debian's chromium)")
    add_device_arg(a)
    a.set_defaults(func=_cmd_analyze)


def _cmd_analyze(args) -> int:
    from ..data import load_dataset
    from ..model import load_classifier
    from ..plots import angle_histogram_figure, cdf_comparison_figure, isotropic_cdf_figure
    from ..sensitivity import angle_statistics
    from ..train import extract_features

    try:
        dims = [int(t) for t in args.dims.split(",")]
    except ValueError:
        raise HPMError(f"--dims must be comma-separated integers; got {args.dims!r}") from None
    if min(dims) < 2:
        raise HPMError("--dims must all be >= 2")
    device = resolve_device(args.device)
    model = load_classifier(args.model, model_dir=args.model_dir, dataset=args.dataset).to(device)
    dataset = dataset_of(args, model)
    test = load_dataset(dataset, "test", args.data)
    if args.n:
        test.images, test.labels = test.images[:args.n], test.labels[:args.n]
    z, y = extract_features(model, test, device=device)
    if args.prototypes == "head":
        if not model.head.has_prototypes:
            raise HPMError(f"the model's {model.head_type} head has no prototypes; use --prototypes train")
        prototypes, source = model.head.prototypes.detach().cpu(), f"{model.head_type} head prototypes"
    else:
        z_train, y_train = extract_features(model, load_dataset(dataset, "train", args.data), device=device)
        from ..heads import class_means

        prototypes, _ = class_means(z_train, y_train, model.num_classes)
        source = f"class means of {len(y_train)} training features (NCM head)"
    report = angle_statistics(z, y, model.fc.weight.detach().cpu(), prototypes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"model": args.model, "test_source": test.source, "prototypes": source, **report.summary(),
              "u": report.u, "modelled_cdf": report.modelled_cdf, "empirical_cdf": report.empirical_cdf}
    if args.check_n > 0:
        result["eq8_check"] = _eq8_check(model, test, prototypes, args.check_n, args.eps, device)
    (out / "angle_stats.json").write_text(json.dumps(result, indent=2) + "\n")
    figures = {"fig2_isotropic": isotropic_cdf_figure(dims), "fig3_angles": angle_histogram_figure(report),
               "fig3_cdf": cdf_comparison_figure(report)}
    _print(result)
    written = [out / "angle_stats.json", *_write_figures(figures, out, args.png, args.cdn_fallback)]
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _write_figures(figures: dict, out: Path, png: bool, cdn_fallback: bool = False) -> list[Path]:
    """Write ``OUT/NAME.html`` (plotly.min.js beside them) and, with ``png``, ``OUT/NAME.png``; return the paths.
    A failed PNG export names every file written, angle_stats.json first, and the PNGs that were not."""
    from ..plots import FigureExportError, write_figures

    try:
        return write_figures({out / name: fig for name, fig in figures.items()}, png=png,
                             html_only="run without --png", cdn_fallback=cdn_fallback)
    except FigureExportError as e:
        raise FigureExportError([out / "angle_stats.json", *e.written], e.failed, e.cause, e.html_only) from e.cause


def _eq8_check(model, test, prototypes, n: int, eps: float, device) -> dict:
    """Attack n test images (APGD-CE on the FC oracle), then check Eq. 8's implication on the feature shifts."""
    import torch

    from ..attacks import AttackSpec, BatchFeatures, run_apgd
    from ..sensitivity import measure_sensitivities

    x, y = test.tensors(torch.arange(min(n, len(test))))
    x, y = x.to(device), y.to(device)
    spec = AttackSpec("apgd-ce/fc", "apgd", "ce", ("fc",))  # every HPMClassifier has its FC oracle
    x_adv = run_apgd(spec, BatchFeatures(model, None), x, y, norm="Linf", eps=eps, n_iter=20, n_restarts=1, seed=0,
                     num_classes=model.num_classes, keep_first_break=False).x_adv  # the highest-loss iterate
    m = measure_sensitivities(model, x, x_adv, prototypes.to(x))
    cond, holds = m["condition"], m["implication_holds"]
    return {"n_images": int(len(y)), "eps": eps, "attack": "APGD-CE on the FC oracle, 20 iterations, best-loss iterate",
            "pairs": int(cond.numel()), "condition_holds_fraction": float(cond.float().mean()),
            "S_c_ge_sup_S_d_fraction": float((m["S_c"] >= m["sup_S_d"]).float().mean()),
            "implication_violations": int((~holds).sum())}


def _print(result: dict) -> None:
    fc, l2 = result["fc"], result["l2"]
    print(f"angles of {result['n_samples']} test features (d={result['num_features']}, k={result['num_classes']}); "
          f"l2 prototypes: {result['prototypes']}")
    for name, s in (("FC theta_c", fc), ("l2 theta_d", l2)):
        print(f"  {name}: positive mu={s['mu_pos']:.2f} sigma={s['sigma_pos']:.2f}  negative mu={s['mu_neg']:.2f} "
              f"sigma={s['sigma_neg']:.2f}  alpha={s['alpha']:.4f}  (degrees)")
    print(f"  max |modelled - empirical| CDF gap: {result['max_gap']:.4f}")
    if "eq8_check" in result:
        c = result["eq8_check"]
        print(f"  Eq. 8 on adversarial feature shifts: condition holds for {100 * c['condition_holds_fraction']:.1f}% "
              f"of {c['pairs']} pairs; S_c >= sup S_d for {100 * c['S_c_ge_sup_S_d_fraction']:.1f}%; "
              f"implication violations: {c['implication_violations']}")
