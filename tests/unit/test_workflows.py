"""The GitHub Actions workflows pass actionlint, and the check really catches mistakes.

actionlint comes from the dev extra (a PyPI wheel with the binary, see README); when
shellcheck is on PATH it also checks the `run:` scripts.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO, VENV_BIN

WORKFLOWS = REPO / ".github" / "workflows"


@pytest.fixture(scope="module")
def actionlint() -> str:
    binary = VENV_BIN / "actionlint"
    found = str(binary) if binary.exists() else shutil.which("actionlint")
    assert found, "actionlint is not installed: run `bash bootstrap.sh --dev` (the dev extra ships it)"
    return found


def lint(actionlint: str, *files: Path) -> subprocess.CompletedProcess:
    return subprocess.run([actionlint, "-no-color", *map(str, files)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_workflows_pass_actionlint(actionlint):
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert {f.name for f in files} >= {"ci.yml", "retrain.yml"}
    proc = lint(actionlint, *files)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_rejects_a_broken_workflow(actionlint, tmp_path):
    broken = tmp_path / ".github" / "workflows" / "broken.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(
        "on: push\n"
        "jobs:\n"
        "  build:\n"
        "    runs-on: ubuntu-latest\n"
        "    needs: no-such-job\n"
        "    steps:\n"
        "      - run: echo ${{ secret.TOKEN }}\n")
    proc = lint(actionlint, broken)
    assert proc.returncode != 0
    assert 'undefined variable "secret"' in proc.stdout, proc.stdout
    assert "no-such-job" in proc.stdout, proc.stdout


def test_retrain_workflow_is_scheduled_dispatchable_and_runs_the_entry_point():
    wf = yaml.safe_load((WORKFLOWS / "retrain.yml").read_text())
    triggers = wf[True]  # YAML 1.1 reads the key `on` as true
    assert triggers["schedule"][0]["cron"]
    assert triggers["workflow_dispatch"]["inputs"]["force"]["type"] == "boolean"
    runs = "\n".join(step.get("run", "") for step in wf["jobs"]["retrain"]["steps"])
    assert "bash bootstrap.sh" in runs and ".venv/bin/pipeline-retrain" in runs
    assert "GITHUB_STEP_SUMMARY" in runs and "dvc push" in runs
