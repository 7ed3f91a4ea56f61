"""The llama.cpp runtime (through llama-cpp-python) that verifies a GGUF export."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from compressor.api import (LatencySamples, Runtime, RuntimeUnavailableError, TokenScores, latency_prompt, steps,
                            usable_cpu_count)

INSTALL_HINT = ("llama-cpp-python is built from source for this CPU: run `bash scripts/install_llama_cpp.sh .venv` "
                "(about 4 minutes once, then cached), or `make setup`")


# llama.cpp's "extra buffer types" for CPU weights: AMX (when the build has AMX_INT8) and CPU_REPACK (Q4_0,
# Q4_K, IQ4_NL rows interleaved for the AVX2/AVX-512 GEMM kernels). On an Intel Sapphire Rapids machine a
# native build with AMX segfaulted on the first quantized evaluation (Q8_0, Q4_1) and ran with them off
# (issue 13, item 0). scripts/install_llama_cpp.sh now compiles AMX out, so the default here keeps them on:
# repacking is the fast x86 path for Q4_0 (bench/llama_cpp_build.py). A build that still reports AMX_INT8 =
# 1 (an old wheel, or one built elsewhere) is loaded with them off: that build's AMX kernels are the part
# that crashed, and turning the extra buffer types off is the only switch llama.cpp has for them at load time.
EXTRA_BUFTS_ENV = "COMPRESSOR_LLAMA_EXTRA_BUFTS"  # auto (default) | on | off
_PATCH_LOCK = threading.Lock()


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


def system_info(llama_cpp: Any) -> str:
    """llama.cpp's feature line (``CPU : SSE3 = 1 | AVX2 = 1 | ... | REPACK = 1 |``) of the loaded build."""
    return llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip()


def build_has_amx(info: str) -> bool:
    """Whether a llama.cpp system info line reports AMX kernels compiled in (``AMX_INT8 = 1``)."""
    return re.search(r"\bAMX_INT8\s*=\s*1\b", info) is not None


def choose_extra_bufts(info: str, setting: str | None = None) -> tuple[bool, str]:
    """Whether to load with llama.cpp's extra CPU buffer types (AMX, repacked weights), and why."""
    setting = (setting if setting is not None else os.environ.get(EXTRA_BUFTS_ENV, "auto")).strip().lower()
    if setting in ("on", "1", "true"):
        return True, f"{EXTRA_BUFTS_ENV}={setting}"
    if setting in ("off", "0", "false"):
        return False, f"{EXTRA_BUFTS_ENV}={setting}"
    if setting != "auto":
        raise RuntimeUnavailableError(f"{EXTRA_BUFTS_ENV}={setting!r} is not one of auto, on, off",
                                      hint=f"unset {EXTRA_BUFTS_ENV} or set it to auto, on or off")
    if build_has_amx(info):
        return False, ("this llama.cpp build has AMX_INT8 = 1, whose kernels crashed on quantized weights; "
                       "rebuild with scripts/install_llama_cpp.sh (AMX compiled out) to get repacked weights back")
    return True, "no AMX in this build: repacked weights on (llama.cpp's default)"


@contextmanager
def model_params_override(llama_cpp: Any, **fields: Any) -> Iterator[None]:
    """Set fields of ``llama_model_params`` for the ``Llama(...)`` calls made inside the block.

    llama-cpp-python 0.3.36 builds its model parameters from ``llama_model_default_params()`` and loads the
    file in the same ``__init__``, with no keyword for ``use_extra_bufts`` (unknown keywords are swallowed
    by ``**kwargs``, so ``Llama(..., use_extra_bufts=False)`` would be silently ignored). Wrapping the
    defaults function is the one place to set it; the lock keeps two loads from interleaving.
    """
    lowlevel = llama_cpp.llama_cpp
    original = lowlevel.llama_model_default_params

    def patched() -> Any:
        params = original()
        for name, value in fields.items():
            setattr(params, name, value)
        return params

    with _PATCH_LOCK:
        lowlevel.llama_model_default_params = patched
        try:
            yield
        finally:
            lowlevel.llama_model_default_params = original


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax over the last axis, in float64."""
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


class LlamaCppRuntime(Runtime):
    """A GGUF file loaded in llama.cpp: scores windows, generates greedily and times prefill/decode."""

    name = "llama.cpp"

    def __init__(self, path: Path, n_ctx: int = 1024, threads: int | None = None,
                 extra_bufts: str | None = None) -> None:
        llama_cpp = import_llama_cpp()
        self._lib = llama_cpp
        self.path = Path(path)
        self.threads = threads or usable_cpu_count()
        self.system_info = system_info(llama_cpp)
        # extra_bufts: auto | on | off; None reads COMPRESSOR_LLAMA_EXTRA_BUFTS (default auto)
        self.extra_bufts, self.extra_bufts_reason = choose_extra_bufts(self.system_info, extra_bufts)
        try:
            with model_params_override(llama_cpp, use_extra_bufts=self.extra_bufts):
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
        if bool(self.llm.model_params.use_extra_bufts) != self.extra_bufts:  # the override must have reached the load
            raise RuntimeUnavailableError(f"llama-cpp-python {llama_cpp_version()} ignored use_extra_bufts="
                                          f"{self.extra_bufts}", hint=INSTALL_HINT)
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
        for window in steps(windows, "llama.cpp: scoring windows"):
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
        for prompt in steps(prompts, "llama.cpp: generating"):
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

    def _decode_next(self, tokens: Sequence[int]) -> int:
        """Feed ``tokens`` after what the context holds and return the argmax of the last one's logits.

        Only the last token's logits are computed (``llama_batch_get_one``), as in llama.cpp's own
        llama-bench and in any generation loop; the Llama object's ``logits_all`` mode, which scoring needs,
        would also run the output layer on every prompt token (about a fifth of SmolLM2's prefill work).
        """
        lib, ctx, step = self._lib, self.llm.ctx, max(1, int(self.llm.n_batch))
        for i in range(0, len(tokens), step):
            chunk = tokens[i:i + step]
            arr = (lib.llama_token * len(chunk))(*chunk)
            rc = lib.llama_decode(ctx, lib.llama_batch_get_one(arr, len(chunk)))
            if rc != 0:
                raise RuntimeUnavailableError(f"llama_decode returned {rc}", hint="raise verify.max_len")
        logits = lib.llama_get_logits_ith(ctx, -1)
        return int(np.argmax(np.ctypeslib.as_array(logits, shape=(self.n_vocab,))))

    def latency(self, prompt_tokens: int, new_tokens: int, repeats: int, warmup: int) -> LatencySamples:
        """Time prefill (prompt in, first token out) and the cached decode of the remaining tokens.

        Each step is one llama_decode plus the argmax of its logits, timed with a wall clock around the
        steps themselves, so the figures agree with llama.cpp's own counters (llama_perf_context);
        tests/integration/test_latency_crosscheck_llamacpp.py checks that.
        """
        self._check_len(prompt_tokens + new_tokens)
        ids = latency_prompt(prompt_tokens, self.n_vocab)
        memory = self._lib.llama_get_memory(self.llm.ctx)
        prefill, decode = [], []
        try:
            for i in range(warmup + repeats):
                self._lib.llama_memory_clear(memory, True)
                t0 = time.perf_counter()
                tok = self._decode_next(ids)
                t1 = time.perf_counter()
                for _ in range(new_tokens - 1):
                    tok = self._decode_next([tok])
                t2 = time.perf_counter()
                if i >= warmup:
                    prefill.append(t1 - t0)
                    decode.append((new_tokens - 1) / (t2 - t1) if new_tokens > 1 else 0.0)
        finally:
            # the cache no longer matches the Llama object's token history: start the next eval from empty
            self._lib.llama_memory_clear(memory, True)
            self.llm.reset()
        return LatencySamples(prefill, decode, prompt_tokens, new_tokens)

    def tokenize(self, text: str, add_bos: bool = False, special: bool = False) -> list[int]:
        """Tokenize ``text`` with the GGUF's own tokenizer."""
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special))

    def describe(self) -> dict[str, Any]:
        """Runtime facts for the report."""
        return {"runtime": self.name, "llama_cpp_python": llama_cpp_version(), "threads": self.threads,
                "n_ctx": self.n_ctx, "file": self.path.name, "extra_bufts": self.extra_bufts,
                "extra_bufts_reason": self.extra_bufts_reason, "amx": build_has_amx(self.system_info),
                "system_info": self.system_info}

    def close(self) -> None:
        """Free the llama.cpp model and context."""
        llm = getattr(self, "llm", None)
        if llm is not None:
            close = getattr(llm, "close", None)
            if close is not None:
                close()
            self.llm = None
