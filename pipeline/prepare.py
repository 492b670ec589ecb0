"""Stage `prepare`: stratified, seeded train/validation split; normalization fitted on train.

The official test split is passed through untouched. Arrays stay uint8 (the model
normalizes inside itself with the statistics written here), so the splits are as
compact as the raw data.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import config, fsio
from pipeline.errors import PipelineError, cli
from pipeline.formats import RawData, read_raw

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Splits:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def arrays(self) -> dict[str, np.ndarray]:
        return {f"{k}_{s}": getattr(self, f"{k}_{s}") for s in SPLITS for k in ("x", "y")}


def stratified_indices(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (rest, picked) with ``fraction`` of every class picked, seeded.

    Per class, round(fraction * count) items are picked, so class shares are kept to
    within one item per class.
    """
    rng = np.random.default_rng(seed)
    picked = []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        picked.append(idx[: int(round(fraction * len(idx)))])
    picked_idx = np.sort(np.concatenate(picked)) if picked else np.array([], dtype=np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[picked_idx] = False
    return np.flatnonzero(mask), picked_idx


def stratified_subset(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Indices of at most ``limit`` items keeping class shares (all items when limit is 0)."""
    if limit <= 0 or limit >= len(labels):
        return np.arange(len(labels))
    _, picked = stratified_indices(labels, limit / len(labels), seed)
    return picked


def split(raw: RawData, val_fraction: float, seed: int, limit: int = 0) -> Splits:
    """Make train/val from the official train set; subset each split to ``limit`` if set."""
    train_idx, val_idx = stratified_indices(raw.y_train, val_fraction, seed)
    parts = {
        "train": (raw.x_train[train_idx], raw.y_train[train_idx]),
        "val": (raw.x_train[val_idx], raw.y_train[val_idx]),
        "test": (raw.x_test, raw.y_test),
    }
    out = {}
    for name, (x, y) in parts.items():
        keep = stratified_subset(y, limit, seed + 1)
        out[f"x_{name}"] = np.ascontiguousarray(x[keep], dtype=np.uint8)
        out[f"y_{name}"] = np.ascontiguousarray(y[keep], dtype=np.uint8)
    return Splits(**out)


def normalization_stats(x_train: np.ndarray) -> dict[str, list[float]]:
    """Per-channel mean and std of the training images, in raw pixel units."""
    x = x_train.reshape(-1, x_train.shape[-1]).astype(np.float64)
    std = x.std(axis=0)
    return {"mean": x.mean(axis=0).tolist(), "std": np.where(std > 0, std, 1.0).tolist()}


def load_splits(prepared: Path) -> Splits:
    """Read the arrays written by this stage (memory-mapped: loading is instant)."""
    try:
        return Splits(**{k: np.load(Path(prepared) / f"{k}.npy", mmap_mode="r")
                         for k in Splits.__dataclass_fields__})
    except FileNotFoundError as err:
        raise PipelineError(f"{err.filename} is missing: run `dvc repro prepare` first") from err


def load_stats(prepared: Path) -> dict:
    return fsio.read_json(Path(prepared) / "stats.json")


@cli
def main() -> None:
    params = config.load_yaml(config.PARAMS_FILE)
    paths = config.section("paths", config.Paths, params)
    data = config.section("data", config.DataParams, params)
    prep = config.section("prepare", config.PrepareParams, params)
    spec = config.load_dataset_spec(data.dataset, paths.datasets)
    splits = split(read_raw(spec, paths.raw), prep.val_fraction, prep.seed, data.limit)
    if len(np.unique(splits.y_train)) < spec.num_classes:
        raise PipelineError(
            f"`data.limit` = {data.limit} leaves fewer than {spec.num_classes} classes in the "
            f"train split; use at least a few images per class")
    stats = {
        "dataset": spec.name,
        "classes": spec.classes,
        "image_shape": list(spec.image_shape),
        "counts": {s: int(len(getattr(splits, f"y_{s}"))) for s in SPLITS},
        "val_fraction": prep.val_fraction,
        "seed": prep.seed,
        "limit": data.limit,
        "normalization": normalization_stats(splits.x_train),
    }
    with fsio.atomic_dir(paths.prepared) as tmp:
        for key, arr in splits.arrays().items():
            np.save(tmp / f"{key}.npy", arr, allow_pickle=False)
        fsio.write_json(tmp / "stats.json", stats)
    print(f"prepared {stats['counts']} in {paths.prepared}")


if __name__ == "__main__":
    main()
