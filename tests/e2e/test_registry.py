"""evaluate -> register -> registry commands -> serve -> predict, on tiny stand-in models.

One module-scoped temp project: v1 (trained) is registered first and becomes @champion,
v2 (untrained, weaker) becomes @challenger. Stages run in-process (one TensorFlow import);
the console commands and the model server run as subprocesses.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml

from conftest import REPO, VENV_BIN, run
import model_factory as mf

from pipeline import config, evaluate, fsio, prepare, register, registry

NAME = "tiny-classifier"


def in_dir(path: Path, fn, *args):
    old = Path.cwd()
    os.chdir(path)
    try:
        return fn(*args)
    finally:
        os.chdir(old)


def stage(path: Path, main) -> None:
    in_dir(path, main)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project dir with tiny prepared data, v1 @champion and v2 @challenger registered."""
    root = tmp_path_factory.mktemp("registry")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["dataset"] = "tiny"
    params["evaluate"].update(latency_repeats=5, worst_examples=10)
    params["register"].update(min_accuracy=0.8, min_delta=0.01)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    saved_env = os.environ.pop("MLFLOW_TRACKING_URI", None)
    paths = config.Paths()
    in_dir(root, mf.write_prepared, paths.prepared)
    runs, evaluations, decisions = [], [], []
    for epochs in (10, 0):
        runs.append(in_dir(root, mf.train_standin, paths, "tiny", epochs))
        stage(root, evaluate.main)
        evaluations.append((root / "reports/evaluation/confusion.csv").read_text())
        stage(root, register.main)
        decisions.append(fsio.read_json(root / "reports/registry/decision.json"))
    yield {"root": root, "runs": runs, "evaluations": evaluations, "decisions": decisions}
    if saved_env is not None:
        os.environ["MLFLOW_TRACKING_URI"] = saved_env


def client_in(root: Path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root}/mlruns/mlflow.db")
    return mlflow.MlflowClient()


def aliases(root: Path) -> dict[str, str]:
    return {k: str(v) for k, v in client_in(root).get_registered_model(NAME).aliases.items()}


def test_evaluate_writes_metrics_plots_and_logs_on_the_train_run(project):
    import mlflow

    root = project["root"]
    metrics = fsio.read_json(root / "reports/evaluation/metrics.json")
    assert set(metrics) >= {"accuracy", "loss", "macro_f1", "ece", "latency", "per_class"}
    assert set(metrics["per_class"]) == set(mf.CLASSES)
    assert metrics["latency"]["batch_size"] == 1 and metrics["latency"]["ms_per_image"] > 0
    assert (root / "reports/evaluation/confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert (root / "reports/evaluation/worst_misclassified.png").stat().st_size > 1000
    rows = project["evaluations"][0].splitlines()
    assert rows[0] == "actual,predicted" and rows[1].split(",")[0] in mf.CLASSES
    client_in(root)
    run = mlflow.get_run(project["runs"][1]["run_id"])
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["accuracy"])
    assert "test_f1_dark" in run.data.metrics
    listed = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "evaluation")}
    assert "evaluation/metrics.json" in listed and "evaluation/confusion.png" in listed


def test_first_is_champion_weaker_is_challenger(project):
    first, second = project["decisions"]
    assert first["decision"] == "promoted" and first["champion_version"] is None
    assert second["decision"] == "challenger" and second["champion_version"] == "1"
    assert second["champion_accuracy"] == pytest.approx(first["accuracy"])
    assert second["accuracy"] < first["accuracy"]
    assert set(second) == {"model_name", "version", "decision", "reason", "accuracy",
                           "champion_version", "champion_accuracy", "min_accuracy", "min_delta",
                           "run_id"}
    assert aliases(project["root"]) == {"champion": "1", "challenger": "2"}
    mv = client_in(project["root"]).get_model_version(NAME, "2")
    assert mv.tags["decision"] == "challenger" and mv.tags["champion_accuracy"]
    assert "### Hyperparameters" in mv.description and "| epochs | 0 |" in mv.description
    assert f'models:/{NAME}/2' in mv.description and "git commit" in mv.description


def test_champion_that_cannot_load_changes_nothing(project, monkeypatch, capsys):
    import mlflow.pyfunc

    root = project["root"]
    before = fsio.read_json(root / "reports/registry/decision.json")

    def broken(uri, *a, **k):
        raise OSError(f"artifacts of {uri} are gone")

    monkeypatch.setattr(mlflow.pyfunc, "load_model", broken)
    with pytest.raises(SystemExit) as exit_info:
        stage(root, register.main)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "cannot be loaded" in err and "no alias was changed" in err
    assert len(client_in(root).search_model_versions(f"name = '{NAME}'")) == 2
    assert aliases(root) == {"champion": "1", "challenger": "2"}
    assert fsio.read_json(root / "reports/registry/decision.json") == before


def test_unreachable_registry_is_one_paragraph(project, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    with pytest.raises(SystemExit) as exit_info:
        stage(project["root"], register.main)
    assert exit_info.value.code == 2
    assert "http://127.0.0.1:9" in capsys.readouterr().err
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert aliases(project["root"]) == {"champion": "1", "challenger": "2"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(project):
    """`mlflow models serve` of the champion on a free 127.0.0.1 port, in its own process group."""
    root, port = project["root"], free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlruns/mlflow.db",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = open(root / "serve.log", "w")
    proc = subprocess.Popen(
        [str(VENV_BIN / "mlflow"), "models", "serve", "-m", f"models:/{NAME}@champion",
         "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert proc.poll() is None, (root / "serve.log").read_text()[-2000:]
            try:
                if requests.get(f"{url}/ping", timeout=1).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.3)
        else:
            pytest.fail("model server not ready in 90 s: " + (root / "serve.log").read_text()[-2000:])
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_server_answers_like_evaluate(project, server):
    x_test = prepare.load_splits(project["root"] / "data/prepared").x_test[:5]
    r = requests.post(f"{server}/invocations", json={"inputs": x_test.astype("float32").tolist()},
                      timeout=30)
    assert r.status_code == 200, r.text
    probs = np.asarray(r.json()["predictions"])
    assert probs.shape == (5, len(mf.CLASSES)) and np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    champion_rows = project["evaluations"][0].splitlines()[1:6]
    assert [mf.CLASSES[i] for i in probs.argmax(axis=1)] == [row.split(",")[1] for row in champion_rows]


def test_server_rejects_wrong_shape_with_4xx_naming_the_expected_input(server):
    r = requests.post(f"{server}/invocations", json={"inputs": [[0.0] * 64]}, timeout=30)
    assert 400 <= r.status_code < 500
    assert "(-1, 8, 8, 1)" in r.json()["message"]


def test_promote_and_rollback_move_aliases_as_printed(project, monkeypatch, capsys):
    root = project["root"]

    def cmd(*argv):
        monkeypatch.setattr("sys.argv", ["pipeline-registry", *argv])
        stage(root, registry.main)
        return capsys.readouterr().out

    out = cmd("promote", "2")
    assert "@champion v1 -> v2" in out and "@challenger removed" in out
    assert aliases(root) == {"champion": "2"}
    assert "@champion v2 -> v1" in cmd("rollback")
    assert aliases(root) == {"champion": "1"}
    with pytest.raises(SystemExit):
        cmd("rollback")  # v1 was never promoted over anything
    assert "no previous champion" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cmd("promote", "7")
    assert "no version '7'" in capsys.readouterr().err
    shown = run([str(VENV_BIN / "pipeline-registry"), "show"], cwd=root)
    assert shown.returncode == 0, shown.stderr
    assert "@champion: v1 (test accuracy" in shown.stdout and "@challenger: none" in shown.stdout


def test_predict_cli_on_png_and_on_a_non_image(project):
    from PIL import Image

    root = project["root"]
    x = prepare.load_splits(root / "data/prepared").x_test[0]
    big = Image.fromarray(x[..., 0]).resize((32, 32), Image.Resampling.NEAREST).convert("RGB")
    big.save(root / "shirt.png")
    (root / "notes.png").write_text("not an image")
    res = run([str(VENV_BIN / "pipeline-predict"), "shirt.png"], cwd=root)
    assert res.returncode == 0, res.stderr
    path, label, prob = res.stdout.strip().split("\t")
    assert path == "shirt.png" and label in mf.CLASSES and 0 < float(prob) <= 1
    bad = run([str(VENV_BIN / "pipeline-predict"), "shirt.png", "notes.png",
               "--model-file", "models/model.keras"], cwd=root)
    assert bad.returncode == 2 and "notes.png is not a readable image" in bad.stderr
