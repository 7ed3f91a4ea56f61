"""The CLI reaches every documented exit code, each with one message and (for errors) a hint.

1 is reached only through a deliberate internal error (a host function made to raise); 143 needs
a real SIGTERM, so it runs the `compress` script in a subprocess.
"""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
from test_kills import COMPRESS, FAST, start, wait_for
from typer.testing import CliRunner

from compressor.cli import app
from compressor.errors import EXIT_CODE_MEANINGS, ExitCode

runner = CliRunner()
BASE = ["--method", "kit_drop_last", "--export", "kit_hf", *FAST]
# what each code needs on top of a tiny build; the line that must start its one message
SCENARIOS = {
    ExitCode.OK: ([], None),
    ExitCode.USAGE: (["--device", "banana"], "error:"),
    ExitCode.INPUT: (["--calib", "/nonexistent/data.txt", "--method", "wanda"], "error:"),
    ExitCode.PLUGIN: (["--method", "kit_explode"], "error:"),
    ExitCode.VERIFY_FAILED: (["--min-top1", "1.0", "--max-ppl-increase", "0"], "budget failed:"),
    ExitCode.RESOURCE: (["--export", "kit_diskfull"], "error:"),
    ExitCode.VERIFY_ERROR: (["--export", "kit_crash", "-E", "crash_in=score", "-E", "how=raise"], "verify error:"),
    ExitCode.INTERRUPTED: (["--method", "kit_interrupt"], "interrupted:"),
}


@pytest.mark.parametrize("code", list(SCENARIOS), ids=lambda c: f"{int(c)}-{c.name.lower()}")
def test_the_cli_reaches_each_code_with_one_message_and_a_hint(toykit, tiny_model_dir, tmp_path, code):
    extra, head = SCENARIOS[code]
    result = runner.invoke(app, ["build", "--model", str(tiny_model_dir), "--out", str(tmp_path / "out"),
                                 *BASE, *extra])
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    if head is None:
        return
    assert len([ln for ln in result.stderr.splitlines() if ln.startswith(head)]) >= 1, result.stderr
    if code not in (ExitCode.VERIFY_FAILED, ExitCode.INTERRUPTED):
        assert len([ln for ln in result.stderr.splitlines() if ln.startswith("error:")]) <= 1, result.stderr
        assert "hint:" in result.stderr, result.stderr


def test_internal_error_is_code_1_only_for_a_deliberate_bug(toykit, tiny_model_dir, tmp_path, monkeypatch):
    import compressor.pipeline as pipeline

    def bug(*args, **kwargs):
        raise ZeroDivisionError("a deliberate bug in the host")

    monkeypatch.setattr(pipeline, "_assemble_report", bug)
    result = runner.invoke(app, ["build", "--model", str(tiny_model_dir), "--out", str(tmp_path / "out"), *BASE])
    assert result.exit_code == ExitCode.INTERNAL, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("internal error:")]
    assert lines == ["internal error: ZeroDivisionError: a deliberate bug in the host"]
    assert "hint: set COMPRESSOR_DEBUG=1" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_sigterm_is_code_143(toykit, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    env = {"PYTHONPATH": str(toykit)}
    proc = start(["build", "--model", str(tiny_model_dir), "--out", str(out), *BASE], env)
    wait_for(lambda: any(p.name.startswith(".out.partial-") for p in tmp_path.iterdir()))
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == ExitCode.TERMINATED == 143, stderr
    assert [ln for ln in stderr.splitlines() if ln.startswith("terminated:")], stderr


def test_replay_mismatch_is_code_8(toykit, tiny_model_dir, tmp_path):
    import json

    out = tmp_path / "out"
    built = runner.invoke(app, ["build", "--model", str(tiny_model_dir), "--out", str(out), *BASE, "--no-verify"])
    assert built.exit_code == 0, built.output
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["versions"]["numpy"] = "0.0"
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    result = runner.invoke(app, ["build", "--replay", str(tmp_path / "m.json"), "--out", str(tmp_path / "again")])
    assert result.exit_code == ExitCode.REPLAY_MISMATCH, result.output
    assert [ln for ln in result.stderr.splitlines() if ln.startswith("error:")] and "hint:" in result.stderr
    assert "Traceback" not in result.output and not (tmp_path / "again").exists()


def test_every_code_in_the_table_is_reached_here():
    reached = set(SCENARIOS) | {ExitCode.INTERNAL, ExitCode.TERMINATED, ExitCode.REPLAY_MISMATCH}
    assert reached == set(EXIT_CODE_MEANINGS) == set(ExitCode)
    assert subprocess.run([COMPRESS, "--help"], capture_output=True).returncode == 0
