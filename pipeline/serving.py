"""How a trained Keras model is logged to MLflow so that it can be registered and served.

The train stage calls `log_model` inside its active run. The logged model takes raw
pixels, float32 (N, H, W, C), and returns class probabilities (N, K).
"""
from __future__ import annotations

from importlib import metadata
from typing import Any

import numpy as np

ARTIFACT_NAME = "model"
# Keep in step with pyproject.toml; these are what loading the model needs.
RUNTIME_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "keras", "mlflow", "numpy")


def pip_requirements() -> list[str]:
    """Pinned requirements of the installed runtime (inferring them costs 8-10 s and lists
    both tensorflow and tensorflow-cpu)."""
    reqs = []
    for dist in RUNTIME_DISTRIBUTIONS:
        try:
            reqs.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    return reqs


def signature(image_shape: tuple[int, int, int], num_classes: int) -> Any:
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    h, w, c = image_shape
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, h, w, c))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, num_classes))]),
    )


def log_model(model: Any, stats: dict) -> Any:
    """Log ``model`` in the active MLflow run; return the ModelInfo (its ``model_uri`` is
    what train_run.json records and register registers).

    ``stats`` is data/prepared/stats.json: it gives the input shape and the classes.
    """
    import mlflow.tensorflow

    shape = tuple(int(d) for d in stats["image_shape"])
    example = np.zeros((1, *shape), dtype=np.float32)
    return mlflow.tensorflow.log_model(
        model,
        name=ARTIFACT_NAME,
        signature=signature(shape, len(stats["classes"])),
        input_example=example,
        pip_requirements=pip_requirements(),
        metadata={"classes": list(stats["classes"])},
    )
