"""report.html in a real browser: headless Chromium loads it with no error and decodes every plot.

The checks go through the DevTools protocol (tests/browser.py), since the report itself allows no
script. The page rendered here is the tiny build's (every kind of plot); the page of a SmolLM2 build of
the demo's own recipe is rendered in tests/integration/test_build_real.py.
"""

from __future__ import annotations

from browser import assert_renders, render

from compressor.report_html import CSP


def test_the_tiny_build_report_renders_with_every_plot_decoded(chromium, tiny_report_dir):
    assert_renders(chromium, tiny_report_dir / "report.html", len(list((tiny_report_dir / "plots").iterdir())))


def test_the_check_would_see_a_broken_image_and_a_blocked_resource(chromium, tmp_path):
    # the same policy as the report: a resource from the network is refused and logged as an error
    page = tmp_path / "broken.html"
    page.write_text(f'<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" content="{CSP}">'
                    '<title>compressor report: broken</title></head><body>'
                    '<img alt="truncated" src="data:image/png;base64,iVBORw0KGgo=">'
                    '<img alt="remote" src="https://example.invalid/plot.png"></body></html>')
    seen = render(chromium, page)
    assert any("Content Security Policy" in e or "example.invalid" in e for e in seen.errors), seen.errors
    assert all(img["width"] == 0 for img in seen.images), seen.images


def test_compress_verify_writes_a_report_html_that_renders(chromium, tiny_report_dir, tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from compressor.cli import app

    page = tmp_path / "verify.html"
    result = CliRunner().invoke(app, [
        "verify", str(tiny_report_dir / "transformers"), "--original", str(tiny_model_dir), "--eval-samples", "2",
        "--eval-seq-len", "32", "--set", "verify.latency.rounds=3", "--set", "verify.latency.prompt_tokens=16",
        "--set", "verify.latency.new_tokens=8", "--set", "verify.generate_tokens=4",
        "--set", "verify.latency.on_inconclusive=warn", "--report-html", str(page)])
    assert result.exit_code == 0, result.output
    html = page.read_text()
    assert "<h2>Budgets</h2>" in html and "transformers" in html and "artifact" in html
    assert html.count("data:image/png;base64,") == 2  # the per-position differences and the latencies
    assert_renders(chromium, page, 2)
