"""Quantize methods: RTN and GPTQ maths, the methods on a tiny Llama, options, group-size choice."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from compressor.api import Kind, StageContext
from compressor.calibration import InputHessian
from compressor.errors import UsageError
from compressor.testing import random_windows, tiny_llama
from compressor_methods.quantize import GPTQ, RTN, GPTQOptions, QuantizeOptions
from compressor_methods.quantize.gptq import gptq_quantize, output_error
from compressor_methods.quantize.methods import resolve_group_size
from compressor_methods.quantize.params import QUANT_ATTR, quantized_modules, simulated_activation_quantization
from compressor_methods.quantize.rtn import expand_scales, fake_quantize_per_token, rtn_quantize
from compressor_methods.quantize.schemes import qrange


def _correlated_inputs(tokens=2048, width=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(width, width, generator=g) / width**0.5
    scale = torch.rand(width, generator=g) * 3 + 0.1
    return (torch.randn(tokens, width, generator=g) @ mix) * scale


def _hessian(x):
    h = InputHessian(x.shape[1], torch.device("cpu"))
    h.update(x)
    return h.result()


def _quiet(ids=None):
    return StageContext(calibration_loader=(lambda: ids) if ids is not None else None, log=lambda s: None)


@pytest.mark.parametrize("bits,group,act_order", [(4, 128, False), (4, 128, True), (8, 128, False), (8, -1, False),
                                                  (4, -1, True)])
def test_gptq_reconstructs_outputs_better_than_rtn(bits, group, act_order):
    x = _correlated_inputs()
    w = torch.randn(96, 256, generator=torch.Generator().manual_seed(1))
    h = _hessian(x)
    rtn = rtn_quantize(w, bits, group)
    gptq = gptq_quantize(w, h, bits, group, blocksize=64, act_order=act_order)
    err_rtn = (x @ (w - rtn.dequantized).t()).norm()
    err_gptq = (x @ (w - gptq.dequantized).t()).norm()
    assert err_gptq < 0.8 * err_rtn
    # output_error is the same quantity, relative and squared
    assert output_error(w, gptq.dequantized, h) == pytest.approx(float(err_gptq**2 / (x @ w.t()).norm() ** 2),
                                                                 rel=1e-3)
    lo, hi = qrange(bits)
    assert gptq.q.min() >= lo and gptq.q.max() <= hi
    assert torch.equal(gptq.dequantized, gptq.q.float() * expand_scales(gptq.scale, 256))


@pytest.mark.parametrize("bits,group", [(4, 64), (8, 128), (8, -1)])
def test_rtn_values_in_range_and_scales_consistent(bits, group):
    w = torch.randn(48, 256, generator=torch.Generator().manual_seed(0)) * 0.05
    w[3, :] = 0.0  # an all-zero row (pruned) must not give NaN
    r = rtn_quantize(w, bits, group)
    lo, hi = qrange(bits)
    groups = 1 if group == -1 else 256 // group
    assert r.q.dtype == torch.int8 and r.scale.shape == (48, groups)
    assert int(r.q.min()) >= lo and int(r.q.max()) <= hi
    assert int(r.q.min()) == lo or int(r.q.max()) == hi  # the range is used to its edges
    assert torch.isfinite(r.scale).all() and (r.scale > 0).all()
    assert torch.equal(r.scale, r.scale.to(torch.bfloat16).float())  # stored exactly in a bf16 checkpoint
    full = expand_scales(r.scale, 256)
    assert torch.equal(r.dequantized, r.q.float() * full)
    # round to nearest: every weight is within half a step (scales round up, so max |w| never clips further)
    assert ((w - r.dequantized).abs() <= 0.5 * full + 1e-7).all()
    assert (r.q[3] == 0).all()


def test_gptq_dead_inputs_get_zero_weights_and_no_nan():
    x = _correlated_inputs(width=64)
    x[:, 5] = 0
    out = gptq_quantize(torch.randn(16, 64), _hessian(x), 4, 32)
    assert torch.isfinite(out.dequantized).all() and (out.dequantized[:, 5] == 0).all()


def test_fake_quantize_per_token_is_int8_per_row():
    x = torch.randn(3, 5, 64)
    y = fake_quantize_per_token(x)
    step = x.abs().amax(-1, keepdim=True) / 127
    assert torch.allclose(torch.round(y / step), y / step, atol=1e-3)
    assert ((x - y).abs() <= step / 2 + 1e-6).all()


@pytest.mark.parametrize("scheme,kind,bits", [("W4A16", Kind.W4A16, 4), ("W8A16", Kind.W8A16, 8),
                                              ("W8A8", Kind.W8A8, 8)])
def test_rtn_method_quantizes_decoder_linears_only(scheme, kind, bits):
    handle = tiny_llama()
    embed = handle.model.model.embed_tokens.weight.clone()
    head = handle.model.lm_head.weight.clone()
    options = QuantizeOptions(scheme=scheme)
    assert RTN().kinds(options) == frozenset({kind})
    details = RTN().apply(handle, options, _quiet())
    q = handle.quantization
    assert q["scheme"] == scheme and q["algorithm"] == "rtn" and q["symmetric"] is True
    assert q["ignore"] == ["lm_head"] and q["targets"] == ["Linear"]
    assert details["modules"] == q["quantized_modules"] == 7 * handle.num_layers
    assert torch.equal(handle.model.model.embed_tokens.weight, embed) and torch.equal(handle.model.lm_head.weight, head)
    mods = quantized_modules(handle.model)
    assert len(mods) == 7 * handle.num_layers and all(".layers." in n for n in mods)
    for lin in mods.values():
        p = getattr(lin, QUANT_ATTR)
        assert p.bits == bits and p.group_size == q["group_size"] or (p.group_size == -1 and q["group_size"] is None)
        steps = lin.weight / expand_scales(p.weight_scale, lin.in_features)
        assert torch.allclose(steps, steps.round(), atol=1e-4)  # weights sit on the integer grid
        assert QUANT_ATTR not in dict(lin.named_buffers()) and "weight_scale" not in lin.state_dict()
    if scheme == "W8A8":
        assert q["group_size"] is None and q["activations"]["bits"] == 8 and q["activations"]["dynamic"]
    else:
        assert q["group_size"] == 64 and q["activations"] is None  # 128 does not divide the tiny model's 64


def test_gptq_method_beats_rtn_on_the_model_outputs():
    ids = random_windows(8, 64, 256).numpy()
    original = tiny_llama()
    ref = original.logits(torch.as_tensor(ids))
    errors = {}
    for method, options in [(RTN(), QuantizeOptions(scheme="W4A16", group_size=32)),
                            (GPTQ(), GPTQOptions(scheme="W4A16", group_size=32))]:
        handle = tiny_llama()
        details = method.apply(handle, options, _quiet(ids))
        errors[method.name] = float((handle.logits(torch.as_tensor(ids)) - ref).pow(2).mean())
        if method.name == "gptq":
            assert details["calibration"]["samples"] == 8
            assert 0 < details["output_rel_error_mean"] <= details["output_rel_error_max"] < 0.1
            assert len(details["output_rel_error_per_module"]) == 7 * handle.num_layers
            assert handle.quantization["algorithm"] == "gptq" and handle.quantization["group_size"] == 32
    assert errors["gptq"] < errors["rtn"]


def test_simulated_activation_quantization_changes_w8a8_outputs_only_inside():
    handle = tiny_llama()
    RTN().apply(handle, QuantizeOptions(scheme="W8A8"), _quiet())
    ids = random_windows(1, 16, 256)
    before = handle.logits(ids)
    with simulated_activation_quantization(handle.model) as n:
        inside = handle.logits(ids)
    assert n == 7 * handle.num_layers
    assert not torch.equal(before, inside) and torch.allclose(before, inside, atol=0.1)
    assert torch.equal(before, handle.logits(ids))


@pytest.mark.parametrize("bad", [{"scheme": "W3A16"}, {"group_size": 100}, {"group_size": 0},
                                 {"scheme": "W8A8", "group_size": 128}, {"bits": 4}])
def test_option_validation(bad):
    with pytest.raises(ValidationError):
        QuantizeOptions(**bad)


@pytest.mark.parametrize("bad", [{"percdamp": 0}, {"blocksize": 4}, {"nsamples": 0}, {"dtype": "float16"}])
def test_gptq_option_validation(bad):
    with pytest.raises(ValidationError):
        GPTQOptions(**bad)


def test_group_size_choice():
    handle = tiny_llama(hidden=96, heads=4, kv_heads=2, ffn=192)  # in_features 96 and 192
    assert resolve_group_size(handle, QuantizeOptions()) == 32  # 128 and 64 do not divide 96
    assert resolve_group_size(handle, QuantizeOptions(group_size=-1)) == -1
    assert resolve_group_size(handle, QuantizeOptions(scheme="W8A8")) == -1
    assert resolve_group_size(handle, QuantizeOptions(group_size=96)) == 96
    with pytest.raises(UsageError, match="does not divide"):
        resolve_group_size(handle, QuantizeOptions(group_size=64))


def test_quantizing_twice_is_refused():
    handle = tiny_llama()
    RTN().apply(handle, QuantizeOptions(), _quiet())
    with pytest.raises(UsageError, match="already quantized"):
        RTN().apply(handle, QuantizeOptions(scheme="W8A8"), _quiet())


def test_methods_are_registered_through_the_entry_point():
    from compressor.plugin_manager import collect, load_entry_point_plugins, make_plugin_manager

    pm = make_plugin_manager()
    registry = collect(pm, load_entry_point_plugins(pm))
    assert registry.method("rtn") is RTN and registry.method("gptq") is GPTQ
    assert RTN.stage == GPTQ.stage == "quantize" and GPTQ().needs_calibration(GPTQOptions())
