"""Cost of MLflow tracking in the train stage: the same training with and without it.

Run from the project root after `dvc repro prepare`:
  python bench/tracking_overhead.py [--epochs 3] [--repeats 3] [--limit 0]
Each measurement is a fresh process (same seeds, same threads, same data): `plain` runs
pipeline.train.train(); `tracked` runs it inside an MLflow run with the per-epoch logger
and then logs the model, as the stage does. The store is a temporary SQLite database, so
the project's mlruns/ is untouched. Imports are not timed. Runs alternate in order and the
medians are compared (goal: overhead < 3%).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# A mid-sized model of the default family; override with --hp '{"units": 256, ...}'.
DEFAULT_HP = {"family": "cnn", "units": 128, "dropout": 0.3, "learning_rate": 1e-3,
              "filters": 32, "conv_blocks": 2, "convs_per_block": 1, "batch_norm": True,
              "batch_size": 128}


def measure(mode: str, hp: dict, epochs: int, limit: int, store: Path) -> dict:
    """One training in this process; return its wall seconds (imports excluded)."""
    import numpy as np

    from pipeline import config
    from pipeline.models import configure_runtime
    from pipeline.prepare import Splits, load_splits, load_stats, stratified_subset
    from pipeline.train import train

    params = config.load_yaml(config.PARAMS_FILE)
    paths = config.section("paths", config.Paths, params)
    runtime = config.section("runtime", config.RuntimeParams, params)
    splits, stats = load_splits(paths.prepared), load_stats(paths.prepared)
    keep = stratified_subset(np.asarray(splits.y_train), limit, runtime.seed)
    splits = Splits(**{**splits.arrays(), "x_train": splits.x_train[keep],
                       "y_train": splits.y_train[keep]})
    train_params = config.TrainParams(epochs=epochs, patience=epochs)
    if mode == "plain":
        configure_runtime(runtime.seed, runtime.intra_op_threads, runtime.inter_op_threads)
        started = time.perf_counter()
        _, history = train(hp, splits, stats, train_params)
        seconds = time.perf_counter() - started
    else:
        import mlflow

        from pipeline import tracking
        from pipeline.serving import log_model

        # As in the stage: connect, then seed; a named run draws no random run name.
        experiment_id = tracking.connect(paths.model_copy(update={"mlruns": store}), "bench")
        configure_runtime(runtime.seed, runtime.intra_op_threads, runtime.inter_op_threads)
        started = time.perf_counter()
        with mlflow.start_run(experiment_id=experiment_id, run_name="tracked") as run:
            model, history = train(hp, splits, stats, train_params,
                                   callbacks=[tracking.epoch_logger(run.info.run_id)])
            log_model(model, stats)
        seconds = time.perf_counter() - started
    return {"mode": mode, "seconds": seconds, "val_accuracy": history["val_accuracy"],
            "train_images": int(len(splits.y_train))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="measurements per mode")
    parser.add_argument("--limit", type=int, default=0, help="train images (stratified); 0 = all")
    parser.add_argument("--hp", type=json.loads, default=DEFAULT_HP, help="hyperparameters (JSON)")
    parser.add_argument("--one", choices=["plain", "tracked"], help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:  # child process: one measurement, printed as the last line
        print(json.dumps(measure(args.one, args.hp, args.epochs, args.limit, args.store)))
        return

    times: dict[str, list[float]] = {"plain": [], "tracked": []}
    accuracies: dict[str, list] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for mode in (("plain", "tracked") if r % 2 == 0 else ("tracked", "plain")):
                cmd = [sys.executable, __file__, "--one", mode, "--epochs", str(args.epochs),
                       "--limit", str(args.limit), "--hp", json.dumps(args.hp),
                       "--store", str(Path(tmp) / "mlruns")]
                res = subprocess.run(cmd, capture_output=True, text=True)
                if res.returncode != 0:
                    sys.exit(f"{mode} run failed:\n{res.stderr[-3000:]}")
                result = json.loads(res.stdout.strip().splitlines()[-1])
                times[mode].append(result["seconds"])
                accuracies.setdefault(mode, result["val_accuracy"])
                print(f"repeat {r + 1} {mode:7s} {result['seconds']:7.2f} s "
                      f"({result['train_images']} images, {args.epochs} epochs)", flush=True)
    plain, tracked = (statistics.median(times[m]) for m in ("plain", "tracked"))
    print(f"median plain {plain:.2f} s, tracked {tracked:.2f} s: overhead "
          f"{100 * (tracked / plain - 1):+.1f}% ({tracked - plain:+.2f} s; goal < 3%)")
    if accuracies["plain"] != accuracies["tracked"]:
        print("note: tracked and plain runs reached different val accuracy "
              f"({accuracies['plain']} vs {accuracies['tracked']}): tracking changed the training")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
