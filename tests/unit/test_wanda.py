"""Wanda: its score, its relation to magnitude, N:M, the α variant, and the method end to end."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from compressor.api import Kind, StageContext
from compressor.testing import random_windows, tiny_llama
from compressor_methods._masks import check_n_m
from compressor_methods.magnitude import magnitude_prune
from compressor_methods.wanda import Wanda, WandaOptions
from compressor_methods.wanda.sparsify import wanda_prune


def _ctx(n=6, length=32):
    ids = random_windows(n, length, 256).numpy()
    return StageContext(calibration_loader=lambda: ids, log=lambda s: None)


@pytest.mark.parametrize("n_m", [None, (2, 4), (4, 8)])
def test_equal_input_norms_reduce_to_magnitude(n_m):
    w = torch.randn(32, 64)
    norms = torch.full((64,), 3.7)
    assert torch.equal(wanda_prune(w, norms, 0.5, n_m), magnitude_prune(w, 0.5, n_m))


def test_input_norms_change_the_choice():
    w = torch.ones(4, 8)
    norms = torch.arange(1.0, 9.0)
    pruned = wanda_prune(w, norms, 0.5)
    assert (pruned[:, :4] == 0).all() and (pruned[:, 4:] == 1).all()


def test_unstructured_exact_per_row_and_reported():
    handle = tiny_llama()
    details = Wanda().apply(handle, WandaOptions(sparsity=0.6), _ctx())
    for i in range(handle.num_layers):
        for lin in handle.linears(i).values():
            assert ((lin.weight == 0).sum(1) == int(lin.in_features * 0.6)).all()
    assert details["achieved_sparsity"] == pytest.approx(int(64 * 0.6) / 64, abs=1e-3)
    assert details["calibration"]["samples"] == 6


@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_n_m_exact(pattern):
    handle = tiny_llama()
    Wanda().apply(handle, WandaOptions(pattern=pattern, true_sequential=True), _ctx())
    n, m = map(int, pattern.split(":"))
    for i in range(handle.num_layers):
        for lin in handle.linears(i).values():
            assert check_n_m(lin.weight, n, m)
            assert (lin.weight == 0).float().mean().item() == pytest.approx(n / m)


def test_variant_hits_overall_sparsity():
    handle = tiny_llama()
    details = Wanda().apply(handle, WandaOptions(sparsity=0.5, variant=True), _ctx())
    assert abs(details["achieved_sparsity"] - 0.5) < 2e-3


def test_nsamples_and_seqlen_cut_the_calibration_set():
    details = Wanda().apply(tiny_llama(layers=1), WandaOptions(nsamples=3, seqlen=16), _ctx())
    assert details["calibration"]["samples"] == 3 and details["calibration"]["seqlen"] == 16


def test_contract():
    options = WandaOptions(pattern="2:4")
    assert Wanda().needs_calibration(options)
    assert Wanda().kinds(options) == frozenset({Kind.SEMI_STRUCTURED})
    assert Wanda().kinds(WandaOptions()) == frozenset({Kind.UNSTRUCTURED})


@pytest.mark.parametrize("bad", [{"sparsity": 0}, {"sparsity": 1}, {"variant": True, "pattern": "2:4"},
                                 {"dtype": "float16"}, {"batch_size": 0}, {"nsamples": 0}])
def test_options_validation(bad):
    with pytest.raises(ValidationError):
        WandaOptions(**bad)
