"""compress inspect's report: per-layer scores, what each method would drop, inspect.json and inspect.png."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from compressor.errors import UsageError
from compressor.inspect_report import render_inspect_table, run_inspect
from compressor.testing import random_windows, tiny_llama

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and far faster than two when the CPU is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def identity_model(layers: int, identity: list[int]):
    model = tiny_llama(layers=layers)
    with torch.no_grad():
        for i in identity:
            model.linears(i)["o_proj"].weight.zero_()
            model.linears(i)["down_proj"].weight.zero_()
    return model


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("inspect") / "out"
    model = identity_model(7, [3, 4])
    windows = random_windows(4, 24, 256, seed=5).numpy()
    data = run_inspect(model, windows, 2, out)
    return model, data, out


def test_inspect_writes_json_with_expected_keys(report):
    model, data, out = report
    on_disk = json.loads((out / "inspect.json").read_text())
    assert on_disk == data
    assert {"model", "num_layers", "count", "all_tokens", "calibration", "layers", "angular_distance_n",
            "would_drop", "streamline", "notes"} <= set(on_disk)
    assert on_disk["num_layers"] == 7 and len(on_disk["layers"]) == 7
    assert set(on_disk["layers"][0]) == {"index", "block_influence", "cosine_in_out", "angular_distance_next"}
    assert len(on_disk["angular_distance_n"]) == 7 - 2 + 1
    assert on_disk["calibration"] == {"windows": 4, "tokens": 4 * 24}
    for row in on_disk["layers"]:
        assert row["block_influence"] == pytest.approx(1 - row["cosine_in_out"], abs=2e-6)


def test_inspect_marks_the_known_redundant_layers(report):
    model, data, _ = report
    drop = data["would_drop"]
    assert drop["block_influence"] == [3, 4]
    assert drop["block_influence_iterative"] == [3, 4]
    assert drop["angular"] == [3, 4]
    assert model.num_layers == 7  # inspecting never changes the model
    assert len(data["streamline"]["replaced_block"]) == 3


def test_inspect_writes_a_png_that_matplotlib_reads_back(report):
    import matplotlib.image

    _, _, out = report
    png = out / "inspect.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 300
    assert np.asarray(image).std() > 0.01  # something was drawn


def test_inspect_table_has_a_row_per_layer(report):
    from rich.console import Console

    _, data, _ = report
    table = render_inspect_table(data)
    assert table.row_count == 7
    console = Console(record=True, width=140)
    console.print(table)
    text = console.export_text()
    assert "BI-iter" in text and "angular" in text


def test_inspect_refuses_a_count_that_removes_everything(tmp_path):
    model = tiny_llama(layers=3)
    with pytest.raises(UsageError, match="out of range"):
        run_inspect(model, random_windows(2, 8, 256).numpy(), 3, tmp_path)


def test_compress_inspect_command_writes_both_files(tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from compressor.cli import app

    out = tmp_path / "inspect"
    result = CliRunner().invoke(app, ["inspect", str(tiny_model_dir), "--count", "1", "--calib-samples", "2",
                                      "--calib-seq-len", "16", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "inspect.json").read_text())
    assert data["num_layers"] == 4 and len(data["would_drop"]["block_influence"]) == 1
    assert (out / "inspect.png").read_bytes()[:8] == PNG_SIGNATURE
