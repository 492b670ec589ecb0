"""Readers that turn a dataset's raw files into arrays, one per `format` in datasets.yaml."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.config import DatasetSpec
from pipeline.errors import PipelineError
from pipeline.idx import read_idx


@dataclass(frozen=True)
class RawData:
    """The official splits as uint8 images (N, H, W, C) and integer labels (N,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def read_idx_dataset(spec: DatasetSpec, raw_dir: Path) -> RawData:
    arrays = {role: read_idx(raw_dir / f.name) for role, f in spec.files.items()}
    h, w, c = spec.image_shape
    out = {}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        name = spec.files[f"{split}_images"].name
        if images.ndim != 3 or images.shape[1:] != (h, w):
            raise PipelineError(
                f"{raw_dir / name}: images have shape {images.shape}, expected (N, {h}, {w})")
        if labels.ndim != 1 or len(labels) != len(images):
            raise PipelineError(
                f"{raw_dir / spec.files[f'{split}_labels'].name}: {labels.shape[0]} labels for "
                f"{len(images)} images in {name}; the counts must match")
        out[f"x_{split}"] = images.reshape(-1, h, w, c)
        out[f"y_{split}"] = labels.astype(np.int64)
    return RawData(**out)


READERS: dict[str, Callable[[DatasetSpec, Path], RawData]] = {"idx": read_idx_dataset}


def read_raw(spec: DatasetSpec, raw_dir: Path) -> RawData:
    """Read a downloaded dataset with the reader for its format."""
    return READERS[spec.format](spec, Path(raw_dir))
