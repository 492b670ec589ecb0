"""Fixtures and helpers shared by every test folder.

Only ADD to this file (one block per helper, with a docstring); never rewrite another's.
"""
from __future__ import annotations

import http.server
import os
import shlex
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import pytest

REPO = Path(__file__).resolve().parents[1]
# The interpreter running pytest is the project's venv; its bin/ has python, dvc, mlflow...
VENV_BIN = Path(sys.executable).parent


# --- running commands -------------------------------------------------------------------

def run(cmd: str | Sequence[str], cwd: Path, env: dict[str, str] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``cmd`` in ``cwd`` with the venv's bin/ first on PATH; return the CompletedProcess.

    ``cmd`` is a list or a string (split with shlex, no shell). stdout/stderr are captured
    as text. ``env`` entries are added to (or override) the current environment. Asserts
    nothing: check ``returncode`` yourself and show ``stdout``/``stderr`` in the message.
    """
    args = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
    # In-process tests call mlflow.set_tracking_uri, which also sets MLFLOW_TRACKING_URI in
    # os.environ: a command in another repo copy must not inherit a store that is not its own.
    inherited = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    full_env = {**inherited, **(env or {})}
    full_env["PATH"] = f"{VENV_BIN}{os.pathsep}{full_env.get('PATH', '')}"
    return subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


# --- a temp copy of the repository ------------------------------------------------------

# Pipeline outputs and caches a fresh clone would not have (DVC outs that git ignores).
COPY_EXCLUDE = ("data/raw", "data/prepared", "models", "mlruns", ".dvc/cache", ".dvc/tmp")


def copy_repo(dest: Path, exclude: Sequence[str] = COPY_EXCLUDE) -> Path:
    """Copy the repo's tracked and untracked-but-not-ignored files to ``dest`` and commit them.

    Paths under ``exclude`` are left out, so the copy starts like a fresh clone without
    pipeline outputs. The copy is a git repo with one commit (``dvc exp`` needs one).
    """
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        if any(rel == ex or rel.startswith(ex + "/") for ex in exclude):
            continue
        src = REPO / rel
        if not src.is_file():  # deleted in the working tree but still in the index
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)
    git = ["git", "-c", "user.email=tests@example.invalid", "-c", "user.name=tests"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "init", "--no-gpg-sign"], cwd=dest, check=True)
    return dest


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """A committed temp copy of the repository without pipeline outputs (see copy_repo)."""
    return copy_repo(tmp_path / "repo")


# --- serving files on 127.0.0.1 ---------------------------------------------------------

@dataclass
class ServedFolder:
    """A folder served over HTTP: ``url`` ends in '/', ``hits`` lists the paths requested."""

    url: str
    hits: list[str] = field(default_factory=list)
    fail_first: int = 0  # answer this many requests with HTTP 500 before serving normally


def _handler(folder: Path, served: ServedFolder) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def do_GET(self):
            served.hits.append(self.path)
            if served.fail_first > 0:
                served.fail_first -= 1
                self.send_error(500, "injected failure")
                return
            super().do_GET()

        def log_message(self, *args):  # keep pytest output clean
            pass

    return Handler


def serve_folder(folder: Path, fail_first: int = 0) -> tuple[ServedFolder, Callable[[], None]]:
    """Serve ``folder`` on 127.0.0.1 (a free port) from a thread; return it and its stop().

    For a server that outlives one test (module-scoped fixtures); tests use http_server.
    """
    served = ServedFolder(url="", fail_first=fail_first)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(Path(folder), served))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    served.url = f"http://127.0.0.1:{server.server_address[1]}/"

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return served, stop


@pytest.fixture
def http_server() -> Iterator[Callable[..., ServedFolder]]:
    """Factory: ``http_server(folder, fail_first=0) -> ServedFolder`` serving ``folder`` on
    127.0.0.1 until the test ends. Subprocesses (e.g. dvc repro) can reach it too."""
    stops = []

    def start(folder: Path, fail_first: int = 0) -> ServedFolder:
        served, stop = serve_folder(folder, fail_first)
        stops.append(stop)
        return served

    yield start
    for stop in stops:
        stop()


def unused_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connections are refused)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


# --- generated IDX datasets (validate tests; reusable by any test) ----------------------

from pipeline.config import DatasetSpec  # noqa: E402  (light: pydantic + yaml)

def write_idx_dataset(folder: Path, n_train_per_class: int, n_test_per_class: int,
                      num_classes: int = 10, seed: int = 0,
                      shape: tuple[int, int] = (28, 28)) -> dict[str, tuple[str, str]]:
    """Write the four MNIST-named IDX.gz files (seeded noise images, balanced shuffled labels,
    no duplicate images) into ``folder``; return {role: (filename, content_sha256)}, the
    sha256 of the decompressed IDX bytes as datasets.yaml pins it."""
    from helpers_idx import FILES, content_sha256, write_dataset

    arrays = write_dataset(folder, n_train_per_class, n_test_per_class, num_classes, seed, shape)
    return {role: (FILES[role], content_sha256(a)) for role, a in arrays.items()}


def idx_dataset_entry(files: dict[str, tuple[str, str]], n_train: int, n_test: int,
                      num_classes: int = 10, shape: tuple[int, int] = (28, 28),
                      sources: Sequence[str] = ("/nonexistent",)) -> dict:
    """A datasets.yaml entry (a plain dict) for files written by write_idx_dataset;
    ``n_train``/``n_test`` are the total image counts. Build the typed spec with
    ``DatasetSpec(name=..., **entry)``."""
    return {
        "format": "idx",
        "description": "generated test dataset",
        "classes": [f"class{i}" for i in range(num_classes)],
        "image_shape": [*shape, 1],
        "counts": {"train": n_train, "test": n_test},
        "files": {role: {"name": name, "sha256": sha} for role, (name, sha) in files.items()},
        "sources": list(sources),
    }


@dataclass
class IdxDataset:
    """A generated dataset on disk: its folder, files ({role: (name, sha256)}) and spec."""

    folder: Path
    files: dict[str, tuple[str, str]]
    spec: DatasetSpec
    entry: dict


@pytest.fixture
def idx_dataset(tmp_path: Path) -> IdxDataset:
    """10 classes x (20 train + 5 test) images of 28x28 in tmp_path/raw, named 'tiny'."""
    folder = tmp_path / "raw"
    files = write_idx_dataset(folder, n_train_per_class=20, n_test_per_class=5)
    entry = idx_dataset_entry(files, n_train=200, n_test=50, sources=[str(folder)])
    return IdxDataset(folder, files, DatasetSpec(name="tiny", **entry), entry)


# --- a tiny whole pipeline (download .. register) in a temp repo -----------------------

# Params that make a whole `dvc repro` take about a minute on 2 cores: a generated 10-class
# dataset, a 2-trial MLP search of 1 epoch, 2 training epochs, a register floor of 0 so the
# first model is promoted.
TINY_PIPELINE_PARAMS = {
    "data": {"dataset": "tiny", "limit": 0},
    "tune": {"n_trials": 2, "epochs": 1, "patience": 1, "train_subset": 0, "pruner": "none",
             "search_space": {"units": {"type": "int", "low": 8, "high": 32, "log": True},
                              "dropout": {"type": "float", "low": 0.1, "high": 0.3},
                              "learning_rate": {"type": "float", "low": 0.001, "high": 0.01,
                                                "log": True}},
             "fixed": {"family": "mlp", "batch_size": 64}},
    "train": {"epochs": 2, "patience": 1},
    "evaluate": {"latency_repeats": 5, "worst_examples": 5},
    "register": {"min_accuracy": 0.0, "min_delta": 0.001},
}


def git_commit_all(repo: Path, message: str) -> None:
    """Commit every change in ``repo`` (a test copy) so HEAD holds it."""
    git = ["git", "-c", "user.email=tests@example.invalid", "-c", "user.name=tests"]
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", message, "--no-gpg-sign"], cwd=repo, check=True)


def make_tiny_pipeline(root: Path) -> Path:
    """A committed repo copy at ``root/'repo'`` set up by TINY_PIPELINE_PARAMS, reading the
    generated dataset 'tiny' (20 train + 5 test noise images per class) from the local mirror
    folder ``root/'tiny-data'``. Nothing has run yet; return the repo path."""
    import yaml

    data = root / "tiny-data"
    files = write_idx_dataset(data, n_train_per_class=20, n_test_per_class=5)
    repo = copy_repo(root / "repo")
    specs = yaml.safe_load((repo / "datasets.yaml").read_text())
    specs["tiny"] = idx_dataset_entry(files, n_train=200, n_test=50, sources=[str(data)])
    (repo / "datasets.yaml").write_text(yaml.safe_dump(specs, sort_keys=False))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in TINY_PIPELINE_PARAMS.items():
        params[section] = {**params.get(section, {}), **values}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git_commit_all(repo, "tiny pipeline params")
    return repo


@dataclass
class RetrainedProject:
    """A tiny pipeline after one `pipeline-retrain` call: its repo, that call and its duration."""

    repo: Path
    first: subprocess.CompletedProcess
    seconds: float

    def copy(self, dest: Path) -> Path:
        """A private copy of the retrained repo (MLflow re-roots its artifact paths on use)."""
        return Path(shutil.copytree(self.repo, dest, symlinks=True))


@pytest.fixture(scope="session")
def tiny_retrained(tmp_path_factory) -> RetrainedProject:
    """Session-wide: make_tiny_pipeline + one `pipeline-retrain` (a full dvc repro through
    register; ~1-2 min). Tests must not change it: take ``.copy(tmp_path / 'repo')``."""
    import time

    repo = make_tiny_pipeline(tmp_path_factory.mktemp("tiny-pipeline"))
    started = time.monotonic()
    first = run([str(VENV_BIN / "pipeline-retrain")], cwd=repo, timeout=600)
    return RetrainedProject(repo, first, time.monotonic() - started)
