"""`dvc repro prepare` (download -> validate -> prepare) in temp copies of the repo.

One good run on a tiny generated dataset (module fixture) is shared: the failure tests
each start from their own copy of that repo and check nothing earlier was lost.
"""
from __future__ import annotations

import hashlib
import re
import shutil
import time
from pathlib import Path

import pytest
import yaml
from conftest import copy_repo, run, serve_folder
from helpers_idx import FILES, corrupt_copy, dataset_entry, write_dataset

pytestmark = pytest.mark.slow

TRAIN_PER_CLASS, TEST_PER_CLASS = 30, 10
OUTPUTS = ("data/raw", "data/prepared")


def edit_yaml(path: Path, edit) -> None:
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def set_param(repo: Path, dotted: str, value) -> None:
    section, key = dotted.split(".")
    edit_yaml(repo / "params.yaml", lambda p: p.setdefault(section, {}).__setitem__(key, value))


def snapshot(repo: Path) -> dict[str, str]:
    """sha256 of every file under the pipeline outputs, by relative path."""
    return {str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest()
            for out in OUTPUTS for p in sorted((repo / out).rglob("*")) if p.is_file()}


def error_paragraph(stderr: str, stage: str) -> str:
    """The one paragraph a stage prints on a user error, unwrapped."""
    match = re.search(rf"ERROR \[{stage}\]: (.*?)(?:\n\s*\n|\Z)", stderr, re.S)
    assert match, f"no ERROR [{stage}] paragraph in stderr:\n{stderr}"
    return " ".join(match.group(1).split())


def ok(proc) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A repo copy whose `tiny` dataset has sources [missing folder, corrupt URL, good URL],
    after one successful `dvc repro prepare`."""
    root = tmp_path_factory.mktemp("tiny")
    arrays = write_dataset(root / "good", TRAIN_PER_CLASS, TEST_PER_CLASS)
    corrupt_copy(root / "good", root / "corrupt")
    good, stop_good = serve_folder(root / "good")
    corrupt, stop_corrupt = serve_folder(root / "corrupt")
    repo = copy_repo(root / "repo")
    sources = [str(root / "no-such-mirror"), corrupt.url, good.url]
    edit_yaml(repo / "datasets.yaml", lambda d: d.__setitem__("tiny", dataset_entry(arrays, sources)))
    set_param(repo, "data.dataset", "tiny")
    first = run("dvc repro prepare", repo)
    yield {"repo": repo, "first": first, "good": good, "corrupt": corrupt, "sources": sources}
    stop_good()
    stop_corrupt()


@pytest.fixture
def tiny_copy(tiny, tmp_path) -> Path:
    """This test's own copy of the repo after the good run."""
    ok(tiny["first"])
    return Path(shutil.copytree(tiny["repo"], tmp_path / "repo", symlinks=True))


def test_repro_falls_back_to_the_good_source_then_is_a_noop(tiny):
    repo, good, corrupt = tiny["repo"], tiny["good"], tiny["corrupt"]
    out = ok(tiny["first"])
    for stage in ("download", "validate", "prepare"):
        assert f"Running stage '{stage}'" in out

    manifest = yaml.safe_load((repo / "data/raw/manifest.json").read_text())
    assert manifest["dataset"] == "tiny"
    assert {f["file"]: f["source"] for f in manifest["files"]} == {
        name: good.url + name for name in FILES.values()}
    assert sorted(corrupt.hits) == sorted(f"/{n}" for n in FILES.values())
    assert sorted(p.name for p in (repo / "data/raw").iterdir()) == sorted(
        [*FILES.values(), "manifest.json"])

    stats = yaml.safe_load((repo / "data/prepared/stats.json").read_text())
    n_val = round(0.1 * TRAIN_PER_CLASS) * 10
    assert stats["counts"] == {"train": TRAIN_PER_CLASS * 10 - n_val, "val": n_val,
                               "test": TEST_PER_CLASS * 10}
    assert sorted(p.name for p in (repo / "data/prepared").iterdir()) == sorted(
        [f"{k}_{s}.npy" for k in "xy" for s in ("train", "val", "test")] + ["stats.json"])

    hits = len(good.hits)
    start = time.perf_counter()
    again = ok(run("dvc repro prepare", repo))
    elapsed = time.perf_counter() - start
    assert "Running stage" not in again
    assert "Data and pipelines are up to date" in again or "didn't change" in again
    assert len(good.hits) == hits
    assert elapsed < 5, f"no-op repro took {elapsed:.1f} s"


def test_checksum_mismatch_everywhere_fails_and_keeps_outputs(tiny, tiny_copy):
    repo = tiny_copy
    before = snapshot(repo)
    wrong = "0" * 64
    edit_yaml(repo / "datasets.yaml",
              lambda d: d["tiny"]["files"]["test_labels"].__setitem__("sha256", wrong))
    proc = run("dvc repro prepare", repo)
    assert proc.returncode != 0
    msg = error_paragraph(proc.stderr, "download")
    name = FILES["test_labels"]
    assert f"no source supplied a verified copy of {name}" in msg
    assert wrong in msg
    tried = msg.split("Sources tried, in order: ")[1]
    for source in tiny["sources"]:
        assert source.rstrip("/") + "/" + name in tried
    assert tried.count("sha256 mismatch") == 2 and "no file" in tried
    assert "Running stage 'prepare'" not in proc.stdout
    assert snapshot(repo) == before
    assert not [p for p in (repo / "data/raw").iterdir() if p.name.startswith(".")]


def test_unknown_dataset_fails_and_keeps_outputs(tiny_copy):
    repo = tiny_copy
    before = snapshot(repo)
    set_param(repo, "data.dataset", "fashion_mnistt")
    proc = run("dvc repro prepare", repo)
    assert proc.returncode != 0
    msg = error_paragraph(proc.stderr, "download")
    assert "`data.dataset` = 'fashion_mnistt'" in msg
    assert "fashion_mnist, mnist, tiny" in msg
    assert snapshot(repo) == before


@pytest.mark.parametrize("key, value, expected", [
    ("prepare.val_fraction", 1.5, "`prepare.val_fraction` = 1.5 is not allowed"),
    ("data.limit", -1, "`data.limit` = -1 is not allowed"),
])
def test_bad_param_fails_and_keeps_outputs(tiny_copy, key, value, expected):
    repo = tiny_copy
    before = snapshot(repo)
    set_param(repo, key, value)
    proc = run("dvc repro prepare", repo)
    assert proc.returncode != 0
    # Only `prepare` depends on these keys, so it is the stage that runs and refuses them.
    assert "Running stage 'download'" not in proc.stdout
    assert expected in error_paragraph(proc.stderr, "prepare")
    assert "Traceback" not in proc.stderr
    assert snapshot(repo) == before


def test_real_fashion_mnist_from_debian_mirror(repo_copy):
    repo = repo_copy
    set_param(repo, "data.limit", 2000)
    ok(run("dvc repro prepare", repo))
    manifest = yaml.safe_load((repo / "data/raw/manifest.json").read_text())
    assert manifest["dataset"] == "fashion_mnist"
    assert {f["source"].rsplit("/", 1)[0] for f in manifest["files"]} == {
        "/usr/share/datasets/fashion-mnist"}
    stats = yaml.safe_load((repo / "data/prepared/stats.json").read_text())
    assert all(0 < n <= 2000 for n in stats["counts"].values()), stats["counts"]
    assert stats["classes"][0] == "T-shirt/top" and stats["image_shape"] == [28, 28, 1]
