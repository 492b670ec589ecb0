"""Stage `register`: add the trained model to the MLflow Model Registry and gate @champion.

The current champion is loaded and re-scored on the same test split before anything in
the registry changes, so a champion that cannot be loaded stops the stage with the
registry as it was. Aliases move last: if a step after registration fails, the new
version exists (nothing is ever deleted) but no alias points to it.
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline import config, evaluate, fsio, prepare, tracking
from pipeline.errors import PipelineError, cli

CHAMPION = "champion"
CHALLENGER = "challenger"
DECISION_FILE = "decision.json"
# Registry tags written on every version; `registry show` reads them back.
TAG_ACCURACY = "test_accuracy"
TAG_DECISION = "decision"
TAG_REASON = "reason"
TAG_PREVIOUS = "previous_champion"
SCORE_BATCH = 1024


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str

    @property
    def label(self) -> str:
        return "promoted" if self.promote else "challenger"


def decide(new_acc: float, champion_acc: float | None, min_accuracy: float,
           min_delta: float) -> Decision:
    """Gate a new version: it needs ``min_accuracy`` and, if there is a champion, an
    accuracy at least ``min_delta`` above the champion's (both on the same test split)."""
    eps = 1e-12  # accuracies are ratios of counts; keep 0.801 - 0.8 >= 0.001 true
    if new_acc + eps < min_accuracy:
        return Decision(False, f"accuracy {new_acc:.4f} is below the floor min_accuracy={min_accuracy:.4f}")
    if champion_acc is None:
        return Decision(True, f"first model: accuracy {new_acc:.4f} passes the floor "
                              f"min_accuracy={min_accuracy:.4f}")
    delta = new_acc - champion_acc
    if delta + eps >= min_delta:
        return Decision(True, f"accuracy {new_acc:.4f} beats the champion's {champion_acc:.4f} by "
                              f"{delta:+.4f} (min_delta={min_delta:.4f})")
    return Decision(False, f"accuracy {new_acc:.4f} vs the champion's {champion_acc:.4f} is "
                           f"{delta:+.4f}, less than min_delta={min_delta:.4f}")


def pyfunc_accuracy(model: Any, x: np.ndarray, y: np.ndarray, batch_size: int = SCORE_BATCH) -> float:
    """Accuracy of an MLflow pyfunc model that maps raw float32 pixels to probabilities."""
    with contextlib.redirect_stdout(io.StringIO()):  # Keras' progress bar, once per batch
        preds = [np.asarray(model.predict(np.asarray(x[i:i + batch_size], dtype=np.float32)))
                 .argmax(axis=1) for i in range(0, len(x), batch_size)]
    return evaluate.accuracy(np.asarray(y), np.concatenate(preds))


def model_card(*, name: str, version: str, dataset: str, stats: dict, metrics: dict,
               decision: Decision, champion: tuple[str, float] | None, lineage: dict[str, str],
               run_params: dict[str, str], train_run: dict, git_commit: str) -> str:
    """Markdown description of a model version: what, how good, from what, how to load it."""
    h, w, c = stats["image_shape"]
    lines = [
        f"## {name} v{version}",
        f"Keras image classifier for `{dataset}`: {len(stats['classes'])} classes "
        f"({', '.join(stats['classes'])}). Input: float32 raw pixels 0-255, shape (N, {h}, {w}, {c}); "
        "output: class probabilities (N, K). Normalization is inside the model.",
        "",
        f"**Decision:** {'@champion' if decision.promote else '@challenger'}: {decision.reason}."
        + (f" Champion at the time: v{champion[0]} ({champion[1]:.4f})." if champion else ""),
        "",
        f"### Test metrics ({metrics.get('test_images', '?')} held-out images)",
        "| metric | value |", "|---|---|",
        *[f"| {k} | {metrics[k]:.4f} |" for k in ("accuracy", "loss", "macro_f1", "ece") if k in metrics],
    ]
    if "latency" in metrics:
        lat = metrics["latency"]
        lines.append(f"| latency | {lat['ms_per_image']:.3f} ms/image at batch {lat['batch_size']} |")
    lines += ["", "### Data", *table("key", lineage, "`"),
              "", "### Hyperparameters", *table("param", run_params),
              "", "### Lineage",
              f"- git commit: `{git_commit}`",
              f"- MLflow run: `{train_run['run_id']}`, model `{train_run['model_uri']}`"]
    if train_run.get("study_name"):
        lines.append(f"- Optuna study `{train_run['study_name']}`, best trial {train_run.get('best_trial')}")
    lines += ["", "### Load it", "```python", "import mlflow",
              f'model = mlflow.pyfunc.load_model("models:/{name}/{version}")  # or "models:/{name}@champion"',
              'probs = model.predict(images.astype("float32"))  # (N, H, W, C) raw pixels', "```",
              f"Serve it: `mlflow models serve -m models:/{name}@champion --env-manager local -p 5000`"]
    return "\n".join(lines) + "\n"


def table(head: str, rows: dict[str, str], quote: str = "") -> list[str]:
    body = [f"| {k} | {quote}{v}{quote} |" for k, v in sorted(rows.items())]
    return [f"| {head} | value |", "|---|---|", *(body or ["| (none recorded) | |"])]


def registry_error(uri: str, action: str, err: Exception) -> PipelineError:
    return PipelineError(
        f"the MLflow Model Registry at {uri} failed while {action} ({type(err).__name__}: "
        f"{str(err).splitlines()[0][:200] if str(err) else ''}). Check MLFLOW_TRACKING_URI and that "
        "the tracking server or database is reachable; no model version or alias was changed.")


def current_aliases(client: Any, name: str, uri: str) -> dict[str, str] | None:
    """Alias -> version of the registered model, or None if it is not registered yet."""
    from mlflow.exceptions import MlflowException

    try:
        return {alias: str(v) for alias, v in client.get_registered_model(name).aliases.items()}
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise registry_error(uri, f"reading registered model {name!r}", err) from err
    except Exception as err:  # connection and database errors
        raise registry_error(uri, f"reading registered model {name!r}", err) from err


def score_champion(name: str, version: str, x: np.ndarray, y: np.ndarray) -> float:
    """Load models:/<name>@champion and return its test accuracy, or explain why it cannot be."""
    import mlflow.pyfunc

    uri = f"models:/{name}@{CHAMPION}"
    try:
        model = mlflow.pyfunc.load_model(uri)
        return pyfunc_accuracy(model, x, y)
    except Exception as err:  # missing artifacts, incompatible flavor, bad input: all stop here
        raise PipelineError(
            f"the current champion {uri} (version {version}) cannot be loaded and re-scored on the "
            f"test split ({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}). "
            f"The new model was not registered and no alias was changed. Fix or re-point the "
            f"champion (`pipeline-registry promote VERSION`) and run `dvc repro register` again."
        ) from err


@cli
def main() -> None:
    import mlflow
    from mlflow import MlflowClient

    params = config.load_yaml(config.PARAMS_FILE)
    paths = config.section("paths", config.Paths, params)
    data = config.section("data", config.DataParams, params)
    reg = config.section("register", config.RegisterParams, params)
    name = reg.name_for(data.dataset)
    train_run = evaluate.load_train_run(paths.models)
    metrics_file = paths.evaluation / evaluate.METRICS_FILE
    if not metrics_file.exists():
        raise PipelineError(f"{metrics_file} is missing: run `dvc repro evaluate` first")
    metrics = fsio.read_json(metrics_file)
    stats = prepare.load_stats(paths.prepared)
    splits = prepare.load_splits(paths.prepared)

    tracking.connect(paths, train_run.get("experiment_name") or data.dataset)
    uri = mlflow.get_tracking_uri()
    client = MlflowClient()
    aliases = current_aliases(client, name, uri)
    champion_version = (aliases or {}).get(CHAMPION)
    champion_acc = (score_champion(name, champion_version, splits.x_test, splits.y_test)
                    if champion_version else None)
    new_acc = float(metrics["accuracy"])
    decision = decide(new_acc, champion_acc, reg.min_accuracy, reg.min_delta)

    try:
        version = str(mlflow.register_model(train_run["model_uri"], name).version)
    except Exception as err:
        raise registry_error(uri, f"registering {train_run['model_uri']} as {name!r}", err) from err
    try:
        run = client.get_run(train_run["run_id"])
        tags = {
            TAG_DECISION: decision.label, TAG_REASON: decision.reason, TAG_ACCURACY: f"{new_acc:.6f}",
            "champion_version": champion_version or "", "min_accuracy": str(reg.min_accuracy),
            "min_delta": str(reg.min_delta), "dataset": data.dataset,
            "champion_accuracy": "" if champion_acc is None else f"{champion_acc:.6f}",
        }
        if decision.promote and champion_version:
            tags[TAG_PREVIOUS] = champion_version
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
        card = model_card(
            name=name, version=version, dataset=data.dataset, stats=stats, metrics=metrics,
            decision=decision,
            champion=(champion_version, champion_acc) if champion_version else None,
            lineage=tracking.data_lineage(paths) or {k: v for k, v in run.data.tags.items()
                                                     if k.startswith("data.")},
            run_params=dict(run.data.params), train_run=train_run,
            git_commit=run.data.tags.get("git.commit") or tracking.git_info()["git.commit"])
        client.update_model_version(name, version, description=card)
        # Aliases last, so a failure above leaves them where they were.
        client.set_registered_model_alias(name, CHAMPION if decision.promote else CHALLENGER, version)
    except Exception as err:
        raise PipelineError(
            f"version {version} of {name!r} was registered but tagging it or moving its alias "
            f"failed ({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}). "
            f"No alias was changed; the version stays in the registry. Re-run `dvc repro register` "
            f"or promote it by hand with `pipeline-registry promote {version}`."
        ) from err

    record = {
        "model_name": name, "version": version, "decision": decision.label, "reason": decision.reason,
        "accuracy": new_acc, "champion_version": champion_version, "champion_accuracy": champion_acc,
        "min_accuracy": reg.min_accuracy, "min_delta": reg.min_delta, "run_id": train_run["run_id"],
    }
    fsio.write_json(paths.registry / DECISION_FILE, record)
    alias = CHAMPION if decision.promote else CHALLENGER
    print(f"{name} v{version} -> @{alias}: {decision.reason}"
          + (f" (champion v{champion_version} re-scored: {champion_acc:.4f})" if champion_version
             else " (no champion before)"))


if __name__ == "__main__":
    main()
