"""Healing on the real SmolLM2-135M: a few distill steps after dropping 4 layers lower Hamlet perplexity.

A small budget (the README's full runs are in bench/heal_quality.py): 4 layers dropped by Block
Influence, then 12 steps of 2 windows x 128 tokens of heal data (calibration plays, not the calibration
windows), the teacher being the unpruned model. Perplexity is measured on 8 x 256 Hamlet tokens, which
the heal stage never sees.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from compressor.api import StageContext
from compressor.data import load_windows
from compressor.model import ModelHandle
from compressor.torch_runtime import perplexity
from compressor_methods.distill import Distill, DistillOptions
from compressor_methods.distill.trainable import frozen_digest
from compressor_methods.layer_drop import LayerDrop, LayerDropOptions

pytestmark = pytest.mark.slow


def test_a_few_heal_steps_lower_held_out_perplexity_of_a_layer_dropped_smollm2(smollm2, smollm2_original,
                                                                              calib_windows, eval_windows):
    evals = np.ascontiguousarray(eval_windows[:8, :256])
    calib = np.ascontiguousarray(calib_windows[:16, :256])
    LayerDrop().apply(smollm2, LayerDropOptions(layers=4), StageContext(calibration_loader=lambda: calib,
                                                                         log=lambda _: None))
    pruned = perplexity(smollm2.model, evals)
    heal = load_windows("shakespeare", "heal", smollm2.tokenizer, 40, 128, seed=0)
    teacher = ModelHandle(copy.deepcopy(smollm2_original.model), smollm2_original.tokenizer, smollm2_original.source)
    digest = frozen_digest(teacher.model)
    ctx = StageContext(seed=0, log=print, heal_loader=lambda: heal, teacher_loader=lambda: teacher)
    opts = DistillOptions(steps=12, lr=3e-4, batch_size=2, holdout=4, eval_every=4, patience=3)
    details = Distill().apply(smollm2, opts, ctx)
    healed = perplexity(smollm2.model, evals)
    dense = perplexity(smollm2_original.model, evals)
    print(f"Hamlet perplexity: dense {dense:.2f}, 4 layers dropped {pruned:.2f}, healed {healed:.2f}")
    assert frozen_digest(teacher.model) == digest
    assert details["held_out_after"]["kl"] < details["held_out_before"]["kl"]
    # a few steps must win back a clear part of the gap to the dense model, not just noise
    assert healed < pruned - 0.15 * (pruned - dense), (dense, pruned, healed)
