"""A :class:`compressor.api.Runtime` whose real runtime lives in a worker process.

The worker keeps a runtime's native code, spawned processes, environment variables and memory
out of the build: a segmentation fault in llama.cpp or an aborted vLLM engine ends the worker
only, and the caller gets a :class:`compressor.errors.RuntimeCrashedError` naming the signal,
with the last lines of the worker's log.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from compressor.api import Exporter, LatencySamples, Runtime, RuntimeProcess, RuntimeSettings, TokenScores
from compressor.errors import (RuntimeCrashedError, RuntimeTimeoutError, RuntimeUnavailableError, UsageError,
                               VerifyError)
from compressor.progress import ProgressRelay
from compressor.progress import active as progress_active
from compressor.runtime_process.process_group import (background_cpu_share, cpu_time_by_process, group_pids,
                                                      group_shared_memory, kill_group, stop_group)
from compressor.runtime_process.protocol import ChannelClosed, ChannelTimeout, LineReader, write_message

LOG_TAIL_LINES = 25
# Errors the worker reports for a missing runtime package: preflight normally catches these first.
UNAVAILABLE = {"RuntimeUnavailableError", "ImportError", "ModuleNotFoundError"}


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no worker log)"
    return "\n".join(text[-lines:]) or "(the worker wrote no log)"


def _last_error_line(path: Path) -> str:
    """The last ``SomeError: message`` line of the log, else its last non-empty line."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines()[-400:] if ln.strip()]
    except OSError:
        return "(no worker log)"
    for line in reversed(lines):
        m = CAUSE_LINE.search(line)
        if m:
            return f"{m.group(1)}: {m.group(2).strip()}"[:400]
    return lines[-1][:400] if lines else "(the worker wrote no log)"


CAUSE_LINE = re.compile(r"\b([A-Z]\w*(?:Error|Exception)): (.+)$")


def root_cause(log_path: Path, reported: str) -> str | None:
    """For an error that points at a stack trace elsewhere, the last ``SomeError: message`` line of the log."""
    if not re.search(r"stack trace|root cause", reported, re.IGNORECASE):
        return None
    try:
        lines = log_path.read_text(errors="replace").splitlines()[-400:]
    except OSError:
        return None
    for line in reversed(lines):
        m = CAUSE_LINE.search(line)
        if m and m.group(1) not in ("EngineDeadError",) and m.group(2).strip() not in reported:
            return f"{m.group(1)}: {m.group(2).strip()}"[:400]
    return None


def describe_exit(code: int | None) -> str:
    """Say how a worker ended: 'exit code 3', 'killed by SIGSEGV (segmentation fault)', or still running."""
    if code is None:
        return "still running, now stopped"
    if code < 0:
        try:
            sig = signal.Signals(-code)
        except ValueError:
            return f"killed by signal {-code}"
        what = {signal.SIGSEGV: "segmentation fault: a crash in the runtime's native code",
                signal.SIGABRT: "aborted by the runtime's native code",
                signal.SIGKILL: "killed, e.g. by the out-of-memory killer or by hand",
                signal.SIGBUS: "bus error: a crash in the runtime's native code",
                signal.SIGILL: "illegal instruction: the runtime was built for another CPU",
                signal.SIGTERM: "terminated"}.get(sig, "")
        return f"killed by {sig.name}" + (f" ({what})" if what else "")
    return f"exit code {code}"


def worker_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The worker's environment: ours, offline and without telemetry, the exporter's extras, and our sys.path."""
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                "PYTHONUNBUFFERED": "1", "DO_NOT_TRACK": "1"})
    env.update({k: str(v) for k, v in extra.items()})
    # the worker must import exactly what we import (plugins found on a path added at run time included)
    paths = [p for p in sys.path if p]
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def _finalize(proc: subprocess.Popen[bytes], workdir: str) -> None:
    """Last-resort cleanup when a runtime is garbage-collected or the interpreter exits unclosed."""
    if proc.poll() is None:
        kill_group(proc.pid, signal.SIGKILL)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
    shutil.rmtree(workdir, ignore_errors=True)


class IsolatedRuntime(Runtime):
    """An exporter's runtime opened in a worker process; every call is a request over two pipes."""

    def __init__(self, exporter: Exporter, artifact: Path, options: Any, settings: RuntimeSettings,
                 label: str = "") -> None:
        self.exporter = exporter
        self.artifact = Path(artifact).resolve()
        self.label = label or str(self.artifact)
        self.name = exporter.runtime_name or exporter.name
        self.process: RuntimeProcess = exporter.runtime_process(options, settings)
        self._workdir = tempfile.mkdtemp(prefix="compressor-runtime-")
        self.log_path = Path(self._workdir) / "worker.log"
        self._next_id = 1
        self._busy = False
        self._closed = False
        self._suspended = False
        self._info: dict[str, Any] | None = None
        spec_path = Path(self._workdir) / "spec.json"
        cls = type(exporter)
        spec_path.write_text(json.dumps({
            "exporter_class": f"{cls.__module__}:{cls.__qualname__}", "artifact": str(self.artifact),
            "options": options.model_dump(mode="json"), "settings": asdict(settings),
            "progress": progress_active()}))
        self._relay = ProgressRelay(f"{self.label}: ")
        req_r, self._req_w = os.pipe()
        self._rep_r, rep_w = os.pipe()
        cmd = [sys.executable, "-m", "compressor.runtime_process.worker", "--spec", str(spec_path),
               "--req-fd", str(req_r), "--rep-fd", str(rep_w)]
        with open(self.log_path, "wb") as log:
            try:
                # own session: a Ctrl-C in the terminal reaches only us, and close() decides what the worker gets
                self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                             pass_fds=(req_r, rep_w), env=worker_env(self.process.env),
                                             start_new_session=True, cwd=self._workdir)
            except OSError as exc:
                os.close(req_r), os.close(rep_w)
                self._close_fds()
                shutil.rmtree(self._workdir, ignore_errors=True)
                raise VerifyError(f"could not start the {self.name} worker process: {exc}") from exc
        os.close(req_r)  # the worker holds its own copies; ours would hide its exit from us
        os.close(rep_w)
        self._reader = LineReader(self._rep_r)
        self._finalizer = weakref.finalize(self, _finalize, self.proc, self._workdir)
        self._busy = True  # loading: an interrupt now should stop the worker, not queue a shutdown
        try:
            ready = self._receive(None, self.process.start_timeout_s, "load")
        except BaseException:
            self.close()
            raise
        self.load_s = float(ready.get("load_s", 0.0))

    # -- plumbing -------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        """The worker's PID (it also leads the process group of everything the runtime starts)."""
        return self.proc.pid

    def _close_fds(self) -> None:
        for fd in (getattr(self, "_req_w", None), getattr(self, "_rep_r", None)):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._req_w = self._rep_r = None  # type: ignore[assignment]

    def _keep_log(self) -> Path:
        kept = Path(tempfile.gettempdir()) / f"compressor-runtime-worker-{self.proc.pid}.log"
        try:  # the work directory goes away on close; keep the log for the user
            shutil.copyfile(self.log_path, kept)
        except OSError:
            return self.log_path
        return kept

    def _failure(self, what: str, reason: str, cls: type[VerifyError]) -> VerifyError:
        state = describe_exit(self.proc.poll())
        # the worker's traceback is for COMPRESSOR_DEBUG=1; otherwise its last error line says enough
        if os.environ.get("COMPRESSOR_DEBUG", "") not in ("", "0"):
            detail = f"Last log lines:\n{_tail(self.log_path)}"
        else:
            detail = f"The worker's log ends: {_last_error_line(self.log_path)}"
        return cls(f"{self.name} worker failed to {what} {self.label} ({reason}; {state}). {detail}",
                   hint=f"full log: {self._keep_log()}; COMPRESSOR_DEBUG=1 prints its last lines")

    def _next_reply(self, timeout_s: float) -> dict[str, Any]:
        """The next reply within ``timeout_s``; the worker's progress messages on the way are shown, not returned."""
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                message = self._reader.read(max(deadline - time.monotonic(), 0.0), alive=lambda: self.proc.poll() is None)
                if "progress" not in message:
                    return message
                self._relay.show(message["progress"])
        except ChannelTimeout:
            raise ChannelTimeout(f"no reply within {timeout_s:.0f} s") from None
        finally:
            self._relay.close()

    def _receive(self, req_id: int | None, timeout_s: float, what: str) -> dict[str, Any]:
        try:
            reply = self._next_reply(timeout_s)
        except ChannelTimeout as exc:
            err = self._failure(what, str(exc), RuntimeTimeoutError)
            self._kill()
            raise err from None
        except ChannelClosed as exc:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
            err = self._failure(what, str(exc), RuntimeCrashedError)
            self._kill()
            raise err from None
        if req_id is not None and reply.get("id") != req_id:
            err = self._failure(what, f"protocol error: reply {reply.get('id')} to request {req_id}", VerifyError)
            self._kill()
            raise err
        self._busy = False  # a reply came back: the pipes are in step again, whatever it says
        if not reply.get("ok"):
            message = f"{self.name} could not {what} {self.label}: {reply.get('error')}"
            cause = root_cause(self.log_path, str(reply.get("error") or ""))
            if cause:  # e.g. vLLM's EngineDeadError only says "see stack trace above"; the cause is in the log
                message += f" (the worker's log says: {cause})"
            if what == "load" and reply.get("error_type") in UNAVAILABLE:
                raise RuntimeUnavailableError(message, hint=reply.get("hint") or f"the worker's log: {self._keep_log()}")
            raise VerifyError(message, hint=reply.get("hint") or f"the worker's log: {self._keep_log()}")
        return dict(reply.get("result") or {})

    def _request(self, op: str, args: dict[str, Any], timeout_s: float | None = None) -> dict[str, Any]:
        if self._closed or self.proc.poll() is not None:
            raise VerifyError(f"the {self.name} worker for {self.label} is not running ({describe_exit(self.proc.poll())})",
                              hint="open the runtime again")
        self.resume()
        req_id, self._next_id = self._next_id, self._next_id + 1
        # stays True if we are interrupted (Ctrl-C) before the reply: close() then stops the worker
        # at once instead of queueing a shutdown behind a long request
        self._busy = True
        try:
            write_message(self._req_w, {"id": req_id, "op": op, "args": args})
        except ChannelClosed as exc:
            err = self._failure(op, str(exc), RuntimeCrashedError)
            self._kill()
            raise err from None
        return self._receive(req_id, timeout_s or self.process.request_timeout_s, op)

    def _kill(self, shm: set[str] | None = None) -> None:
        """Stop the worker's whole process group, and remove the shared memory it leaves behind."""
        # a killed engine cannot unlink its shared memory; note what it maps and remove it afterwards
        shm = set(shm or ()) | group_shared_memory(self.proc.pid)
        if self._suspended:
            kill_group(self.proc.pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            self._suspended = False
        stop_group(self.proc, shm)

    # -- suspension (quiet timing) --------------------------------------------------------

    def suspend(self) -> None:
        """Stop the worker's process group (SIGSTOP) so an idle runtime takes no CPU while another is timed."""
        if not self._suspended and not self._closed and self.proc.poll() is None:
            kill_group(self.proc.pid, signal.SIGSTOP)
            self._suspended = True

    def resume(self) -> None:
        """Continue a suspended worker (SIGCONT)."""
        if self._suspended:
            kill_group(self.proc.pid, signal.SIGCONT)
            self._suspended = False

    # -- Runtime --------------------------------------------------------------------------

    def score(self, windows: np.ndarray, top_k: int) -> TokenScores:
        """Score every next-token prediction of ``windows`` in the worker."""
        windows = np.ascontiguousarray(windows, dtype=np.int64)
        if windows.ndim != 2 or windows.shape[1] < 2:
            raise UsageError(f"windows must have shape [N, L] with L >= 2, got {windows.shape}")
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
        plain = [[int(t) for t in p] for p in prompts]
        return self._request("generate", {"prompts": plain, "max_new_tokens": int(max_new_tokens)})["tokens"]

    def latency(self, prompt_tokens: int, new_tokens: int, repeats: int, warmup: int) -> LatencySamples:
        """Time prefill and decode in the worker, and the CPU other processes took meanwhile."""
        ours = {os.getpid(), *group_pids(self.proc.pid)}  # this process only waits for the reply
        before, t0 = cpu_time_by_process(ours), time.perf_counter()
        r = self._request("latency", {"prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
                                      "repeats": repeats, "warmup": warmup})
        share = background_cpu_share(before, cpu_time_by_process(ours), time.perf_counter() - t0)
        return LatencySamples(list(r["prefill_s"]), list(r["decode_tok_s"]), int(r["prompt_tokens"]),
                              int(r["new_tokens"]), share)

    def describe(self) -> dict[str, Any]:
        """The runtime's own description (asked once, then cached), plus the worker's load time."""
        if self._info is None:
            self._info = self._request("describe", {}, timeout_s=120)
            self._info["load_s"] = self.load_s
            self._info["isolated"] = True
        return dict(self._info)

    def close(self) -> None:
        """Ask the worker to shut down; stop its process group if it does not, or if it is mid-request."""
        if self._closed:
            return
        self._closed = True
        self.resume()
        shm = group_shared_memory(self.proc.pid)
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


def open_isolated(exporter: Exporter, artifact: Path, options: Any, settings: RuntimeSettings,
                  label: str = "") -> IsolatedRuntime:
    """Open ``artifact`` in ``exporter``'s runtime inside a new worker process."""
    return IsolatedRuntime(exporter, artifact, options, settings, label)

