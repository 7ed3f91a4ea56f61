"""Signals, concurrent builds, full disks and kills at random points, through the real `compress` script.

After every one of them ``--out`` is absent or complete: complete means its manifest lists every
file with its SHA-256 and the files match. Nothing is left beside ``--out`` except what a SIGKILL
leaves, and the next build removes that, saying so.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_bad_input import debris, tree_digest

from compressor.errors import ExitCode
from compressor.model_loading import file_sha256

COMPRESS = str(Path(sys.executable).parent / "compress")
FAST = ["--calib-samples", "2", "--calib-seq-len", "16", "--eval-samples", "2", "--eval-seq-len", "32",
        "--set", "verify.latency.rounds=3", "--set", "verify.latency.prompt_tokens=8",
        "--set", "verify.latency.new_tokens=4", "--set", "verify.generate_tokens=4"]
KILL_EXPORTERS = ("vllm", "onnx", "gguf", "transformers")
KILL_CASES = ["signal-sigint-during-imports", "signal-sigterm-during-imports", "signal-sigint-mid-build",
              "signal-sigterm-mid-build", "signal-sigkill-then-next-build-cleans", "concurrent-builds-same-out",
              "out-replaced-during-build", *(f"disk-full-tmpfs-{e}" for e in KILL_EXPORTERS),
              *(f"random-kills-{e}" for e in KILL_EXPORTERS)]


def start(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start the real `compress` script (its own entry point and signal handlers)."""
    return subprocess.Popen([COMPRESS, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def assert_complete_or_absent(out: Path) -> str:
    """``out`` is absent, or every file its manifest lists is there with that SHA-256, and nothing else."""
    if not out.exists():
        return "absent"
    manifest = json.loads((out / "manifest.json").read_text())
    present = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"manifest.json"}
    assert present == set(manifest["files"]), f"files differ from the manifest: {present ^ set(manifest['files'])}"
    for name, entry in manifest["files"].items():
        assert file_sha256(out / name) == entry["sha256"], f"{name} does not match its manifest hash"
    return "complete"


@pytest.fixture
def toykit_env(toykit) -> dict[str, str]:
    """PYTHONPATH that lets a `compress` subprocess find the toykit plugin distribution."""
    return {"PYTHONPATH": os.pathsep.join([str(toykit), os.environ.get("PYTHONPATH", "")])}


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, ExitCode.INTERRUPTED), (signal.SIGTERM, ExitCode.TERMINATED)],
                         ids=["sigint", "sigterm"])
def test_signal_during_imports_is_one_line(tiny_model_dir, tmp_path, sig, code):
    proc = start(["build", "--model", str(tiny_model_dir), "--out", str(tmp_path / "out"), "--no-verify"])
    time.sleep(0.4)  # the interpreter is up; torch and transformers are still importing
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert not (tmp_path / "out").exists() and not debris(tmp_path / "out")


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, ExitCode.INTERRUPTED), (signal.SIGTERM, ExitCode.TERMINATED)],
                         ids=["sigint", "sigterm"])
def test_signal_mid_build_cleans_up(toykit_env, tiny_model_dir, tmp_path, sig, code):
    out, before = tmp_path / "out", tree_digest(tiny_model_dir)
    proc = start(["build", "--model", str(tiny_model_dir), "--out", str(out), "--export", "kit_hf", *FAST],
                 toykit_env)
    wait_for(lambda: any(n.startswith(".out.partial-") for n in debris(out)))
    time.sleep(0.5)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr and ("interrupted:" in stderr or "terminated:" in stderr), stderr
    assert not out.exists() and not debris(out), debris(out)
    assert tree_digest(tiny_model_dir) == before


def test_sigkill_leaves_debris_that_the_next_build_removes(toykit_env, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    proc = start(["build", "--model", str(tiny_model_dir), "--out", str(out), "--export", "kit_hf", *FAST],
                 toykit_env)
    wait_for(lambda: any(n.startswith(".out.partial-") for n in debris(out)))
    proc.kill()
    proc.communicate(timeout=60)
    left = debris(out)
    assert any(n.startswith(".out.partial-") for n in left) and ".out.lock" in left
    rerun = subprocess.run([COMPRESS, "build", "--model", str(tiny_model_dir), "--out", str(out), "--export",
                            "kit_hf", "--no-verify"], capture_output=True, text=True, env={**os.environ, **toykit_env})
    assert rerun.returncode == 0, rerun.stderr
    assert f"took over the lock of build PID {proc.pid}" in rerun.stderr
    assert "left by a build that was killed" in rerun.stderr and ".out.partial-" in rerun.stderr
    assert not debris(out) and assert_complete_or_absent(out) == "complete"


def test_concurrent_builds_on_one_out(toykit_env, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    first = start(["build", "--model", str(tiny_model_dir), "--out", str(out), "--export", "kit_hf", *FAST],
                  toykit_env)
    wait_for(lambda: (out.parent / ".out.lock").exists() and (out.parent / ".out.lock").read_text().strip())
    second = subprocess.run([COMPRESS, "build", "--model", str(tiny_model_dir), "--out", str(out), "--export",
                             "kit_hf", "--force", "--no-verify"], capture_output=True, text=True,
                            env={**os.environ, **toykit_env})
    assert second.returncode == ExitCode.USAGE, second.stderr
    assert f"another build (PID {first.pid}) is writing --out" in second.stderr
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert assert_complete_or_absent(out) == "complete" and not debris(out)


def test_out_replaced_during_the_build_is_never_clobbered(toykit_env, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("the output that existed when the build started")
    proc = start(["build", "--model", str(tiny_model_dir), "--out", str(out), "--export", "kit_hf", "--force",
                  *FAST], toykit_env)
    wait_for(lambda: any(n.startswith(".out.partial-") for n in debris(out)))
    shutil.rmtree(out)  # something else (not a compress build) puts its own output there meanwhile
    out.mkdir()
    (out / "theirs.txt").write_text("not ours to replace")
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == ExitCode.USAGE, stderr
    assert "was replaced or written to by something else during this build" in stderr
    assert sorted(p.name for p in out.iterdir()) == ["theirs.txt"] and not debris(out)


# the exporter's own output must be what fills the disk: a 64 MiB tmpfs passes preflight, then a
# filler takes the rest as soon as the build has staged, before the model is even loaded
DISK_FULL_SCRIPT = r"""
set -u
mount -t tmpfs -o size=64m tmpfs "$D" || exit 90
"$COMPRESS" build --model "$MODEL" --out "$D/out" --export "$FORMAT" --no-verify --force 2>"$D.stderr" &
pid=$!
while ! ls -d "$D"/.out.partial-* >/dev/null 2>&1; do kill -0 $pid 2>/dev/null || break; sleep 0.01; done
dd if=/dev/zero of="$D/filler" bs=1M 2>/dev/null
wait $pid; rc=$?
rm -f "$D/filler"
ls -A "$D" > "$D.listing"
exit $rc
"""


@pytest.mark.parametrize("fmt", KILL_EXPORTERS)
def test_disk_full_on_a_small_tmpfs(tiny_model_dir, tmp_path, fmt):
    """A real full disk (a tmpfs in a private mount namespace) while each exporter writes: exit 6, nothing left."""
    if shutil.which("unshare") is None:
        pytest.fail("util-linux `unshare` is needed for the disk-full test (apt install util-linux)")
    mount = tmp_path / "small"
    mount.mkdir()
    before = tree_digest(tiny_model_dir)
    env = {**os.environ, "D": str(mount), "COMPRESS": COMPRESS, "MODEL": str(tiny_model_dir), "FORMAT": fmt}
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", DISK_FULL_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=600)
    stderr = Path(f"{mount}.stderr").read_text() if Path(f"{mount}.stderr").exists() else proc.stderr
    assert proc.returncode != 90, f"could not mount a tmpfs in a private namespace: {proc.stderr}"
    assert proc.returncode == ExitCode.RESOURCE, stderr
    assert "disk filled up" in stderr and "Traceback" not in stderr, stderr
    assert Path(f"{mount}.listing").read_text().split() == [], "left on the full disk: " + \
        Path(f"{mount}.listing").read_text()
    assert tree_digest(tiny_model_dir) == before


@pytest.mark.parametrize("fmt", KILL_EXPORTERS)
def test_kills_at_random_points_leave_out_absent_or_complete(tiny_model_dir, tmp_path, fmt):
    """Three builds per exporter, each stopped by another signal at a random moment; then one that finishes."""
    rng = random.Random(f"kills-{fmt}")
    verify = ["--no-verify"] if fmt == "vllm" else []  # vLLM's start-up would make each run a minute long
    args = ["build", "--model", str(tiny_model_dir), "--export", fmt, *FAST, *verify, "--force"]
    out, before = tmp_path / "out", tree_digest(tiny_model_dir)
    t0 = time.monotonic()
    full = subprocess.run([COMPRESS, *args, "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr
    duration = time.monotonic() - t0
    assert assert_complete_or_absent(out) == "complete"
    outcomes = []
    for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
        proc = start([*args, "--out", str(out)])
        time.sleep(rng.uniform(0.5, duration))
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=300)
        assert "Traceback" not in stderr, stderr
        outcomes.append((sig.name, proc.returncode, assert_complete_or_absent(out)))
        if sig != signal.SIGKILL:
            assert not debris(out), debris(out)
    rerun = subprocess.run([COMPRESS, *args, "--no-verify", "--out", str(out)], capture_output=True, text=True,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert assert_complete_or_absent(out) == "complete" and not debris(out), outcomes
    assert tree_digest(tiny_model_dir) == before


def test_an_interrupted_heal_leaves_nothing(tiny_model_dir, tmp_path):
    out, events, before = tmp_path / "out", tmp_path / "events.jsonl", tree_digest(tiny_model_dir)
    proc = start(["build", "--model", str(tiny_model_dir), "--out", str(out), "--method", "layer_drop", "--layers",
                  "1", "--heal", "distill", "-H", "steps=100000", "-H", "holdout=2", "-H", "batch_size=2",
                  "--heal-samples", "16", "--heal-seq-len", "32", "--calib-samples", "4", "--calib-seq-len", "32",
                  "-e", "transformers", "--no-verify", "--log-json", str(events)])
    wait_for(lambda: events.is_file() and '"step": "heal distill"' in events.read_text())
    time.sleep(1.0)  # inside the training loop: the teacher is loaded and steps are running
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == ExitCode.INTERRUPTED, stderr
    assert "Traceback" not in stderr and "interrupted:" in stderr, stderr
    assert not out.exists() and not debris(out), debris(out)
    assert tree_digest(tiny_model_dir) == before
