"""The ONNX Runtime side of verification: score, generate and time an exported decoder graph."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from compressor.api import LatencySamples, Runtime, TokenScores, latency_prompt, steps, usable_cpu_count
from compressor_exporters.onnx.io_spec import DecoderIO
from compressor_exporters.onnx.session import DecoderSession


def scores_from_numpy(logits: np.ndarray, windows: np.ndarray, top_k: int) -> TokenScores:
    """TokenScores from [N, L, V] logits via the host's torch implementation (one definition of scoring)."""
    import torch

    from compressor.api import scores_from_logits

    return scores_from_logits(torch.from_numpy(logits), torch.from_numpy(np.asarray(windows, np.int64)), top_k)


class OnnxRuntime(Runtime):
    """An exported decoder graph in an onnxruntime InferenceSession, decoding with its KV cache."""

    name = "onnxruntime"

    def __init__(self, artifact: Path, threads: int | None = None, batch_size: int = 2,
                 providers: list[str] | None = None) -> None:
        self.artifact = Path(artifact)
        self.io = DecoderIO.load(self.artifact)
        self.threads = threads or usable_cpu_count()  # what session_options gives ORT
        self.batch_size = batch_size
        self.session: DecoderSession | None = DecoderSession(self.artifact, self.io, threads=self.threads,
                                                                  providers=providers)

    def _session(self) -> DecoderSession:
        if self.session is None:
            from compressor.api import RuntimeUnavailableError

            raise RuntimeUnavailableError("this ONNX runtime was closed", hint="open the artifact again")
        return self.session

    def score(self, windows: np.ndarray, top_k: int) -> TokenScores:
        """One prefill per batch of windows, from an empty cache."""
        from compressor.api import concat_scores

        windows = np.asarray(windows, dtype=np.int64)
        parts = []
        for start in steps(range(0, len(windows), self.batch_size), "ONNX Runtime: scoring window batches"):
            batch = windows[start:start + self.batch_size]
            logits, _ = self._session().logits(batch)
            parts.append(scores_from_numpy(logits, batch, top_k))
        return concat_scores(parts)

    def _greedy(self, prompt: np.ndarray, new_tokens: int) -> tuple[list[int], float, float]:
        """Greedy decode of one prompt [1, L]; return tokens, prefill seconds and decode seconds."""
        session = self._session()
        t0 = time.perf_counter()
        logits, cache = session.step(prompt, None, 0)
        token = int(np.argmax(logits.numpy()[0, -1]))
        t1 = time.perf_counter()
        out, past = [token], prompt.shape[1]
        for _ in range(new_tokens - 1):
            logits, cache = session.step(np.array([[token]], np.int64), cache, past)
            token = int(np.argmax(logits.numpy()[0, -1]))
            out.append(token)
            past += 1
        t2 = time.perf_counter()
        return out, t1 - t0, t2 - t1

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
        """Greedy continuation of each prompt, exactly ``max_new_tokens`` tokens (no early stop)."""
        if max_new_tokens <= 0:
            return [[] for _ in prompts]
        return [self._greedy(np.array([list(p)], np.int64), max_new_tokens)[0]
                for p in steps(prompts, "ONNX Runtime: generating")]

    def latency(self, prompt_tokens: int, new_tokens: int, repeats: int, warmup: int) -> LatencySamples:
        """Prefill seconds (prompt to first token) and cached decode tokens/s of one sequence."""
        ids = np.array([latency_prompt(prompt_tokens, self.io.vocab_size)], np.int64)
        prefill, decode = [], []
        for i in range(warmup + repeats):
            _, t_prefill, t_decode = self._greedy(ids, new_tokens)
            if i >= warmup:
                prefill.append(t_prefill)
                decode.append((new_tokens - 1) / t_decode if new_tokens > 1 and t_decode > 0 else 0.0)
        return LatencySamples(prefill, decode, prompt_tokens, new_tokens)

    def describe(self) -> dict[str, Any]:
        """onnxruntime version, providers, threads and the graph's dtype/quantization."""
        import onnxruntime as ort

        session = self._session()
        return {"runtime": self.name, "onnxruntime": ort.__version__, "providers": session.providers_in_use(),
                "device": ort.get_device(), "intra_op_threads": self.threads,
                "dtype": self.io.dtype, "quantization": (self.io.quantization or {}).get("scheme", "none"),
                "layers": self.io.num_layers}

    def close(self) -> None:
        """Drop the session (ORT frees its memory with it)."""
        self.session = None
