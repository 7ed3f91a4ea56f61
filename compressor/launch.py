"""``compress build --nproc N``: start N ranks of the same build on this machine, as torchrun would.

The ranks get torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and
run ``python -m compressor build`` with the same arguments, minus ``--nproc``. The launcher is
here rather than torchrun itself because torchrun reports every failure as exit 1: this one
stops the other ranks when one fails and exits with the failed rank's documented code. For
several machines, use torchrun (see docs/scaling.md).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

from compressor.errors import ExitCode
from compressor.resources import usable_cpu_count

SETTLE_S = 3.0  # ranks that lost a peer exit within this time, quietly (143)
STOP_GRACE_S = 60.0  # how long a stopped rank may take to remove its staging directory


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def strip_nproc(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def launch(nproc: int, argv: Sequence[str], module: bool = True, env: Mapping[str, str] | None = None) -> int:
    """Run ``python -m compressor <argv>`` (``python <argv>`` without ``module``) as ``nproc`` ranks.

    Returns 0, or the exit code of the first rank that failed.
    """
    env = {**(os.environ if env is None else env), "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port())}
    # the cores are shared between the ranks (torchrun sets 1; a share of the cores wastes fewer of them)
    env.setdefault("OMP_NUM_THREADS", str(max(1, usable_cpu_count() // nproc)))
    command = [sys.executable, *(["-m", "compressor"] if module else []), *argv]
    procs = [subprocess.Popen(command,
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(nproc)]
    try:
        while any(p.poll() is None for p in procs) and not any(p.poll() not in (None, 0) for p in procs):
            time.sleep(0.2)
    except KeyboardInterrupt:
        _stop(procs, signal.SIGINT)
        return int(ExitCode.INTERRUPTED)
    if all(p.returncode == 0 for p in procs):
        return 0
    _settle(procs)
    _stop(procs, signal.SIGTERM)
    rank, code = _first_cause(procs)
    if code < 0:
        code = 128 - code  # killed by a signal (e.g. the OOM killer's SIGKILL -> 137)
    sys.stderr.write(f"rank {rank} of {nproc} stopped with exit {code}; the other ranks were stopped and "
                     "nothing was written\n")
    return code


def _settle(procs: list[subprocess.Popen[bytes]]) -> None:
    """Give the ranks a moment to exit on their own, so the one that failed first can be told apart."""
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.1)


def _first_cause(procs: list[subprocess.Popen[bytes]]) -> tuple[int, int]:
    """The rank whose failure stopped the run: a rank that exited 143 only lost its peers."""
    failed = [(r, p.returncode) for r, p in enumerate(procs) if p.returncode not in (None, 0)]
    causes = [f for f in failed if f[1] != int(ExitCode.TERMINATED)] or failed
    return causes[0]


def _stop(procs: list[subprocess.Popen[bytes]], sig: int) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(sig)
    deadline = time.monotonic() + STOP_GRACE_S
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
