"""Thread counts follow the CPUs the process may use (taskset, a cpuset), not every CPU of the machine."""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = """
import os
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
from compressor.api import usable_cpu_count
from compressor_exporters.onnx.session import session_options
print(usable_cpu_count(), session_options().intra_op_num_threads)
"""


def test_usable_cpu_count_and_onnx_threads_follow_the_affinity_mask():
    from compressor.api import usable_cpu_count

    assert usable_cpu_count() == len(os.sched_getaffinity(0))
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1", "1"], out
