"""The magnitude method: exact per-row and N:M sparsity, targets, options validation."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from compressor.api import Kind, StageContext
from compressor.testing import tiny_llama
from compressor_methods._masks import check_n_m
from compressor_methods.magnitude import Magnitude, MagnitudeOptions

CTX = StageContext(log=lambda s: None)


def test_unstructured_prunes_exact_count_per_row_of_every_decoder_linear():
    handle = tiny_llama()
    embed = handle.model.model.embed_tokens.weight.clone()
    head = handle.model.lm_head.weight.clone()
    details = Magnitude().apply(handle, MagnitudeOptions(sparsity=0.3), CTX)
    for i in range(handle.num_layers):
        for name, lin in handle.linears(i).items():
            zeros = (lin.weight == 0).sum(1)
            assert (zeros == int(lin.in_features * 0.3)).all(), name
    assert torch.equal(handle.model.model.embed_tokens.weight, embed)
    assert torch.equal(handle.model.lm_head.weight, head)
    assert details["modules"] == 28 and len(details["sparsity_per_module"]) == 28


def test_pruned_weights_are_the_smallest_of_their_row():
    handle = tiny_llama(layers=1)
    original = handle.linears(0)["up_proj"].weight.clone()
    Magnitude().apply(handle, MagnitudeOptions(sparsity=0.5), CTX)
    pruned = handle.linears(0)["up_proj"].weight == 0
    kept_min = original.abs().masked_fill(pruned, float("inf")).min(1).values
    pruned_max = original.abs().masked_fill(~pruned, float("-inf")).max(1).values
    assert (pruned_max <= kept_min).all()


@pytest.mark.parametrize("pattern,n,m", [("2:4", 2, 4), ("4:8", 4, 8)])
def test_n_m_structure_is_exact(pattern, n, m):
    handle = tiny_llama()
    options = MagnitudeOptions(pattern=pattern)
    assert Magnitude().kinds(options) == frozenset({Kind.SEMI_STRUCTURED})
    details = Magnitude().apply(handle, options, CTX)
    assert details["achieved_sparsity"] == pytest.approx(n / m)
    for i in range(handle.num_layers):
        for lin in handle.linears(i).values():
            assert check_n_m(lin.weight, n, m)


def test_include_exclude_select_modules():
    handle = tiny_llama()
    options = MagnitudeOptions(sparsity=0.5, include=["layers.1.*", "layers.2.*"], exclude=["*.down_proj"])
    details = Magnitude().apply(handle, options, CTX)
    assert sorted(details["sparsity_per_module"]) == sorted(
        f"layers.{i}.{p}" for i in (1, 2) for p in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                    "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj"))
    assert (handle.linears(0)["q_proj"].weight != 0).all()
    assert (handle.linears(1)["down_proj"].weight != 0).all()


@pytest.mark.parametrize("bad", [{"sparsity": 0.0}, {"sparsity": 1.0}, {"sparsity": -0.2}, {"sparsity": 1.5},
                                 {"pattern": "4:2"}, {"pattern": "2:4", "sparsity": 0.3},
                                 {"structure": "n:m"}, {"structure": "unstructured", "pattern": "2:4"},
                                 {"structure": "width", "sparsity": 0.5}, {"structure": "width", "width_fraction": 1.0},
                                 {"unknown": 1}])
def test_options_validation_rejects(bad):
    with pytest.raises(ValidationError):
        MagnitudeOptions(**bad)


def test_out_of_range_sparsity_message_names_the_field():
    with pytest.raises(ValidationError) as err:
        MagnitudeOptions(sparsity=1.2)
    assert "sparsity" in str(err.value) and "less than 1" in str(err.value)


def test_defaults_and_kinds():
    options = MagnitudeOptions()
    assert options.structure == "unstructured" and options.target_sparsity == 0.5
    assert Magnitude().kinds(options) == frozenset({Kind.UNSTRUCTURED})
    assert Magnitude().kinds(MagnitudeOptions(structure="width")) == frozenset({Kind.WIDTH})
    assert not Magnitude().needs_calibration(options)
