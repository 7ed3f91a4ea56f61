"""ONNX Runtime latency you can believe: ``OnnxRuntime.latency()`` agrees with perf_test-style timing.

The reference (compressor_exporters.onnx.perf) times the same graph the way ``onnxruntime_perf_test``
does: its own session with default options, inputs created once, warm-up runs, then the mean of
timed runs, for a prompt-length prefill and for single-token steps on a fixed past cache. Both are
measured in one fresh process (``python -m compressor_exporters.onnx.perf``), as verify's runtime
worker times a model, in interleaved A B B A rounds, so background load hits both alike, and every
runtime sample is taken right after a second runtime on the same graph was timed, as verify times
the original and the compressed model back to back. The medians of the per-round ratios must agree
within 15% (issue 13). In the pytest process itself, after an hour of other tests, the reference
twice came out 18% slower than in a fresh process while the runtime did not, so the check runs
where the gate's timing runs. The real SmolLM2-135M (26 of its 30 layers) is exported once per session in float32 (about a
minute on 2 cores, shared with test_onnx_real) and quantized to int8 from that graph by the
exporter's own quantize_int8 (about 40 s).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from compressor.api import RuntimeSettings
from compressor_exporters.onnx import OnnxExporter, OnnxOptions
from compressor_exporters.onnx.io_spec import DecoderIO
from compressor_exporters.onnx.perf import crosscheck, decode_past_lengths, perf_session, perf_test_latency
from compressor_exporters.onnx.quantize import quantize_int8
from compressor_exporters.onnx.session import session_options

PROMPT_TOKENS, NEW_TOKENS = 128, 32
ROUNDS = 5  # A B B A each: 10 samples per side, 5 paired ratios
TOLERANCE = 0.15


@pytest.mark.parametrize("prompt,new", [(16, 8), (128, 64), (5, 2)])
def test_reference_decode_lengths_average_to_the_decodes_mean_past(prompt, new):
    # greedy decode steps run after pasts prompt, prompt+1, ..., prompt+new-2
    assert np.mean(decode_past_lengths(prompt, new)) == np.mean(np.arange(prompt, prompt + new - 1))


def test_runtime_sessions_stop_spinning_between_runs():
    # left spinning, an idle session's threads slowed the next model's prefill by 10-20% on 2 cores
    assert session_options().get_session_config_entry("session.force_spinning_stop") == "1"


def test_reference_and_crosscheck_run_on_a_tiny_graph(tmp_path):
    from compressor.testing import tiny_llama

    ex, opts = OnnxExporter(), OnnxOptions()
    ex.export(tiny_llama(), tmp_path, opts)
    io = DecoderIO.load(tmp_path)
    session = perf_session(tmp_path, io, threads=1)
    figures = perf_test_latency(session, io, 16, 8, runs=2, warmup=1)
    assert figures.past_lengths == (16, 19, 22)
    assert figures.prefill_s > 0 and figures.decode_tok_s == pytest.approx(1 / figures.decode_step_s)
    with ex.open_runtime(tmp_path, opts, RuntimeSettings(threads=1)) as rt:
        result = crosscheck(rt, session, io, 16, 8, rounds=1, perf_runs=1, companion=rt, settle_s=0)
    assert len(result.runtime_prefill_s) == len(result.perf_decode_tok_s) == 2
    assert set(result.summary()["ratio"]) == {"prefill_s", "decode_tok_s"}


@pytest.fixture(scope="module")
def fp32_export(smollm2_onnx_pruned):
    """SmolLM2 (26 layers) exported by the onnx exporter in float32, shared with test_onnx_real."""
    return smollm2_onnx_pruned[0], OnnxOptions()


@pytest.fixture(scope="module")
def int8_export(fp32_export, tmp_path_factory):
    """The float32 graph quantized to int8 by the exporter's quantize_int8, without its accuracy check.

    Only the timing is checked here. The exporter's own int8 step (quantize_artifact) also checks
    the logits against float32, and on AVX2 CPUs without VNNI that check fails
    (likely u8s8 saturation), which would hide the timing result behind an unrelated accuracy error.
    """
    src, _ = fp32_export
    dest = tmp_path_factory.mktemp("onnx-smollm2-int8")
    io = DecoderIO.load(src)
    opts = OnnxOptions(quantize="int8")
    io.quantization = quantize_int8(src / io.model_file, dest / io.model_file, opts.per_channel, False)
    io.save(dest)
    return dest, opts


def _check(artifact, label: str) -> None:
    done = subprocess.run([sys.executable, "-m", "compressor_exporters.onnx.perf", str(artifact), "--rounds",
                           str(ROUNDS), "--prompt-tokens", str(PROMPT_TOKENS), "--new-tokens", str(NEW_TOKENS)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"\n{label}: {summary}")
    ratios = summary["ratio"]
    assert abs(ratios["prefill_s"] - 1) <= TOLERANCE, summary
    assert abs(ratios["decode_tok_s"] - 1) <= TOLERANCE, summary


@pytest.mark.slow
@pytest.mark.serial  # compares two timings: alone on the machine
def test_fp32_latency_agrees_with_perf_test_timing(fp32_export):
    _check(fp32_export[0], "float32")


@pytest.mark.slow
@pytest.mark.serial  # compares two timings: alone on the machine
def test_int8_latency_agrees_with_perf_test_timing(int8_export):
    _check(int8_export[0], "int8")
