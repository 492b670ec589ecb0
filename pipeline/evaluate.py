"""Stage `evaluate`: score the trained model on the held-out test split.

Writes the DVC metrics file, the plot CSVs (confusion matrix, per-class F1), two PNGs for
people (confusion matrix, worst misclassified images), and logs all of it on the train
run in MLflow. The metrics are plain numpy functions so they are tested by hand.
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline import config, fsio, prepare, tracking
from pipeline.errors import PipelineError, cli

METRICS_FILE = "metrics.json"
CONFUSION_CSV = "confusion.csv"
PER_CLASS_CSV = "per_class.csv"
CONFUSION_PNG = "confusion.png"
WORST_PNG = "worst_misclassified.png"
MODEL_FILE = "model.keras"
TRAIN_RUN_FILE = "train_run.json"


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred))) if len(y_true) else 0.0


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts with actual classes as rows and predicted classes as columns."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def per_class_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall and F1 per class; 0 where a score is undefined (no predictions or no support)."""
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0)
    actual = cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1}


def log_loss(probs: np.ndarray, y_true: np.ndarray, eps: float = 1e-7) -> float:
    """Mean categorical cross-entropy, probabilities clipped like Keras does."""
    p = np.clip(probs[np.arange(len(y_true)), np.asarray(y_true, dtype=np.int64)], eps, 1.0)
    return float(-np.mean(np.log(p)))


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, bins: int) -> float:
    """ECE over equal-width confidence bins (i/bins, (i+1)/bins]: sum of |accuracy - confidence|
    per bin, weighted by the share of images in the bin."""
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(np.float64)
    idx = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    conf_sum = np.bincount(idx, weights=conf, minlength=bins)
    correct_sum = np.bincount(idx, weights=correct, minlength=bins)
    return float(np.abs(correct_sum - conf_sum).sum() / max(len(conf), 1))


def worst_misclassified(probs: np.ndarray, y_true: np.ndarray, n: int) -> np.ndarray:
    """Indices of the misclassified images the model was most confident about, worst first."""
    pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(pred != y_true)
    order = np.argsort(-probs[wrong, pred[wrong]], kind="stable")
    return wrong[order][:n]


def score(probs: np.ndarray, y_true: np.ndarray, classes: list[str], ece_bins: int) -> dict[str, Any]:
    """Every test metric of metrics.json, from predicted probabilities."""
    y_true = np.asarray(y_true, dtype=np.int64)
    pred = probs.argmax(axis=1)
    cm = confusion_matrix(y_true, pred, len(classes))
    per_class = per_class_scores(cm)
    return {
        "accuracy": accuracy(y_true, pred),
        "loss": log_loss(probs, y_true),
        "macro_f1": float(per_class["f1"].mean()),
        "ece": expected_calibration_error(probs, y_true, ece_bins),
        "test_images": int(len(y_true)),
        "per_class": {
            name: {k: float(v[i]) for k, v in per_class.items()} for i, name in enumerate(classes)
        },
    }


def measure_latency(predict: Callable[[np.ndarray], Any], x: np.ndarray, batch_size: int,
                    repeats: int) -> dict[str, float]:
    """Milliseconds per image for calls of ``batch_size`` images (median and p95 of ``repeats``
    timed calls, after warm-up calls that are not counted)."""
    batch = np.ascontiguousarray(x[:batch_size], dtype=np.float32)
    for _ in range(3):
        predict(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predict(batch)
        times.append((time.perf_counter() - start) * 1000 / len(batch))
    return {"ms_per_image": float(np.median(times)), "ms_per_image_p95": float(np.percentile(times, 95)),
            "batch_size": int(len(batch)), "repeats": int(repeats)}


def predict_proba(model: Any, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Class probabilities of a Keras model for raw uint8 images, in float32 batches."""
    out = [np.asarray(model.predict_on_batch(np.asarray(x[i:i + batch_size], dtype=np.float32)))
           for i in range(0, len(x), batch_size)]
    return np.concatenate(out).astype(np.float64)


def confusion_rows(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> str:
    """CSV of one (actual, predicted) row per image, by class name, for DVC's confusion template."""
    names = np.asarray(classes, dtype=object)
    lines = ["actual,predicted"] + [f"{csv_field(a)},{csv_field(p)}"
                                    for a, p in zip(names[y_true], names[y_pred])]
    return "\n".join(lines) + "\n"


def per_class_rows(per_class: dict[str, dict[str, float]]) -> str:
    lines = ["class,precision,recall,f1"] + [
        f"{csv_field(name)},{s['precision']:.6f},{s['recall']:.6f},{s['f1']:.6f}"
        for name, s in per_class.items()]
    return "\n".join(lines) + "\n"


def csv_field(value: str) -> str:
    return f'"{value}"' if any(c in value for c in ',"\n') else value


def plot_confusion(cm: np.ndarray, classes: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(5.0, 0.6 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xlabel="predicted",
           ylabel="actual", title=f"Confusion matrix ({int(cm.sum())} test images)")
    ax.set_xticklabels(classes, rotation=45, ha="right")
    ax.set_yticklabels(classes)
    threshold = cm.max() / 2 if cm.size else 0
    for (i, j), count in np.ndenumerate(cm):
        ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                color="white" if count > threshold else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_worst(x: np.ndarray, y_true: np.ndarray, probs: np.ndarray, indices: np.ndarray,
               classes: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 5
    rows = max(1, -(-len(indices) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.2, rows * 2.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, indices):
        img = np.asarray(x[i])
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255)
        pred = int(probs[i].argmax())
        ax.set_title(f"true: {classes[int(y_true[i])]}\npred: {classes[pred]} ({probs[i, pred]:.2f})",
                     fontsize=8)
    if not len(indices):
        axes.flat[0].set_title("no misclassified test images")
    fig.suptitle("Most confident mistakes on the test split")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def mlflow_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The metrics as flat `test_*` MLflow metric names."""
    flat = {f"test_{k}": float(metrics[k]) for k in ("accuracy", "loss", "macro_f1", "ece")}
    flat["test_latency_ms_per_image"] = float(metrics["latency"]["ms_per_image"])
    for name, s in metrics["per_class"].items():
        key = re.sub(r"[^0-9A-Za-z_.-]+", "_", name)
        flat.update({f"test_{m}_{key}": float(v) for m, v in s.items()})
    return flat


def load_train_run(models: Path) -> dict[str, Any]:
    path = Path(models) / TRAIN_RUN_FILE
    try:
        run = fsio.read_json(path)
    except FileNotFoundError as err:
        raise PipelineError(f"{path} is missing: run `dvc repro train` first") from err
    missing = [k for k in ("run_id", "model_uri") if not run.get(k)]
    if missing:
        raise PipelineError(f"{path} lacks {', '.join(missing)}: re-run `dvc repro train`")
    return run


def load_keras_model(path: Path) -> Any:
    import keras

    if not Path(path).exists():
        raise PipelineError(f"{path} is missing: run `dvc repro train` first")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as err:  # a corrupt or foreign file: keras raises many types
        raise PipelineError(f"{path} cannot be loaded as a Keras model ({type(err).__name__}: "
                            f"{str(err).splitlines()[0][:200]}); re-run `dvc repro train`") from err


@cli
def main() -> None:
    import mlflow

    params = config.load_yaml(config.PARAMS_FILE)
    paths = config.section("paths", config.Paths, params)
    data = config.section("data", config.DataParams, params)
    ev = config.section("evaluate", config.EvaluateParams, params)
    stats = prepare.load_stats(paths.prepared)
    classes = list(stats["classes"])
    splits = prepare.load_splits(paths.prepared)
    train_run = load_train_run(paths.models)
    model = load_keras_model(paths.models / MODEL_FILE)

    x_test, y_test = splits.x_test, np.asarray(splits.y_test, dtype=np.int64)
    probs = predict_proba(model, x_test, ev.batch_size)
    metrics = score(probs, y_test, classes, ev.ece_bins)
    metrics["latency"] = measure_latency(model.predict_on_batch, x_test, ev.latency_batch_size,
                                         ev.latency_repeats)
    pred = probs.argmax(axis=1)
    worst = worst_misclassified(probs, y_test, ev.worst_examples)

    tracking.connect(paths, train_run.get("experiment_name") or data.dataset)
    with fsio.atomic_dir(paths.evaluation) as tmp:
        fsio.write_json(tmp / METRICS_FILE, metrics)
        fsio.write_text(tmp / CONFUSION_CSV, confusion_rows(y_test, pred, classes))
        fsio.write_text(tmp / PER_CLASS_CSV, per_class_rows(metrics["per_class"]))
        plot_confusion(confusion_matrix(y_test, pred, len(classes)), classes, tmp / CONFUSION_PNG)
        plot_worst(x_test, y_test, probs, worst, classes, tmp / WORST_PNG)
        try:
            with mlflow.start_run(run_id=train_run["run_id"]):
                mlflow.log_metrics(mlflow_metrics(metrics))
                mlflow.log_artifacts(str(tmp), artifact_path="evaluation")
        except Exception as err:  # store errors come as MlflowException, sqlalchemy or requests
            raise PipelineError(
                f"cannot log the evaluation on MLflow run {train_run['run_id']} (from "
                f"{paths.models / TRAIN_RUN_FILE}): {type(err).__name__}: "
                f"{str(err).splitlines()[0][:200]}. Nothing was written to {paths.evaluation}."
            ) from err
    lat = metrics["latency"]
    print(f"test accuracy {metrics['accuracy']:.4f}, loss {metrics['loss']:.4f}, macro F1 "
          f"{metrics['macro_f1']:.4f}, ECE {metrics['ece']:.4f}, {lat['ms_per_image']:.3f} ms/image "
          f"at batch {lat['batch_size']}; written to {paths.evaluation} and run {train_run['run_id']}")


if __name__ == "__main__":
    main()
