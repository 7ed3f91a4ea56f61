"""The vLLM exporter on the real SmolLM2: export, load in a runtime worker process, compare with PyTorch.

Both exports are float32 so that vLLM can be compared with PyTorch float32 token for token.
Two engines are started once for the module (about 25-40 s each on 2 cores).
"""

from __future__ import annotations

import copy
import json
import math
import os
import time

import numpy as np
import pytest

from compressor.api import RuntimeSettings, latency_prompt
from compressor.metrics import perplexity_from_scores, top1_agreement
from compressor.model import ModelHandle
from compressor.runtime_process import open_isolated
from compressor.torch_runtime import TorchRuntime
from compressor_exporters.vllm import VllmExporter, VllmOptions
from runtimes import require_runtime

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

DROPPED = [20, 21, 22, 23]
PROMPTS = ["The capital of France is", "To be, or not to be, that is"]
NEW_TOKENS = 16
MUST_MATCH = 8  # greedy tokens that must agree exactly; later ones may flip at near-ties
EVAL_WINDOWS = 4


@pytest.fixture(scope="module")
def vllm_importable() -> None:
    """Require `import vllm` to work (checked in a subprocess, keeping vLLM out of pytest)."""
    require_runtime("vllm")


@pytest.fixture(scope="module")
def models(smollm2_original):
    """The original model and a copy with layers 20-23 dropped (the handle does the renumbering)."""
    pruned = ModelHandle(copy.deepcopy(smollm2_original.model), smollm2_original.tokenizer, smollm2_original.source)
    pruned.drop_layers(DROPPED)
    return {"full": smollm2_original, "pruned": pruned}


@pytest.fixture(scope="module")
def artifacts(models, tmp_path_factory):
    """Both models exported for vLLM in float32."""
    root = tmp_path_factory.mktemp("vllm-exports")
    out = {}
    for key, model in models.items():
        dest = root / key
        dest.mkdir()
        VllmExporter().export(model, dest, VllmOptions(dtype="float32"))
        out[key] = dest
    return out


def _open(artifact):
    return open_isolated(VllmExporter(), artifact, VllmOptions(dtype="float32", start_timeout_s=300),
                         RuntimeSettings(device="cpu", max_len=640))


@pytest.fixture(scope="module")
def engine_full(vllm_importable, artifacts):
    with _open(artifacts["full"]) as rt:
        yield rt


@pytest.fixture(scope="module")
def engine_pruned(vllm_importable, artifacts):
    with _open(artifacts["pruned"]) as rt:
        yield rt


@pytest.fixture(scope="module")
def prompt_ids(models):
    return [list(models["full"].tokenizer(p)["input_ids"]) for p in PROMPTS]


def test_pruned_export_config(artifacts):
    import json

    config = json.loads((artifacts["pruned"] / "config.json").read_text())
    assert config["num_hidden_layers"] == 26
    assert (artifacts["pruned"] / "tokenizer.json").is_file()


def _assert_same_greedy(vllm_out, torch_out):
    for v, t in zip(vllm_out, torch_out, strict=True):
        assert len(v) == NEW_TOKENS
        assert v[:MUST_MATCH] == t[:MUST_MATCH], f"vLLM {v} vs PyTorch {t}"


def test_unpruned_greedy_matches_pytorch_float32(engine_full, models, prompt_ids):
    want = TorchRuntime(models["full"].model).generate(prompt_ids, NEW_TOKENS)
    _assert_same_greedy(engine_full.generate(prompt_ids, NEW_TOKENS), want)


def test_pruned_greedy_matches_pytorch_float32(engine_pruned, models, prompt_ids):
    want = TorchRuntime(models["pruned"].model).generate(prompt_ids, NEW_TOKENS)
    _assert_same_greedy(engine_pruned.generate(prompt_ids, NEW_TOKENS), want)


def test_scores_match_pytorch_and_pruning_raises_perplexity(engine_full, engine_pruned, models, eval_windows):
    windows = eval_windows[:EVAL_WINDOWS]
    full = engine_full.score(windows, top_k=20)
    pruned = engine_pruned.score(windows, top_k=20)
    n, length = windows.shape
    assert full.target_logprobs.shape == (n, length - 1) and full.topk_ids.shape == (n, length - 1, 20)
    assert (np.diff(full.topk_logprobs, axis=-1) <= 0).all(), "top-k must be sorted in descending order"
    # the actual token's logprob is consistent with the top-k: never above the best one
    assert (full.target_logprobs <= full.topk_logprobs[..., 0] + 1e-4).all()
    ppl_full, ppl_pruned = perplexity_from_scores(full), perplexity_from_scores(pruned)
    assert math.isfinite(ppl_full) and math.isfinite(ppl_pruned)
    # the pruned export scores like the pruned PyTorch model (measured: equal to 1e-5, perplexity 4.73x the full)
    ppl_torch_pruned = perplexity_from_scores(TorchRuntime(models["pruned"].model).score(windows, top_k=20))
    assert ppl_pruned > ppl_full and abs(ppl_pruned / ppl_torch_pruned - 1) < 0.01, (ppl_pruned, ppl_torch_pruned)
    torch_scores = TorchRuntime(models["full"].model).score(windows, top_k=20)
    ppl_torch = perplexity_from_scores(torch_scores)
    assert abs(ppl_full / ppl_torch - 1) < 0.01, (ppl_full, ppl_torch)
    assert top1_agreement(torch_scores, full) > 0.98


def test_latency_and_describe(engine_pruned):
    lat = engine_pruned.latency(prompt_tokens=64, new_tokens=16, repeats=2, warmup=1)
    assert len(lat.prefill_s) == 2 and len(lat.decode_tok_s) == 2
    assert all(0 < s < 60 for s in lat.prefill_s) and all(0 < r < 1e5 for r in lat.decode_tok_s)
    info = engine_pruned.describe()
    assert info["runtime"] == "vllm" and info["device"] == "cpu" and info["vllm"]
    assert info["dtype"] == "float32" and info["prefix_caching"] is False


CROSS_PROMPT, CROSS_NEW, CROSS_ROUNDS, CROSS_TOLERANCE = 64, 17, 4, 0.15


@pytest.mark.serial  # compares two timings: alone on the machine
def test_latency_agrees_with_benchmark_latency_timing(engine_full, artifacts):
    """latency() (vLLM's per-request metrics) against vLLM's benchmark_latency logic on the same engine.

    benchmark_latency times whole ``llm.generate`` calls with a wall clock. Here it is a greedy generate
    of 1 token (the prefill) and of CROSS_NEW tokens (prefill + decode), sent to the same worker, timed
    in A B B A rounds with latency(). Compared: prefill, end-to-end time, and decode tokens/s as the
    benchmark's difference of the two runs; each as the median of per-round ratios, within 15%.
    """
    ids = latency_prompt(CROSS_PROMPT, json.loads((artifacts["full"] / "config.json").read_text())["vocab_size"])

    def metrics_side():
        s = engine_full.latency(CROSS_PROMPT, CROSS_NEW, repeats=1, warmup=0)
        prefill, rate = s.prefill_s[0], s.decode_tok_s[0]
        return prefill, prefill + (CROSS_NEW - 1) / rate, rate

    def benchmark_side():
        t0 = time.perf_counter()
        engine_full.generate([ids], 1)
        t1 = time.perf_counter()
        engine_full.generate([ids], CROSS_NEW)
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1, (CROSS_NEW - 1) / max(t2 - t1 - (t1 - t0), 1e-9)

    metrics_side(), benchmark_side()  # warm-up
    ratios = {"prefill_s": [], "e2e_s": [], "decode_tok_s": []}
    samples = []
    for _ in range(CROSS_ROUNDS):
        a1, b1, b2, a2 = metrics_side(), benchmark_side(), benchmark_side(), metrics_side()
        samples.append((a1, b1, b2, a2))
        for k, key in enumerate(ratios):
            ratios[key].append((a1[k] + a2[k]) / (b1[k] + b2[k]))
    medians = {k: float(np.median(v)) for k, v in ratios.items()}
    print(f"\nvLLM metrics / benchmark_latency: {medians}; samples {samples}")
    for key in ("prefill_s", "e2e_s", "decode_tok_s"):
        assert abs(medians[key] - 1) <= CROSS_TOLERANCE, (key, medians, samples)


def test_suspended_engine_resumes_and_answers(engine_pruned):
    """Verify stops (SIGSTOP) the engine it is not timing; vLLM must answer normally after SIGCONT."""
    before = engine_pruned.generate([[1, 2, 3, 4]], 4)
    engine_pruned.suspend()
    # SIGSTOP is delivered asynchronously: a worker busy on a CPU shows "R" for a moment before "T"
    deadline, state = time.monotonic() + 5, ""
    while time.monotonic() < deadline:
        state = open(f"/proc/{engine_pruned.pid}/stat").read().rsplit(")", 1)[1].split()[0]
        if state == "T":
            break
        time.sleep(0.05)
    assert state == "T", f"the worker is not stopped 5 s after SIGSTOP (state {state})"
    assert engine_pruned.generate([[1, 2, 3, 4]], 4) == before  # the request resumes it first


def test_request_timeout_stops_the_worker_and_its_engine(engine_pruned):
    """Runs last: a request that cannot finish in time raises, and no vLLM process is left behind."""
    from compressor.errors import RuntimeTimeoutError, VerifyError
    from compressor.runtime_process.process_group import group_shared_memory

    pgid = engine_pruned.pid
    shm = group_shared_memory(pgid)
    assert shm, "vLLM's engine maps shared-memory queues; finding none means the scan is broken"
    with pytest.raises(RuntimeTimeoutError, match="no reply within"):
        engine_pruned._request("latency", {"prompt_tokens": 512, "new_tokens": 64, "repeats": 50, "warmup": 0},
                               timeout_s=2)
    assert engine_pruned.proc.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)  # nothing of the worker's process group is alive
    assert not [p for p in shm if os.path.exists(p)], "the killed engine's shared memory was left behind"
    with pytest.raises(VerifyError, match="not running"):
        engine_pruned.generate([[1, 2, 3]], 2)
