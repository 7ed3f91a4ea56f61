"""The gate's measure of a busy machine: CPU time other processes take while a model is timed."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from compressor.runtime_process.process_group import background_cpu_share, cpu_time_by_process

# it measures other processes' CPU time: alone on the machine, not beside another test worker
pytestmark = pytest.mark.serial


def test_a_busy_process_is_seen_at_its_share_of_the_machine_and_the_measuring_one_is_not():
    ours = {os.getpid()}
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # it is running before the window opens
        before, t0 = cpu_time_by_process(ours), time.perf_counter()
        time.sleep(1.0)
        after, wall = cpu_time_by_process(ours), time.perf_counter() - t0
    finally:
        hog.kill()
        hog.wait()
    assert os.getpid() not in before and os.getpid() not in after  # the measuring process never counts
    assert hog.pid in before and hog.pid in after
    # only the hog's CPU, so that other load on a shared machine cannot move the figure: one process
    # busy through the window is about 1/cores of the machine (less when the machine is oversubscribed)
    cpus = len(os.sched_getaffinity(0))
    only_hog = background_cpu_share({hog.pid: before[hog.pid]}, {hog.pid: after[hog.pid]}, wall)
    assert 0.3 / cpus < only_hog <= 1.05 / cpus, only_hog
    # and everything else, the hog included, is at least that
    assert background_cpu_share(before, after, wall) >= only_hog - 1e-9


def test_a_process_that_started_in_the_window_counts_whole_and_an_empty_reading_is_unknown():
    assert background_cpu_share({}, {42: 2 * 10**9}, 1.0) == 2.0 / len(os.sched_getaffinity(0))
    assert background_cpu_share({42: 5}, {}, 1.0) is None and background_cpu_share({}, {1: 1}, 0.0) is None
