"""Stand-in for the train stage: tiny synthetic image data and tiny Keras models, logged
to MLflow exactly as the contract says, so evaluate/register/serve can be tested alone."""
from __future__ import annotations

from pathlib import Path

import numpy as np

CLASSES = ["dark", "left", "right"]
SHAPE = (8, 8, 1)


def make_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three separable classes of noisy 8x8 uint8 images: dark, bright left half, bright right half."""
    rng = np.random.default_rng(seed)
    y = np.arange(n, dtype=np.uint8) % len(CLASSES)
    rng.shuffle(y)
    x = rng.integers(0, 100, size=(n, *SHAPE)).astype(np.int32)
    x[y == 1, :, :4] += 25
    x[y == 2, :, 4:] += 25
    return np.clip(x, 0, 255).astype(np.uint8), y


def write_prepared(prepared: Path, n_train: int = 300, n_test: int = 90, seed: int = 0) -> dict:
    """Write a data/prepared layout (splits + stats.json) like the prepare stage; return stats."""
    from pipeline import fsio, prepare

    prepared = Path(prepared)
    prepared.mkdir(parents=True, exist_ok=True)
    x_train, y_train = make_images(n_train, seed)
    x_val, y_val = make_images(n_test, seed + 1)
    x_test, y_test = make_images(n_test, seed + 2)
    for name, arr in dict(x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val,
                          x_test=x_test, y_test=y_test).items():
        np.save(prepared / f"{name}.npy", arr)
    stats = {
        "dataset": "tiny", "classes": CLASSES, "image_shape": list(SHAPE),
        "counts": {"train": n_train, "val": n_test, "test": n_test},
        "normalization": prepare.normalization_stats(x_train),
    }
    fsio.write_json(prepared / "stats.json", stats)
    return stats


def build_model(stats: dict, epochs: int, x: np.ndarray, y: np.ndarray, seed: int = 0):
    """Normalization layer (raw pixels in) + softmax dense; ``epochs=0`` gives an untrained model."""
    import keras

    keras.utils.set_random_seed(seed)
    norm = stats["normalization"]
    model = keras.Sequential([
        keras.Input(shape=tuple(stats["image_shape"]), dtype="float32"),
        keras.layers.Normalization(mean=norm["mean"], variance=np.square(norm["std"]).tolist()),
        keras.layers.Flatten(),
        keras.layers.Dense(len(stats["classes"]), activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    if epochs:
        model.fit(x.astype("float32"), y, epochs=epochs, batch_size=32, verbose=0)
    return model


def train_standin(paths, dataset: str, epochs: int, seed: int = 0, params: dict | None = None) -> dict:
    """Do what the train stage does: fit, save models/model.keras, log the model in a new
    MLflow run of experiment ``dataset`` and write models/train_run.json; return that record."""
    import mlflow

    from pipeline import fsio, prepare, serving, tracking

    stats = prepare.load_stats(paths.prepared)
    splits = prepare.load_splits(paths.prepared)
    model = build_model(stats, epochs, splits.x_train, splits.y_train, seed)
    paths.models.mkdir(parents=True, exist_ok=True)
    model.save(paths.models / "model.keras")
    experiment_id = tracking.connect(paths, dataset)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_params({"epochs": epochs, "seed": seed, **(params or {})})
        mlflow.set_tags(tracking.lineage_tags(paths))
        info = serving.log_model(model, stats)
    record = {
        "run_id": run.info.run_id, "experiment_id": experiment_id, "experiment_name": dataset,
        "tracking_uri": mlflow.get_tracking_uri(), "model_uri": info.model_uri,
        "study_name": None, "best_trial": None, "dataset": dataset,
    }
    fsio.write_json(paths.models / "train_run.json", record)
    return record
