"""Atomic outputs: a failure inside the block leaves the old target and no temp files."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from pipeline import fsio


class Boom(Exception):
    pass


def test_atomic_path_replaces_on_success(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with fsio.atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_text("new")
        assert target.read_text() == "old"  # not visible before the block ends
    assert target.read_text() == "new"
    assert os.listdir(tmp_path) == ["out.txt"]


@pytest.mark.parametrize("exists", [True, False])
def test_atomic_path_failure_keeps_old_and_no_temp(tmp_path, exists):
    target = tmp_path / "out.txt"
    if exists:
        target.write_text("old")
    with pytest.raises(Boom):
        with fsio.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise Boom
    assert os.listdir(tmp_path) == (["out.txt"] if exists else [])
    if exists:
        assert target.read_text() == "old"


def test_atomic_path_file_mode_follows_umask(tmp_path):
    fsio.write_text(tmp_path / "a.txt", "x")
    mode = stat.S_IMODE((tmp_path / "a.txt").stat().st_mode)
    assert mode == 0o666 & ~fsio._umask()


def test_write_json_and_npy_round_trip(tmp_path):
    fsio.write_json(tmp_path / "a" / "b.json", {"k": [1, 2]})
    assert fsio.read_json(tmp_path / "a" / "b.json") == {"k": [1, 2]}
    fsio.save_npy(tmp_path / "x.npy", np.arange(5, dtype=np.uint8))
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), np.arange(5))


def test_atomic_dir_swaps_on_success(tmp_path):
    target = tmp_path / "prepared"
    target.mkdir()
    (target / "stale.npy").write_text("old")
    with fsio.atomic_dir(target) as tmp:
        (tmp / "new.npy").write_text("new")
        assert (target / "stale.npy").exists()
    assert os.listdir(target) == ["new.npy"]
    assert os.listdir(tmp_path) == ["prepared"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~fsio._umask()


@pytest.mark.parametrize("exists", [True, False])
def test_atomic_dir_failure_keeps_old_and_no_temp(tmp_path, exists):
    target = tmp_path / "prepared"
    if exists:
        target.mkdir()
        (target / "a.npy").write_text("old")
    with pytest.raises(Boom):
        with fsio.atomic_dir(target) as tmp:
            (tmp / "a.npy").write_text("half")
            raise Boom
    assert os.listdir(tmp_path) == (["prepared"] if exists else [])
    if exists:
        assert os.listdir(target) == ["a.npy"]
        assert (target / "a.npy").read_text() == "old"
