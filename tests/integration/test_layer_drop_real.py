"""Depth pruning on the real SmolLM2-135M (30 layers) with a small Shakespeare calibration subset."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from compressor.api import StageContext
from compressor.torch_runtime import perplexity
from compressor_methods.layer_drop import LayerDrop, LayerDropOptions, Streamline, StreamlineOptions

pytestmark = pytest.mark.slow


def small(windows: np.ndarray, n: int, length: int) -> np.ndarray:
    return np.ascontiguousarray(windows[:n, :length])


def ctx_for(windows: np.ndarray) -> StageContext:
    return StageContext(seed=0, calibration_loader=lambda: windows, log=lambda msg: None)


@pytest.fixture(scope="module")
def original_ppl(smollm2_original, eval_windows):
    return perplexity(smollm2_original.model, small(eval_windows, 3, 256))


def test_layer_drop_four_layers_gives_a_working_26_layer_model(smollm2, calib_windows, eval_windows, original_ppl,
                                                              tmp_path):
    from transformers import LlamaForCausalLM

    details = LayerDrop().apply(smollm2, LayerDropOptions(layers=4), ctx_for(small(calib_windows, 4, 256)))
    assert smollm2.num_layers == 26 and smollm2.config.num_hidden_layers == 26
    assert len(details["removed_layers"]) == 4 and details["layers_after"] == 26
    assert details["parameters_after"] < details["parameters_before"]
    evals = small(eval_windows, 3, 256)
    ppl = perplexity(smollm2.model, evals)
    assert math.isfinite(ppl) and ppl > original_ppl
    # the shorter model is a stock Llama: stock transformers reloads it and computes the same logits
    smollm2.save_hf(tmp_path)
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.from_numpy(evals[:1, :64])
    with torch.no_grad():
        assert torch.allclose(reloaded(ids, use_cache=False).logits, smollm2.logits(ids), atol=1e-3)


def test_streamline_on_real_model_beats_skipping_its_block(smollm2, calib_windows, eval_windows, original_ppl):
    options = StreamlineOptions(layers=4, epochs=2, val_fraction=0.25)
    details = Streamline().apply(smollm2, options, ctx_for(small(calib_windows, 8, 128)))
    train = details["training"]
    assert smollm2.num_layers == 26 and len(details["replaced_block"]) == 5
    assert train["val_mse_best"] < train["val_mse_skip_block"]
    ppl = perplexity(smollm2.model, small(eval_windows, 3, 256))
    assert math.isfinite(ppl) and ppl > original_ppl
