"""MLflow and lineage plumbing shared by the stages that log runs.

The default store is SQLite inside `mlruns/` with artifacts beside it. MLflow stores
artifact locations as absolute paths; when the repository is moved or cloned, `connect`
re-roots them so old runs stay browsable.
"""
from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

from pipeline import fsio
from pipeline.config import Paths
from pipeline.errors import PipelineError

ARTIFACTS = "artifacts"
# Columns in which MLflow's SQLite schema stores absolute artifact paths.
PATH_COLUMNS = {
    "experiments": ["artifact_location"],
    "runs": ["artifact_uri"],
    "model_versions": ["source", "storage_location"],
    "logged_models": ["artifact_location"],
}


def tracking_uri(paths: Paths) -> str:
    """MLFLOW_TRACKING_URI if set, else the project's SQLite store under `paths.mlruns`."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{paths.mlruns}/mlflow.db"


def local_db(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def reroot_artifacts(db: Path, artifacts_root: Path) -> int:
    """Point stored artifact paths at ``artifacts_root`` if the repo moved; return rows changed."""
    if not db.exists():
        return 0
    new = str(artifacts_root.resolve())
    marker = f"/{artifacts_root.parent.name}/{artifacts_root.name}"
    con = sqlite3.connect(db)
    try:
        tables = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
        row = con.execute("select artifact_location from experiments "
                          "where artifact_location like ? limit 1", (f"%{marker}/%",)).fetchone() \
            if "experiments" in tables else None
        if not row:
            return 0
        old = row[0][: row[0].index(marker) + len(marker)]
        if old.startswith("file://"):
            new = Path(new).as_uri()
        if old == new:
            return 0
        changed = 0
        with con:
            for table, cols in PATH_COLUMNS.items():
                if table not in tables:
                    continue
                for col in cols:
                    cur = con.execute(
                        f"update {table} set {col} = ? || substr({col}, ?) where {col} like ?",
                        (new, len(old) + 1, f"{old}%"))
                    changed += cur.rowcount
        return changed
    finally:
        con.close()


def probe_server(uri: str, timeout: float = 5.0) -> None:
    """Fail fast on a tracking server that does not answer (MLflow's own client retries for
    minutes before giving up)."""
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=timeout)
    except requests.exceptions.RequestException as err:
        raise PipelineError(
            f"the MLflow tracking server {uri} does not answer ({type(err).__name__}). Start it "
            f"(python -m pipeline.ui mlflow), fix MLFLOW_TRACKING_URI, or unset it to use the "
            f"project's store in mlruns/."
        ) from None


def connect(paths: Paths, experiment: str) -> str:
    """Point MLflow at the store, make sure ``experiment`` exists; return its id."""
    import mlflow

    uri = tracking_uri(paths)
    db = local_db(uri)
    artifacts_root = paths.mlruns / ARTIFACTS
    try:
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
            reroot_artifacts(db, artifacts_root)
        elif uri.startswith(("http://", "https://")):
            probe_server(uri)
        mlflow.set_tracking_uri(uri)
        exp = mlflow.get_experiment_by_name(experiment)
        if exp is not None:
            return exp.experiment_id
        # Created explicitly: a SQLite store would otherwise put artifacts under ./mlartifacts.
        location = str((artifacts_root / experiment).resolve()) if db is not None else None
        return mlflow.create_experiment(experiment, artifact_location=location)
    except PipelineError:
        raise
    except Exception as err:  # sqlalchemy, requests, permission errors all mean the same here
        raise PipelineError(
            f"the MLflow tracking store {uri} cannot be opened ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200]}). Check MLFLOW_TRACKING_URI, that a tracking "
            f"server is running, or that {paths.mlruns} is writable."
        ) from err


def git_info(cwd: Path | str = ".") -> dict[str, str]:
    """The commit the code came from and whether the work tree had uncommitted changes."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    commit = git("rev-parse", "HEAD") or "unknown"
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return {"git.commit": commit, "git.dirty": str(dirty).lower()}


def data_lineage(paths: Paths) -> dict[str, str]:
    """Tags that pin the data a run used: raw content sha256s and the DVC hash of the splits."""
    tags: dict[str, str] = {}
    manifest = paths.manifest
    if manifest.exists():
        m = fsio.read_json(manifest)
        tags["data.dataset"] = m.get("dataset", "")
        for f in m.get("files", []):
            tags[f"data.raw.{f['role']}.sha256"] = f["content_sha256"]
    lock = Path("dvc.lock")
    if lock.exists():
        import yaml

        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
        for out in stages.get("prepare", {}).get("outs", []):
            if Path(out.get("path", "")) == paths.prepared:
                tags["data.prepared.dvc_md5"] = out.get("md5", "")
    return tags


def lineage_tags(paths: Paths, extra: dict[str, Any] | None = None) -> dict[str, str]:
    """Git + data lineage + anything stage-specific, as MLflow tag strings."""
    tags = {**git_info(), **data_lineage(paths)}
    for k, v in (extra or {}).items():
        tags[k] = str(v)
    return tags


def epoch_logger(run_id: str, prefix: str = ""):
    """A Keras callback logging every epoch's metrics to ``run_id`` in one batched call.

    Per-batch logging costs ~3.6 ms a call on SQLite; once per epoch is cheap.
    """
    import time

    import keras
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient()

    class EpochLogger(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            now = int(time.time() * 1000)
            metrics = [Metric(prefix + k, float(v), now, epoch) for k, v in (logs or {}).items()]
            client.log_batch(run_id, metrics=metrics, synchronous=True)

    return EpochLogger()
