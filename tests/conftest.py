"""Shared fixtures: tiny random Llamas for unit tests, the real SmolLM2 and Shakespeare windows for slow tests."""

from __future__ import annotations

import copy
import os
from pathlib import Path


def _pin_xdist_worker() -> None:
    """Give each pytest-xdist worker its own share of the CPUs, with thread counts to match.

    Without it, two workers each run every runtime on all cores: OpenMP, ONNX Runtime and llama.cpp
    threads spin while they wait, and on 2 cores a test ran up to six times slower than alone. Runs at
    import, before numpy or torch size their thread pools; child processes inherit the affinity and env.
    """
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not worker.startswith("gw") or not count:
        return
    cpus = sorted(os.sched_getaffinity(0))
    mine = cpus[int(worker[2:]) % len(cpus)::int(count)]
    os.sched_setaffinity(0, mine)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(len(mine))


_pin_xdist_worker()

import numpy as np  # noqa: E402 - after the worker's CPUs are set
import pytest  # noqa: E402
from runtimes import require_runtime  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "smollm2-shakespeare"


@pytest.fixture
def tiny():
    """A fresh 4-layer random Llama (hidden 64, 4 heads, 2 KV heads, FFN 128, vocab 256)."""
    from compressor.testing import tiny_llama

    return tiny_llama()


@pytest.fixture(scope="session")
def smollm2_original():
    """The real SmolLM2-135M-Instruct, loaded once per session; never modify it (use ``smollm2``)."""
    from compressor.model_loading import load_model

    return load_model("smollm2-135m")


@pytest.fixture
def smollm2(smollm2_original):
    """A private deep copy of the real SmolLM2 that a test may prune."""
    from compressor.model import ModelHandle

    return ModelHandle(copy.deepcopy(smollm2_original.model), smollm2_original.tokenizer, smollm2_original.source)


ONNX_DROPPED_LAYERS = [20, 21, 22, 23]


@pytest.fixture(scope="session")
def smollm2_onnx_pruned(smollm2_original, tmp_path_factory):
    """SmolLM2 with layers 20-23 dropped, exported by the onnx exporter in float32: (dir, details, dropped).

    Made once per session (an export takes 1-2 minutes on 2 cores) for the tests that check the ONNX
    graph against PyTorch and its timing against perf_test-style timing; the export validates itself.
    """
    from compressor.model import ModelHandle
    from compressor_exporters.onnx import OnnxExporter, OnnxOptions

    model = ModelHandle(copy.deepcopy(smollm2_original.model), smollm2_original.tokenizer, smollm2_original.source)
    model.drop_layers(ONNX_DROPPED_LAYERS)
    dest = tmp_path_factory.mktemp("onnx-smollm2-pruned")
    ex, opts = OnnxExporter(), OnnxOptions()
    ex.check_model(model, opts)
    return dest, ex.export(model, dest, opts), list(ONNX_DROPPED_LAYERS)


def _windows(request: pytest.FixtureRequest, name: str, role: str) -> np.ndarray:
    """The shared .npy windows, or the same windows built from the built-in corpus when they are absent."""
    path = SHARED_DATA / name
    if path.is_file():
        return np.load(path)
    from compressor.data import load_windows

    # the documented defaults that made the shared files (tests/unit/test_data.py checks they are equal)
    tokenizer = request.getfixturevalue("smollm2_original").tokenizer
    return load_windows("shakespeare", role, tokenizer, samples=32, seq_len=512, seed=0)


@pytest.fixture(scope="session")
def calib_windows(request) -> np.ndarray:
    """The fixed calibration windows [32, 512] for SmolLM2 (41 plays, not Hamlet)."""
    return _windows(request, "calib.npy", "calibration")


@pytest.fixture(scope="session")
def eval_windows(request) -> np.ndarray:
    """The fixed evaluation windows [32, 512] from Hamlet."""
    return _windows(request, "eval.npy", "evaluation")


# A test that needs a runtime the README promises takes one of these: it skips when the runtime is missing,
# and fails instead when COMPRESSOR_REQUIRE_RUNTIMES=1 (.ci/run sets it). Session scope: pytest sets up
# wider-scoped fixtures first, so the check comes before any model is loaded, and its verdict is reused.
@pytest.fixture(scope="session")
def needs_vllm() -> None:
    """Require vLLM (imported in a subprocess, never in pytest's)."""
    require_runtime("vllm")


@pytest.fixture(scope="session")
def needs_llama_cpp() -> None:
    """Require llama-cpp-python."""
    require_runtime("llama_cpp")


@pytest.fixture(scope="session")
def needs_onnxruntime_genai() -> None:
    """Require onnxruntime-genai."""
    require_runtime("onnxruntime_genai")


@pytest.fixture
def toykit(monkeypatch, tmp_path_factory):
    """Install tests/fixtures/toykit as an out-of-tree plugin distribution (fake dist-info on sys.path)."""
    import shutil
    import sys

    root = tmp_path_factory.mktemp("toykit")
    shutil.copy(REPO / "tests" / "fixtures" / "toykit" / "compressor_toykit.py", root)
    info = root / "compressor_toykit-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: compressor-toykit\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[compressor]\ntoykit = compressor_toykit\n")
    monkeypatch.syspath_prepend(str(root))
    yield root
    sys.modules.pop("compressor_toykit", None)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Llama with a byte-level tokenizer saved as an HF safetensors directory."""
    from compressor.testing import save_tiny_model

    path = tmp_path_factory.mktemp("tiny-model")
    save_tiny_model(path, layers=4)
    return path


@pytest.fixture(scope="session")
def chromium() -> str:
    """Headless Chromium for the report's browser tests (skips without it; fails in CI)."""
    from browser import require_browser

    return require_browser()


@pytest.fixture(scope="session")
def tiny_report_dir(tiny_model_dir, tmp_path_factory):
    """A finished tiny build with every kind of plot: a Streamline stage (loss curve, a removed layer),
    verified in PyTorch with a speed budget. Read it, never modify it."""
    from typer.testing import CliRunner

    from compressor.cli import app

    out = tmp_path_factory.mktemp("tiny-report") / "out"
    result = CliRunner().invoke(app, [
        "build", "--model", str(tiny_model_dir), "--out", str(out), "--method", "streamline", "-O", "layers=1",
        "-O", "epochs=2", "--export", "transformers", "--calib-samples", "4", "--calib-seq-len", "32",
        "--eval-samples", "2", "--eval-seq-len", "32", "--set", "verify.latency.rounds=3",
        "--set", "verify.latency.prompt_tokens=16", "--set", "verify.latency.new_tokens=8",
        "--set", "verify.latency.on_inconclusive=warn", "--max-ppl-increase", "1000", "--min-speedup", "0.01"])
    assert result.exit_code == 0, result.output
    return out
