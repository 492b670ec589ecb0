"""Generated IDX datasets for the download/prepare tests (tiny, seeded, no duplicate images)."""
from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np

from pipeline.idx import encode_idx, write_idx

FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


def make_split(n_per_class: int, num_classes: int, rng: np.random.Generator,
               shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Random-noise images (unique with overwhelming probability) and shuffled balanced labels."""
    labels = np.repeat(np.arange(num_classes, dtype=np.uint8), n_per_class)
    rng.shuffle(labels)
    images = rng.integers(0, 256, size=(len(labels), *shape), dtype=np.uint8)
    return images, labels


def write_dataset(folder: Path, n_train_per_class: int, n_test_per_class: int,
                  num_classes: int = 10, seed: int = 0,
                  shape: tuple[int, int] = (28, 28)) -> dict[str, np.ndarray]:
    """Write the four MNIST-named IDX.gz files into ``folder``; return the arrays by role."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    x_train, y_train = make_split(n_train_per_class, num_classes, rng, shape)
    x_test, y_test = make_split(n_test_per_class, num_classes, rng, shape)
    arrays = {"train_images": x_train, "train_labels": y_train,
              "test_images": x_test, "test_labels": y_test}
    for role, array in arrays.items():
        write_idx(folder / FILES[role], array)
    return arrays


def content_sha256(array: np.ndarray) -> str:
    """The sha256 datasets.yaml pins for a file holding ``array`` (of the decompressed IDX)."""
    return hashlib.sha256(encode_idx(array)).hexdigest()


def dataset_entry(arrays: dict[str, np.ndarray], sources: list[str]) -> dict:
    """A datasets.yaml entry describing ``arrays`` (as written by write_dataset)."""
    num_classes = int(arrays["train_labels"].max()) + 1
    h, w = arrays["train_images"].shape[1:]
    return {
        "format": "idx",
        "description": "generated test dataset",
        "classes": [f"class{i}" for i in range(num_classes)],
        "image_shape": [h, w, 1],
        "counts": {"train": len(arrays["train_labels"]), "test": len(arrays["test_labels"])},
        "files": {role: {"name": FILES[role], "sha256": content_sha256(a)}
                  for role, a in arrays.items()},
        "sources": sources,
    }


def corrupt_copy(src: Path, dest: Path) -> None:
    """Copy a dataset folder, flipping one pixel in every file's content (valid gzip, bad sha)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in FILES.values():
        data = bytearray(gzip.decompress((Path(src) / name).read_bytes()))
        data[-1] ^= 0xFF
        (dest / name).write_bytes(gzip.compress(bytes(data), mtime=0))
