"""Download: checksum verification, source fallback, retries, and never keeping a bad file."""
from __future__ import annotations

import gzip
import hashlib
import shutil

import numpy as np
import pytest
from conftest import unused_port_url
from helpers_idx import FILES, corrupt_copy, dataset_entry, write_dataset

from pipeline.config import DatasetSpec, DownloadParams, FileSpec
from pipeline.download import SourceRefused, digest_file, download, fetch_file, verify
from pipeline.errors import PipelineError

FAST = DownloadParams(retries=2, timeout=5, backoff=0)
CONTENT = b"\0\0\x08\x01\0\0\0\x05" + bytes(range(5))
CONTENT_SHA = hashlib.sha256(CONTENT).hexdigest()


def spec_for(name: str, content: bytes = CONTENT) -> FileSpec:
    return FileSpec(name=name, sha256=hashlib.sha256(content).hexdigest())


@pytest.fixture
def good(tmp_path):
    folder = tmp_path / "good"
    folder.mkdir()
    (folder / "f.gz").write_bytes(gzip.compress(CONTENT, mtime=0))
    return folder


@pytest.fixture
def bad(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "f.gz").write_bytes(gzip.compress(CONTENT + b"x", mtime=0))
    return folder


@pytest.fixture
def broken(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    data = gzip.compress(CONTENT, mtime=0)
    (folder / "f.gz").write_bytes(data[:-6])  # truncated gzip
    return folder


# --- verification -----------------------------------------------------------------------

def test_verify_accepts_content_hash(good):
    d = verify(good / "f.gz", spec_for("f.gz"))
    assert d.content_sha256 == CONTENT_SHA
    assert d.sha256 == hashlib.sha256((good / "f.gz").read_bytes()).hexdigest() != CONTENT_SHA
    assert d.size == (good / "f.gz").stat().st_size


def test_verify_accepts_recompressed_file_with_another_header(tmp_path):
    # Mirrors (e.g. Debian's) re-compress the same content: other mtime, name, level.
    a, b = tmp_path / "a" / "f.gz", tmp_path / "b" / "f.gz"
    a.parent.mkdir(), b.parent.mkdir()
    a.write_bytes(gzip.compress(CONTENT, mtime=0))
    with open(b, "wb") as fh, gzip.GzipFile(filename="orig-name", mode="wb", fileobj=fh,
                                             mtime=123456, compresslevel=1) as gz:
        gz.write(CONTENT)
    assert a.read_bytes() != b.read_bytes()
    da, db = verify(a, spec_for("f.gz")), verify(b, spec_for("f.gz"))
    assert da.content_sha256 == db.content_sha256 == CONTENT_SHA
    assert da.sha256 != db.sha256


def test_verify_plain_file_hashes_bytes(tmp_path):
    (tmp_path / "f").write_bytes(CONTENT)
    d = verify(tmp_path / "f", spec_for("f"))
    assert d.sha256 == d.content_sha256 == CONTENT_SHA


def test_verify_refuses_mismatch_with_reason(bad):
    with pytest.raises(SourceRefused, match=f"sha256 mismatch.*expected {CONTENT_SHA[:16]}"):
        verify(bad / "f.gz", spec_for("f.gz"))


def test_digest_refuses_corrupt_gzip(broken):
    with pytest.raises(SourceRefused, match="corrupt or truncated gzip"):
        digest_file(broken / "f.gz", gzipped=True)
    with pytest.raises(SourceRefused, match="corrupt or truncated gzip"):
        verify(broken / "f.gz", spec_for("f.gz"))


# --- fetch_file ---------------------------------------------------------------------------

def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_fetch_uses_first_good_source_in_order(tmp_path, good, bad, broken):
    out = tmp_path / "out"
    out.mkdir()
    digest, origin = fetch_file(spec_for("f.gz"), [str(tmp_path / "missing"), str(bad),
                                                    str(broken), str(good)], out / "f.gz", FAST)
    assert origin == f"{good}/f.gz"
    assert digest.content_sha256 == CONTENT_SHA
    assert (out / "f.gz").read_bytes() == (good / "f.gz").read_bytes()
    assert leftovers(out) == []


def test_fetch_stops_at_first_good_source(tmp_path, good, http_server):
    served = http_server(good)
    out = tmp_path / "out"
    out.mkdir()
    _, origin = fetch_file(spec_for("f.gz"), [str(good), served.url], out / "f.gz", FAST)
    assert origin == f"{good}/f.gz"
    assert served.hits == []


def test_fetch_over_http_skips_corrupt_and_retries_500(tmp_path, good, bad, http_server):
    corrupt, flaky = http_server(bad), http_server(good, fail_first=2)
    out = tmp_path / "out"
    out.mkdir()
    digest, origin = fetch_file(spec_for("f.gz"), [corrupt.url, flaky.url], out / "f.gz",
                                FAST, progress=False)
    assert origin == flaky.url + "f.gz"
    assert corrupt.hits == ["/f.gz"]
    assert flaky.hits == ["/f.gz"] * 3  # two 500s, then the file
    assert digest.content_sha256 == CONTENT_SHA
    assert leftovers(out) == []


def test_all_sources_failing_lists_each_and_keeps_nothing(tmp_path, good, bad, broken,
                                                          http_server):
    down = http_server(good, fail_first=100)
    not_found = http_server(good).url + "sub/"  # 404
    sources = [str(tmp_path / "nowhere"), str(bad), str(broken), down.url, unused_port_url(),
               not_found]
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(PipelineError) as err:
        fetch_file(spec_for("f.gz"), sources, out / "f.gz", FAST, progress=False)
    msg = str(err.value)
    parts = msg.split("Sources tried, in order: ")[1].split("; ")
    assert [p.split(": ")[0] for p in parts[:len(sources)]] == [
        s.rstrip("/") + "/f.gz" for s in sources]
    assert f"no file {tmp_path / 'nowhere' / 'f.gz'}" in parts[0]
    assert "sha256 mismatch" in parts[1]
    assert "corrupt or truncated gzip" in parts[2]
    assert "HTTP 500" in parts[3] and len(down.hits) == FAST.retries + 1
    assert "unreachable" in parts[4] and "Connection refused" in parts[4]
    assert "HTTP 404" in parts[5]
    assert CONTENT_SHA in msg
    assert list(out.iterdir()) == []


def test_failed_fetch_leaves_existing_target_untouched(tmp_path, bad):
    out = tmp_path / "out"
    out.mkdir()
    (out / "f.gz").write_bytes(b"previous verified copy")
    with pytest.raises(PipelineError):
        fetch_file(spec_for("f.gz"), [str(bad)], out / "f.gz", FAST)
    assert (out / "f.gz").read_bytes() == b"previous verified copy"
    assert leftovers(out) == []


def test_interrupted_fetch_keeps_no_partial_file(tmp_path, good, monkeypatch):
    import pipeline.download as dl

    def explode(*args):
        (tmp_path / "out" / ".f.gz.part").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(dl, "verify", explode)
    (tmp_path / "out").mkdir()
    with pytest.raises(KeyboardInterrupt):
        fetch_file(spec_for("f.gz"), [str(good)], tmp_path / "out" / "f.gz", FAST)
    assert list((tmp_path / "out").iterdir()) == []


# --- download() ---------------------------------------------------------------------------

@pytest.fixture
def dataset(tmp_path):
    arrays = write_dataset(tmp_path / "src", 3, 2)
    return arrays, tmp_path / "src"


def make_spec(arrays, sources, name="tiny"):
    return DatasetSpec(name=name, **dataset_entry(arrays, sources))


def test_download_then_second_call_transfers_nothing(tmp_path, dataset, http_server):
    arrays, src = dataset
    served = http_server(src)
    raw = tmp_path / "raw"
    manifest = download(make_spec(arrays, [served.url]), raw, FAST, progress=False)
    assert sorted(served.hits) == sorted(f"/{n}" for n in FILES.values())
    assert [f["source"] for f in manifest["files"]] == [served.url + n for n in FILES.values()]
    assert sorted(p.name for p in raw.iterdir()) == sorted(FILES.values())

    served.hits.clear()
    before = {p.name: p.stat().st_mtime_ns for p in raw.iterdir()}
    again = download(make_spec(arrays, [served.url]), raw, FAST, progress=False)
    assert served.hits == []
    assert {p.name: p.stat().st_mtime_ns for p in raw.iterdir()} == before
    assert {f["source"] for f in again["files"]} == {"already present (verified)"}
    assert [f["content_sha256"] for f in again["files"]] == [
        f["content_sha256"] for f in manifest["files"]]


def test_download_refetches_a_file_that_no_longer_verifies(tmp_path, dataset):
    arrays, src = dataset
    raw = tmp_path / "raw"
    download(make_spec(arrays, [str(src)]), raw, FAST)
    name = FILES["test_labels"]
    (raw / name).write_bytes(b"damaged")
    manifest = download(make_spec(arrays, [str(src)]), raw, FAST)
    assert (raw / name).read_bytes() == (src / name).read_bytes()
    sources = {f["file"]: f["source"] for f in manifest["files"]}
    assert sources[name] == f"{src}/{name}"
    assert sources[FILES["train_images"]] == "already present (verified)"


def test_failed_switch_to_another_dataset_keeps_previous_files(tmp_path, dataset):
    """Two datasets share file names; the new one is only partly available."""
    arrays, src = dataset
    raw = tmp_path / "raw"
    download(make_spec(arrays, [str(src)]), raw, FAST)
    before = {p.name: p.read_bytes() for p in raw.iterdir()}

    other = write_dataset(tmp_path / "other", 3, 2, seed=1)
    (tmp_path / "other" / FILES["test_labels"]).unlink()  # its last file is nowhere
    with pytest.raises(PipelineError, match=FILES["test_labels"]):
        download(make_spec(other, [str(tmp_path / "other")], "other"), raw, FAST)
    assert {p.name: p.read_bytes() for p in raw.iterdir()} == before


def test_download_with_every_source_corrupt_keeps_raw_intact(tmp_path, dataset):
    arrays, src = dataset
    raw = tmp_path / "raw"
    corrupt_copy(src, tmp_path / "corrupt")
    with pytest.raises(PipelineError, match="sha256 mismatch"):
        download(make_spec(arrays, [str(tmp_path / "corrupt")]), raw, FAST)
    assert list(raw.iterdir()) == []


def test_generated_dataset_matches_its_spec(dataset):
    arrays, src = dataset
    spec = make_spec(arrays, [str(src)])
    for role, fspec in spec.files.items():
        assert verify(src / fspec.name, fspec).content_sha256 == fspec.sha256
    assert np.bincount(arrays["train_labels"]).tolist() == [3] * 10


def test_debian_mirror_verifies_against_datasets_yaml(tmp_path):
    """The real mirror re-compresses upstream files: content hashes must still match."""
    from pipeline.config import load_dataset_spec

    spec = load_dataset_spec("fashion_mnist", __import__("conftest").REPO / "datasets.yaml")
    mirror = spec.sources[0]
    fspec = spec.files["test_labels"]  # the smallest file: fast
    shutil.copy(f"{mirror}/{fspec.name}", tmp_path / fspec.name)
    d = verify(tmp_path / fspec.name, fspec)
    assert d.content_sha256 == fspec.sha256
