"""Magnitude, Wanda and SparseGPT on the real SmolLM2-135M (small calibration set to stay fast)."""

from __future__ import annotations

import copy

import pytest

from compressor.api import StageContext
from compressor.model import ModelHandle
from compressor.torch_runtime import perplexity
from compressor_methods._masks import check_n_m
from compressor_methods.magnitude import Magnitude
from compressor_methods.sparsegpt import SparseGPT
from compressor_methods.wanda import Wanda

pytestmark = pytest.mark.slow


def _copy(original):
    return ModelHandle(copy.deepcopy(original.model), original.tokenizer, original.source)


def test_perplexity_ranks_sparsegpt_below_wanda_below_magnitude(smollm2_original, calib_windows, eval_windows):
    calib = calib_windows[:8, :256]
    evals = eval_windows[:4]
    ctx = StageContext(calibration_loader=lambda: calib, log=lambda s: None)
    dense = perplexity(smollm2_original.model, evals)
    ppl = {}
    for cls in (Magnitude, Wanda, SparseGPT):
        handle = _copy(smollm2_original)
        details = cls().apply(handle, cls.Options(sparsity=0.5), ctx)
        assert details["achieved_sparsity"] == pytest.approx(0.5, abs=0.005)
        assert details["modules"] == 7 * 30
        ppl[cls.name] = perplexity(handle.model, evals)
        del handle
    assert dense < ppl["sparsegpt"] < ppl["wanda"] < ppl["magnitude"], ppl


def test_wanda_2_4_on_real_model_is_exact_and_usable(smollm2, calib_windows, eval_windows):
    ctx = StageContext(calibration_loader=lambda: calib_windows[:4, :128], log=lambda s: None)
    Wanda().apply(smollm2, Wanda.Options(pattern="2:4"), ctx)
    for i in range(smollm2.num_layers):
        for lin in smollm2.linears(i).values():
            assert check_n_m(lin.weight, 2, 4)
    assert perplexity(smollm2.model, eval_windows[:2]) < 1000
