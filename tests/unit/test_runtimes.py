"""A missing runtime skips a test locally and fails it under COMPRESSOR_REQUIRE_RUNTIMES=1 (what .ci/run sets)."""

from __future__ import annotations

import pytest
from runtimes import REQUIRE_ENV, import_problem, require_runtime, runtimes_required

MISSING = "compressor_no_such_runtime_xyz"


def test_a_missing_runtime_skips_when_runtimes_are_not_required(monkeypatch):
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    assert not runtimes_required()
    with pytest.raises(pytest.skip.Exception, match=f"{MISSING} is not installed"):
        require_runtime(MISSING)
    monkeypatch.setenv(REQUIRE_ENV, "0")
    with pytest.raises(pytest.skip.Exception):
        require_runtime(MISSING)


def test_a_missing_runtime_fails_when_runtimes_are_required(monkeypatch):
    monkeypatch.setenv(REQUIRE_ENV, "1")
    assert runtimes_required()
    with pytest.raises(pytest.fail.Exception, match=f"{MISSING} is not installed.*{REQUIRE_ENV}=1"):
        require_runtime(MISSING)


@pytest.mark.parametrize("in_subprocess", [False, True])
def test_an_installed_runtime_that_does_not_import_counts_as_missing(monkeypatch, tmp_path, in_subprocess):
    name = f"compressor_broken_runtime_{int(in_subprocess)}"
    (tmp_path / f"{name}.py").write_text('raise ImportError("libbroken.so: cannot open shared object file")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    problem = import_problem(name, in_subprocess)
    assert problem is not None and problem.startswith(f"`import {name}` fails") and "libbroken.so" in problem


@pytest.mark.parametrize("in_subprocess", [False, True])
def test_a_runtime_that_imports_passes(monkeypatch, in_subprocess):
    monkeypatch.setenv(REQUIRE_ENV, "1")
    assert import_problem("json", in_subprocess) is None
    require_runtime("json")  # neither skips nor fails
