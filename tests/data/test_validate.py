"""The validate stage's suites on generated IDX fixtures: each passes on good data and
fails, naming the expectation and the observed value, on each kind of bad data."""
from __future__ import annotations

import gzip
import json
import shutil
import struct
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml

from conftest import REPO, IdxDataset
from pipeline import validate
from pipeline.config import DatasetSpec, ValidateParams
from pipeline.idx import read_idx, write_idx

PARAMS = ValidateParams()  # the defaults params.yaml ships with


def run(spec: DatasetSpec, folder: Path) -> validate.ValidationReport:
    report, _ = validate.validate_dataset(spec, validate.build_suites(spec, PARAMS), folder)
    return report


def edit_array(ds: IdxDataset, role: str, change: Callable[[np.ndarray], np.ndarray]) -> None:
    path = ds.folder / ds.files[role][0]
    write_idx(path, change(read_idx(path).copy()))


def edit_bytes(ds: IdxDataset, role: str, change: Callable[[bytearray], bytes]) -> None:
    path = ds.folder / ds.files[role][0]
    path.write_bytes(gzip.compress(bytes(change(bytearray(gzip.decompress(path.read_bytes()))))))


def set_at(a: np.ndarray, index, value) -> np.ndarray:
    a[index] = value
    return a


def relabel(a: np.ndarray) -> np.ndarray:
    """Move 10 of class 1's 20 training images to class 0: shares 0.15 and 0.05."""
    a[np.flatnonzero(a == 1)[:10]] = 0
    return a


def bad_magic(data: bytearray) -> bytes:
    data[:4] = bytes.fromhex("deadbeef")
    return data


def claim_more(data: bytearray) -> bytes:
    data[4:8] = struct.pack(">I", struct.unpack(">I", data[4:8])[0] + 5)
    return data


BAD = {
    "label outside the class set": (
        lambda ds: edit_array(ds, "train_labels", lambda a: set_at(a, 3, 12)),
        ["images: expect_column_values_to_be_in_set(column='label'", "label=12 (split='train', index=3)"]),
    "class imbalance": (
        lambda ds: edit_array(ds, "train_labels", relabel),
        ["class_balance: expect_column_values_to_be_between(column='share', min_value=0.08, "
         "max_value=0.12)", "share=0.15 (split='train', class_name='class0')",
         "share=0.05 (split='train', class_name='class1')"]),
    "duplicate images": (
        lambda ds: edit_array(ds, "train_images", lambda a: set_at(a, slice(1, 10), a[0])),
        ["splits: expect_column_values_to_be_between(column='duplicate_fraction'",
         "duplicate_fraction=0.045 (split='train')"]),
    "train/test overlap": (
        lambda ds: edit_array(ds, "test_images", lambda a: set_at(
            a, slice(0, 3), read_idx(ds.folder / ds.files["train_images"][0])[:3])),
        ["splits: expect_column_values_to_be_between(column='train_overlap_fraction'",
         "where split != \"train\"", "train_overlap_fraction=0.06 (split='test')"]),
    "wrong IDX magic": (
        lambda ds: edit_bytes(ds, "test_images", bad_magic),
        ["idx_headers: expect_column_values_to_be_in_set(column='magic', value_set=['00000803'])",
         "magic='deadbeef' (file='t10k-images-idx3-ubyte.gz')", "did not run", "not an IDX file"]),
    "header claims more items than the file holds": (
        lambda ds: edit_bytes(ds, "train_images", claim_more),
        ["expect_column_pair_values_to_be_equal(column_A='items', column_B='items_in_file'",
         "items=205, items_in_file=200 (file='train-images-idx3-ubyte.gz')", "did not run", "header claims"]),
    "images/labels count mismatch": (
        lambda ds: edit_array(ds, "test_labels", lambda a: a[:45]),
        ["expect_column_pair_values_to_be_equal(column_A='items', column_B='paired_items'",
         "items=45, paired_items=50 (file='t10k-labels-idx1-ubyte.gz')", "the counts must match"]),
    "pixel dtype and range": (
        lambda ds: edit_array(ds, "train_images", lambda a: set_at(a.astype(">i2"), (0, 0, 0), 300)),
        ["expect_column_values_to_be_in_set(column='dtype_code', value_set=[8])",
         "images: expect_column_values_to_be_of_type(column='pixel_max', type_='uint8') "
         "observed 'int16'",
         "expect_column_values_to_be_between(column='pixel_max', min_value=0.0, max_value=255.0)",
         "pixel_max=300 (split='train', index=0)"]),
    "image shape": (
        lambda ds: edit_array(ds, "test_images", lambda a: a[:, :27, :27]),
        ["expect_column_values_to_be_in_set(column='item_shape', value_set=['28x28'])",
         "item_shape='27x27' (file='t10k-images-idx3-ubyte.gz')", "expected (N, 28, 28)"]),
}


def test_every_suite_passes_on_a_good_fixture(idx_dataset):
    report = run(idx_dataset.spec, idx_dataset.folder)
    assert report.failures == []
    assert report.success
    assert set(report.suites) == set(validate.SUITES)
    assert all(c["evaluated"] >= 2 and c["failed"] == 0 for c in report.suites.values())


@pytest.mark.parametrize("case", list(BAD))
def test_bad_fixture_fails_naming_the_expectation(idx_dataset, case):
    corrupt, expected = BAD[case]
    corrupt(idx_dataset)
    report = run(idx_dataset.spec, idx_dataset.folder)
    text = "; ".join(report.failures)
    assert not report.success
    for fragment in expected:
        assert fragment in text, f"{fragment!r} not in: {text}"


def test_wrong_row_count_fails_in_headers_and_images(idx_dataset):
    spec = idx_dataset.spec.model_copy(update={"counts": {"train": 210, "test": 50}})
    text = "; ".join(run(spec, idx_dataset.folder).failures)
    assert ("images: expect_table_row_count_to_equal(value=210) where split == \"train\" "
            "observed 200") in text
    assert "idx_headers: expect_column_values_to_be_in_set(column='items', value_set=[210]) where split == \"train\"" in text


def test_tables_measure_duplicates_overlap_and_shares(idx_dataset):
    edit_array(idx_dataset, "train_images", lambda a: set_at(a, slice(1, 4), a[0]))
    edit_array(idx_dataset, "test_images", lambda a: set_at(
        a, 0, read_idx(idx_dataset.folder / idx_dataset.files["train_images"][0])[7]))
    tables = validate.data_tables(idx_dataset.spec, validate.read_raw(idx_dataset.spec,
                                                                      idx_dataset.folder))
    splits = tables["splits"].set_index("split")
    assert splits.loc["train", "duplicates"] == 3
    assert splits.loc["train", "duplicate_fraction"] == pytest.approx(3 / 200)
    assert splits.loc["test", "train_overlap"] == 1
    assert splits.loc["test", "train_overlap_fraction"] == pytest.approx(1 / 50)
    assert tables["class_balance"]["share"].tolist() == [0.1] * 20
    images = tables["images"]
    assert len(images) == 250 and images["pixel_min"].dtype == np.uint8
    assert images["image_hash"].str.len().eq(32).all()


def stage_dir(tmp_path: Path, raw: Path, dataset: str, entry: dict | None) -> Path:
    """A working folder with params.yaml, datasets.yaml and data/raw, as the stage sees it."""
    work = tmp_path / "work"
    shutil.copytree(raw, work / "data" / "raw")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["dataset"] = dataset
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    if entry is None:
        shutil.copy(REPO / "datasets.yaml", work / "datasets.yaml")
    else:
        (work / "datasets.yaml").write_text(yaml.safe_dump({dataset: entry}))
    return work


def test_main_writes_summary_and_docs_then_fails_with_one_paragraph(
        idx_dataset, tmp_path, monkeypatch, capsys):
    work = stage_dir(tmp_path, idx_dataset.folder, "tiny", idx_dataset.entry)
    monkeypatch.chdir(work)
    out = work / "reports" / "validation"
    validate.main()
    assert json.loads((out / "summary.json").read_text())["success"] is True
    assert (out / "data_docs" / "index.html").is_file()
    assert json.loads((out / "data_docs" / "suites" / "splits.json").read_text())["name"] == "splits"

    edit_array(IdxDataset(work / "data" / "raw", idx_dataset.files, idx_dataset.spec,
                          idx_dataset.entry), "train_labels", lambda a: set_at(a, 0, 10))
    with pytest.raises(SystemExit) as exit_info:
        validate.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "ERROR [" in err and "failed 1 data expectation(s)" in err
    assert "column='label'" in err and "label=10 (split='train', index=0)" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["success"] is False and summary["suites"]["images"]["failed"] == 1
    assert list((out / "data_docs" / "validations" / "images").rglob("*.html"))


def test_main_on_the_real_fashion_mnist(tmp_path, monkeypatch):
    # The Debian package dataset-fashion-mnist is the mirror; .ci/run installs it.
    raw = Path("/usr/share/datasets/fashion-mnist")
    assert (raw / "train-images-idx3-ubyte.gz").is_file(), "apt-get install dataset-fashion-mnist"
    monkeypatch.chdir(stage_dir(tmp_path, raw, "fashion_mnist", None))
    validate.main()
    summary = json.loads(Path("reports/validation/summary.json").read_text())
    assert summary["success"] is True and summary["failed"] == 0
    assert summary["rows"] == {"train": 60000, "test": 10000}
    assert summary["duplicate_fraction"]["train"] <= PARAMS.max_duplicate_fraction
    assert summary["train_test_overlap_fraction"] <= PARAMS.max_train_test_overlap
    assert summary["class_share"]["train"] == {"min": 0.1, "max": 0.1}
    assert summary["pixel"] == {"min": 0, "max": 255}
