"""`dvc repro train` (download -> ... -> tune -> train) on a tiny generated dataset in a temp
copy of the repo: what the Optuna study and MLflow hold afterwards, what the user commands
show, what re-runs do, and how bad input fails.

One good run (module fixture) is shared. The tests that change params in place run in file
order on that copy; the others each work on their own copy of it.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import VENV_BIN, copy_repo, idx_dataset_entry, run, unused_port_url, write_idx_dataset

pytestmark = pytest.mark.slow

TRAIN_PER_CLASS, TEST_PER_CLASS, K = 30, 5, 10
N_TRIALS, TUNE_EPOCHS, TRAIN_EPOCHS = 3, 2, 2
STORAGE = "sqlite:///optuna.db"  # relative: inside the repo copy
NO_MLFLOW_ENV = {"MLFLOW_TRACKING_URI": ""}  # the project default sqlite:///mlruns/mlflow.db


def edit_params(repo: Path, **sections) -> None:
    """Update params.yaml: ``edit_params(repo, tune={"n_trials": 4})`` (values merged)."""
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for name, values in sections.items():
        params.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def ok(proc) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def error_paragraph(stderr: str, stage: str) -> str:
    import re

    match = re.search(rf"ERROR \[{stage}\]: (.*?)(?:\n\s*\n|\Z)", stderr, re.S)
    assert match, f"no ERROR [{stage}] paragraph in stderr:\n{stderr}"
    return " ".join(match.group(1).split())


def storage_url(repo: Path) -> str:
    return f"sqlite:///{repo}/optuna.db"


def load_study(repo: Path, name: str | None = None):
    import optuna

    name = name or json.loads((repo / "reports/tune/best_params.json").read_text())["study_name"]
    return optuna.load_study(study_name=name, storage=storage_url(repo))


def finished(study) -> dict[int, tuple[str, float | None]]:
    return {t.number: (t.state.name, t.value) for t in study.trials
            if t.state.name in ("COMPLETE", "PRUNED")}


def mlflow_client(repo: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{repo}/mlruns/mlflow.db")


def runs_named(client, name: str) -> list:
    exp = client.get_experiment_by_name("tiny")
    return client.search_runs([exp.experiment_id], f"tags.mlflow.runName = '{name}'",
                              order_by=["attributes.start_time DESC"])


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A repo copy with a `tiny` dataset (local folder source) after one `dvc repro train`."""
    root = tmp_path_factory.mktemp("tune_train")
    files = write_idx_dataset(root / "source", TRAIN_PER_CLASS, TEST_PER_CLASS)
    repo = copy_repo(root / "repo")
    datasets = yaml.safe_load((repo / "datasets.yaml").read_text())
    datasets["tiny"] = idx_dataset_entry(files, TRAIN_PER_CLASS * K, TEST_PER_CLASS * K,
                                         sources=[str(root / "source")])
    (repo / "datasets.yaml").write_text(yaml.safe_dump(datasets, sort_keys=False))
    edit_params(
        repo,
        data={"dataset": "tiny", "limit": 0},
        tune={"storage": STORAGE, "n_trials": N_TRIALS, "epochs": TUNE_EPOCHS, "patience": 2,
              "train_subset": 0, "timeout": 0, "pruner": "hyperband",
              "search_space": {
                  "units": {"type": "int", "low": 8, "high": 16},
                  "dropout": {"type": "float", "low": 0.0, "high": 0.3},
                  "learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
                  "filters": {"type": "int", "low": 4, "high": 8},
              },
              "fixed": {"family": "cnn", "conv_blocks": 1, "convs_per_block": 1,
                        "batch_norm": False, "batch_size": 64}},
        train={"epochs": TRAIN_EPOCHS, "patience": 5},
    )
    first = run("dvc repro train", repo, env=NO_MLFLOW_ENV)
    return {"repo": repo, "first": first}


@pytest.fixture
def tuned_copy(tuned, tmp_path) -> Path:
    """This test's own copy of the repo after the good run."""
    ok(tuned["first"])
    return Path(shutil.copytree(tuned["repo"], tmp_path / "repo", symlinks=True))


# --- the good run and what it leaves behind ----------------------------------------------

def test_repro_train_runs_a_tracked_study_and_trains(tuned):
    repo = tuned["repo"]
    out = ok(tuned["first"])
    for stage in ("download", "validate", "prepare", "tune", "train"):
        assert f"Running stage '{stage}'" in out
    assert "Running stage 'evaluate'" not in out

    best = json.loads((repo / "reports/tune/best_params.json").read_text())
    study = load_study(repo)
    assert len(finished(study)) == N_TRIALS and len(study.trials) == N_TRIALS
    assert best["best_trial"] == study.best_trial.number
    assert best["best_value"] == pytest.approx(study.best_value)
    assert best["params"]["batch_size"] == 64 and 8 <= best["params"]["units"] <= 16
    summary = json.loads((repo / "reports/tune/summary.json").read_text())
    assert summary["trials_complete"] + summary["trials_pruned"] == N_TRIALS
    assert 0 < summary["epochs_total"] <= N_TRIALS * TUNE_EPOCHS

    client = mlflow_client(repo)
    [parent] = runs_named(client, "tune")
    assert parent.data.tags["optuna.study"] == best["study_name"]
    assert best["tune_run_id"] == parent.info.run_id
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == N_TRIALS
    by_trial = {int(c.data.tags["optuna.trial"]): c for c in children}
    for trial in study.trials:
        child = by_trial[trial.number]
        assert child.data.tags["optuna.state"] == trial.state.name
        assert child.info.status == "FINISHED"
        history = client.get_metric_history(child.info.run_id, "val_accuracy")
        assert [m.step for m in history] == list(range(trial.user_attrs["epochs"]))
        assert [m.value for m in history] == pytest.approx(
            [trial.intermediate_values[s + 1] for s in range(len(history))])
    assert best["best_trial_run_id"] == by_trial[best["best_trial"]].info.run_id

    record = json.loads((repo / "models/train_run.json").read_text())
    [train_run] = runs_named(client, "train")
    assert record["run_id"] == train_run.info.run_id
    assert record["study_name"] == best["study_name"] and record["dataset"] == "tiny"
    tags, params = train_run.data.tags, train_run.data.params
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                            text=True, check=True).stdout.strip()
    assert tags["git.commit"] == commit
    manifest = json.loads((repo / "data/raw/manifest.json").read_text())
    for f in manifest["files"]:
        assert tags[f"data.raw.{f['role']}.sha256"] == f["content_sha256"]
    assert tags["optuna.study"] == best["study_name"]
    assert tags["optuna.best_trial"] == str(best["best_trial"])
    assert params["units"] == str(best["params"]["units"])
    assert params["epochs"] == str(TRAIN_EPOCHS)
    history = client.get_metric_history(train_run.info.run_id, "val_accuracy")
    assert [m.step for m in history] == list(range(TRAIN_EPOCHS))

    import mlflow
    import numpy as np

    mlflow.set_tracking_uri(f"sqlite:///{repo}/mlruns/mlflow.db")
    model = mlflow.pyfunc.load_model(record["model_uri"])
    x = np.load(repo / "data/prepared/x_test.npy")[:7].astype(np.float32)
    probs = np.asarray(model.predict(x))
    assert probs.shape == (7, K)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-4)


def test_optuna_cli_lists_the_study(tuned):
    repo = tuned["repo"]
    name = json.loads((repo / "reports/tune/best_params.json").read_text())["study_name"]
    optuna_cli = str(VENV_BIN / "optuna")
    studies = ok(run([optuna_cli, "studies", "--storage", storage_url(repo)], repo))
    assert name in studies
    best = json.loads(ok(run([optuna_cli, "best-trial", "--study-name", name,
                              "--storage", storage_url(repo), "-f", "json"], repo)))
    assert best["number"] == load_study(repo, name).best_trial.number


# --- re-runs (in file order, on the shared copy) ------------------------------------------

def test_second_repro_is_a_noop(tuned):
    repo = tuned["repo"]
    out = ok(run("dvc repro train", repo, env=NO_MLFLOW_ENV))
    assert "Running stage" not in out
    assert len(load_study(repo).trials) == N_TRIALS


def test_changing_train_epochs_reruns_train_only(tuned):
    repo = tuned["repo"]
    edit_params(repo, train={"epochs": TRAIN_EPOCHS + 1})
    out = ok(run("dvc repro train", repo, env=NO_MLFLOW_ENV))
    assert "Running stage 'train'" in out
    assert [line for line in out.splitlines() if line.startswith("Running stage")] == [
        "Running stage 'train':"]
    summary = json.loads((repo / "models/train_summary.json").read_text())
    assert summary["epochs_run"] == TRAIN_EPOCHS + 1
    assert len(runs_named(mlflow_client(repo), "train")) == 2


def test_raising_n_trials_runs_only_the_missing_trial(tuned):
    repo = tuned["repo"]
    before = finished(load_study(repo))
    edit_params(repo, tune={"n_trials": N_TRIALS + 1})
    out = ok(run("dvc repro tune", repo, env=NO_MLFLOW_ENV))
    assert "ran 1 new trial(s)" in out
    after = finished(load_study(repo))
    assert len(after) == N_TRIALS + 1
    assert {n: after[n] for n in before} == before


# --- interrupted study --------------------------------------------------------------------

def test_killed_tune_resumes_without_redoing_finished_trials(tuned_copy):
    import optuna

    from pipeline import config, tune

    repo = tuned_copy
    # A different per-trial budget is a different study: it starts empty.
    edit_params(repo, tune={"epochs": 3, "n_trials": 3})
    params = yaml.safe_load((repo / "params.yaml").read_text())
    from pipeline.prepare import load_stats

    fingerprint = tune.data_fingerprint(load_stats(repo / "data" / "prepared"),
                                        params["runtime"]["seed"])
    name = tune.study_name(config.section("tune", config.TuneParams, params), "tiny", fingerprint)
    log_path = repo.parent / "killed-tune.log"
    with log_path.open("w") as log_file:
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # see run()
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.tune"], cwd=repo, env=env,
                                stdout=log_file, stderr=subprocess.STDOUT)
    deadline, done = time.monotonic() + 120, {}
    storage = None  # opened once the process has created the database: opening is not free
    try:
        while not done and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
            try:
                storage = storage or optuna.storages.RDBStorage(storage_url(repo))
                done = finished(optuna.load_study(study_name=name, storage=storage))
            except KeyError:  # the study is not created yet
                continue
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    log = log_path.read_text()
    assert done, f"no trial finished before the deadline:\n{log[-3000:]}"
    assert proc.returncode == -signal.SIGKILL, f"tune ended before it was killed:\n{log[-3000:]}"
    before = finished(optuna.load_study(study_name=name, storage=storage_url(repo)))
    assert 1 <= len(before) < 3

    out = ok(run([sys.executable, "-m", "pipeline.tune"], repo, env=NO_MLFLOW_ENV))
    assert f"ran {3 - len(before)} new trial(s)" in out
    after = finished(optuna.load_study(study_name=name, storage=storage_url(repo)))
    assert len(after) == 3
    assert {n: after[n] for n in before} == before
    best = json.loads((repo / "reports/tune/best_params.json").read_text())
    assert best["study_name"] == name and best["best_trial"] in after


# --- bad input: one paragraph, exit 2, outputs kept -----------------------------------------

def outputs(repo: Path) -> dict[str, bytes]:
    return {p: (repo / p).read_bytes() for p in
            ("reports/tune/best_params.json", "reports/tune/summary.json", "models/train_run.json")}


def test_bad_search_space_fails_before_training(tuned_copy):
    repo = tuned_copy
    before = outputs(repo)
    edit_params(repo, tune={"search_space": {
        "units": {"type": "int", "low": 32, "high": 8},
        "dropout": {"type": "float", "low": 0.0, "high": 0.3},
        "learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}})
    proc = run([sys.executable, "-m", "pipeline.tune"], repo, env=NO_MLFLOW_ENV)
    assert proc.returncode == 2, proc.stderr
    assert "`tune.search_space.units` has low 32 above high 8" in error_paragraph(proc.stderr, "tune")
    assert "Traceback" not in proc.stderr and "trial" not in proc.stdout
    assert outputs(repo) == before


@pytest.mark.parametrize("url", ["postgresql://nobody@127.0.0.1:1/x",
                                 "sqlite:////nonexistent-dir/x.db"])
def test_unusable_optuna_storage_is_one_paragraph(tuned_copy, url):
    repo = tuned_copy
    before = outputs(repo)
    edit_params(repo, tune={"storage": url})
    proc = run([sys.executable, "-m", "pipeline.tune"], repo, env=NO_MLFLOW_ENV)
    assert proc.returncode == 2, proc.stderr
    msg = error_paragraph(proc.stderr, "tune")
    assert f"`tune.storage` = '{url}' cannot be opened" in msg
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr
    assert outputs(repo) == before


@pytest.mark.parametrize("stage", ["tune", "train"])
def test_unreachable_tracking_server_is_one_paragraph(tuned_copy, stage):
    repo = tuned_copy
    before = outputs(repo)
    url = unused_port_url().rstrip("/")
    # MLflow retries a refused connection for minutes by default (see the report to the lead).
    proc = run([sys.executable, "-m", f"pipeline.{stage}"], repo,
               env={"MLFLOW_TRACKING_URI": url, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"},
               timeout=120)
    assert proc.returncode == 2, proc.stderr
    msg = error_paragraph(proc.stderr, stage)
    assert f"the MLflow tracking server {url} does not answer" in msg
    assert "Traceback" not in proc.stderr
    assert outputs(repo) == before


def test_every_trial_failing_keeps_previous_best_and_a_rerun_retries(tuned_copy, monkeypatch,
                                                                     capsys):
    import pipeline.models
    from pipeline import tune

    repo = tuned_copy
    before = outputs(repo)
    edit_params(repo, tune={"epochs": 1, "n_trials": 2})  # a fresh study
    monkeypatch.chdir(repo)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def broken(*args, **kwargs):
        raise RuntimeError("model builder exploded")

    monkeypatch.setattr(pipeline.models, "build_model", broken)
    with pytest.raises(SystemExit) as exit_info:
        tune.main()
    assert exit_info.value.code == 2
    # In-process the stage label is whatever pytest's __main__ is called.
    msg = error_paragraph(capsys.readouterr().err, r"[^\]]+")
    assert "0 pruned, 2 failed" in msg and "RuntimeError: model builder exploded" in msg
    assert "keep their previous versions" in msg
    assert outputs(repo) == before

    # Failed trials do not count towards n_trials: once fixed, a re-run runs them anew.
    monkeypatch.undo()
    out = ok(run([sys.executable, "-m", "pipeline.tune"], repo, env=NO_MLFLOW_ENV))
    assert "ran 2 new trial(s)" in out
    summary = json.loads((repo / "reports/tune/summary.json").read_text())
    assert summary["trials_failed"] == 2
    assert summary["trials_complete"] + summary["trials_pruned"] == 2
