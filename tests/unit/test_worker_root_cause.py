"""An error that only says "see the stack trace above" gets the cause from the worker's log."""

from __future__ import annotations

from compressor.runtime_process.client import root_cause

LOG = """\
(MainProcess pid=1) WARNING [base.py:380] ValueError: Tokenizer not available when `skip_tokenizer_init=True`
(Worker pid=2) ERROR [multiproc_executor.py:1063] RuntimeError: Unsupported CPU attention configuration: head_dim=16
(EngineCore pid=3) ERROR [core.py:1512] RuntimeError: Worker failed with error 'Unsupported CPU attention configuration: head_dim=16', please check the stack trace above for the root cause
vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. See stack trace (above) for the root cause.
"""


def test_the_last_cause_line_before_the_engine_died_is_named(tmp_path):
    log = tmp_path / "worker.log"
    log.write_text(LOG)
    reported = "EngineDeadError: EngineCore encountered an issue. See stack trace (above) for the root cause."
    cause = root_cause(log, reported)
    assert cause is not None and cause.startswith("RuntimeError: Worker failed with error 'Unsupported CPU attention")


def test_an_error_that_says_what_happened_gets_nothing_added(tmp_path):
    log = tmp_path / "worker.log"
    log.write_text(LOG)
    assert root_cause(log, "RuntimeError: vLLM produced 3 tokens instead of 4") is None
    assert root_cause(tmp_path / "missing.log", "see the stack trace") is None
