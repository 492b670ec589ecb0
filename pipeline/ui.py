"""Browse what the pipeline did: the MLflow UI or optuna-dashboard on the project's stores.

    python -m pipeline.ui mlflow [--port 5000]   # runs, nested trials, metrics, registry
    python -m pipeline.ui optuna [--port 8080]   # the Optuna study in tune.storage

Each starts the server bound to 127.0.0.1 in its own process group (the MLflow server
starts worker children), waits until it answers, prints the URL, and stops the whole
group on Ctrl-C or SIGTERM. The MLflow server runs lean (one worker, no job runner;
see STACK_NOTES.md) with telemetry off.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator

from pipeline import config, tracking
from pipeline.errors import PipelineError, cli

HOST = "127.0.0.1"
READY_TIMEOUT = 90.0  # the MLflow server is ready in ~6 s lean; a busy CI box is slower
STOP_GRACE = 10.0
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class ServerSpec:
    """A command to run and the URLs that tell it is ready and where a person should look."""

    name: str
    argv: list[str]
    url: str
    ready_url: str
    env: dict[str, str] = field(default_factory=dict)


def mlflow_spec(paths: config.Paths, port: int, host: str = HOST) -> ServerSpec:
    """The MLflow UI on the project's SQLite store, artifacts served from mlruns/artifacts."""
    uri = tracking.tracking_uri(paths)
    db = tracking.local_db(uri)
    if db is None:
        raise PipelineError(
            f"MLFLOW_TRACKING_URI is {uri}: that tracking server already has a UI, open it in a "
            f"browser. `pipeline.ui mlflow` serves the local store {paths.mlruns}/mlflow.db; "
            f"unset MLFLOW_TRACKING_URI to use it.")
    if not db.exists():
        raise PipelineError(f"{db} does not exist yet: run `dvc repro` (or `dvc repro tune`) "
                            f"first, so there are runs to browse.")
    artifacts = paths.mlruns / tracking.ARTIFACTS
    tracking.reroot_artifacts(db, artifacts)  # a moved or cloned repo stays browsable
    url = f"http://{host}:{port}"
    return ServerSpec(
        name="MLflow UI",
        argv=[str(BIN / "mlflow"), "server", "--backend-store-uri", uri,
              "--artifacts-destination", str(artifacts.resolve()),
              "--host", host, "--port", str(port), "--workers", "1"],
        url=url, ready_url=f"{url}/health",
        env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
             "DO_NOT_TRACK": "true"})


def optuna_spec(storage: str, port: int, host: str = HOST) -> ServerSpec:
    """optuna-dashboard on the study storage named in params.yaml `tune.storage`."""
    if storage.startswith("sqlite:///") and not Path(storage.removeprefix("sqlite:///")).exists():
        raise PipelineError(f"the Optuna storage {storage} (params.yaml `tune.storage`) does not "
                            f"exist yet: run `dvc repro tune` first.")
    url = f"http://{host}:{port}"
    return ServerSpec(
        name="optuna-dashboard",
        argv=[str(BIN / "optuna-dashboard"), storage, "--host", host, "--port", str(port)],
        url=url, ready_url=f"{url}/api/studies")


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def stop_group(proc: subprocess.Popen, grace: float = STOP_GRACE) -> None:
    """SIGTERM the process group, SIGKILL it if it has not exited within ``grace`` seconds."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def running(spec: ServerSpec, timeout: float = READY_TIMEOUT,
            log: IO | None = None) -> Iterator[subprocess.Popen]:
    """Start ``spec`` in its own process group, yield once it answers, stop the group after.

    Server output goes to ``log`` (default: this process's stdout/stderr).
    """
    proc = subprocess.Popen(spec.argv, env={**os.environ, **spec.env}, stdout=log,
                            stderr=subprocess.STDOUT if log else None, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not answers(spec.ready_url):
            if proc.poll() is not None:
                raise PipelineError(f"{spec.name} exited with code {proc.returncode} before it "
                                    f"answered on {spec.url}; its output above says why (a port "
                                    f"in use? pick another with --port).")
            if time.monotonic() > deadline:
                raise PipelineError(f"{spec.name} did not answer on {spec.ready_url} within "
                                    f"{timeout:.0f} s.")
            time.sleep(0.3)
        yield proc
    finally:
        stop_group(proc)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.ui", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="ui", required=True)
    for name, port, help_text in (("mlflow", 5000, "MLflow UI on mlruns/ (runs, trials, registry)"),
                                  ("optuna", 8080, "optuna-dashboard on params.yaml tune.storage")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--port", type=int, default=port, help=f"default {port}")
    return parser.parse_args(argv)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    @cli
    def serve() -> None:
        params = config.load_yaml(config.PARAMS_FILE)
        paths = config.section("paths", config.Paths, params)
        if args.ui == "mlflow":
            spec = mlflow_spec(paths, args.port)
        else:
            spec = optuna_spec(config.section("tune", config.TuneParams, params).storage, args.port)
        signal.signal(signal.SIGTERM, _terminate)
        try:
            with running(spec) as proc:
                print(f"{spec.name} at {spec.url}  (Ctrl-C stops it)", flush=True)
                proc.wait()
                raise PipelineError(f"{spec.name} stopped by itself (exit code {proc.returncode}).")
        except KeyboardInterrupt:
            print(f"\n{spec.name} stopped", flush=True)

    serve()


if __name__ == "__main__":
    main()
