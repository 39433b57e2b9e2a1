"""Writing figures: every HTML shows offline (plotly.js beside it, never from a CDN), PNGs come from kaleido
driving a Chrome/Chromium, and a failed PNG export says exactly which files were written and which were not."""
import re

import plotly.graph_objects as go
import pytest
from plotly.offline import get_plotlyjs

from hpm.cli import main
from hpm.plots import PLOTLY_JS, FigureExportError, system_browser, write_figure, write_figures


def tiny_figure() -> go.Figure:
    return go.Figure(go.Scatter(x=[0, 1, 2], y=[1, 3, 2], name="tiny"))


def script_sources(html: str) -> list[str]:
    return re.findall(r'<script[^>]*\ssrc="([^"]*)"', html)


def fail_png_export(monkeypatch, after: int = 0) -> None:
    """Make plotly's PNG export raise (as without kaleido or a browser), after ``after`` fake PNGs succeed."""
    calls = []

    def write_image(fig, path, **kwargs):
        calls.append(path)
        if len(calls) > after:
            raise RuntimeError("no browser here")
        open(path, "wb").write(b"\x89PNG fake")

    monkeypatch.setattr(go.Figure, "write_image", write_image)


def test_html_loads_plotly_js_from_beside_it_and_never_from_a_cdn(tmp_path):
    written = write_figure(tiny_figure(), tmp_path / "fig")
    assert written == [tmp_path / "fig.html", tmp_path / PLOTLY_JS]
    html = (tmp_path / "fig.html").read_text()
    assert script_sources(html) == [PLOTLY_JS]
    assert "cdn.plot.ly" not in html and "https://" not in "".join(script_sources(html))
    assert (tmp_path / PLOTLY_JS).read_text(encoding="utf-8") == get_plotlyjs()


def test_figures_in_one_directory_share_one_plotly_js_and_a_stale_one_is_replaced(tmp_path):
    (tmp_path / PLOTLY_JS).write_text("/* plotly.js of another version */")
    written = write_figures({tmp_path / "a": tiny_figure(), tmp_path / "b.html": tiny_figure()})
    assert written == [tmp_path / "a.html", tmp_path / PLOTLY_JS, tmp_path / "b.html"]
    assert (tmp_path / PLOTLY_JS).read_text(encoding="utf-8") == get_plotlyjs()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.html", "b.html", PLOTLY_JS]


def test_a_failed_png_names_what_was_written_and_what_was_not(tmp_path, monkeypatch):
    fail_png_export(monkeypatch, after=1)
    with pytest.raises(FigureExportError) as caught:
        write_figures({tmp_path / n: tiny_figure() for n in ("a", "b", "c")}, png=True, html_only="pass --no-png")
    e = caught.value
    assert e.written == [tmp_path / n for n in ("a.html", PLOTLY_JS, "b.html", "c.html", "a.png")]
    assert e.failed == [tmp_path / "b.png", tmp_path / "c.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in e.written)
    message = str(e)
    assert message.startswith(f"could not write {tmp_path / 'b.png'} (RuntimeError: no browser here); "
                              f"not attempted: {tmp_path / 'c.png'}; written: ")
    assert "apt-get install chromium" in message and "kaleido>=1.0" in message and message.endswith("pass --no-png")


def test_analyze_lists_every_file_it_wrote(tiny_data_root, tmp_path, capsys):
    out = tmp_path / "analysis"
    assert main(["analyze", "pyautoattack", "--data", str(tiny_data_root), "--out", str(out), "--check-n", "0",
                 "--dims", "2,64"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    names = ["angle_stats.json", "fig2_isotropic.html", PLOTLY_JS, "fig3_angles.html", "fig3_cdf.html"]
    assert last == "wrote " + ", ".join(str(out / n) for n in names)
    assert sorted(p.name for p in out.iterdir()) == sorted(names)


def test_analyze_png_failure_lists_exactly_the_files_written_and_the_fix(tiny_data_root, tmp_path, monkeypatch,
                                                                         capsys):
    fail_png_export(monkeypatch)
    out = tmp_path / "analysis"
    assert main(["analyze", "pyautoattack", "--data", str(tiny_data_root), "--out", str(out), "--check-n", "0",
                 "--dims", "2,64", "--png"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # the lines before it: progress bars
    assert err.startswith("hpm: error: ")
    written = ["angle_stats.json", "fig2_isotropic.html", PLOTLY_JS, "fig3_angles.html", "fig3_cdf.html"]
    assert f"could not write {out / 'fig2_isotropic.png'} (RuntimeError: no browser here); not attempted: " \
           f"{out / 'fig3_angles.png'}, {out / 'fig3_cdf.png'}; written: " \
           + ", ".join(str(out / n) for n in written) + "; fix: install kaleido>=1.0" in err
    assert "apt-get install chromium" in err and err.endswith("or run without --png")
    assert sorted(p.name for p in out.iterdir()) == sorted(written)


@pytest.mark.slow
@pytest.mark.skipif(system_browser() is None,
                    reason="no Chrome/Chromium for kaleido (Debian: apt-get install chromium)")
def test_png_export_through_kaleido_and_a_system_browser(tmp_path):
    pytest.importorskip("kaleido")
    from PIL import Image

    written = write_figure(tiny_figure(), tmp_path / "fig", png=True, width=320, height=240)
    assert written == [tmp_path / "fig.html", tmp_path / PLOTLY_JS, tmp_path / "fig.png"]
    with Image.open(tmp_path / "fig.png") as image:
        assert (image.format, image.size) == ("PNG", (320, 240))


def test_a_page_committed_without_the_bundle_falls_back_on_the_cdn_only_when_the_bundle_is_missing(tmp_path):
    write_figure(tiny_figure(), tmp_path / "fig", cdn_fallback=True)
    html = (tmp_path / "fig.html").read_text()
    local, cdn = script_sources(html)
    assert local == PLOTLY_JS and re.fullmatch(r"https://cdn\.plot\.ly/plotly-[\d.]+\.min\.js", cdn)
    guard = f"<script>window.Plotly || document.write('<script src=\"{cdn}\"><\\/script>')</script>"
    assert html.count(cdn) == 1 and guard in html  # the CDN is written in only where the local bundle did not load
    assert html.index(f'src="{PLOTLY_JS}"') < html.index(guard)
