"""A :class:`compressor.api.Runtime` that drives vLLM in a separate worker process.

The worker keeps vLLM's spawned engine processes, environment variables and memory out of
the caller, so the reference and the compressed engines can run one after the other.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compressor.api import LatencySamples, Runtime, TokenScores
from compressor.errors import RuntimeUnavailableError, UsageError
from compressor_exporters.vllm.protocol import ChannelClosed, ChannelTimeout, LineReader, write_message

LOG_TAIL_LINES = 25


@dataclass(frozen=True)
class WorkerConfig:
    """How to start one vLLM worker."""

    model_dir: Path
    dtype: str = "bfloat16"
    device: str = "cpu"
    max_model_len: int = 1024
    max_logprobs: int = 1000
    kv_cache_space_gib: int = 2
    threads: int | None = None
    enforce_eager: bool = True
    gpu_memory_utilization: float = 0.5
    start_timeout_s: float = 600.0
    request_timeout_s: float = 900.0
    seed: int = 0


def worker_env(cfg: WorkerConfig) -> dict[str, str]:
    """The worker's environment: ours plus vLLM's CPU settings, offline, no telemetry."""
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.kv_cache_space_gib))
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
                "DO_NOT_TRACK": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"})
    if cfg.threads:
        # bind vLLM's OpenMP threads to the first N cores we may use (default: vLLM's own auto binding,
        # which keeps one core for its scheduler)
        cpus = sorted(os.sched_getaffinity(0))[:cfg.threads]
        env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(c) for c in cpus)
        env["OMP_NUM_THREADS"] = str(len(cpus))
    return env


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no worker log)"
    return "\n".join(text[-lines:]) or "(the worker wrote no log)"


def _kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the worker leads its own session: this reaches vLLM's engine processes too
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _group_shared_memory(pgid: int) -> set[str]:
    """Shared-memory files that the worker's process group has mapped (vLLM's message queues)."""
    found: set[str] = set()
    if not Path("/proc/self/maps").exists():  # not Linux: nothing to find, nothing to clean
        return found
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[2]) != pgid:  # field 5: process group id
                continue
            for line in (entry / "maps").read_text().splitlines():
                if "/dev/shm/" in line:
                    found.add(line[line.index("/dev/shm/"):].split(" ")[0])
        except (OSError, ValueError, IndexError):
            continue
    return found


def _wait_group_gone(pgid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _group_alive(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _finalize(proc: subprocess.Popen[bytes], workdir: str) -> None:
    """Last-resort cleanup when a runtime is garbage-collected or the interpreter exits unclosed."""
    if proc.poll() is None:
        _kill_group(proc.pid, signal.SIGKILL)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
    shutil.rmtree(workdir, ignore_errors=True)


class VllmRuntime(Runtime):
    """Scores, generates and times an exported HF directory in vLLM, through a worker process."""

    name = "vllm"

    def __init__(self, cfg: WorkerConfig) -> None:
        self.cfg = cfg
        self._workdir = tempfile.mkdtemp(prefix="compressor-vllm-")
        self.log_path = Path(self._workdir) / "worker.log"
        self._next_id = 1
        self._busy = False
        self._closed = False
        self._info: dict[str, Any] | None = None
        req_r, self._req_w = os.pipe()
        self._rep_r, rep_w = os.pipe()
        cmd = [sys.executable, "-m", "compressor_exporters.vllm.worker", "--model", str(cfg.model_dir),
               "--dtype", cfg.dtype, "--device", cfg.device, "--max-model-len", str(cfg.max_model_len),
               "--max-logprobs", str(cfg.max_logprobs), "--enforce-eager", str(int(cfg.enforce_eager)),
               "--gpu-memory-utilization", str(cfg.gpu_memory_utilization), "--seed", str(cfg.seed),
               "--req-fd", str(req_r), "--rep-fd", str(rep_w), "--workdir", self._workdir]
        with open(self.log_path, "wb") as log:
            try:
                # own session: a Ctrl-C in the terminal reaches only us, and close() decides what the worker gets
                self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                             pass_fds=(req_r, rep_w), env=worker_env(cfg), start_new_session=True)
            except OSError as exc:
                os.close(req_r), os.close(rep_w)
                self._close_fds()
                shutil.rmtree(self._workdir, ignore_errors=True)
                raise RuntimeUnavailableError(f"could not start the vLLM worker: {exc}") from exc
        os.close(req_r)  # the worker holds its own copies; ours would hide its exit from us
        os.close(rep_w)
        self._reader = LineReader(self._rep_r)
        self._finalizer = weakref.finalize(self, _finalize, self.proc, self._workdir)
        self._busy = True  # loading: an interrupt now should stop the worker, not queue a shutdown
        try:
            ready = self._receive(None, cfg.start_timeout_s, "start")
        except BaseException:
            self.close()
            raise
        self.load_s = float(ready.get("load_s", 0.0))

    # -- plumbing -------------------------------------------------------------------------

    def _close_fds(self) -> None:
        for fd in (getattr(self, "_req_w", None), getattr(self, "_rep_r", None)):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._req_w = self._rep_r = None  # type: ignore[assignment]

    def _failure(self, what: str, reason: str) -> RuntimeUnavailableError:
        code = self.proc.poll()
        state = f"exit code {code}" if code is not None else "still running, now stopped"
        kept = Path(tempfile.gettempdir()) / f"compressor-vllm-worker-{self.proc.pid}.log"
        try:  # the work directory goes away on close; keep the log for the user
            shutil.copyfile(self.log_path, kept)
        except OSError:
            kept = self.log_path
        return RuntimeUnavailableError(
            f"vLLM worker failed to {what} {self.cfg.model_dir} ({reason}; {state}). Last log lines:\n"
            f"{_tail(self.log_path)}",
            hint=f"full log: {kept}; check that vLLM is installed "
                 f"(pip install 'compressor-exporters[vllm]') and that the directory is a stock HF model")

    def _receive(self, req_id: int | None, timeout_s: float, what: str) -> dict[str, Any]:
        try:
            reply = self._reader.read(timeout_s, alive=lambda: self.proc.poll() is None)
        except ChannelTimeout as exc:
            err = self._failure(what, str(exc))
            self._kill()
            raise err from None
        except ChannelClosed as exc:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
            err = self._failure(what, str(exc))
            self._kill()
            raise err from None
        if req_id is not None and reply.get("id") != req_id:
            err = self._failure(what, f"protocol error: reply {reply.get('id')} to request {req_id}")
            self._kill()
            raise err
        self._busy = False  # a reply came back: the pipes are in step again, whatever it says
        if not reply.get("ok"):
            raise RuntimeUnavailableError(f"vLLM could not {what}: {reply.get('error')}",
                                          hint=f"the worker's log is {self.log_path}")
        return dict(reply.get("result") or {})

    def _request(self, op: str, args: dict[str, Any], timeout_s: float | None = None) -> dict[str, Any]:
        if self._closed or self.proc.poll() is not None:
            raise RuntimeUnavailableError(f"the vLLM worker for {self.cfg.model_dir} is not running",
                                          hint="open the runtime again")
        req_id, self._next_id = self._next_id, self._next_id + 1
        # stays True if we are interrupted (Ctrl-C) before the reply: close() then stops the worker
        # at once instead of queueing a shutdown behind a long request
        self._busy = True
        try:
            write_message(self._req_w, {"id": req_id, "op": op, "args": args})
        except ChannelClosed as exc:
            err = self._failure(op, str(exc))
            self._kill()
            raise err from None
        return self._receive(req_id, timeout_s or self.cfg.request_timeout_s, op)

    def _kill(self, shm: set[str] | None = None) -> None:
        """Stop the worker's whole process group: SIGTERM, then SIGKILL whatever is left."""
        pgid = self.proc.pid
        # a killed engine cannot unlink its shared memory; note what it maps and remove it afterwards
        shm = set(shm or ()) | _group_shared_memory(pgid)
        if self.proc.poll() is None:
            _kill_group(pgid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                _kill_group(pgid, signal.SIGKILL)
                self.proc.wait(10)
        # the worker is gone, but vLLM's engine processes in its group may still be shutting down
        # (a busy engine finishes its step first); give them a moment, then SIGKILL what is left
        if not _wait_group_gone(pgid, 5.0):
            _kill_group(pgid, signal.SIGKILL)
            _wait_group_gone(pgid, 10.0)
        if not _group_alive(pgid):
            for path in shm:
                Path(path).unlink(missing_ok=True)

    # -- Runtime --------------------------------------------------------------------------

    def score(self, windows: np.ndarray, top_k: int) -> TokenScores:
        """Prompt logprobs of every window position: the actual token's and the top-k."""
        windows = np.ascontiguousarray(windows, dtype=np.int64)
        if windows.ndim != 2 or windows.shape[1] < 2:
            raise UsageError(f"windows must have shape [N, L] with L >= 2, got {windows.shape}")
        if windows.shape[1] > self.cfg.max_model_len:
            raise UsageError(f"windows of {windows.shape[1]} tokens exceed vLLM's max_model_len "
                             f"{self.cfg.max_model_len}", hint="raise RuntimeSettings.max_len")
        call = self._next_id
        src = Path(self._workdir) / f"windows-{call}.npy"
        dst = Path(self._workdir) / f"scores-{call}.npz"
        np.save(src, windows)
        try:
            result = self._request("score", {"windows_path": str(src), "result_path": str(dst), "top_k": int(top_k)})
            with np.load(result["result_path"]) as z:
                return TokenScores(z["target_logprobs"], z["topk_ids"], z["topk_logprobs"])
        finally:
            src.unlink(missing_ok=True)
            dst.unlink(missing_ok=True)

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
        """Greedy continuation of each prompt, exactly ``max_new_tokens`` tokens."""
        longest = max((len(p) for p in prompts), default=0)
        if longest + max_new_tokens > self.cfg.max_model_len:
            raise UsageError(f"a prompt of {longest} tokens plus {max_new_tokens} new tokens exceeds vLLM's "
                             f"max_model_len {self.cfg.max_model_len}", hint="raise RuntimeSettings.max_len")
        plain = [[int(t) for t in p] for p in prompts]
        return self._request("generate", {"prompts": plain, "max_new_tokens": int(max_new_tokens)})["tokens"]

    def latency(self, prompt_tokens: int, new_tokens: int, repeats: int, warmup: int) -> LatencySamples:
        """Prefill = a 1-token generate; decode tok/s = (new-1) / (full generate - prefill); per repeat."""
        if prompt_tokens + new_tokens > self.cfg.max_model_len:
            raise UsageError(f"{prompt_tokens} prompt + {new_tokens} new tokens exceed vLLM's max_model_len "
                             f"{self.cfg.max_model_len}", hint="raise RuntimeSettings.max_len")
        r = self._request("latency", {"prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
                                      "repeats": repeats, "warmup": warmup})
        return LatencySamples(list(r["prefill_s"]), list(r["decode_tok_s"]), int(r["prompt_tokens"]),
                              int(r["new_tokens"]))

    def describe(self) -> dict[str, Any]:
        """vLLM version, device, dtype and engine settings (asked once, then cached)."""
        if self._info is None:
            self._info = self._request("describe", {}, timeout_s=60)
            self._info["load_s"] = self.load_s
        return dict(self._info)

    def close(self) -> None:
        """Ask the worker to shut down; stop its process group if it does not, or if it is mid-request."""
        if self._closed:
            return
        self._closed = True
        shm = _group_shared_memory(self.proc.pid)
        try:
            if self.proc.poll() is None and not self._busy:
                try:
                    write_message(self._req_w, {"id": -1, "op": "shutdown"})
                    self._reader.read(30, alive=lambda: self.proc.poll() is None)
                    self.proc.wait(30)
                except (ChannelClosed, ChannelTimeout, subprocess.TimeoutExpired, json.JSONDecodeError):
                    pass
            self._kill(shm)
        finally:
            self._close_fds()
            self._finalizer()

