"""report.html and plots/: one self-contained page whose plots show what report.json measured."""

from __future__ import annotations

import base64
import json
import math
import re
from html import escape

import numpy as np
import pytest
from matplotlib.image import imread

from compressor.replay import compare as replay_compare
from compressor.report import write_reports
from compressor.report_plots import render_plots


def _embedded(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def test_the_page_is_self_contained_and_embeds_exactly_the_plots_report_md_links(tiny_report_dir):
    html = (tiny_report_dir / "report.html").read_text()
    assert "<script" not in html.lower()
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    assert not re.findall(r'(?:src|href)="(?!data:image/png;base64,)', html), "a resource outside the page"
    linked = re.findall(r"!\[[^\]]*\]\(plots/([^)]+)\)", (tiny_report_dir / "report.md").read_text())
    files = sorted(p.name for p in (tiny_report_dir / "plots").iterdir())
    assert sorted(linked) == files
    assert set(files) == {"layers.png", "per-position.png", "latency-transformers.png", "loss-0-streamline.png"}
    assert _embedded(html) == [(tiny_report_dir / "plots" / name).read_bytes() for name in linked]
    for name in files:  # every PNG decodes to a real picture
        pixels = imread(tiny_report_dir / "plots" / name)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 300 and pixels.std() > 0.05, name


def test_the_page_states_the_verdict_and_every_budget(tiny_report_dir):
    html = (tiny_report_dir / "report.html").read_text()
    report = json.loads((tiny_report_dir / "report.json").read_text())
    assert f"compressor report: {report['verdict'].upper()}" in html
    for v in report["verify"].values():
        for b in v["budgets"]:
            assert b["name"] in html and escape(b["detail"]) in html


def test_per_layer_counts_follow_the_original_layer_indices(tiny_report_dir):
    summary = json.loads((tiny_report_dir / "report.json").read_text())["summary"]
    before, after = summary["layer_parameters_original"], summary["layer_parameters"]
    assert [r["original_index"] for r in before] == [0, 1, 2, 3]
    stage = json.loads((tiny_report_dir / "report.json").read_text())["stages"][0]["details"]
    removed = stage["removed_layers"]
    assert len(after) == 3 and [r["original_index"] for r in after] == [i for i in range(4) if i not in removed]
    assert sum(r["parameters"] for r in after) == sum(r["parameters"] for r in before) - before[removed[0]]["parameters"]


def test_per_position_curves_average_to_the_reported_kl_and_perplexity_change(tiny_report_dir):
    m = json.loads((tiny_report_dir / "report.json").read_text())["verify"]["transformers"]["metrics"]
    pp = m["per_position"]
    assert len(pp["kl"]) == len(pp["nll_delta"]) == 31  # 32-token windows: 31 predictions each
    assert min(pp["kl"]) >= 0
    assert np.mean(pp["kl"]) == pytest.approx(m["kl"], abs=1e-5)
    # mean NLL change is log(perplexity ratio)
    assert np.mean(pp["nll_delta"]) == pytest.approx(math.log(m["perplexity"] / m["perplexity_original"]), abs=1e-5)


def test_the_loss_curve_is_the_one_the_method_reported(tiny_report_dir):
    stage = json.loads((tiny_report_dir / "report.json").read_text())["stages"][0]
    curve = stage["details"]["loss_curves"][0]
    history = stage["details"]["training"]["history"]
    assert curve["x"] == [h["epoch"] for h in history]
    assert curve["series"]["validation"] == pytest.approx([h["val_mse"] for h in history])


def test_latency_plot_marks_busy_rounds_and_a_report_without_data_gets_no_plot():
    assert render_plots({"summary": {}, "verify": {}, "stages": []}) == {}
    rounds = {"prefill_s": [0.01, 0.011, 0.012], "decode_tok_s": [100.0, 98.0, 99.0]}
    v = {"metrics": {"latency_rounds": {"original": rounds, "compressed": rounds}, "busy_rounds": [2],
                     "decode_speedup": 1.0, "decode_speedup_ci": [0.9, 1.1], "decode_speedup_rounds": [1, 1, 1],
                     "prefill_speedup": 1.0, "prefill_speedup_ci": [0.9, 1.1], "prefill_speedup_rounds": [1, 1, 1],
                     "speedup_rounds": 2},
         "budgets": [{"name": "min_speedup", "limit": 1.2}]}
    plots = render_plots({"verify": {"vllm": v}})
    assert list(plots) == ["latency-vllm.png"] and imread(__import__("io").BytesIO(plots["latency-vllm.png"])).size


def test_plots_are_reproducible_bytes():
    curve = {"slot": "prune", "method": "surgeon", "details": {"loss_curves": [
        {"title": "t", "x_label": "x", "y_label": "y", "x": [0, 1, 2], "series": {"loss": [3.0, 2.0, 1.5]}}]}}
    assert render_plots({"stages": [curve]}) == render_plots({"stages": [curve]})


def test_a_plot_that_cannot_be_drawn_is_a_warning_not_a_lost_build(tmp_path, monkeypatch):
    import compressor.report_plots as plots

    def broken(report):
        raise ValueError("no such axis")

    monkeypatch.setattr(plots, "render_plots", broken)
    report = {"verdict": "pass", "model": "m", "summary": {"parameters_original": 2, "parameters": 1, "layers": 1,
                                                           "uniform": True},
              "stages": [], "verify": {}, "warnings": []}
    write_reports(tmp_path, {"created": "now"}, report)
    assert "plots could not be drawn: ValueError: no such axis" in (tmp_path / "report.html").read_text()
    assert not (tmp_path / "plots").exists() and (tmp_path / "manifest.json").is_file()


def test_replay_does_not_compare_the_report_or_its_plots():
    files = {"vllm/model.safetensors": {"sha256": "a"}, "report.html": {"sha256": "b"},
             "plots/latency-vllm.png": {"sha256": "c"}}
    old = {"files": files, "input": {}, "determinism": {"files": True}}
    new = {"files": {**files, "report.html": {"sha256": "x"}, "plots/latency-vllm.png": {"sha256": "y"}},
           "input": {}}
    result = replay_compare(old, new, None, {})
    assert result["identical"] == ["vllm/model.safetensors"] and result["differ"] == []
