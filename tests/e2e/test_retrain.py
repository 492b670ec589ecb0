"""`pipeline-retrain` end to end on the tiny pipeline: retrain, no-op, params change, bad data.

The first call (a full dvc repro) is the session fixture `tiny_retrained`; every other
test works on its own copy of that repo.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import pytest
import yaml
from conftest import VENV_BIN, run

from pipeline import retrain
from pipeline.idx import read_idx, write_idx

pytestmark = pytest.mark.slow

RETRAIN = str(VENV_BIN / "pipeline-retrain")
MODEL = "tiny-classifier"


def champion(repo: Path) -> str:
    """The version @champion points to, read with the MLflow client."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo}/mlruns/mlflow.db")
    return str(client.get_registered_model(MODEL).aliases["champion"])


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def shown(proc) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"


def test_first_call_retrains_promotes_and_reports(tiny_retrained):
    first, repo = tiny_retrained.first, tiny_retrained.repo
    assert first.returncode == retrain.EXIT_PROMOTED == 10, shown(first)
    assert "retrained and PROMOTED: tiny-classifier v1 is @champion" in first.stdout
    report = (repo / "reports/retrain.md").read_text()
    assert "Stages re-run: `download`, `validate`, `prepare`, `tune`, `train`, `evaluate`, `register`" in report
    assert "| new model | v1 |" in report and "| champion before | none |" in report
    assert "Great Expectations: **passed**" in report
    best = json.loads((repo / "reports/tune/best_params.json").read_text())
    assert f"Study `{best['study_name']}`, trial {best['best_trial']}" in report
    assert "| reports/evaluation/metrics.json | accuracy " in report  # dvc metrics diff table
    assert champion(repo) == "1"


def test_second_call_exits_early_and_fast(tiny_retrained, tmp_path):
    repo = tiny_retrained.copy(tmp_path / "repo")
    report = repo / "reports/retrain.md"
    before = report.read_text()
    started = time.monotonic()
    proc = run([RETRAIN], cwd=repo)
    seconds = time.monotonic() - started
    assert proc.returncode == retrain.EXIT_NOTHING_TO_DO == 0, shown(proc)
    assert "nothing changed since the last successful run" in proc.stdout
    assert "Running stage" not in proc.stdout + proc.stderr
    assert report.read_text() == before  # no run, no new report
    assert seconds < 5, f"the no-change path took {seconds:.1f} s"


def test_params_change_retrains_and_reports_both_scores(tiny_retrained, tmp_path):
    repo = tiny_retrained.copy(tmp_path / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["epochs"] = 3
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    proc = run([RETRAIN, "--report", "retrain-2.md"], cwd=repo)
    assert proc.returncode in (retrain.EXIT_PROMOTED, retrain.EXIT_CHALLENGER), shown(proc)
    assert "changed: train: param train modified" in proc.stdout  # the stage tracks the section
    assert "Running stage 'tune'" not in proc.stdout  # only train and what follows re-ran
    decision = json.loads((repo / "reports/registry/decision.json").read_text())
    assert decision["version"] == "2" and decision["champion_version"] == "1"
    expected = retrain.EXIT_PROMOTED if decision["decision"] == "promoted" else retrain.EXIT_CHALLENGER
    assert proc.returncode == expected
    report = (repo / "retrain-2.md").read_text()
    assert "Stages re-run: `train`, `evaluate`, `register`" in report
    assert f"**{decision['decision']}**: {decision['reason']}" in report
    assert f"| new model | v2 | {decision['accuracy']:.4f} |" in report
    assert f"| champion before | v1 | {decision['champion_accuracy']:.4f} |" in report
    assert champion(repo) == ("2" if decision["decision"] == "promoted" else "1")


def test_failing_validation_exits_1_and_keeps_the_champion(tiny_retrained, tmp_path):
    repo = tiny_retrained.copy(tmp_path / "repo")
    specs = yaml.safe_load((repo / "datasets.yaml").read_text())
    good = Path(specs["tiny"]["sources"][0])
    bad = tmp_path / "bad-data"
    shutil.copytree(good, bad)
    # Labels outside the class set, pinned so the download accepts them: validation must stop it.
    entry = specs["tiny"]["files"]["train_labels"]
    labels = read_idx(good / entry["name"]).copy()
    labels[:5] = 42
    write_idx(bad / entry["name"], labels)
    from helpers_idx import content_sha256

    entry["sha256"] = content_sha256(labels)
    specs["tiny"]["sources"] = [str(bad)]
    (repo / "datasets.yaml").write_text(yaml.safe_dump(specs, sort_keys=False))
    decision_before = sha(repo / "reports/registry/decision.json")
    model_before = sha(repo / "models/model.keras")

    proc = run([RETRAIN], cwd=repo)
    assert proc.returncode == retrain.EXIT_FAILED == 1, shown(proc)
    assert "changed: download: dep datasets.yaml modified" in proc.stdout
    assert "Running stage 'prepare'" not in proc.stdout
    report = (repo / "reports/retrain.md").read_text()
    assert "retraining FAILED" in report and "Great Expectations: **FAILED**" in report
    assert "> ERROR [validate]:" in report and "label" in report
    assert "No new model version was registered by this run" in report
    assert champion(repo) == "1"
    assert sha(repo / "reports/registry/decision.json") == decision_before
    assert sha(repo / "models/model.keras") == model_before
    # dvc.lock still holds the last good run, so the next call tries again instead of exiting early.
    status = run("dvc status --json", cwd=repo)
    assert "validate" in json.loads(status.stdout), status.stdout
