"""IDX reading and writing: round trips, and every way a file can lie about itself."""
from __future__ import annotations

import gzip
import struct
import time

import numpy as np
import pytest

from pipeline.idx import IdxError, read_idx, write_idx


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("array", [
    np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
    np.array([9, 0, 3, 255], dtype=np.uint8),
    np.array([-128, 0, 127], dtype=np.int8),
    np.arange(-6, 6, dtype=np.int16).reshape(3, 4),
    np.array([[1, -70000], [2**31 - 1, 0]], dtype=np.int32),
    np.linspace(-1, 1, 10, dtype=np.float32),
    np.array([np.pi, -1e300], dtype=np.float64),
], ids=["uint8-3d", "uint8-1d", "int8", "int16", "int32", "float32", "float64"])
def test_round_trip(tmp_path, array, suffix):
    path = tmp_path / f"a.idx{suffix}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == array.dtype.newbyteorder("=")
    assert back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_gz_is_really_compressed_and_plain_is_not(tmp_path):
    array = np.zeros((50, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "a.gz", array)
    write_idx(tmp_path / "a", array)
    assert (tmp_path / "a.gz").read_bytes()[:2] == b"\x1f\x8b"
    assert (tmp_path / "a").read_bytes()[:4] == bytes([0, 0, 8, 3])


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_wrong_magic_names_the_file(tmp_path, suffix):
    path = tmp_path / f"images{suffix}"
    data = b"\x89PNG" + b"\0" * 100
    path.write_bytes(gzip.compress(data) if suffix else data)
    with pytest.raises(IdxError, match=f"{path.name}.*not an IDX file"):
        read_idx(path)


def test_unknown_type_code_is_refused(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(bytes([0, 0, 0x07, 1]) + struct.pack(">I", 4) + b"\0" * 4)
    with pytest.raises(IdxError, match="not an IDX file"):
        read_idx(path)


def test_header_cut_short(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">I", 4))  # declares 3 dims, has 1
    with pytest.raises(IdxError, match="3 dimensions but is cut short"):
        read_idx(path)


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dims", [(2**31,), (2**31, 28, 28), (2**32 - 1,) * 3],
                         ids=["1d-2GB", "3d-1.6TB", "3d-overflowing-int64"])
def test_lying_header_fails_before_allocating(tmp_path, suffix, dims):
    data = bytes([0, 0, 8, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + b"\0" * 100
    path = tmp_path / f"liar{suffix}"
    path.write_bytes(gzip.compress(data) if suffix else data)
    start = time.perf_counter()
    with pytest.raises(IdxError, match=f"{path.name}.*(header claims|truncated)"):
        read_idx(path)
    assert time.perf_counter() - start < 1.0


def test_plain_file_shorter_than_header_claims(tmp_path):
    path = tmp_path / "short"
    write_idx(path, np.ones((10, 4), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(IdxError, match="holds only 35 bytes"):
        read_idx(path)


def test_truncated_gzip(tmp_path):
    path = tmp_path / "cut.gz"
    write_idx(path, np.random.default_rng(0).integers(0, 256, (100, 28, 28), dtype=np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(IdxError, match=f"{path.name}"):
        read_idx(path)


def test_not_gzip_at_all(tmp_path):
    path = tmp_path / "fake.gz"
    path.write_bytes(b"this is not gzip data, just text pretending" * 3)
    with pytest.raises(IdxError, match=f"{path.name}.*gzip"):
        read_idx(path)


def test_tiny_gz_file(tmp_path):
    path = tmp_path / "tiny.gz"
    path.write_bytes(b"\x1f\x8b\x08")
    with pytest.raises(IdxError, match="too short to be a gzip file"):
        read_idx(path)
