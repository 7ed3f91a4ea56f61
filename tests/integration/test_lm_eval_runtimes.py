"""The lm_eval evaluator gives lm-eval's own transformers answers in vLLM, ONNX Runtime and llama.cpp.

The model is SmolLM2 with layers 20-23 dropped (the session's ONNX export of it is shared with the
ONNX tests); the vLLM and GGUF (F32) exports are of the same model. Each runtime is opened in a worker
process exactly as verify opens it, and the evaluator runs the shipped shakespeare_mc task there.
lm-eval's HFLM backend runs the same task on the model in PyTorch.
"""

from __future__ import annotations

import copy

import lm_eval
import pytest
from lm_eval.models.huggingface import HFLM

from compressor.api import EvaluationContext, RuntimeSettings
from compressor.runtime_process import open_isolated

pytestmark = pytest.mark.slow
ITEMS = 40
OPTIONS = {"tasks": ["shakespeare_mc"], "limit": ITEMS, "max_length": 128, "batch_size": 256}
# fp32 in every runtime: log-likelihoods agree to ~1e-5, so a choice can only flip on a near-tie; one item in 40
ACC_TOLERANCE = 1 / ITEMS
NEEDS = {"vllm": "needs_vllm", "gguf": "needs_llama_cpp"}  # onnxruntime is a plain dependency


@pytest.fixture(scope="module")
def pruned(smollm2_original, smollm2_onnx_pruned):
    """The pruned SmolLM2 (the same layers as the session's ONNX export)."""
    from compressor.model import ModelHandle

    _, _, dropped = smollm2_onnx_pruned
    model = ModelHandle(copy.deepcopy(smollm2_original.model), smollm2_original.tokenizer, smollm2_original.source)
    model.drop_layers(dropped)
    return model


@pytest.fixture(scope="module")
def reference(pruned):
    """lm-eval's own transformers backend on the pruned model: {metric: TaskScore}."""
    from compressor_evaluators.lm_harness.evaluator import task_scores
    from compressor_evaluators.lm_harness.tasks import SHIPPED, load_task_file

    hf = HFLM(pretrained=pruned.model, tokenizer=pruned.tokenizer, device="cpu", batch_size=16, max_length=128)
    results = lm_eval.simple_evaluate(model=hf, tasks=[load_task_file(SHIPPED["shakespeare_mc"])], limit=ITEMS,
                                      log_samples=True, bootstrap_iters=100,
                                      task_manager=lm_eval.tasks.TaskManager(include_defaults=False))
    return task_scores(results)["shakespeare_mc"]


def _artifact(fmt, pruned, smollm2_onnx_pruned, tmp_path):
    from compressor.plugin_manager import load_registry

    cls = load_registry().exporter(fmt)
    options = cls.Options.model_validate({"onnx": {}, "gguf": {"outtype": "F32"}, "vllm": {"dtype": "float32"}}[fmt])
    if fmt == "onnx":
        return cls(), options, smollm2_onnx_pruned[0]
    cls().export(pruned, tmp_path, options)
    return cls(), options, tmp_path


@pytest.mark.parametrize("fmt", ["vllm", "onnx", "gguf"])
def test_task_accuracy_in_the_runtime_matches_lm_evals_transformers_backend(
        fmt, pruned, reference, smollm2_onnx_pruned, tmp_path, request):
    from compressor_evaluators.lm_harness.evaluator import LmEvalEvaluator, LmEvalOptions

    if fmt in NEEDS:
        request.getfixturevalue(NEEDS[fmt])  # the runtime must be installed (a failure in CI, never a skip)
    exporter, options, artifact = _artifact(fmt, pruned, smollm2_onnx_pruned, tmp_path)
    evaluator, ev_options = LmEvalEvaluator(), LmEvalOptions.model_validate(OPTIONS)
    settings = RuntimeSettings(device="cpu", max_len=evaluator.max_len(ev_options) + 16)
    runtime = open_isolated(exporter, artifact, options, settings, label=f"the pruned model in {fmt}")
    try:
        ctx = EvaluationContext(tokenizer=pruned.tokenizer, max_len=settings.max_len, log=lambda _: None)
        got = evaluator.evaluate(runtime, ev_options, ctx)["shakespeare_mc"]
    finally:
        runtime.close()
    for metric in ("acc", "acc_norm"):
        want = reference[metric]
        assert len(got[metric].samples) == ITEMS
        assert abs(got[metric].value - want.value) <= ACC_TOLERANCE, (fmt, metric, got[metric].value, want.value)
        flipped = sum(a != b for a, b in zip(got[metric].samples, want.samples))
        assert flipped <= 1, (fmt, metric, flipped)
        assert 0 < sum(want.samples) < ITEMS  # items answered right and wrong: agreement is not trivially all-or-none
