"""Stage `validate`: Great Expectations suites over the raw dataset; a failure stops the pipeline.

The suites are built in code from the dataset spec and the `validate` params, so they are
versioned with the code. They run on small tables derived from the raw files, never on
the pixels themselves (a 70k x 784 frame costs GX half a minute and 600 MB):

- ``idx_headers``: one row per raw file (IDX magic, dtype code, dims, item counts);
- ``images``: one row per image (split, label, pixel min/max/mean/std, content hash);
- ``class_balance``: one row per (split, class) with the class share;
- ``splits``: one row per split with its duplicate fraction and its overlap with train.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import config, fsio
from pipeline.config import DatasetSpec, ValidateParams
from pipeline.errors import PipelineError, cli
from pipeline.formats import RawData, read_raw
from pipeline.idx import CODES, IdxError, content_size, read_header

SUITES = ("idx_headers", "images", "class_balance", "splits")
# Columns that identify a failing row in the error paragraph and in Data Docs.
ID_COLUMNS = {
    "idx_headers": ["file"],
    "images": ["split", "index"],
    "class_balance": ["split", "class_name"],
    "splits": ["split"],
}
UINT8_CODE = CODES[np.dtype(np.uint8)]
MAX_HEADER = 4 + 4 * 255  # magic + at most 255 dimensions


@dataclass(frozen=True)
class ValidationReport:
    """Outcome of the suites: per-suite counts and one sentence per failed expectation."""

    success: bool
    suites: dict[str, dict[str, int]]
    failures: list[str]


def _magic(dtype_code: int, ndim: int) -> str:
    return bytes([0, 0, dtype_code, ndim]).hex()


def header_table(spec: DatasetSpec, raw_dir: Path) -> pd.DataFrame:
    """One row per raw file: what its IDX header claims and how many items its bytes hold.

    Only the header bytes are decompressed; a header that cannot be parsed leaves its
    claims empty (the magic expectation then names it).
    """
    rows = []
    for role, file in spec.files.items():
        path = Path(raw_dir) / file.name
        opener = gzip.open if path.suffix == ".gz" else open
        row: dict[str, Any] = {"file": file.name, "role": role, "split": role.split("_")[0],
                               "kind": role.split("_")[-1]}
        try:
            with opener(path, "rb") as fh:
                head = fh.read(MAX_HEADER)
            available = content_size(path)
        except FileNotFoundError as err:
            raise PipelineError(f"{path} is missing: run `dvc repro download` first") from err
        except (OSError, EOFError, zlib.error, IdxError) as err:
            rows.append({**row, "magic": f"unreadable ({err})"})
            continue
        row["magic"] = head[:4].hex() or "empty"
        try:
            dtype, dims = read_header(io.BytesIO(head), str(path))
        except IdxError:
            rows.append(row)
            continue
        header_len = 4 + 4 * len(dims)
        item_bytes = math.prod(dims[1:]) * dtype.itemsize
        claimed = dims[0] * item_bytes
        # A .gz trailer holds the size mod 2**32: only a bound for smaller payloads.
        trusted = path.suffix != ".gz" or claimed < 2**32
        row.update(
            dtype_code=head[2], ndim=len(dims), dims="x".join(map(str, dims)), items=dims[0],
            item_shape="x".join(map(str, dims[1:])),
            items_in_file=(available - header_len) // max(item_bytes, 1) if trusted else dims[0],
        )
        rows.append(row)
    table = pd.DataFrame(rows, columns=["file", "role", "split", "kind", "magic", "dtype_code",
                                        "ndim", "dims", "items", "item_shape", "items_in_file"])
    for col in ("dtype_code", "ndim", "items", "items_in_file"):
        table[col] = table[col].astype("Int64")
    # Each file's partner (images <-> labels of the same split) must hold as many items.
    partner = table.set_index("role")["items"]
    table["paired_items"] = pd.array(
        [partner.get(f"{s}_{'labels' if k == 'images' else 'images'}", pd.NA)
         for s, k in zip(table["split"], table["kind"])], dtype="Int64")
    return table


def image_table(raw: RawData) -> pd.DataFrame:
    """One row per image: split, position, label, pixel statistics and a content hash."""
    parts = []
    for split in ("train", "test"):
        x, y = getattr(raw, f"x_{split}"), getattr(raw, f"y_{split}")
        flat = np.ascontiguousarray(x.reshape(len(x), -1))
        parts.append(pd.DataFrame({
            "split": split,
            "index": np.arange(len(x)),
            "label": y,
            "pixel_min": flat.min(axis=1),
            "pixel_max": flat.max(axis=1),
            "pixel_mean": flat.mean(axis=1, dtype=np.float64),
            # float32: 15x faster than float64 here, and ample for a per-image statistic
            "pixel_std": flat.std(axis=1, dtype=np.float32),
            "image_hash": [hashlib.blake2b(row.tobytes(), digest_size=16).hexdigest() for row in flat],
        }))
    return pd.concat(parts, ignore_index=True)


def class_share_table(images: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """One row per (split, class): image count and share of the split (0 for a missing class)."""
    rows = []
    for split, group in images.groupby("split", sort=False):
        labels = group["label"].to_numpy()
        valid = labels[(labels >= 0) & (labels < len(classes))].astype(np.int64)
        counts = np.bincount(valid, minlength=len(classes))
        for label, (name, count) in enumerate(zip(classes, counts)):
            rows.append({"split": split, "label": label, "class_name": name, "count": int(count),
                         "share": count / max(len(labels), 1)})
    return pd.DataFrame(rows, columns=["split", "label", "class_name", "count", "share"])


def split_table(images: pd.DataFrame) -> pd.DataFrame:
    """One row per split: repeated images within it, and its images also present in train.

    A duplicate is an image identical to an earlier one of the same split (the first copy
    is not counted). ``train_overlap`` is empty for the train split itself.
    """
    train_hashes = images.loc[images["split"] == "train", "image_hash"]
    rows = []
    for split, group in images.groupby("split", sort=False):
        hashes, n = group["image_hash"], len(group)
        duplicates = int(hashes.duplicated().sum())
        overlap = None if split == "train" else int(hashes.isin(train_hashes).sum())
        rows.append({
            "split": split, "rows": n, "duplicates": duplicates,
            "duplicate_fraction": duplicates / n if n else 0.0,
            "train_overlap": overlap,
            "train_overlap_fraction": None if overlap is None else (overlap / n if n else 0.0),
        })
    return pd.DataFrame(rows, columns=["split", "rows", "duplicates", "duplicate_fraction",
                                       "train_overlap", "train_overlap_fraction"])


def data_tables(spec: DatasetSpec, raw: RawData) -> dict[str, pd.DataFrame]:
    """The tables the image-level suites run on, keyed by suite name."""
    images = image_table(raw)
    return {"images": images, "class_balance": class_share_table(images, spec.classes),
            "splits": split_table(images)}


def build_suites(spec: DatasetSpec, params: ValidateParams) -> list:
    """The expectation suites (gx.ExpectationSuite), each built with its full list at once."""
    import great_expectations as gx

    E = gx.expectations

    def where(condition: str) -> dict[str, str]:
        return {"row_condition": condition, "condition_parser": "pandas"}

    h, w, _ = spec.image_shape
    k = spec.num_classes
    per_split = list(spec.counts.items())
    headers = [
        E.ExpectTableRowCountToEqual(value=len(spec.files)),
        E.ExpectColumnValuesToBeInSet(column="magic", value_set=[_magic(UINT8_CODE, 3)],
                                      **where('kind == "images"')),
        E.ExpectColumnValuesToBeInSet(column="magic", value_set=[_magic(UINT8_CODE, 1)],
                                      **where('kind == "labels"')),
        E.ExpectColumnValuesToBeInSet(column="dtype_code", value_set=[UINT8_CODE]),
        E.ExpectColumnValuesToBeInSet(column="item_shape", value_set=[f"{h}x{w}"],
                                      **where('kind == "images"')),
        *[E.ExpectColumnValuesToBeInSet(column="items", value_set=[n], **where(f'split == "{s}"'))
          for s, n in per_split],
        E.ExpectColumnPairValuesToBeEqual(column_A="items", column_B="items_in_file",
                                          ignore_row_if="either_value_is_missing"),
        E.ExpectColumnPairValuesToBeEqual(column_A="items", column_B="paired_items",
                                          ignore_row_if="either_value_is_missing"),
    ]
    images = [
        *[E.ExpectTableRowCountToEqual(value=n, **where(f'split == "{s}"')) for s, n in per_split],
        *[E.ExpectColumnValuesToNotBeNull(column=c) for c in
          ("label", "pixel_min", "pixel_max", "pixel_mean", "pixel_std", "image_hash")],
        E.ExpectColumnValuesToBeInSet(column="label", value_set=list(range(k))),
        E.ExpectColumnValuesToBeOfType(column="pixel_min", type_="uint8"),
        E.ExpectColumnValuesToBeOfType(column="pixel_max", type_="uint8"),
        E.ExpectColumnValuesToBeBetween(column="pixel_min", min_value=0, max_value=255),
        E.ExpectColumnValuesToBeBetween(column="pixel_max", min_value=0, max_value=255),
    ]
    tol = params.class_balance_tolerance
    balance = [
        E.ExpectTableRowCountToEqual(value=k * len(per_split)),
        E.ExpectColumnValuesToBeBetween(column="share", min_value=round((1 - tol) / k, 6),
                                        max_value=round((1 + tol) / k, 6)),
    ]
    splits = [
        E.ExpectColumnValuesToBeBetween(column="duplicate_fraction", min_value=0,
                                        max_value=params.max_duplicate_fraction),
        E.ExpectColumnValuesToBeBetween(column="train_overlap_fraction", min_value=0,
                                        max_value=params.max_train_test_overlap,
                                        **where('split != "train"')),
    ]
    lists = {"idx_headers": headers, "images": images, "class_balance": balance, "splits": splits}
    return [gx.ExpectationSuite(name=name, expectations=lists[name]) for name in SUITES]


def _describe(suite: str, result: Any) -> str:
    """One sentence: the expectation, its kwargs, and what was observed instead."""
    kwargs = dict(result.expectation_config.kwargs)
    kwargs.pop("batch_id", None)
    kwargs.pop("condition_parser", None)
    condition = kwargs.pop("row_condition", None)
    if isinstance(condition, dict):
        condition = condition.get("pass_through_filter")
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    text = f"{suite}: {result.expectation_config.type}({args})"
    if condition:
        text += f" where {condition}"
    info = result.exception_info or {}
    if info.get("raised_exception"):
        return f"{text} raised {info.get('exception_message')}"
    res = result.result or {}
    if "observed_value" in res:
        return f"{text} observed {res['observed_value']!r}"
    examples = res.get("partial_unexpected_index_list") or [
        {"value": v} for v in res.get("partial_unexpected_list") or []]
    shown = []
    for entry in examples[:5]:
        entry = dict(entry)
        ident = ", ".join(f"{c}={_plain(entry.pop(c))!r}" for c in list(entry) if c in ID_COLUMNS[suite])
        value = ", ".join(f"{c}={_plain(v)!r}" for c, v in entry.items())
        shown.append(f"{value} ({ident})" if ident else value)
    return (f"{text} found {res.get('unexpected_count')} of {res.get('element_count')} rows "
            f"unexpected, e.g. {'; '.join(shown)}")


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def run_suites(suites: list, tables: dict[str, pd.DataFrame],
               docs_dir: Path | None = None) -> ValidationReport:
    """Validate each table with the suite of the same name; build Data Docs into docs_dir."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("pipeline")
    counts, failures = {}, []
    for suite in suites:
        batch = source.add_dataframe_asset(suite.name).add_batch_definition_whole_dataframe("all")
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=suite.name, data=batch, suite=context.suites.add(suite)))
        result = definition.run(
            batch_parameters={"dataframe": tables[suite.name]},
            result_format={"result_format": "SUMMARY",
                           "unexpected_index_column_names": ID_COLUMNS[suite.name]})
        failed = [r for r in result.results if not r.success]
        counts[suite.name] = {"evaluated": len(result.results), "failed": len(failed)}
        failures += [_describe(suite.name, r) for r in failed]
    if docs_dir is not None:
        context.update_data_docs_site("local_site", {
            "class_name": "SiteBuilder", "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                              "base_directory": str(Path(docs_dir).resolve())},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        })
        context.build_data_docs(site_names=["local_site"])
    return ValidationReport(success=not failures, suites=counts, failures=failures)


def validate_dataset(spec: DatasetSpec, suites: list, raw_dir: Path,
                     docs_dir: Path | None = None) -> tuple[ValidationReport, dict[str, pd.DataFrame]]:
    """Run the suites (from build_suites) on the raw files; return the report and the tables.

    Files the IDX reader refuses (bad magic, header claiming more than the file holds,
    images/labels mismatch) fail the header suite; the image suites are then reported as
    not run, with the reader's message.
    """
    tables = {"idx_headers": header_table(spec, raw_dir)}
    unreadable = None
    try:
        tables.update(data_tables(spec, read_raw(spec, raw_dir)))
    except PipelineError as err:
        unreadable = str(err)
    report = run_suites([s for s in suites if s.name in tables], tables, docs_dir)
    if unreadable:
        skipped = [s for s in SUITES if s not in tables]
        report = ValidationReport(
            success=False,
            suites={**report.suites, **{s: {"evaluated": 0, "failed": 0} for s in skipped}},
            failures=[*report.failures,
                      f"the raw files could not be read, so suites {', '.join(skipped)} did not "
                      f"run: {unreadable}"])
    return report, tables


def summarize(report: ValidationReport, tables: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """The DVC metrics: success, counts per suite and the key observed values."""
    summary: dict[str, Any] = {
        "success": report.success,
        "evaluated": sum(s["evaluated"] for s in report.suites.values()),
        "failed": len(report.failures),
        "suites": report.suites,
    }
    if "splits" in tables:
        splits = tables["splits"].set_index("split")
        shares = tables["class_balance"].groupby("split", sort=False)["share"]
        images = tables["images"]
        summary.update(
            rows={s: int(n) for s, n in splits["rows"].items()},
            duplicates={s: int(n) for s, n in splits["duplicates"].items()},
            duplicate_fraction={s: float(f) for s, f in splits["duplicate_fraction"].items()},
            train_test_overlap=int(splits.loc["test", "train_overlap"]),
            train_test_overlap_fraction=float(splits.loc["test", "train_overlap_fraction"]),
            class_share={s: {"min": float(g.min()), "max": float(g.max())} for s, g in shares},
            pixel={"min": _plain(images["pixel_min"].min()), "max": _plain(images["pixel_max"].max())},
        )
    return summary


def summary_line(report: ValidationReport) -> str:
    return ", ".join(f"{name} {c['evaluated'] - c['failed']}/{c['evaluated']}"
                     for name, c in report.suites.items()) + " expectations met"


@cli
def main() -> None:
    params = config.load_yaml(config.PARAMS_FILE)
    paths = config.section("paths", config.Paths, params)
    data = config.section("data", config.DataParams, params)
    vparams = config.section("validate", ValidateParams, params)
    spec = config.load_dataset_spec(data.dataset, paths.datasets)
    suites = build_suites(spec, vparams)
    with fsio.atomic_dir(paths.validation / "data_docs") as docs:
        report, tables = validate_dataset(spec, suites, paths.raw, docs)
        for suite in suites:
            fsio.write_text(docs / "suites" / f"{suite.name}.json",
                            json.dumps(suite.to_json_dict(), indent=2, default=str) + "\n")
    fsio.write_json(paths.validation / "summary.json", summarize(report, tables))
    if not report.success:
        raise PipelineError(
            f"{spec.name} in {paths.raw} failed {len(report.failures)} data expectation(s): "
            + "; ".join(report.failures)
            + f". Summary: {paths.validation / 'summary.json'}; Data Docs: "
              f"{paths.validation / 'data_docs' / 'index.html'}.")
    print(f"validated {spec.name}: {summary_line(report)}")


if __name__ == "__main__":
    main()
