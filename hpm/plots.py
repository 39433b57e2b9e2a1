"""Plotly figures: the paper's Fig. 2 (isotropic CDFs) and Fig. 3 (angle histograms, modelled vs empirical CDF),
the results figures, and :func:`write_figures`, the one writer of their HTML (offline) and PNG files."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .errors import HPMError
from .sensitivity import AngleReport, isotropic_cdf

DEFAULT_DIMS = (2, 8, 32, 128, 512, 2048)


def isotropic_cdf_figure(dims=DEFAULT_DIMS, n_points: int = 200) -> go.Figure:
    """Fig. 2: ``F_X(|cos gamma|)``, the probability that the FC head is the more sensitive, per dimension d."""
    u = np.linspace(0, 1, n_points)
    fig = go.Figure()
    for d in dims:
        fig.add_trace(go.Scatter(x=u, y=isotropic_cdf(u, int(d)), mode="lines", name=f"d = {d}"))
    fig.update_layout(title="Isotropic features: P(S_c >= sup S_d) (Eq. 11)", xaxis_title="|cos γ|",
                      yaxis_title="F_X(|cos γ|)", yaxis_range=[0, 1.02], template="plotly_white",
                      legend_title="feature dimension")
    return fig


def angle_histogram_figure(report: AngleReport, bins: int = 90) -> go.Figure:
    """Fig. 3 (left): histograms of theta_c (FC) and theta_d (l2), positive vs negative, with fitted curves."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("θ_c: features vs FC class vectors",
                                                        "θ_d: features vs l2 prototypes"))
    grid = np.linspace(0, 180, 721)
    for col, (angles, stats, name) in enumerate(((report.theta_c, report.fc, "FC"), (report.theta_d, report.l2, "l2")),
                                                1):
        for part, colour in (("positive", "#d62728"), ("negative", "#1f77b4")):
            fig.add_trace(go.Histogram(x=angles[part], nbinsx=bins, histnorm="probability density", opacity=0.45,
                                       marker_color=colour, name=f"{name} {part}", legendgroup=f"{name}{part}"),
                          row=1, col=col)
            mu, sigma = (stats.mu_pos, stats.sigma_pos) if part == "positive" else (stats.mu_neg, stats.sigma_neg)
            single = type(stats)(mu, sigma, mu, sigma, 1.0)  # one component, for a per-part curve
            fig.add_trace(go.Scatter(x=grid, y=single.pdf(grid), mode="lines", line=dict(color=colour),
                                     name=f"{name} {part} fit: μ={mu:.2f}°, σ={sigma:.2f}°",
                                     legendgroup=f"{name}{part}"), row=1, col=col)
        fig.update_xaxes(title_text="angle (degrees)", row=1, col=col)
        fig.update_yaxes(title_text="probability density", row=1, col=col)
    fig.update_layout(title=f"Angle statistics ({report.n_samples} samples, d = {report.num_features}, "
                            f"k = {report.num_classes})", barmode="overlay", template="plotly_white",
                      margin=dict(t=110), legend=dict(orientation="h", y=-0.25, x=0))  # legend below: plots full width
    fig.update_annotations(yshift=8)  # the subplot titles, clear of the figure title
    return fig


def cdf_comparison_figure(report: AngleReport) -> go.Figure:
    """Fig. 3 (right): modelled CDF (Eq. 13, fitted parameters) vs empirical CDF of |cos θ_c| / |sin θ_d|."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=report.u, y=report.modelled_cdf, mode="lines", name="modelled (Eq. 13)"))
    fig.add_trace(go.Scatter(x=report.u, y=report.empirical_cdf, mode="lines", line=dict(dash="dash"),
                             name="empirical (measured pairs)"))
    fig.add_trace(go.Scatter(x=report.u, y=isotropic_cdf(np.asarray(report.u), report.num_features), mode="lines",
                             line=dict(dash="dot", color="grey"), name=f"isotropic, d = {report.num_features}"))
    fig.update_layout(title=f"P(S_c >= sup S_d): modelled vs empirical (max gap {report.max_gap:.3f})",
                      xaxis_title="|cos γ|", yaxis_title="F_X(|cos γ|)", yaxis_range=[0, 1.02],
                      template="plotly_white")
    return fig


DASHES = {"APGD-CE": "dash", "full + APGD-T": "dot"}  # line style per protocol name; others solid


def robustness_curve_figure(rows: list[dict], title: str = "Accuracy under attack") -> go.Figure:
    """Fig. 1-style curves: robust accuracy vs eps, one line per model and protocol.

    ``rows`` are :func:`hpm.publish.compare.comparison_rows` entries (label, protocol, eps, robust, ci95, ...);
    APGD-CE-only lines are dashed, full-protocol lines solid, full + APGD-T dotted, 95% Clopper-Pearson intervals
    as error bars.
    """
    fig = go.Figure()
    groups: dict[tuple[str, str, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["label"], r["protocol"], r["batch_size"]), []).append(r)
    many_bs = len({k[2] for k in groups}) > 1
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    colours = {label: palette[i % len(palette)] for i, label in enumerate(dict.fromkeys(k[0] for k in groups))}
    for (label, protocol, bs), pts in groups.items():
        pts = sorted(pts, key=lambda r: r["eps"])
        x = [255 * r["eps"] for r in pts]
        y = [100 * r["robust"] for r in pts]
        err_hi = [100 * (r["ci95"][1] - r["robust"]) for r in pts]
        err_lo = [100 * (r["robust"] - r["ci95"][0]) for r in pts]
        fig.add_trace(go.Scatter(
            x=x, y=y, mode="lines+markers", name=f"{label}, {protocol}" + (f", bs {bs}" if many_bs else ""),
            line=dict(color=colours[label], dash=DASHES.get(protocol, "solid")),
            marker=dict(symbol="circle-open", size=11) if protocol == "APGD-CE" else dict(symbol="circle", size=7),
            error_y=dict(type="data", array=err_hi, arrayminus=err_lo, visible=True, thickness=1)))
    ticks = sorted({255 * r["eps"] for r in rows})
    fig.update_layout(title=title, xaxis_title="ε (×1/255, ℓ∞)", yaxis_title="accuracy under attack (%)",
                      xaxis=dict(type="log", tickvals=ticks, ticktext=[f"{t:g}" for t in ticks]),
                      yaxis_range=[0, 100], template="plotly_white", legend_title="model, protocol")
    return fig


def defences_figure(rows: list[dict], title: str = "Clean vs robust accuracy") -> go.Figure:
    """One point per defence: clean accuracy (x) against robust accuracy (y), both with their 95% intervals as
    error bars. ``rows`` are :class:`hpm.publish.defences.DefenceRow` fields (group, point, clean, clean_ci,
    robust, robust_ci); the rows of a group with several (an alpha sweep) are joined by a line in their order,
    each point named by its ``point``; a lone point is named by the legend only, without the checkpoint its label
    may cite."""
    fig = go.Figure()
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    for group, pts in groups.items():
        fig.add_trace(go.Scatter(
            x=[100 * r["clean"] for r in pts], y=[100 * r["robust"] for r in pts],
            mode="lines+markers+text" if len(pts) > 1 else "markers", name=re.sub(r" \(`[^`]*`\)$", "", group),
            text=[r["point"] for r in pts], marker=dict(size=9),
            textposition=[("top right", "bottom left")[i % 2] for i in range(len(pts))],  # neighbours apart
            error_x=dict(type="data", array=[100 * (r["clean_ci"][1] - r["clean"]) for r in pts],
                         arrayminus=[100 * (r["clean"] - r["clean_ci"][0]) for r in pts], thickness=1),
            error_y=dict(type="data", array=[100 * (r["robust_ci"][1] - r["robust"]) for r in pts],
                         arrayminus=[100 * (r["robust"] - r["robust_ci"][0]) for r in pts], thickness=1)))
    fig.update_layout(title=title, xaxis_title="clean accuracy (%)", yaxis_title="robust accuracy (%)",
                      template="plotly_white", legend=dict(title="defence", orientation="h", y=-0.2, yanchor="top"))
    return fig


def backbones_figure(rows: list[dict], title: str = "HPM − FC per backbone") -> go.Figure:
    """Two panels, HPM − FC in clean (left) and in robust accuracy (right), in percentage points, against each
    backbone's FC robust accuracy; one point per backbone with its 95% paired interval as error bars, labelled
    with the backbone, HPM's evaluation batch size and the NCM − FC clean gap; a dashed line at zero.

    ``rows`` are :class:`hpm.publish.backbones.BackboneRow` fields (name, batch_size, fc_robust, ncm_gap, and
    ``clean`` / ``robust``: ``{"delta", "ci"}``). Traces: one per backbone and panel, the left panel's first.
    """
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12,
                        subplot_titles=("HPM − FC, clean accuracy", "HPM − FC, robust accuracy"))
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    for col, key in ((1, "clean"), (2, "robust")):
        for i, r in enumerate(rows):
            d, (lo, hi) = r[key]["delta"], r[key]["ci"]
            gap = "NCM − FC clean: not measured" if r["ncm_gap"] is None else \
                f"NCM − FC clean {100 * r['ncm_gap']:+.1f}"
            fig.add_trace(go.Scatter(
                x=[100 * r["fc_robust"]], y=[100 * d], mode="markers+text", name=r["name"], legendgroup=r["name"],
                showlegend=col == 1, marker=dict(size=10, color=palette[i % len(palette)]),
                text=[f"HPM at bs {r['batch_size']}<br>{gap}"], textposition="middle right",
                error_y=dict(type="data", array=[100 * (hi - d)], arrayminus=[100 * (d - lo)], thickness=1.5),
                hovertemplate=f"{r['name']}<br>FC robust %{{x:.1f}}%<br>HPM − FC {key} %{{y:+.1f}} "
                              f"[{100 * lo:+.1f}, {100 * hi:+.1f}]<br>{gap}<extra></extra>"), row=1, col=col)
        fig.add_hline(y=0, line=dict(color="grey", dash="dash", width=1), row=1, col=col)
    xs = [100 * r["fc_robust"] for r in rows] or [0.0]
    pad = max(4.0, max(xs) - min(xs))  # room for the labels right of the points
    ys = [0.0] + [100 * v for r in rows for key in ("clean", "robust") for v in r[key]["ci"]]
    margin = 0.1 * (max(ys) - min(ys) or 1.0)
    fig.update_xaxes(title_text="FC robust accuracy of the backbone (%)", range=[min(xs) - 1.5, max(xs) + pad])
    fig.update_yaxes(title_text="HPM − FC (percentage points)", zeroline=False,  # one scale for both panels
                     range=[min(ys) - margin, max(ys) + margin])
    sizes = ", ".join(dict.fromkeys(str(r["n"]) for r in rows))
    fig.update_layout(title=f"{title}<br><sup>same {sizes} images for FC and HPM per backbone; error bars: 95% "
                            "interval of the paired difference (Newcombe)</sup>", template="plotly_white",
                      legend=dict(title="backbone", orientation="h", y=-0.2, yanchor="top"))
    return fig


def perturbation_heatmap(magnitude: np.ndarray, eps: float) -> go.Figure:
    """Per-pixel l2 norm over the colour channels of the perturbation, ``H x W`` in [0, 1] units, as a heatmap
    in units of 1/255 (image orientation: row 0 at the top). The colour scale is fixed to [0, ε·√3], the
    largest value an l_inf perturbation of radius ``eps`` can reach, so that equal colours mean equal sizes
    across attacks and float noise is never stretched into structure."""
    fig = go.Figure(go.Heatmap(z=255 * magnitude[::-1], colorscale="Inferno", zmin=0, zmax=255 * eps * 3 ** 0.5,
                               colorbar=dict(title="‖δ‖₂ over RGB<br>(×1/255)")))
    fig.update_layout(title="perturbation magnitude", margin=dict(l=10, r=10, t=40, b=10), height=300,
                      xaxis=dict(visible=False), yaxis=dict(visible=False, scaleanchor="x"))
    return fig


PLOTLY_JS = "plotly.min.js"  # the plotly.js bundle every HTML figure loads from its own directory
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
PNG_FIX = ("install kaleido>=1.0 (pip install 'kaleido>=1.0') and a Chrome/Chromium (Debian: apt-get install "
           "chromium), or set BROWSER_PATH to a Chrome/Chromium executable")


class FigureExportError(HPMError):
    """A PNG export failed. ``written``: the files on disk (every HTML, its plotly.min.js, earlier PNGs);
    ``failed``: the PNGs not written, the first of which raised ``cause`` (the rest were not attempted);
    ``html_only``: how the caller skips PNGs."""

    def __init__(self, written: list[Path], failed: list[Path], cause: BaseException,
                 html_only: str = "write HTML only"):
        self.written, self.failed, self.cause, self.html_only = list(written), list(failed), cause, html_only
        super().__init__(str(self))

    def __str__(self) -> str:
        cause = " ".join(str(self.cause).split())  # one line, as the CLI prints errors
        rest = f"; not attempted: {_listed(self.failed[1:])}" if self.failed[1:] else ""
        return (f"could not write {self.failed[0]} ({type(self.cause).__name__}: {cause}){rest}; "
                f"written: {_listed(self.written) or 'nothing'}; fix: {PNG_FIX}; or {self.html_only}")


def _listed(paths: list[Path]) -> str:
    return ", ".join(str(p) for p in paths)


def _with_suffix(stem: Path, suffix: str) -> Path:
    """``stem`` + ``suffix``; a stem that already ends in .html or .png has that suffix replaced."""
    stem = Path(stem)
    return stem.with_suffix(suffix) if stem.suffix in (".html", ".png") else stem.with_name(stem.name + suffix)


def write_html(fig: go.Figure, path: Path, cdn_fallback: bool = False) -> list[Path]:
    """Write ``path``, a full page that loads plotly.js from ``plotly.min.js`` beside it (written or refreshed
    here, one per directory), so that it shows offline; return both paths.

    ``cdn_fallback``: the page also loads plotly.js from its CDN, only when ``plotly.min.js`` is not beside it: for
    pages committed to a repository without the 4 MB bundle (a clone shows them online, and offline once the
    command that writes them has run).
    """
    from plotly.offline import get_plotlyjs
    from plotly.offline.offline import get_plotlyjs_version

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bundle = path.parent / PLOTLY_JS
    js = get_plotlyjs().encode("utf-8")
    if not bundle.is_file() or bundle.read_bytes() != js:  # absent, or another plotly version's
        partial = bundle.with_name(f".{PLOTLY_JS}.{os.getpid()}.tmp")
        partial.write_bytes(js)
        partial.replace(bundle)  # atomic: a page never loads half a bundle written by another process
    html = fig.to_html(include_plotlyjs="directory", full_html=True)
    if cdn_fallback:
        local = f'<script charset="utf-8" src="{PLOTLY_JS}"></script>'
        cdn = f"https://cdn.plot.ly/plotly-{get_plotlyjs_version()}.min.js"
        html = html.replace(local, local + f"<script>window.Plotly || document.write('<script "
                                           f"src=\"{cdn}\"><\\/script>')</script>", 1)
    path.write_text(html, encoding="utf-8")
    return [path, bundle]


def system_browser() -> str | None:
    """The Chrome/Chromium kaleido is to drive: ``BROWSER_PATH`` if set, else the first of :data:`BROWSERS` on
    PATH; None where there is none."""
    return os.environ.get("BROWSER_PATH") or next((path for path in map(shutil.which, BROWSERS) if path), None)


def write_png(fig: go.Figure, path: Path, width: int = 1100, height: int = 500) -> Path:
    """Write a PNG with kaleido (>= 1.0) through :func:`system_browser`, given to kaleido as ``BROWSER_PATH`` where
    that is unset; return the PNG's path."""
    browser = system_browser()
    if browser and not os.environ.get("BROWSER_PATH"):
        os.environ["BROWSER_PATH"] = browser
    fig.write_image(str(path), width=width, height=height)
    return Path(path)


def write_figures(figures: dict[Path, go.Figure], png: bool = False, width: int = 1100, height: int = 500,
                  html_only: str = "write HTML only", cdn_fallback: bool = False) -> list[Path]:
    """Write each figure as ``STEM.html`` (:func:`write_html`, with ``cdn_fallback``), then, with ``png``, as
    ``STEM.png``; return the files written, each once. Every HTML comes first: a failed PNG raises
    :class:`FigureExportError`, which lists what was written and what was not (``html_only``: how the caller skips
    PNGs)."""
    written: list[Path] = []
    for stem, fig in figures.items():
        written += [p for p in write_html(fig, _with_suffix(stem, ".html"), cdn_fallback) if p not in written]
    pngs = [_with_suffix(stem, ".png") for stem in figures] if png else []
    for i, (fig, path) in enumerate(zip(figures.values(), pngs)):
        try:
            written.append(write_png(fig, path, width, height))
        except Exception as e:  # kaleido or its browser missing, or the browser failed: any of them
            raise FigureExportError(written, pngs[i:], e, html_only) from e
    return written


def write_figure(fig: go.Figure, stem: Path, png: bool = False, width: int = 1100, height: int = 500,
                 html_only: str = "write HTML only", cdn_fallback: bool = False) -> list[Path]:
    """:func:`write_figures` for one figure: ``STEM.html``, its ``plotly.min.js`` and, with ``png``, ``STEM.png``."""
    return write_figures({Path(stem): fig}, png, width, height, html_only, cdn_fallback)
