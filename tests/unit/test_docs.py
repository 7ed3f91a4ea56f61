"""The README stays true: every hook with its exact signature, every exit code, the quick start."""

from __future__ import annotations

import inspect
import re

from compressor import hookspecs
from compressor.errors import ExitCode
from tests_helpers import README


def _hookspecs():
    return [f for name, f in vars(hookspecs).items()
            if callable(f) and hasattr(f, "compressor_spec")]


def test_every_hook_is_documented_with_its_exact_signature():
    text = README.read_text()
    specs = _hookspecs()
    assert specs, "no hookspecs found"
    for fn in specs:
        sig = str(inspect.signature(fn)).replace("'", "")
        assert f"`{fn.__name__}{sig}`" in text, f"README lacks `{fn.__name__}{sig}`"


def test_readme_exit_code_table_is_the_codes_table():
    from compressor.errors import EXIT_CODE_MEANINGS

    section = README.read_text().split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    table = {int(c): m for c, m in re.findall(r"^\| (\d+) \| (.+) \|$", section, re.M)}
    assert set(EXIT_CODE_MEANINGS) == set(ExitCode), "a code without a meaning in compressor.errors"
    assert table == {int(c): m for c, m in EXIT_CODE_MEANINGS.items()}


def test_quick_start_is_two_commands_and_ci_calls_the_test_command():
    text = README.read_text()
    block = text.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["make demo", "make test"]
    assert "make test" in (README.parent / ".ci" / "run").read_text()
