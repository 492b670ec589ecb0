"""Typed schema of params.yaml and datasets.yaml.

Each stage validates only the sections it reads, so a typo in `tune` does not stop
`download`. A bad value fails with the key, the value and what is allowed.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.errors import PipelineError

PARAMS_FILE = Path(os.environ.get("PIPELINE_PARAMS", "params.yaml"))

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Paths(Strict):
    """Every path the stages read or write; dvc.yaml interpolates the same keys."""

    datasets: Path = Path("datasets.yaml")
    raw: Path = Path("data/raw")
    prepared: Path = Path("data/prepared")
    validation: Path = Path("reports/validation")
    tune: Path = Path("reports/tune")
    models: Path = Path("models")
    evaluation: Path = Path("reports/evaluation")
    registry: Path = Path("reports/registry")
    mlruns: Path = Path("mlruns")

    @property
    def manifest(self) -> Path:
        return self.raw / "manifest.json"


class DataParams(Strict):
    dataset: str = "fashion_mnist"
    limit: int = Field(0, ge=0, description="max images per split after preparing; 0 = all")


class DownloadParams(Strict):
    retries: int = Field(3, ge=0, le=10)
    timeout: float = Field(30.0, gt=0, le=600, description="seconds per HTTP connect/read")
    backoff: float = Field(0.5, ge=0, le=30, description="seconds, doubled after each retry")


class ValidateParams(Strict):
    class_balance_tolerance: float = Field(
        0.2, gt=0, lt=1, description="max relative deviation of a class share from uniform")
    max_duplicate_fraction: float = Field(
        0.01, ge=0, le=1, description="max share of repeated images within one split")
    max_train_test_overlap: float = Field(
        0.01, ge=0, le=1, description="max share of test images also present in train")


class PrepareParams(Strict):
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    seed: int = 42


class RuntimeParams(Strict):
    """Seeds and threads: with these pinned, the same params + data give the same model."""

    seed: int = 42
    intra_op_threads: int = Field(2, ge=1, le=256)
    inter_op_threads: int = Field(1, ge=1, le=64)


class IntDist(Strict):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(1, ge=1)


class FloatDist(Strict):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False


class CategoricalDist(Strict):
    type: Literal["categorical"]
    choices: list[Union[bool, int, float, str]] = Field(min_length=1)


Distribution = Annotated[Union[IntDist, FloatDist, CategoricalDist], Field(discriminator="type")]

# Hyperparameters the model builder and the fit loop understand, with the values they accept.
HYPERPARAMETERS: dict[str, str] = {
    "family": "one of mlp, cnn",
    "units": "an integer >= 1",
    "dropout": "a rate in [0, 1)",
    "learning_rate": "a float > 0",
    "filters": "an integer >= 1",
    "conv_blocks": "an integer in [1, 4]",
    "convs_per_block": "an integer in [1, 3]",
    "batch_norm": "true or false",
    "conv_dropout": "a rate in [0, 1)",
    "batch_size": "an integer >= 1",
}
REQUIRED_TUNED = ("units", "dropout", "learning_rate")


def _check_value(name: str, value: Any) -> bool:
    checks = {
        "family": lambda v: v in ("mlp", "cnn"),
        "units": lambda v: isinstance(v, int) and v >= 1,
        "dropout": lambda v: isinstance(v, (int, float)) and 0 <= v < 1,
        "conv_dropout": lambda v: isinstance(v, (int, float)) and 0 <= v < 1,
        "learning_rate": lambda v: isinstance(v, (int, float)) and v > 0,
        "filters": lambda v: isinstance(v, int) and v >= 1,
        "conv_blocks": lambda v: isinstance(v, int) and 1 <= v <= 4,
        "convs_per_block": lambda v: isinstance(v, int) and 1 <= v <= 3,
        "batch_norm": lambda v: isinstance(v, bool),
        "batch_size": lambda v: isinstance(v, int) and v >= 1,
    }
    return checks[name](value)


class TuneParams(Strict):
    storage: str = Field("sqlite:///optuna.db", min_length=1,
                         description="Optuna RDB storage URL (SQLite file or PostgreSQL)")
    study_name: str = Field("{dataset}-{space}", min_length=1,
                            description="{dataset} and {space} (a hash of the search) are replaced")
    n_trials: int = Field(12, ge=1, le=10000, description="total trials the study should reach")
    timeout: float = Field(0, ge=0, description="wall-time cap in seconds; 0 = none")
    sampler_seed: int = 42
    pruner: Literal["hyperband", "median", "none"] = "hyperband"
    epochs: int = Field(6, ge=1, le=1000, description="max epochs per trial")
    patience: int = Field(2, ge=1, le=100, description="early stopping on val accuracy")
    train_subset: int = Field(0, ge=0, description="train images per trial (stratified); 0 = all")
    search_space: dict[str, Distribution]
    fixed: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_space(self) -> "TuneParams":
        problems = []
        for name, dist in self.search_space.items():
            where = f"tune.search_space.{name}"
            if name not in HYPERPARAMETERS:
                problems.append(f"`{where}` is not a known hyperparameter (known: "
                                f"{', '.join(HYPERPARAMETERS)})")
                continue
            if isinstance(dist, CategoricalDist):
                bad = [c for c in dist.choices if not _check_value(name, c)]
                if bad:
                    problems.append(f"`{where}.choices` has {bad!r}; each must be {HYPERPARAMETERS[name]}")
                continue
            if dist.low > dist.high:
                problems.append(f"`{where}` has low {dist.low} above high {dist.high}")
            if dist.log and dist.low <= 0:
                problems.append(f"`{where}` is log-scaled, so low must be > 0 (got {dist.low})")
            for bound in (dist.low, dist.high):
                value = int(bound) if isinstance(dist, IntDist) else float(bound)
                if not _check_value(name, value):
                    problems.append(f"`{where}` bound {bound} is out of range: it must be "
                                    f"{HYPERPARAMETERS[name]}")
                    break
        for name, value in self.fixed.items():
            if name not in HYPERPARAMETERS:
                problems.append(f"`tune.fixed.{name}` is not a known hyperparameter")
            elif name in self.search_space:
                problems.append(f"`tune.fixed.{name}` is also in tune.search_space; keep one")
            elif not _check_value(name, value):
                problems.append(f"`tune.fixed.{name}` = {value!r} is not allowed: it must be "
                                f"{HYPERPARAMETERS[name]}")
        missing = [n for n in REQUIRED_TUNED if n not in self.search_space]
        if missing:
            problems.append(f"tune.search_space must tune {', '.join(missing)}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class TrainParams(Strict):
    epochs: int = Field(20, ge=1, le=10000)
    patience: int = Field(4, ge=1, le=1000, description="early stopping on val accuracy")


class EvaluateParams(Strict):
    batch_size: int = Field(512, ge=1, le=65536)
    latency_batch_size: int = Field(1, ge=1, le=4096, description="images per call when timing")
    latency_repeats: int = Field(100, ge=5, le=10000)
    ece_bins: int = Field(15, ge=2, le=100)
    worst_examples: int = Field(25, ge=1, le=100)


class RegisterParams(Strict):
    model_name: str = Field("{dataset}-classifier", min_length=1,
                            description="registered model; {dataset} is replaced")
    min_accuracy: float = Field(0.8, ge=0, le=1, description="absolute floor on test accuracy")
    min_delta: float = Field(0.001, ge=0, le=1, description="margin to beat the champion by")

    def name_for(self, dataset: str) -> str:
        return self.model_name.replace("{dataset}", dataset)


class FileSpec(Strict):
    name: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    archive_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")


class DatasetSpec(Strict):
    """One entry of datasets.yaml."""

    name: str
    format: Literal["idx"]
    description: str = ""
    classes: list[str] = Field(min_length=2)
    image_shape: tuple[int, int, int]
    counts: dict[Literal["train", "test"], int]
    files: dict[str, FileSpec]
    sources: list[str] = Field(min_length=1)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, turning a missing or malformed file into a PipelineError."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise PipelineError(f"{path} not found (run from the repository root)") from err
    except yaml.YAMLError as err:
        raise PipelineError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise PipelineError(f"{path} must be a mapping of sections, found {type(data).__name__}")
    return data


def describe_errors(err: ValidationError, prefix: str, source: Path | str) -> str:
    """One sentence per invalid value: key, value, what is allowed."""
    parts = []
    for e in err.errors():
        key = ".".join(str(p) for p in (prefix, *e["loc"]) if p != "")
        if e["type"] == "extra_forbidden":
            parts.append(f"`{key}` is not a known key")
        elif e["type"] == "missing":
            parts.append(f"`{key}` is required but missing")
        elif e["type"] == "value_error":
            parts.append(f"`{key}` is not allowed: {e['msg'].removeprefix('Value error, ')}")
        else:
            parts.append(f"`{key}` = {e.get('input')!r} is not allowed: {e['msg']}")
    return f"{source}: " + "; ".join(parts) + "."


def parse(model: type[M], data: Any, prefix: str, source: Path | str) -> M:
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as err:
        raise PipelineError(describe_errors(err, prefix, source)) from None


def section(name: str, model: type[M], params: dict[str, Any] | None = None) -> M:
    """Validate one section of params.yaml (read from disk unless given)."""
    params = load_yaml(PARAMS_FILE) if params is None else params
    return parse(model, params.get(name), name, PARAMS_FILE)


def load_dataset_spec(name: str, datasets_file: Path) -> DatasetSpec:
    """Look up a dataset by name, naming the known ones when it is not there."""
    specs = load_yaml(datasets_file)
    if name not in specs:
        raise PipelineError(
            f"{PARAMS_FILE}: `data.dataset` = {name!r} is not allowed: it must be one of the "
            f"datasets described in {datasets_file}: {', '.join(sorted(specs))}."
        )
    return parse(DatasetSpec, {"name": name, **specs[name]}, name, datasets_file)
