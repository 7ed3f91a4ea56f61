"""SparseGPT: reconstruction quality against Wanda, exact N:M, dead inputs, the method end to end."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from compressor.api import StageContext
from compressor.calibration import InputHessian, InputSquaredNorm
from compressor.testing import random_windows, tiny_llama
from compressor_methods._masks import check_n_m
from compressor_methods.sparsegpt import SparseGPT, SparseGPTOptions
from compressor_methods.sparsegpt.sparsify import sparsegpt_prune
from compressor_methods.wanda.sparsify import wanda_prune


def _correlated_inputs(tokens=2048, width=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(width, width, generator=g) / width**0.5
    scale = torch.rand(width, generator=g) * 3 + 0.1
    return (torch.randn(tokens, width, generator=g) @ mix) * scale


@pytest.mark.parametrize("n_m", [None, (2, 4)])
def test_reconstruction_error_lower_than_wanda(n_m):
    x = _correlated_inputs()
    w = torch.randn(64, 96)
    h, norms = InputHessian(96, torch.device("cpu")), InputSquaredNorm(96, torch.device("cpu"))
    h.update(x)
    norms.update(x)
    ours = sparsegpt_prune(w, h.result(), 0.5, n_m, blocksize=32)
    theirs = wanda_prune(w, norms.result(), 0.5, n_m)
    err_ours = (x @ (w - ours).t()).norm()
    err_wanda = (x @ (w - theirs).t()).norm()
    assert err_ours < 0.9 * err_wanda
    assert (ours == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)
    if n_m:
        assert check_n_m(ours, *n_m)


def test_dead_inputs_get_zero_weights_and_no_nan():
    x = _correlated_inputs(width=32)
    x[:, 5] = 0
    h = InputHessian(32, torch.device("cpu"))
    h.update(x)
    out = sparsegpt_prune(torch.randn(8, 32), h.result(), 0.5)
    assert torch.isfinite(out).all() and (out[:, 5] == 0).all()


def test_method_n_m_exact_and_reports_sparsity():
    handle = tiny_llama()
    ids = random_windows(6, 32, 256).numpy()
    ctx = StageContext(calibration_loader=lambda: ids, log=lambda s: None)
    details = SparseGPT().apply(handle, SparseGPTOptions(pattern="2:4"), ctx)
    assert details["achieved_sparsity"] == pytest.approx(0.5)
    assert set(details["sparsity_per_module"].values()) == {0.5}
    for i in range(handle.num_layers):
        for lin in handle.linears(i).values():
            assert check_n_m(lin.weight, 2, 4)


def test_method_unstructured_reaches_target():
    handle = tiny_llama()
    ids = random_windows(6, 32, 256).numpy()
    ctx = StageContext(calibration_loader=lambda: ids, log=lambda s: None)
    details = SparseGPT().apply(handle, SparseGPTOptions(sparsity=0.7, true_sequential=True), ctx)
    assert details["achieved_sparsity"] == pytest.approx(0.7, abs=0.01)
    assert SparseGPT().needs_calibration(SparseGPTOptions())


@pytest.mark.parametrize("bad", [{"sparsity": 1.0}, {"sparsity": 0.0}, {"percdamp": 0}, {"blocksize": 2}])
def test_options_validation(bad):
    with pytest.raises(ValidationError):
        SparseGPTOptions(**bad)
