"""The gate's measure of a busy machine: CPU time other processes take while a model is timed."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from compressor.runtime_process.process_group import background_cpu_share, cpu_time_by_process


def test_the_share_counts_a_process_that_runs_through_the_window_and_not_this_one():
    ours = {os.getpid()}
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # it is running before the window opens
        before, t0 = cpu_time_by_process(ours), time.perf_counter()
        time.sleep(1.0)
        share = background_cpu_share(before, cpu_time_by_process(ours), time.perf_counter() - t0)
        busy_here, t1 = cpu_time_by_process(ours), time.perf_counter()
        x = 0
        while time.perf_counter() - t1 < 0.5:  # this process's own work is not background
            x += 1
        self_share = background_cpu_share(busy_here, cpu_time_by_process(ours | {hog.pid}), time.perf_counter() - t1)
    finally:
        hog.kill()
        hog.wait()
    cpus = len(os.sched_getaffinity(0))
    assert 0.8 / cpus < share <= 1.05, share
    assert self_share < 0.5 / cpus, self_share
