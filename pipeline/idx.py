"""The IDX format of (Fashion-)MNIST: read with every header claim checked, and write."""
from __future__ import annotations

import gzip
import io
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError

# Third byte of the magic number -> dtype (big-endian), from the IDX spec.
DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
CODES = {dt.newbyteorder(">") if dt.itemsize > 1 else dt: code for code, dt in DTYPES.items()}


class IdxError(PipelineError):
    """An IDX file whose bytes do not match what its header claims."""


def content_size(path: Path) -> int:
    """Decompressed size without decompressing: gzip's trailer holds it (mod 2**32)."""
    if path.suffix != ".gz":
        return path.stat().st_size
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell() < 18:
            raise IdxError(f"{path}: too short to be a gzip file ({fh.tell()} bytes)")
        fh.seek(-4, os.SEEK_END)
        return struct.unpack("<I", fh.read(4))[0]


def _read_upto(fh: io.BufferedIOBase, size: int, chunk: int = 1 << 26) -> bytes:
    """Read at most ``size`` bytes in bounded blocks: a single read(size) allocates ``size``
    up front, which a lying .gz header (unbounded by the 32-bit trailer) could make huge."""
    blocks, got = [], 0
    while got < size:
        block = fh.read(min(chunk, size - got))
        if not block:
            break
        blocks.append(block)
        got += len(block)
    return b"".join(blocks)


def read_header(fh: io.BufferedIOBase, name: str) -> tuple[np.dtype, tuple[int, ...]]:
    """Parse the magic number and dimensions; raise IdxError naming the file on a bad magic."""
    magic = fh.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in DTYPES:
        raise IdxError(
            f"{name}: not an IDX file (magic number {magic.hex() or 'missing'}; expected "
            f"00 00 <type code> <ndim> with a type code in {sorted(hex(c) for c in DTYPES)})"
        )
    ndim = magic[3]
    raw_dims = fh.read(4 * ndim)
    if ndim == 0 or len(raw_dims) < 4 * ndim:
        raise IdxError(f"{name}: IDX header declares {ndim} dimensions but is cut short")
    return DTYPES[magic[2]], struct.unpack(f">{ndim}I", raw_dims)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally .gz) into an array of its declared shape.

    The header's claim is checked against the bytes actually there *before* the payload is
    allocated, so a corrupt header cannot ask for gigabytes.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        available = content_size(path)
        with opener(path, "rb") as fh:
            dtype, dims = read_header(fh, str(path))
            header_len = 4 + 4 * len(dims)
            needed = math.prod(dims) * dtype.itemsize  # exact: np.prod wraps around in int64
            # For .gz the trailer size is mod 2**32; only trust it as a bound when small.
            if (path.suffix != ".gz" or needed < 2**32) and needed > available - header_len:
                raise IdxError(
                    f"{path}: header claims shape {dims} ({needed} bytes) but the file holds "
                    f"only {max(available - header_len, 0)} bytes of data"
                )
            payload = _read_upto(fh, needed)
            if len(payload) < needed:
                raise IdxError(
                    f"{path}: truncated: header claims {needed} bytes of data, found {len(payload)}"
                )
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise IdxError(f"{path}: corrupt or truncated gzip stream ({err})") from err
    return np.frombuffer(payload, dtype=dtype).astype(dtype.newbyteorder("="), copy=False).reshape(dims)


def encode_idx(array: np.ndarray) -> bytes:
    """Serialize an array as IDX bytes (the inverse of read_idx)."""
    dtype = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    if dtype not in CODES:
        raise ValueError(f"dtype {array.dtype} has no IDX type code")
    header = bytes([0, 0, CODES[dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=dtype).tobytes()


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write an array as IDX, gzip-compressed when the name ends in .gz."""
    data = encode_idx(array)
    path = Path(path)
    if path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
