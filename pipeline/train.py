"""Stage `train`: the final model with the best hyperparameters, tracked in MLflow.

Trains on the train split, monitored on validation (early stopping, best weights kept),
logs params, per-epoch metrics, the model and its lineage (git commit, data hashes,
study and trial), and writes the model, its history and the run id for later stages.
"""
from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

from pipeline import config, fsio, tracking
from pipeline.config import RuntimeParams, TrainParams
from pipeline.errors import PipelineError, cli



def history_csv(history: dict[str, list[float]]) -> str:
    """Per-epoch history as CSV (epoch, accuracy, val_accuracy, loss, val_loss, ...)."""
    keys = sorted(history)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["epoch", *keys])
    for i in range(len(history[keys[0]]) if keys else 0):
        writer.writerow([i + 1, *(f"{history[k][i]:.6g}" for k in keys)])
    return out.getvalue()


def train(hp: dict[str, Any], splits: Any, stats: dict, train_params: TrainParams,
          callbacks: list | tuple = ()) -> tuple[Any, dict[str, list[float]]]:
    """Build the model from ``hp`` and train it; return (model, history)."""
    import numpy as np

    from pipeline.models import DEFAULT_BATCH_SIZE, as_float, build_model, fit_model

    batch_size = int(hp.get("batch_size", DEFAULT_BATCH_SIZE))
    steps = int(np.ceil(len(splits.y_train) / batch_size))
    model = build_model(hp, stats["image_shape"], len(stats["classes"]),
                        stats["normalization"]["mean"], stats["normalization"]["std"],
                        steps_per_epoch=steps, epochs=train_params.epochs)
    history = fit_model(model, as_float(splits.x_train), np.asarray(splits.y_train),
                        as_float(splits.x_val), np.asarray(splits.y_val),
                        epochs=train_params.epochs, batch_size=batch_size,
                        patience=train_params.patience, callbacks=callbacks)
    if not np.isfinite(history["loss"]).all():
        raise PipelineError(f"training diverged (loss {history['loss'][-1]}) with {hp}; "
                            f"lower the learning rate range in params.yaml `tune.search_space`")
    return model, history


def save_model(model: Any, target: Path) -> None:
    """Save atomically: Keras writes a temp .keras beside the target, then it is renamed."""
    with fsio.atomic_path(target) as tmp:
        keras_tmp = tmp.with_suffix(".keras")
        model.save(keras_tmp)
        keras_tmp.replace(tmp)


@cli
def main() -> None:
    import mlflow

    from pipeline.models import configure_runtime
    from pipeline.prepare import load_splits, load_stats
    from pipeline.serving import log_model

    params = config.load_yaml(config.PARAMS_FILE)
    paths = config.section("paths", config.Paths, params)
    dataset = config.section("data", config.DataParams, params).dataset
    train_params = config.section("train", TrainParams, params)
    runtime = config.section("runtime", RuntimeParams, params)
    best_file = paths.tune / "best_params.json"
    if not best_file.exists():
        raise PipelineError(f"{best_file} is missing: run `dvc repro tune` first")
    best = fsio.read_json(best_file)
    hp = best["params"]

    experiment_id = tracking.connect(paths, dataset)
    configure_runtime(runtime.seed, runtime.intra_op_threads, runtime.inter_op_threads)
    splits, stats = load_splits(paths.prepared), load_stats(paths.prepared)

    with mlflow.start_run(experiment_id=experiment_id, run_name="train") as run:
        mlflow.set_tags(tracking.lineage_tags(paths, {
            "stage": "train", "optuna.study": best["study_name"],
            "optuna.storage": best["storage"], "optuna.best_trial": best["best_trial"],
            "optuna.best_trial_run_id": best.get("best_trial_run_id") or "",
            "tune_run_id": best.get("tune_run_id") or "",
        }))
        mlflow.log_params({**hp, "epochs": train_params.epochs, "patience": train_params.patience,
                           "seed": runtime.seed, "train_images": len(splits.y_train)})
        started = time.perf_counter()
        model, history = train(hp, splits, stats, train_params,
                               callbacks=[tracking.epoch_logger(run.info.run_id)])
        seconds = time.perf_counter() - started
        best_epoch = max(range(len(history["val_accuracy"])), key=history["val_accuracy"].__getitem__)
        summary = {"val_accuracy": history["val_accuracy"][best_epoch],
                   "val_loss": history["val_loss"][best_epoch],
                   "best_epoch": best_epoch + 1, "epochs_run": len(history["val_accuracy"]),
                   "train_seconds": round(seconds, 1)}
        mlflow.log_metrics({f"final_{k}": v for k, v in summary.items()})
        info = log_model(model, stats)
        history_text = history_csv(history)
        mlflow.log_text(history_text, "history.csv")

    save_model(model, paths.models / "model.keras")
    fsio.write_text(paths.models / "history.csv", history_text)
    fsio.write_json(paths.models / "train_summary.json", summary)
    fsio.write_json(paths.models / "train_run.json", {
        "run_id": run.info.run_id, "experiment_id": experiment_id, "experiment_name": dataset,
        "tracking_uri": mlflow.get_tracking_uri(), "model_uri": info.model_uri,
        "study_name": best["study_name"], "best_trial": best["best_trial"], "dataset": dataset,
    })
    print(f"trained {summary}; MLflow run {run.info.run_id}")


if __name__ == "__main__":
    main()
