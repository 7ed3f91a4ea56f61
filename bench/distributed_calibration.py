"""SparseGPT and Surgeon on SmolLM2 with 1 and 2 data-parallel processes: wall time, peak memory per process,
perplexity, and the scaling model's prediction for the same runs (docs/scaling.md).

Usage: .venv/bin/python bench/distributed_calibration.py [--rounds 1] [--only sparsegpt surgeon synthetic-1b]
Writes bench/results/distributed_calibration.json (distributed_calibration_<only>.json with --only).

Each configuration runs ``compress build ... --nproc P --no-verify -e transformers`` in interleaved rounds
(1 2 2 1 per round pair); a sampler records each process's peak RSS. The calibration seconds come from the
stage's own record in report.json (loading and export excluded); perplexity is measured in PyTorch on 8 held-out
Hamlet windows of 256 tokens. The hardware constants of the model are measured first on this machine: the
matmul rate at the threads one process gets, and gloo's all-reduce bandwidth between two processes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scaling_model import SMOLLM2, Hardware, Shape, predict, predict_surgeon  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "smollm2-shakespeare"
CONFIGS = {
    "sparsegpt": ["--method", "sparsegpt", "--sparsity", "0.5", "--calib-samples", "32", "--calib-seq-len", "512"],
    # Surgeon's curvature passes are full forward and backward passes: one shot on 4 windows keeps a run minutes
    "surgeon": ["--method", "surgeon", "--sparsity", "0.3", "-O", "shots=1", "--calib-samples", "4",
                "--calib-seq-len", "256"],
}
WINDOWS = {"sparsegpt": (32, 512), "surgeon": (4, 256), "synthetic-1b": (8, 256)}
# a random Llama-3.2-1B-shaped model (32k vocabulary: 1.1B weights), written by compressor.testing
SYNTHETIC_1B = {"vocab_size": 32000, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "tie_word_embeddings": False,
                "bos_token_id": 1, "eos_token_id": 2}
SHAPE_1B = Shape("synthetic 1B", layers=16, hidden=2048, ffn=8192, kv=512, vocab=32000)
CORES = len(os.sched_getaffinity(0))


def _matmul_rate(threads: int) -> float:
    """Sustained fp32 FLOP/s of a 1536 x 576 x 4096 matmul (a SmolLM2 MLP shape) at ``threads`` threads."""
    code = ("import time,torch;torch.set_num_threads(%d);a=torch.randn(4096,576);b=torch.randn(576,1536);"
            "[a@b for _ in range(5)];t=time.perf_counter();n=40\nfor _ in range(n): a@b\n"
            "print(2*4096*576*1536*n/(time.perf_counter()-t))") % threads
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def _solve_rate(threads: int, c: int = 2048, r: int = 2048) -> float:
    """FLOP/s of SparseGPT's own solve (Cholesky of the inverse + the blocked OBS updates) on one c x r linear,
    counted as the model counts it (c^3 + 2 r c^2), at ``threads`` threads."""
    code = ("import time,torch;torch.set_num_threads(%d)\n"
            "from compressor_methods.sparsegpt.sparsify import sparsegpt_prune\n"
            "g=torch.Generator().manual_seed(0);x=torch.randn(4*%d,%d,generator=g);h=x.T@x;w=torch.randn(%d,%d,generator=g)\n"
            "sparsegpt_prune(w,h,0.5);t=time.perf_counter();sparsegpt_prune(w,h,0.5)\n"
            "print((%d**3+2*%d*%d**2)/(time.perf_counter()-t))") % (threads, c, c, r, c, c, r, c)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


ALLREDUCE = """
import os, time, torch, torch.distributed as dist
dist.init_process_group("gloo")
t = torch.ones(4 * 2**20)  # 16 MB, about one SmolLM2 layer's Hessians
for _ in range(3): dist.all_reduce(t)
n = 20; start = time.perf_counter()
for _ in range(n): dist.all_reduce(t)
dt = (time.perf_counter() - start) / n
if dist.get_rank() == 0: print(2 * 0.5 * t.numel() * 4 / dt)  # bus bandwidth of a 2-rank ring
dist.destroy_process_group()
"""


def _allreduce_bandwidth() -> float:
    """gloo all-reduce bus bandwidth between two local processes, bytes/s."""
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(ALLREDUCE)
    out = subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--nproc-per-node", "2", f.name],
                         capture_output=True, text=True, check=True)
    os.unlink(f.name)
    return float(out.stdout.strip().splitlines()[-1])


def _run(method: str, ranks: int, out: Path, model: str = "smollm2-135m") -> dict:
    """One build; wall time, the calibration seconds from its report, and each process's peak RSS."""
    config = CONFIGS["sparsegpt"][:4] + ["--calib-samples", "8", "--calib-seq-len", "256"] \
        if method == "synthetic-1b" else CONFIGS[method]
    cmd = [sys.executable, "-m", "compressor", "build", "-m", model, *config, "-e", "transformers",
           "--no-verify", "-q", "-o", str(out)] + (["--nproc", str(ranks)] if ranks > 1 else [])
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, CORES // ranks))}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root, peaks = psutil.Process(proc.pid), {}
    while proc.poll() is None:
        try:
            for p in [root, *root.children(recursive=True)]:
                peaks[p.pid] = max(peaks.get(p.pid, 0), p.memory_info().rss)
        except psutil.Error:
            pass
        time.sleep(0.05)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{method} x{ranks} failed: {proc.stderr.read().decode()[-2000:]}")
    ranks_rss = sorted(peaks.values(), reverse=True)[:ranks]  # the rank processes are the largest
    report = json.loads((out / "report.json").read_text())
    stage = report["stages"][0]
    return {"wall_s": round(wall, 2), "stage_s": stage["usage"].get("seconds"), "peak_rss_per_process": ranks_rss,
            "calibration": stage["details"].get("calibration") or {"processes": stage["details"].get("processes")}}


def _perplexity(export: Path) -> float:
    import numpy as np

    from compressor.model_loading import load_model
    from compressor.torch_runtime import perplexity

    windows = np.load(DATA / "eval.npy")[:8, :256]
    return perplexity(load_model(str(export), hash_files=False).model, windows)


def main() -> None:
    """Measure the constants, run the builds in interleaved order, print and write the table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=1, help="round pairs (1 2 2 1 each)")
    parser.add_argument("--only", nargs="*", default=list(CONFIGS))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.out = args.out or REPO / "bench" / "results" / f"distributed_calibration{'_' + '_'.join(args.only) if args.only != list(CONFIGS) else ''}.json"
    constants = {"flops_1": _matmul_rate(CORES), "flops_2": _matmul_rate(max(1, CORES // 2)),
                 "solve_flops_1": _solve_rate(CORES), "solve_flops_2": _solve_rate(max(1, CORES // 2)),
                 "allreduce_bytes_s": _allreduce_bandwidth()}
    print(json.dumps(constants), flush=True)
    results: dict = {"date": datetime.date.today().isoformat(),
                     "machine": f"{platform.machine()}, {CORES} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB",
                     "constants": constants, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.only:
            runs: dict[int, list] = {1: [], 2: []}
            model = "smollm2-135m"
            order = [1, 2, 2, 1] * args.rounds
            if method == "synthetic-1b":  # one run each: minutes per run; a check of the model, not a speed claim
                from compressor.testing import write_synthetic_llama

                model = str(Path(tmp) / "synthetic-1b")
                write_synthetic_llama(model, **SYNTHETIC_1B)
                order = [1, 2]
            for i, ranks in enumerate(order):
                out = Path(tmp) / f"{method}-{ranks}-{i}"
                run = _run(method, ranks, out, model)
                if method != "synthetic-1b":
                    run["perplexity"] = round(_perplexity(out / "transformers"), 4)
                runs[ranks].append(run)
                print(method, ranks, json.dumps(run), flush=True)
            n, seqlen = WINDOWS[method]
            table = {}
            for ranks, measured in runs.items():
                hw = Hardware("this machine", flops=constants[f"flops_{ranks}"],
                              bandwidth=constants["allreduce_bytes_s"], latency=5e-4,
                              solve_flops=constants.get(f"solve_flops_{ranks}"))
                pred = predict_surgeon(SMOLLM2, hw, ranks, n, seqlen, shots=1) if method == "surgeon" else \
                    predict(SHAPE_1B, hw, ranks, n, seqlen, "sparsegpt") if method == "synthetic-1b" else \
                    predict(SMOLLM2, hw, ranks, n, seqlen, method)
                table[ranks] = {"measured": measured,
                                "predicted": {"compute_s": round(pred.compute_s, 2), "solve_s": round(pred.solve_s, 2),
                                              "comm_s": round(pred.comm_s, 2), "total_s": round(pred.total_s, 2),
                                              "peak_bytes": pred.peak_bytes}}
            results["runs"][method] = table
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
