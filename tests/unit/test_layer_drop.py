"""layer_drop and streamline on tiny Llamas whose redundant layers are known by construction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from compressor.api import Kind, StageContext
from compressor.errors import ExportError, UsageError
from compressor.layer_similarity import capture_block_io, layer_parameters, measure_similarity
from compressor.testing import random_windows, tiny_llama
from compressor_methods.layer_drop import LayerDrop, LayerDropOptions, Streamline, StreamlineOptions


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and far faster than two when the CPU is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_identity(handle, indices):
    """Zero o_proj and down_proj: the layer adds nothing to the residual stream, i.e. acts as the identity."""
    with torch.no_grad():
        for i in indices:
            lin = handle.linears(i)
            lin["o_proj"].weight.zero_()
            lin["down_proj"].weight.zero_()


def ctx_for(windows, seed: int = 0) -> StageContext:
    return StageContext(seed=seed, calibration_loader=lambda: windows, log=lambda msg: None)


@pytest.fixture
def windows() -> np.ndarray:
    return random_windows(6, 24, 256, seed=1).numpy()


def apply_drop(handle, windows, **opts):
    return LayerDrop().apply(handle, LayerDropOptions(**opts), ctx_for(windows))


def test_block_influence_is_zero_exactly_for_identity_layers(windows):
    model = tiny_llama(layers=6)
    make_identity(model, [1, 4])
    bi = measure_similarity(model, windows).block_influence()
    assert bi[1] == pytest.approx(0.0, abs=1e-6) and bi[4] == pytest.approx(0.0, abs=1e-6)
    assert np.delete(bi, [1, 4]).min() > 1e-3


@pytest.mark.parametrize("iterative", [False, True])
def test_block_influence_drops_exactly_the_identity_layers(windows, iterative):
    model = tiny_llama(layers=6)
    make_identity(model, [1, 4])
    details = apply_drop(model, windows, layers=2, iterative=iterative)
    assert details["removed_layers"] == [1, 4]
    assert details["kept_layers"] == [0, 2, 3, 5]
    assert model.num_layers == 4 and model.config.num_hidden_layers == 4
    if iterative:
        assert len(details["scores"]["block_influence_rounds"]) == 2
        assert sorted(details["scores"]["removal_order"]) == [1, 4]


@pytest.mark.parametrize("all_tokens", [False, True])
def test_angular_drops_exactly_the_identity_block(windows, all_tokens):
    model = tiny_llama(layers=6)
    make_identity(model, [2, 3])
    sim = measure_similarity(model, windows)
    d = sim.angular_distance(2, all_tokens)
    assert d[2] == pytest.approx(0.0, abs=2e-3)  # arccos near 1 amplifies float rounding: ~1e-3 at cos 1-1e-7
    assert np.delete(d, 2).min() > 0.01
    details = apply_drop(model, windows, layers=2, criterion="angular", all_tokens=all_tokens)
    assert details["removed_layers"] == [2, 3]


def test_dropping_identity_layers_leaves_logits_unchanged(windows):
    model = tiny_llama(layers=5)
    make_identity(model, [0, 3])
    ids = torch.from_numpy(windows[:2])
    before = model.logits(ids)
    apply_drop(model, windows, layers=2)
    assert torch.allclose(model.logits(ids), before, atol=1e-5)


def test_renumbering_and_config_survive_save_and_stock_reload(tmp_path, windows):
    from transformers import LlamaForCausalLM

    model = tiny_llama(layers=6)
    details = apply_drop(model, windows, layers=3)
    assert [layer.self_attn.layer_idx for layer in model.layers] == [0, 1, 2]
    assert details["layers_after"] == 3 and details["parameters_after"] < details["parameters_before"]
    ids = torch.from_numpy(windows[:2])
    expected = model.logits(ids)
    model.save_hf(tmp_path)
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.num_hidden_layers == 3 and len(reloaded.model.layers) == 3
    with torch.no_grad():
        got = reloaded(ids, use_cache=False).logits
    assert torch.allclose(got, expected, atol=1e-5)
    # a cached greedy generation runs through the renumbered layers' KV cache
    gen = reloaded.generate(ids[:1, :8], max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert gen.shape == (1, 12)


def test_fraction_rounds_to_nearest_layer(windows):
    model = tiny_llama(layers=6)
    details = apply_drop(model, windows, fraction=0.4)  # 2.4 layers -> 2
    assert len(details["removed_layers"]) == 2 and model.num_layers == 4


def test_target_params_removes_the_fewest_layers_that_reach_it(windows):
    model = tiny_llama(layers=6)
    per_layer = layer_parameters(model, 0)
    total = model.num_parameters()
    target = total - 2 * per_layer - 1  # two layers are one parameter short: three must go
    details = apply_drop(model, windows, target_params=target)
    assert len(details["removed_layers"]) == 3
    assert model.num_parameters() <= target < model.num_parameters() + per_layer


def test_target_params_iterative_and_angular_agree_on_count(windows):
    for opts in ({"iterative": True}, {"criterion": "angular"}):
        model = tiny_llama(layers=6)
        target = model.num_parameters() - layer_parameters(model, 0)
        details = apply_drop(model, windows, target_params=target, **opts)
        assert len(details["removed_layers"]) == 1


@pytest.mark.parametrize("opts, message", [
    ({}, "exactly one"),
    ({"layers": 2, "fraction": 0.5}, "exactly one"),
    ({"layers": 2, "criterion": "angular", "iterative": True}, "iterative"),
    ({"layers": 2, "all_tokens": True}, "all_tokens"),
    ({"layers": 0}, "greater than or equal"),
    ({"fraction": 1.0}, "less than"),
    ({"layers": 2, "bogus": 1}, "Extra inputs"),
])
def test_invalid_options_are_rejected(opts, message):
    with pytest.raises(ValidationError, match=message):
        LayerDropOptions(**opts)


def test_cannot_remove_every_layer(windows):
    model = tiny_llama(layers=4)
    with pytest.raises(UsageError, match="at most 3"):
        apply_drop(model, windows, layers=4)
    with pytest.raises(UsageError, match="removes no layer"):
        apply_drop(model, windows, fraction=0.1)
    with pytest.raises(UsageError, match="not below"):
        apply_drop(model, windows, target_params=model.num_parameters())
    with pytest.raises(UsageError, match="cannot be reached"):
        apply_drop(model, windows, target_params=1000)
    assert model.num_layers == 4  # refused before touching the model


def test_plugin_registers_both_methods_with_depth_kind():
    from compressor.plugin_manager import load_registry

    registry = load_registry()
    assert registry.methods["layer_drop"] is LayerDrop and registry.methods["streamline"] is Streamline
    assert LayerDrop().kinds(LayerDropOptions(layers=1)) == {Kind.DEPTH}
    assert LayerDrop().needs_calibration(LayerDropOptions(layers=1))
    assert Streamline().kinds(StreamlineOptions(layers=1)) == {Kind.DEPTH}
    assert Streamline().kinds(StreamlineOptions(layers=1, replacement="ffn")) == {Kind.DEPTH, Kind.NONUNIFORM}


def test_capture_block_io_matches_hf_hidden_states(windows):
    model = tiny_llama(layers=5)
    io = capture_block_io(model, windows, 1, 4, batch_size=4)
    with torch.no_grad():
        hs = model.model(torch.from_numpy(windows), output_hidden_states=True, use_cache=False).hidden_states
    assert torch.allclose(io.inputs, hs[1]) and torch.allclose(io.outputs, hs[4])


def test_last_boundary_is_the_raw_residual_stream_not_the_normed_one(windows):
    model = tiny_llama(layers=3)
    with torch.no_grad():
        model.model.model.norm.weight.copy_(torch.linspace(0.1, 3.0, model.hidden_size))
    raw = {}
    handle = model.model.model.norm.register_forward_pre_hook(lambda m, args: raw.setdefault("x", args[0]))
    with torch.no_grad():
        hs = model.model(torch.from_numpy(windows), output_hidden_states=True, use_cache=False).hidden_states
    handle.remove()
    cos = torch.nn.functional.cosine_similarity
    want = 1 - cos(hs[2].double(), raw["x"].double(), dim=-1).mean().item()
    hf_normed = 1 - cos(hs[2].double(), hs[3].double(), dim=-1).mean().item()
    got = measure_similarity(model, windows).block_influence()[2]
    assert got == pytest.approx(want, abs=1e-5)
    assert abs(got - hf_normed) > 1e-3


def streamline_setup(layers=6, n_windows=16):
    model = tiny_llama(layers=layers, seed=3)
    windows = random_windows(n_windows, 32, 256, seed=2).numpy()
    return model, windows


def test_streamline_replacement_beats_skipping_the_block():
    model, windows = streamline_setup()
    before = model.num_parameters()
    details = Streamline().apply(model, StreamlineOptions(layers=2, epochs=6, lr=1e-3), ctx_for(windows))
    train = details["training"]
    assert len(train["history"]) == 6
    assert train["val_mse_best"] < train["val_mse_skip_block"]
    assert train["val_mse_best"] <= train["val_mse_init"]
    assert train["history"][-1]["train_mse"] < train["history"][0]["train_mse"]
    block = details["replaced_block"]
    assert len(block) == 3 and details["removed_layers"] == block[1:]
    assert model.num_layers == 4 and model.config.num_hidden_layers == 4
    assert details["parameters_after"] == before - 2 * layer_parameters(model, 0)
    assert set(details["calibration"]["val_windows"]).isdisjoint(details["calibration"]["train_windows"])


def test_streamline_picks_the_most_similar_block_and_is_deterministic():
    model, windows = streamline_setup(n_windows=6)
    make_identity(model, [3, 4, 5])
    twin, _ = streamline_setup(n_windows=6)
    make_identity(twin, [3, 4, 5])
    opts = StreamlineOptions(layers=2, epochs=2)
    a = Streamline().apply(model, opts, ctx_for(windows, seed=7))
    b = Streamline().apply(twin, opts, ctx_for(windows, seed=7))
    assert a["replaced_block"] == [3, 4, 5]
    assert a["training"]["history"] == b["training"]["history"]
    for p, q in zip(model.model.parameters(), twin.model.parameters()):
        assert torch.equal(p, q)


def test_streamline_zero_epochs_equals_dropping_the_later_block_layers():
    model, windows = streamline_setup()
    ref, _ = streamline_setup()
    details = Streamline().apply(model, StreamlineOptions(layers=2, epochs=0), ctx_for(windows))
    ref.drop_layers(details["removed_layers"])
    ids = torch.from_numpy(windows[:2])
    assert torch.allclose(model.logits(ids), ref.logits(ids), atol=1e-6)


def test_streamline_ffn_replacement_has_no_attention_and_refuses_stock_export(tmp_path):
    model, windows = streamline_setup()
    details = Streamline().apply(model, StreamlineOptions(layers=2, epochs=1, replacement="ffn"), ctx_for(windows))
    j = details["replacement_index"]
    spec = model.layer_spec(j)
    assert spec.num_heads == 0 and spec.num_kv_heads == 0 and spec.intermediate_size == 128
    assert not model.is_uniform()
    assert torch.isfinite(model.logits(torch.from_numpy(windows[:1]))).all()
    with pytest.raises(ExportError):
        model.save_hf(tmp_path)


def test_streamline_target_params_counts_the_replacement():
    model, windows = streamline_setup()
    per_layer = layer_parameters(model, 0)
    target = model.num_parameters() - 2 * per_layer  # net removal of exactly two layers
    details = Streamline().apply(model, StreamlineOptions(target_params=target, epochs=0), ctx_for(windows))
    assert len(details["replaced_block"]) == 3 and model.num_parameters() == target


def test_streamline_refuses_too_many_layers_and_single_window():
    model, windows = streamline_setup(layers=4)
    with pytest.raises(UsageError, match="at most 3"):
        Streamline().apply(model, StreamlineOptions(layers=4), ctx_for(windows))
    from compressor.errors import DataError

    with pytest.raises(DataError, match="at least 2"):
        Streamline().apply(model, StreamlineOptions(layers=1), ctx_for(windows[:1]))


@pytest.mark.parametrize("method, options", [("layer_drop", ["-O", "layers=1"]),
                                             ("streamline", ["-O", "layers=1", "-O", "epochs=1"])])
def test_compress_build_runs_depth_methods_end_to_end(tiny_model_dir, tmp_path, method, options):
    import json

    from typer.testing import CliRunner

    from compressor.cli import app

    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["build", "--model", str(tiny_model_dir), "--out", str(out), "--no-verify",
                                      "--calib-samples", "4", "--calib-seq-len", "16", "--method", method, *options,
                                      "--export", "transformers"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    text = json.dumps(report)
    assert "removed_layers" in text
    config = json.loads(next(out.rglob("config.json")).read_text())
    assert config["num_hidden_layers"] == 3
