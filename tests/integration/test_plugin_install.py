"""A real install of an out-of-tree plugin package into a fresh venv is discovered by `compress plugins`."""

from __future__ import annotations

import json
import site
import subprocess
import sys
import venv

import pytest

from tests_helpers import REPO

pytestmark = [pytest.mark.slow, pytest.mark.serial]  # installs into the venv that other tests import from


def test_pip_installed_plugin_is_discovered(tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    purelib = subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                      text=True).strip()
    # see the project's own environment (torch, compressor, ...) without copying it
    # addsitedir also runs the parent's .pth files (editable installs of the host and built-ins)
    lines = [f"import site; site.addsitedir({d!r})" for d in site.getsitepackages()]
    with open(f"{purelib}/parent.pth", "w") as f:
        f.write("\n".join(lines) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", purelib, str(REPO / "tests" / "fixtures" / "toykit")], check=True)
    out = subprocess.run([str(py), "-m", "compressor", "plugins", "--json"], capture_output=True, text=True,
                         check=True, cwd=tmp_path)
    data = json.loads(out.stdout)
    toy = next(p for p in data["plugins"] if p["name"] == "toykit")
    assert toy["dist"] == "compressor-toykit" and toy["version"] == "0.1" and toy["error"] is None
    assert "kit_drop_last" in data["methods"] and "kit_hf" in data["exporters"]
