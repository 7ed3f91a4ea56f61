"""LLM Surgeon on the real SmolLM2-135M: structured pruning to per-layer sizes, run in vLLM and llama.cpp; 2:4."""

from __future__ import annotations

import math

import pytest

from compressor.api import RuntimeSettings, StageContext
from compressor.metrics import perplexity_from_scores
from compressor.torch_runtime import TorchRuntime
from compressor_methods.surgeon import Surgeon, SurgeonOptions

pytestmark = [pytest.mark.slow]

PROMPT = "The capital of France is"
NEW_TOKENS = 10
MUST_MATCH = 6  # later greedy tokens may flip at near-ties between runtimes


@pytest.fixture(scope="module")
def surgeon_structured(smollm2_original, calib_windows):
    """SmolLM2 with 20% of its decoder linear parameters removed by two shots of structured surgery."""
    import copy

    from compressor.model import ModelHandle

    model = ModelHandle(copy.deepcopy(smollm2_original.model), smollm2_original.tokenizer, smollm2_original.source)
    before = model.decoder_linear_parameters()
    opts = SurgeonOptions(structure="structured", sparsity=0.2, shots=2, nsamples=8, seqlen=128)
    details = Surgeon().apply(model, opts, StageContext(calibration_loader=lambda: calib_windows, log=print))
    return model, details, before


def test_structured_surgery_shrinks_smollm2_to_per_layer_sizes(surgeon_structured, smollm2_original, eval_windows):
    model, details, before = surgeon_structured
    removed = 1 - model.decoder_linear_parameters() / before
    assert 0.2 - 1e-9 <= removed < 0.21
    assert not model.is_uniform()  # the global threshold gives layers different widths
    assert all(s.intermediate_size % 64 == 0 for s in model.layer_specs())
    assert [s["shot"] for s in details["shots"]] == [1, 2]
    windows = eval_windows[:2, :256]
    ppl = perplexity_from_scores(TorchRuntime(model.model).score(windows, top_k=1))
    ppl_ref = perplexity_from_scores(TorchRuntime(smollm2_original.model).score(windows, top_k=1))
    # measured 53.20 against 21.42 (2.48x; Wanda-width at the same size 2.02x); CPU and CUDA runs agree to 1e-4,
    # so 2.75x (+11%) leaves room for small changes and catches a worse surgery
    assert math.isfinite(ppl) and ppl_ref < ppl < 2.75 * ppl_ref, (ppl, ppl_ref)


def _torch_tokens(model, prompt):
    return TorchRuntime(model.model).generate([prompt], NEW_TOKENS)[0]


@pytest.mark.vllm
@pytest.mark.usefixtures("needs_vllm")
def test_structured_surgery_exports_and_generates_in_vllm(surgeon_structured, tmp_path):
    from compressor_exporters.vllm import VllmExporter, VllmOptions

    model, _, _ = surgeon_structured
    ex = VllmExporter()
    opts = VllmOptions(dtype="float32", start_timeout_s=400)
    ex.check_model(model, opts)
    details = ex.export(model, tmp_path, opts)
    assert details["ffn_widths"] == [s.intermediate_size for s in model.layer_specs()]
    prompt = list(model.tokenizer(PROMPT)["input_ids"])
    want = _torch_tokens(model, prompt)
    from compressor.runtime_process import open_isolated

    with open_isolated(ex, tmp_path, opts, RuntimeSettings(device="cpu", max_len=128)) as rt:
        got = rt.generate([prompt], NEW_TOKENS)[0]
    assert len(got) == NEW_TOKENS and got[:MUST_MATCH] == want[:MUST_MATCH], (got, want)


@pytest.mark.llamacpp
@pytest.mark.usefixtures("needs_llama_cpp")
def test_structured_surgery_exports_and_generates_in_llama_cpp(surgeon_structured, tmp_path):
    from compressor_exporters.gguf import GgufExporter, GgufOptions

    model, _, _ = surgeon_structured
    ex, opts = GgufExporter(), GgufOptions(outtype="F32")
    ex.check_model(model, opts)
    details = ex.export(model, tmp_path, opts)
    assert details["arch"] == "deci"
    prompt = list(model.tokenizer(PROMPT)["input_ids"])
    want = _torch_tokens(model, prompt)
    with ex.open_runtime(tmp_path, opts, RuntimeSettings(max_len=128, threads=2)) as rt:
        got = rt.generate([prompt], NEW_TOKENS)[0]
    assert got[:MUST_MATCH] == want[:MUST_MATCH], (got, want)


def test_two_four_surgery_on_smollm2_layers_beats_magnitude(smollm2, calib_windows, eval_windows):
    """2:4 on two real middle layers: exact masks, and the KFAC updates keep perplexity below magnitude's."""
    from compressor_methods._masks import check_n_m
    from compressor_methods.magnitude import Magnitude, MagnitudeOptions

    include = ["layers.10.*", "layers.11.*"]
    state = {k: v.clone() for k, v in smollm2.model.state_dict().items()}
    ctx = StageContext(calibration_loader=lambda: calib_windows, log=print)
    windows = eval_windows[:4, :256]

    def ppl() -> float:
        return perplexity_from_scores(TorchRuntime(smollm2.model).score(windows, top_k=1))

    opts = SurgeonOptions(pattern="2:4", include=include, shots=2, nsamples=8, seqlen=256)
    details = Surgeon().apply(smollm2, opts, ctx)
    assert details["achieved_sparsity"] == pytest.approx(0.5, abs=1e-6)
    for i in (10, 11):
        assert all(check_n_m(lin.weight.data, 2, 4) for lin in smollm2.linears(i).values())
    ours = ppl()
    smollm2.model.load_state_dict(state)
    Magnitude().apply(smollm2, MagnitudeOptions(pattern="2:4", include=include), ctx)
    theirs = ppl()
    assert ours < theirs
