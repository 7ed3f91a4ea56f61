"""The llama.cpp runtime (through llama-cpp-python) that verifies a GGUF export."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from compressor.api import LatencySamples, Runtime, TokenScores
from compressor.errors import RuntimeUnavailableError

INSTALL_HINT = ("llama-cpp-python is built from source for this CPU: run `bash scripts/install_llama_cpp.sh .venv` "
                "(about 4 minutes once, then cached), or `make setup`")


def llama_cpp_version() -> str | None:
    """Version of the installed llama-cpp-python, without importing it."""
    try:
        return metadata.version("llama_cpp_python")
    except metadata.PackageNotFoundError:
        return None


def import_llama_cpp() -> Any:
    """Import llama_cpp, or raise RuntimeUnavailableError saying how to install it."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise RuntimeUnavailableError(f"llama.cpp is not available: {exc}", hint=INSTALL_HINT) from exc
    return llama_cpp


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax over the last axis, in float64."""
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


class LlamaCppRuntime(Runtime):
    """A GGUF file loaded in llama.cpp: scores windows, generates greedily and times prefill/decode."""

    name = "llama.cpp"

    def __init__(self, path: Path, n_ctx: int = 1024, threads: int | None = None) -> None:
        llama_cpp = import_llama_cpp()
        self.path = Path(path)
        self.threads = threads or os.cpu_count() or 1
        try:
            self.llm = llama_cpp.Llama(model_path=str(self.path), n_ctx=n_ctx, n_batch=min(n_ctx, 512),
                                       logits_all=True, n_threads=self.threads, n_threads_batch=self.threads,
                                       verbose=False)
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:
            raise RuntimeUnavailableError(f"llama.cpp could not load {self.path}: {type(exc).__name__}: {exc}",
                                          hint="run with a llama-cpp-python built by scripts/install_llama_cpp.sh; "
                                               "set verbose logging by loading the file with llama_cpp.Llama("
                                               "..., verbose=True) to see why") from exc
        self.n_ctx = int(self.llm.n_ctx())
        self.n_vocab = int(self.llm.n_vocab())

    def _check_len(self, n: int) -> None:
        if n > self.n_ctx:
            raise RuntimeUnavailableError(f"{n} tokens do not fit llama.cpp's context of {self.n_ctx}",
                                          hint="raise verify.max_len (the runtime's context length)")

    def _run(self, tokens: Sequence[int]) -> np.ndarray:
        """Evaluate ``tokens`` from an empty cache and return their [len, vocab] logits."""
        self._check_len(len(tokens))
        self.llm.reset()
        self.llm.eval(list(map(int, tokens)))
        return np.asarray(self.llm.scores[:len(tokens)], dtype=np.float32)

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits of every position of one sequence ([len, vocab])."""
        return self._run(tokens).copy()

    def score(self, windows: np.ndarray, top_k: int) -> TokenScores:
        """Score every next-token prediction of ``windows``, one window at a time."""
        windows = np.asarray(windows)
        targets, ids, values = [], [], []
        for window in windows:
            logprobs = log_softmax(self._run(window)[:-1])
            nxt = window[1:].astype(np.int64)
            targets.append(logprobs[np.arange(len(nxt)), nxt])
            top = np.argpartition(-logprobs, top_k - 1, axis=-1)[:, :top_k]
            top_vals = np.take_along_axis(logprobs, top, axis=-1)
            order = np.argsort(-top_vals, axis=-1, kind="stable")
            ids.append(np.take_along_axis(top, order, axis=-1))
            values.append(np.take_along_axis(top_vals, order, axis=-1))
        return TokenScores(np.stack(targets).astype(np.float32), np.stack(ids).astype(np.int64),
                           np.stack(values).astype(np.float32))

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
        """Greedy (argmax) continuation, exactly ``max_new_tokens`` tokens, no stop tokens."""
        out = []
        for prompt in prompts:
            self._check_len(len(prompt) + max_new_tokens)
            self.llm.reset()
            self.llm.eval(list(map(int, prompt)))
            new: list[int] = []
            for step in range(max_new_tokens):
                tok = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
                new.append(tok)
                if step + 1 < max_new_tokens:
                    self.llm.eval([tok])
            out.append(new)
        return out

    def latency(self, prompt_tokens: int, new_tokens: int, repeats: int, warmup: int) -> LatencySamples:
        """Time prefill (prompt in, first token out) and the cached decode of the remaining tokens."""
        self._check_len(prompt_tokens + new_tokens)
        ids = [(i % (self.n_vocab - 1)) + 1 for i in range(prompt_tokens)]
        prefill, decode = [], []
        for i in range(warmup + repeats):
            self.llm.reset()
            t0 = time.perf_counter()
            self.llm.eval(ids)
            tok = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
            t1 = time.perf_counter()
            for _ in range(new_tokens - 1):
                self.llm.eval([tok])
                tok = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
            t2 = time.perf_counter()
            if i >= warmup:
                prefill.append(t1 - t0)
                decode.append((new_tokens - 1) / (t2 - t1) if new_tokens > 1 else 0.0)
        return LatencySamples(prefill, decode, prompt_tokens, new_tokens)

    def tokenize(self, text: str, add_bos: bool = False, special: bool = False) -> list[int]:
        """Tokenize ``text`` with the GGUF's own tokenizer."""
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special))

    def describe(self) -> dict[str, Any]:
        """Runtime facts for the report."""
        return {"runtime": self.name, "llama_cpp_python": llama_cpp_version(), "threads": self.threads,
                "n_ctx": self.n_ctx, "file": self.path.name}

    def close(self) -> None:
        """Free the llama.cpp model and context."""
        llm = getattr(self, "llm", None)
        if llm is not None:
            close = getattr(llm, "close", None)
            if close is not None:
                close()
            self.llm = None
