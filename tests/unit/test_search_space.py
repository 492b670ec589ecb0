"""The `tune` section: search-space validation, study naming and drawing hyperparameters."""
from __future__ import annotations

import copy

import optuna
import pytest

from pipeline import config, tune
from pipeline.config import TuneParams
from pipeline.errors import PipelineError

SPACE = {
    "units": {"type": "int", "low": 8, "high": 64, "log": True},
    "dropout": {"type": "float", "low": 0.0, "high": 0.5},
    "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "filters": {"type": "int", "low": 4, "high": 16, "step": 4},
    "family": {"type": "categorical", "choices": ["mlp", "cnn"]},
    "batch_norm": {"type": "categorical", "choices": [True, False]},
}
FIXED = {"conv_blocks": 2, "batch_size": 64}


def tune_section(space_edits: dict | None = None, drop: tuple[str, ...] = (), **overrides) -> dict:
    space = copy.deepcopy(SPACE)
    for name in drop:
        space.pop(name)
    space.update(space_edits or {})
    return {"tune": {"search_space": space, "fixed": dict(FIXED), **overrides}}


def parse(params: dict) -> TuneParams:
    return config.section("tune", TuneParams, params)


def error_of(params: dict) -> str:
    with pytest.raises(PipelineError) as err:
        parse(params)
    return str(err.value)


def test_valid_section_parses_into_typed_distributions():
    t = parse(tune_section(n_trials=5))
    assert t.n_trials == 5 and t.fixed == FIXED
    assert isinstance(t.search_space["units"], config.IntDist) and t.search_space["units"].log
    assert isinstance(t.search_space["dropout"], config.FloatDist)
    assert t.search_space["family"].choices == ["mlp", "cnn"]
    assert t.search_space["batch_norm"].choices == [True, False]


@pytest.mark.parametrize("edits, drop, fixed, expected", [
    ({"units": {"type": "int", "low": 64, "high": 8}}, (), None,
     "`tune.search_space.units` has low 64 above high 8"),
    ({"dropout": {"type": "float", "low": 0.1, "high": 1.0}}, (), None,
     "`tune.search_space.dropout` bound 1.0 is out of range: it must be a rate in [0, 1)"),
    ({"learning_rate": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}, (), None,
     "`tune.search_space.learning_rate` is log-scaled, so low must be > 0 (got 0.0)"),
    ({"family": {"type": "categorical", "choices": ["cnn", "rnn"]}}, (), None,
     "`tune.search_space.family.choices` has ['rnn']; each must be one of mlp, cnn"),
    ({"momentum": {"type": "float", "low": 0.1, "high": 0.9}}, (), None,
     "`tune.search_space.momentum` is not a known hyperparameter"),
    ({}, ("units",), None, "tune.search_space must tune units"),
    ({}, ("dropout", "learning_rate"), None, "tune.search_space must tune dropout, learning_rate"),
    ({}, (), {"conv_blocks": 7}, "`tune.fixed.conv_blocks` = 7 is not allowed: it must be an "
                                 "integer in [1, 4]"),
    ({}, (), {"batch_size": 0}, "`tune.fixed.batch_size` = 0 is not allowed"),
    ({}, (), {"units": 32}, "`tune.fixed.units` is also in tune.search_space"),
])
def test_bad_search_space_names_the_entry(edits, drop, fixed, expected):
    params = tune_section(edits, drop)
    if fixed is not None:
        params["tune"]["fixed"] = fixed
    msg = error_of(params)
    assert msg.startswith(f"{config.PARAMS_FILE}: "), msg
    assert expected in msg, msg


def test_several_problems_are_reported_together():
    msg = error_of(tune_section({"units": {"type": "int", "low": 64, "high": 8},
                                 "dropout": {"type": "float", "low": 0.2, "high": 1.5}}))
    assert "tune.search_space.units" in msg and "tune.search_space.dropout" in msg


def test_unknown_distribution_type_is_named():
    msg = error_of(tune_section({"units": {"type": "normal", "low": 8, "high": 16}}))
    assert "tune.search_space.units" in msg and "normal" in msg


def test_study_name_changes_with_the_search_only():
    base = parse(tune_section())
    name = tune.study_name(base, "tiny", 100)
    assert name.startswith("tiny-") and len(name) == len("tiny-") + 8
    assert tune.study_name(parse(tune_section()), "tiny", 100) == name
    # n_trials, timeout and storage say how much/where to search, not what: same study.
    assert tune.study_name(parse(tune_section(n_trials=99, timeout=5)), "tiny", 100) == name
    different = [
        tune.study_name(parse(tune_section({"units": {"type": "int", "low": 8, "high": 32}})),
                        "tiny", 100),
        tune.study_name(parse(tune_section(epochs=3)), "tiny", 100),
        tune.study_name(base, "tiny", 200),
        tune.study_name(base, "other", 100),
        tune.study_name(parse(tune_section(train_subset=50)), "tiny", 100),
    ]
    assert name not in different and len(set(different)) == len(different)
    assert tune.study_name(parse(tune_section(study_name="fixed-name")), "tiny", 1) == "fixed-name"


def check_bounds(hp: dict, space: dict) -> None:
    assert set(hp) == set(space)
    for name, dist in space.items():
        value = hp[name]
        if isinstance(dist, config.CategoricalDist):
            assert value in dist.choices
        else:
            kind = int if isinstance(dist, config.IntDist) else float
            assert type(value) is kind, (name, value)
            assert dist.low <= value <= dist.high, (name, value)
    assert hp["filters"] % 4 == 0


def test_suggest_with_a_fixed_trial():
    space = parse(tune_section()).search_space
    values = {"units": 12, "dropout": 0.25, "learning_rate": 1e-3, "filters": 8,
              "family": "cnn", "batch_norm": False}
    hp = tune.suggest(optuna.trial.FixedTrial(values), space)
    assert hp == values
    check_bounds(hp, space)


def test_suggest_in_a_real_study_stays_within_bounds():
    space = parse(tune_section()).search_space
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=3))
    drawn = []

    def objective(trial):
        hp = tune.suggest(trial, space)
        drawn.append(hp)
        return hp["dropout"] + hp["units"] / 64

    study.optimize(objective, n_trials=12)
    assert len(drawn) == 12
    for hp in drawn:
        check_bounds(hp, space)
    assert len({hp["units"] for hp in drawn}) > 1  # it explores
