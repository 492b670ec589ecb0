"""A tiny CNN from the pipeline's builder learns a learnable task, and learns it bit for bit
the same way twice.

Each training run is a fresh subprocess (this file run as a script): TensorFlow's threading
and determinism settings are process-wide, so only a new process shows that seeding is enough.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]

NUM_CLASSES, SIDE = 10, 16
HP = {"family": "cnn", "units": 16, "dropout": 0.1, "learning_rate": 0.01, "filters": 4,
      "conv_blocks": 1, "convs_per_block": 1, "batch_norm": False}


def make_images(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise images with a bright 4x4 square whose position (one of 10) is the class."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(NUM_CLASSES, dtype=np.uint8), n_per_class)
    rng.shuffle(y)
    x = rng.integers(0, 120, size=(len(y), SIDE, SIDE, 1)).astype(np.int32)
    for i, label in enumerate(y):
        row, col = divmod(int(label), 4)  # a 3x4 grid of 4x4 cells, first 10 used
        x[i, row * 5: row * 5 + 4, col * 4: col * 4 + 4] += 110
    return np.clip(x, 0, 255).astype(np.uint8), y


def train_once(seed: int) -> dict:
    """Train the tiny CNN in this process; return val accuracy and a hash of the weights."""
    import hashlib

    from pipeline.models import as_float, build_model, configure_runtime, fit_model

    configure_runtime(seed, intra_op_threads=1, inter_op_threads=1)
    x_train, y_train = make_images(30, seed=1)
    x_val, y_val = make_images(10, seed=2)
    x = x_train.reshape(-1, 1).astype(np.float64)
    model = build_model(HP, (SIDE, SIDE, 1), NUM_CLASSES, [float(x.mean())], [float(x.std())])
    history = fit_model(model, as_float(x_train), y_train, as_float(x_val), y_val,
                        epochs=4, batch_size=32, patience=4)
    _, accuracy = model.evaluate(as_float(x_val), y_val, verbose=0)
    digest = hashlib.sha256()
    for w in model.get_weights():
        digest.update(np.ascontiguousarray(w).tobytes())
    return {"val_accuracy": history["val_accuracy"], "evaluated": float(accuracy),
            "val_loss": history["val_loss"], "weights_sha256": digest.hexdigest()}


def test_tiny_cnn_learns_and_is_reproducible_across_processes():
    cmd = [sys.executable, str(Path(__file__).resolve()), "42"]
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    first, second = results
    chance = 1 / NUM_CLASSES
    assert first["evaluated"] > 0.5, f"held-out accuracy {first['evaluated']} (chance {chance})"
    assert max(first["val_accuracy"]) == pytest.approx(first["evaluated"])  # best weights were restored
    assert first == second


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    print(json.dumps(train_once(int(sys.argv[1]))))
