"""Stage `download`: fetch a dataset's files from the first source that has them intact.

Sources (local mirror folders, then URLs) are tried in order; a file is only kept once
its content sha256 matches datasets.yaml. Verified files already in place are not
fetched again. A manifest records what was used.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from pipeline import config, fsio
from pipeline.config import DatasetSpec, DownloadParams, FileSpec
from pipeline.errors import PipelineError, cli

CHUNK = 1 << 20
TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}


class SourceRefused(Exception):
    """One source could not supply a verified copy of one file (the reason is the message)."""


@dataclass(frozen=True)
class Digest:
    sha256: str          # of the bytes as stored
    content_sha256: str  # of the decompressed content (what datasets.yaml pins)
    size: int


def digest_file(path: Path, gzipped: bool) -> Digest:
    """Hash a file and, if gzipped, its decompressed content; corrupt gzip raises SourceRefused."""
    outer = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            outer.update(block)
    if not gzipped:
        return Digest(outer.hexdigest(), outer.hexdigest(), path.stat().st_size)
    inner = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as fh:
            while block := fh.read(CHUNK):
                inner.update(block)
    except (gzip.BadGzipFile, EOFError, zlib.error, OSError) as err:
        raise SourceRefused(f"corrupt or truncated gzip ({err})") from err
    return Digest(outer.hexdigest(), inner.hexdigest(), path.stat().st_size)


def verify(path: Path, spec: FileSpec) -> Digest:
    """Return the file's digest if its content matches the pinned sha256, else raise."""
    d = digest_file(path, gzipped=spec.name.endswith(".gz"))
    if d.content_sha256 != spec.sha256:
        raise SourceRefused(
            f"sha256 mismatch: content is {d.content_sha256[:16]}..., "
            f"expected {spec.sha256[:16]}...")
    return d


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def _session(params: DownloadParams):
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    retry = Retry(total=params.retries, connect=params.retries, read=params.retries,
                  status=params.retries, backoff_factor=params.backoff,
                  status_forcelist=sorted(TRANSIENT_STATUS), allowed_methods={"GET"},
                  raise_on_status=False)
    s = requests.Session()
    s.mount("http://", HTTPAdapter(max_retries=retry))
    s.mount("https://", HTTPAdapter(max_retries=retry))
    return s


def fetch_url(url: str, dest: Path, params: DownloadParams, progress: bool = True) -> None:
    """Stream a URL to ``dest`` with retries on transient failures and a progress bar."""
    import requests
    from tqdm import tqdm

    attempts = params.retries + 1
    # urllib3's Retry covers connect errors and 408/429/5xx answers; a connection dropped
    # mid-body is not seen by it, so that case is retried here with the same backoff.
    for attempt in range(1, attempts + 1):
        try:
            with _session(params).get(url, stream=True, timeout=params.timeout) as r:
                if r.status_code != 200:
                    raise SourceRefused(f"HTTP {r.status_code} {r.reason}")
                total = int(r.headers.get("content-length") or 0) or None
                with open(dest, "wb") as out, tqdm(
                    total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1],
                    disable=not progress or (total or 0) < (1 << 20), leave=False,
                ) as bar:
                    for block in r.iter_content(CHUNK):
                        out.write(block)
                        bar.update(len(block))
            return
        except (requests.exceptions.ChunkedEncodingError,
                requests.exceptions.ReadTimeout) as err:
            if attempt == attempts:
                raise SourceRefused(f"transfer broke off {attempts} times ({type(err).__name__})") from err
            time.sleep(params.backoff * 2 ** (attempt - 1))
        except requests.exceptions.ConnectionError as err:
            raise SourceRefused(f"unreachable after {attempts} attempts "
                                f"({_reason(err)})") from err
        except requests.exceptions.RequestException as err:
            raise SourceRefused(f"request failed ({type(err).__name__}: {str(err)[:160]})") from err


def _reason(err: Exception) -> str:
    """The innermost cause of a requests error, short (e.g. 'Name or service not known')."""
    while err.__context__ is not None or getattr(err, "reason", None) is not None:
        nxt = getattr(err, "reason", None) or err.__context__
        if not isinstance(nxt, BaseException) or nxt is err:
            break
        err = nxt
    return f"{type(err).__name__}: {str(err)[-120:]}"


def fetch_local(folder: str, name: str, dest: Path) -> None:
    src = Path(folder.removeprefix("file://")) / name
    if not src.is_file():
        raise SourceRefused(f"no file {src}")
    shutil.copyfile(src, dest)


def fetch_file(spec: FileSpec, sources: Iterable[str], target: Path,
               params: DownloadParams, progress: bool = True) -> tuple[Digest, str]:
    """Put a verified copy of one file at ``target``; return its digest and the source used.

    Each candidate is written to a temp file beside the target and renamed only after it
    verifies, so a bad download never replaces a good file and is never kept.
    """
    refusals = []
    tmp = target.with_name(f".{spec.name}.part")
    for source in sources:
        origin = source.rstrip("/") + "/" + spec.name
        try:
            if is_url(source):
                fetch_url(origin, tmp, params, progress)
            else:
                fetch_local(source, spec.name, tmp)
            digest = verify(tmp, spec)
        except SourceRefused as why:
            tmp.unlink(missing_ok=True)
            refusals.append(f"{origin}: {why}")
            continue
        except BaseException:  # interrupted or a bug: never leave a partial file behind
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, target)
        return digest, origin
    raise PipelineError(
        f"no source supplied a verified copy of {spec.name} (expected content sha256 "
        f"{spec.sha256}). Sources tried, in order: " + "; ".join(refusals) + ". "
        f"Earlier verified files in {target.parent} were left as they were. Add a mirror "
        f"folder or URL to the dataset's `sources` in datasets.yaml, or fix the network."
    )


def download(spec: DatasetSpec, raw_dir: Path, params: DownloadParams,
             progress: bool = True, known_sources: dict[str, str] | None = None) -> dict:
    """Make ``raw_dir`` hold verified copies of every file of ``spec``; return the manifest.

    A file that replaces an existing one (another dataset's file of the same name, or one
    that no longer verifies) is staged aside and swapped in only once every file of the
    dataset is verified, so a failed run leaves the previous raw files as they were.
    """
    raw_dir.mkdir(parents=True, exist_ok=True)
    entries, staged = [], {}
    try:
        for role, fspec in spec.files.items():
            target = raw_dir / fspec.name
            digest, origin = None, None
            if target.is_file():
                try:
                    # Keep the provenance recorded when the file was fetched.
                    digest = verify(target, fspec)
                    origin = (known_sources or {}).get(fspec.name, "already present (verified)")
                except SourceRefused as why:
                    print(f"{target}: {why}; fetching again")
            if digest is None:
                dest = target
                if target.exists():
                    dest = staged[target] = raw_dir / f".{fspec.name}.verified"
                digest, origin = fetch_file(fspec, spec.sources, dest, params, progress)
                print(f"{fspec.name}: verified, from {origin}")
            entries.append({
                "role": role, "file": fspec.name, "size": digest.size, "sha256": digest.sha256,
                "content_sha256": digest.content_sha256,
                "official_archive": digest.sha256 == fspec.archive_sha256, "source": origin,
            })
        for target, dest in staged.items():
            os.replace(dest, target)
    finally:
        for dest in staged.values():
            dest.unlink(missing_ok=True)
    return {"dataset": spec.name, "files": entries}


@cli
def main() -> None:
    params = config.load_yaml(config.PARAMS_FILE)
    paths = config.section("paths", config.Paths, params)
    data = config.section("data", config.DataParams, params)
    dl = config.section("download", DownloadParams, params)
    spec = config.load_dataset_spec(data.dataset, paths.datasets)
    known = {}
    if paths.manifest.exists():
        old = fsio.read_json(paths.manifest)
        if old.get("dataset") == spec.name:
            known = {f["file"]: f["source"] for f in old.get("files", [])}
    manifest = download(spec, paths.raw, dl, known_sources=known)
    keep = {f.name for f in spec.files.values()} | {paths.manifest.name}
    for stale in paths.raw.iterdir():  # files of a previously selected dataset
        if stale.is_file() and stale.name not in keep:
            stale.unlink()
    fsio.write_json(paths.manifest, manifest)
    print(f"{spec.name}: {len(manifest['files'])} files verified in {paths.raw}")


if __name__ == "__main__":
    main()
