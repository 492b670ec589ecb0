"""Stage `tune`: an Optuna study over the search space in params.yaml, tracked in MLflow.

The study lives in `tune.storage` under a name made of the dataset and a hash of the
search (space, fixed values, per-trial budget, data size), so a changed search starts a
new study and an unchanged one resumes: `tune.n_trials` is the total to reach. Every
trial is a nested MLflow run under one parent run per invocation.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline import config, fsio, tracking
from pipeline.config import CategoricalDist, FloatDist, IntDist, RuntimeParams, TuneParams
from pipeline.errors import PipelineError, cli

# Failed trials (a crash, a killed worker marked stale) do not count towards `tune.n_trials`:
# a re-run after fixing the cause tries again instead of reporting the old failures forever.
FINISHED = ("COMPLETE", "PRUNED")


def data_fingerprint(stats: dict, seed: int) -> dict[str, Any]:
    """What identifies the trials' data: split sizes, normalization (a content summary), seed."""
    return {"counts": stats["counts"], "normalization": stats["normalization"],
            "limit": stats.get("limit"), "seed": seed}


def study_name(tune: TuneParams, dataset: str, data_key: Any) -> str:
    """Name the study by dataset, data and search: the same resumes, a changed one starts anew.

    ``data_key`` is anything JSON-able that changes when the trials' data does
    (see data_fingerprint); trials on other data are not comparable.
    """
    key = json.dumps({
        "space": {k: v.model_dump() for k, v in sorted(tune.search_space.items())},
        "fixed": tune.fixed, "epochs": tune.epochs, "patience": tune.patience,
        "train_subset": tune.train_subset, "data": data_key,
    }, sort_keys=True, default=str)
    space = hashlib.sha256(key.encode()).hexdigest()[:8]
    return tune.study_name.replace("{dataset}", dataset).replace("{space}", space)


def suggest(trial: Any, space: dict[str, Any]) -> dict[str, Any]:
    """Draw one hyperparameter set from the search space."""
    hp: dict[str, Any] = {}
    for name, dist in space.items():
        if isinstance(dist, IntDist):
            hp[name] = trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
        elif isinstance(dist, FloatDist):
            hp[name] = trial.suggest_float(name, dist.low, dist.high, log=dist.log)
        elif isinstance(dist, CategoricalDist):
            hp[name] = trial.suggest_categorical(name, dist.choices)
    return hp


def make_pruner(kind: str, max_epochs: int):
    import optuna

    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs,
                                              reduction_factor=3)
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    return optuna.pruners.NopPruner()


def pruning_callback(trial: Any, monitor: str = "val_accuracy"):
    """Keras callback: report ``monitor`` each epoch and stop the trial if Optuna prunes it."""
    import keras
    import optuna

    class Prune(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            trial.report(float((logs or {})[monitor]), step=epoch + 1)
            trial.set_user_attr("epochs", epoch + 1)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch + 1}")

    return Prune()


def open_study(tune: TuneParams, name: str):
    """Create or resume the study; an unusable storage URL becomes one clear error."""
    import warnings

    import optuna

    try:
        # Heartbeats let a resumed study mark trials of a killed process as failed.
        with warnings.catch_warnings():  # "experimental" notice, printed on every run
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(tune.storage, heartbeat_interval=10,
                                                 grace_period=30)
        sampler = optuna.samplers.TPESampler(seed=tune.sampler_seed, n_startup_trials=4,
                                             multivariate=True)
        return optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                   pruner=make_pruner(tune.pruner, tune.epochs),
                                   direction="maximize", load_if_exists=True)
    except Exception as err:  # sqlalchemy / driver errors: bad URL, unwritable file, server down
        raise PipelineError(
            f"the Optuna storage `tune.storage` = {tune.storage!r} cannot be opened "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200]}). Use a writable SQLite "
            f"file (sqlite:///optuna.db) or a reachable database URL "
            f"(postgresql://user:pass@host/db)."
        ) from None


@dataclass(frozen=True)
class TrialData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    input_shape: tuple[int, ...]
    num_classes: int
    mean: list[float]
    std: list[float]


def make_objective(data: TrialData, tune: TuneParams, runtime: RuntimeParams,
                   on_trial: Callable[[Any, dict], list] | None = None) -> Callable[[Any], float]:
    """The Optuna objective: build, train with pruning, return the best val accuracy.

    ``on_trial(trial, hp)`` may return extra Keras callbacks (the MLflow epoch logger).
    """
    import keras
    import optuna

    from pipeline.models import DEFAULT_BATCH_SIZE, build_model, fit_model

    def run_trial(trial: Any) -> float:
        hp = {**tune.fixed, **suggest(trial, tune.search_space)}
        keras.backend.clear_session()
        keras.utils.set_random_seed(runtime.seed + trial.number)
        batch_size = int(hp.get("batch_size", DEFAULT_BATCH_SIZE))
        # The same cosine schedule as the final training, over the trial's budget, so the
        # learning rate chosen here means the same thing in `train`.
        model = build_model(hp, data.input_shape, data.num_classes, data.mean, data.std,
                            steps_per_epoch=-(-len(data.y_train) // batch_size), epochs=tune.epochs)
        extra = on_trial(trial, hp) if on_trial else []
        history = fit_model(model, data.x_train, data.y_train, data.x_val, data.y_val,
                            epochs=tune.epochs, batch_size=batch_size,
                            patience=tune.patience, callbacks=[*extra, pruning_callback(trial)])
        trial.set_user_attr("epochs", len(history["val_accuracy"]))
        return max(history["val_accuracy"])

    def objective(trial: Any) -> float:
        try:
            return run_trial(trial)
        except optuna.TrialPruned:
            raise
        except Exception as err:
            # Optuna keeps no failure reason on the trial; the stage's error message needs one.
            trial.set_user_attr("fail_reason", f"{type(err).__name__}: {err}")
            raise

    return objective


def summarize(study: Any) -> dict[str, Any]:
    """Counts by state, epochs spent, best trial: the stage's DVC metrics."""
    states = [t.state.name for t in study.trials]
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    best = max(complete, key=lambda t: t.value) if complete else None
    return {
        "best_val_accuracy": round(best.value, 6) if best else None,
        "best_trial": best.number if best else None,
        "trials_complete": states.count("COMPLETE"),
        "trials_pruned": states.count("PRUNED"),
        "trials_failed": states.count("FAIL"),
        "epochs_total": int(sum(t.user_attrs.get("epochs", 0) for t in study.trials)),
    }


def save_plots(study: Any, folder: Path) -> list[Path]:
    """Optimization history, parameter importances and intermediate values as PNGs."""
    import warnings

    import matplotlib
    import optuna

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm

    written = []
    for name, plot in (("optimization_history", ovm.plot_optimization_history),
                       ("param_importances", ovm.plot_param_importances),
                       ("intermediate_values", ovm.plot_intermediate_values)):
        try:
            with warnings.catch_warnings():  # the matplotlib backend is "experimental"
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                ax = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError):
            continue  # e.g. importances need two finished trials with different params
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.set_size_inches(8, 5)
        fig.tight_layout()
        fig.savefig(folder / f"{name}.png", dpi=90)
        plt.close(fig)
        written.append(folder / f"{name}.png")
    return written


def load_trial_data(paths: config.Paths, tune: TuneParams, seed: int) -> TrialData:
    """Load the splits once per process, subset train for the per-trial budget."""
    from pipeline.models import as_float
    from pipeline.prepare import load_splits, load_stats, stratified_subset

    splits, stats = load_splits(paths.prepared), load_stats(paths.prepared)
    keep = stratified_subset(np.asarray(splits.y_train), tune.train_subset, seed)
    return TrialData(
        x_train=as_float(splits.x_train[keep]), y_train=np.asarray(splits.y_train[keep]),
        x_val=as_float(splits.x_val), y_val=np.asarray(splits.y_val),
        input_shape=tuple(stats["image_shape"]), num_classes=len(stats["classes"]),
        mean=stats["normalization"]["mean"], std=stats["normalization"]["std"],
    )


def run_study(study: Any, objective: Callable, tune: TuneParams,
              callbacks: tuple[Callable, ...] = ()) -> int:
    """Run only the trials still missing to reach ``tune.n_trials``; return how many ran."""
    done = sum(t.state.name in FINISHED for t in study.trials)
    missing = max(tune.n_trials - done, 0)
    if missing:
        study.optimize(objective, n_trials=missing, timeout=tune.timeout or None,
                       catch=(Exception,), gc_after_trial=True, callbacks=list(callbacks))
    return missing


@cli
def main() -> None:
    import mlflow
    import optuna

    from pipeline.models import configure_runtime

    params = config.load_yaml(config.PARAMS_FILE)
    paths = config.section("paths", config.Paths, params)
    data_params = config.section("data", config.DataParams, params)
    tune = config.section("tune", TuneParams, params)
    runtime = config.section("runtime", RuntimeParams, params)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    from pipeline.prepare import load_stats

    name = study_name(tune, data_params.dataset,
                      data_fingerprint(load_stats(paths.prepared), runtime.seed))
    study = open_study(tune, name)
    experiment_id = tracking.connect(paths, data_params.dataset)
    configure_runtime(runtime.seed, runtime.intra_op_threads, runtime.inter_op_threads)
    data = load_trial_data(paths, tune, runtime.seed)

    def on_trial(trial: Any, hp: dict) -> list:
        run = mlflow.start_run(experiment_id=experiment_id, run_name=f"trial-{trial.number}",
                               nested=True)
        trial.set_user_attr("mlflow_run_id", run.info.run_id)
        mlflow.log_params({**hp, "max_epochs": tune.epochs, "train_images": len(data.y_train)})
        mlflow.set_tags({"optuna.study": name, "optuna.trial": trial.number, "stage": "tune.trial"})
        return [tracking.epoch_logger(run.info.run_id)]

    def close_trial_run(study: Any, trial: Any) -> None:
        if mlflow.active_run() and mlflow.active_run().info.run_name.startswith("trial-"):
            mlflow.set_tags({"optuna.state": trial.state.name,
                             "optuna.epochs": trial.user_attrs.get("epochs", 0)})
            if trial.value is not None:
                mlflow.log_metric("best_val_accuracy", trial.value)
            mlflow.end_run(status="FAILED" if trial.state.name == "FAIL" else "FINISHED")
        print(f"trial {trial.number}: {trial.state.name}"
              + (f" val_accuracy={trial.value:.4f}" if trial.value is not None else "")
              + f" after {trial.user_attrs.get('epochs', 0)} epochs", flush=True)

    objective = make_objective(data, tune, runtime, on_trial)
    with mlflow.start_run(experiment_id=experiment_id, run_name="tune") as parent:
        mlflow.set_tags(tracking.lineage_tags(paths, {
            "stage": "tune", "optuna.study": name, "optuna.storage": tune.storage}))
        mlflow.log_params({"n_trials": tune.n_trials, "pruner": tune.pruner,
                           "max_epochs": tune.epochs, "train_subset": tune.train_subset,
                           "search_space": json.dumps({k: v.model_dump() for k, v in
                                                       tune.search_space.items()})[:6000]})
        ran = run_study(study, objective, tune, (close_trial_run,))
        summary = summarize(study)
        print(f"study {name}: ran {ran} new trial(s); {summary}")
        mlflow.log_metrics({k: v for k, v in summary.items() if v is not None})
        if summary["best_trial"] is None:
            failed = [t for t in study.trials if t.state.name == "FAIL"]
            reason = failed[-1].user_attrs.get("fail_reason", "") if failed else ""
            raise PipelineError(
                f"no trial of study {name} completed ({summary['trials_pruned']} pruned, "
                f"{summary['trials_failed']} failed{': last failure: ' + reason[:300] if reason else ''}"
                f"). No best parameters were written; {paths.tune / 'best_params.json'} and the "
                f"model keep their previous versions.")
        best = study.best_trial
        hp = {**tune.fixed, **best.params}
        mlflow.set_tags({"best_trial": best.number,
                         "best_trial_run_id": best.user_attrs.get("mlflow_run_id", "")})
        mlflow.log_params({f"best.{k}": v for k, v in hp.items()})
        with fsio.atomic_dir(paths.tune / "plots") as tmp:
            for png in save_plots(study, tmp):
                mlflow.log_artifact(str(png), artifact_path="optuna")
        fsio.write_json(paths.tune / "summary.json", summary)
        fsio.write_json(paths.tune / "best_params.json", {
            "study_name": name, "storage": tune.storage, "best_trial": best.number,
            "best_value": best.value, "params": hp, "tune_run_id": parent.info.run_id,
            "best_trial_run_id": best.user_attrs.get("mlflow_run_id"),
        })
    print(f"best trial {best.number}: val_accuracy={best.value:.4f} {hp}")


if __name__ == "__main__":
    main()
