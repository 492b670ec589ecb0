"""`pipeline-predict IMG [IMG...]`: class and probability for image files.

Images of any size are converted like the training data: grayscale or RGB per the
model's channels, resized to its H x W, raw pixel values (the model normalizes).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import config, prepare, tracking
from pipeline.errors import PipelineError, cli


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pipeline-predict",
                                     description="Classify image files with the registered model.")
    parser.add_argument("images", nargs="+", type=Path, help="PNG/JPEG files, any size")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model-uri", help="MLflow model URI (default: models:/<name>@champion)")
    source.add_argument("--model-file", type=Path, help="a Keras model file, e.g. models/model.keras")
    return parser.parse_args(argv)


def load_image(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    """One image file as float32 (H, W, C) raw pixels; a PipelineError names a file that is not an image."""
    from PIL import Image, UnidentifiedImageError

    h, w, c = shape
    try:
        with Image.open(path) as img:
            img = img.convert("L" if c == 1 else "RGB")
            if img.size != (w, h):
                img = img.resize((w, h), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.float32)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise PipelineError(f"{path} is not a readable image ({type(err).__name__}: "
                            f"{str(err).splitlines()[0][:200] if str(err) else ''}); give PNG or JPEG files")
    return arr.reshape(h, w, c)


def top_classes(probs: np.ndarray, classes: list[str]) -> list[tuple[str, float]]:
    """(class name, probability) of the most likely class per row."""
    idx = probs.argmax(axis=1)
    return [(classes[i], float(probs[row, i])) for row, i in enumerate(idx)]


def load_predict_fn(model_uri: str | None, model_file: Path | None) -> Any:
    if model_file is not None:
        from pipeline.evaluate import load_keras_model

        model = load_keras_model(model_file)
        return model.predict_on_batch
    import mlflow.pyfunc

    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except Exception as err:  # unknown alias, missing artifacts, unreachable store
        raise PipelineError(f"cannot load model {model_uri} ({type(err).__name__}: "
                            f"{str(err).splitlines()[0][:200] if str(err) else ''}); check "
                            "`pipeline-registry show` or pass --model-file models/model.keras") from err

    def predict(batch: np.ndarray) -> np.ndarray:
        # The TensorFlow flavor calls Keras predict with its progress bar on stdout.
        with contextlib.redirect_stdout(io.StringIO()):
            return model.predict(batch)
    return predict


@cli
def main() -> None:
    args = parse_args(sys.argv[1:])
    params = config.load_yaml(config.PARAMS_FILE)
    paths = config.section("paths", config.Paths, params)
    data = config.section("data", config.DataParams, params)
    stats_file = paths.prepared / "stats.json"
    if not stats_file.exists():
        raise PipelineError(f"{stats_file} is missing (class names and input shape): run "
                            "`dvc repro prepare` or `dvc pull` first")
    stats = prepare.load_stats(paths.prepared)
    shape = tuple(int(d) for d in stats["image_shape"])
    batch = np.stack([load_image(p, shape) for p in args.images])
    model_uri = args.model_uri
    if args.model_file is None:
        tracking.connect(paths, data.dataset)
        if model_uri is None:
            name = config.section("register", config.RegisterParams, params).name_for(data.dataset)
            model_uri = f"models:/{name}@champion"
    probs = np.asarray(load_predict_fn(model_uri, args.model_file)(batch))
    for path, (label, p) in zip(args.images, top_classes(probs, list(stats["classes"]))):
        print(f"{path}\t{label}\t{p:.4f}")


if __name__ == "__main__":
    main()
