"""params.yaml / datasets.yaml schema: bad values fail naming the key, the value and the rule."""
from __future__ import annotations

import pytest
import yaml
from conftest import REPO

from pipeline import config
from pipeline.errors import PipelineError


def test_repo_params_and_datasets_are_valid():
    params = config.load_yaml(REPO / "params.yaml")
    paths = config.section("paths", config.Paths, params)
    for name, model in [("data", config.DataParams), ("download", config.DownloadParams),
                        ("prepare", config.PrepareParams), ("validate", config.ValidateParams)]:
        config.section(name, model, params)
    for name in config.load_yaml(REPO / paths.datasets):
        spec = config.load_dataset_spec(name, REPO / paths.datasets)
        assert set(spec.files) == {"train_images", "train_labels", "test_images", "test_labels"}


@pytest.mark.parametrize("section, model, value, key, allowed", [
    ("prepare", config.PrepareParams, {"val_fraction": 1.5}, "prepare.val_fraction",
     "less than 0.5"),
    ("prepare", config.PrepareParams, {"val_fraction": 0}, "prepare.val_fraction",
     "greater than 0"),
    ("data", config.DataParams, {"limit": -1}, "data.limit", "greater than or equal to 0"),
    ("download", config.DownloadParams, {"retries": 11}, "download.retries",
     "less than or equal to 10"),
    ("download", config.DownloadParams, {"timeout": "soon"}, "download.timeout",
     "valid number"),
])
def test_bad_value_names_key_value_and_range(section, model, value, key, allowed):
    with pytest.raises(PipelineError) as err:
        config.section(section, model, {section: value})
    msg = str(err.value)
    (bad,) = value.values()
    assert f"`{key}` = {bad!r}" in msg
    assert allowed in msg
    assert str(config.PARAMS_FILE) in msg


def test_unknown_key_is_named():
    with pytest.raises(PipelineError, match=r"`prepare\.val_fration` is not a known key"):
        config.section("prepare", config.PrepareParams, {"prepare": {"val_fration": 0.2}})


def test_all_errors_reported_at_once():
    with pytest.raises(PipelineError) as err:
        config.section("download", config.DownloadParams,
                       {"download": {"retries": -1, "backoff": 99}})
    assert "download.retries" in str(err.value) and "download.backoff" in str(err.value)


def test_missing_section_uses_defaults():
    assert config.section("prepare", config.PrepareParams, {}) == config.PrepareParams()


def test_unknown_dataset_lists_known_ones(tmp_path):
    (tmp_path / "d.yaml").write_text((REPO / "datasets.yaml").read_text())
    with pytest.raises(PipelineError) as err:
        config.load_dataset_spec("fashion", tmp_path / "d.yaml")
    msg = str(err.value)
    assert "`data.dataset` = 'fashion'" in msg
    assert "fashion_mnist, mnist" in msg


def test_bad_dataset_entry_names_dataset_and_key(tmp_path):
    specs = yaml.safe_load((REPO / "datasets.yaml").read_text())
    specs["mnist"]["files"]["train_images"]["sha256"] = "abc"
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(specs))
    with pytest.raises(PipelineError, match=r"d\.yaml.*`mnist\.files\.train_images\.sha256`"
                                            r" = 'abc'"):
        config.load_dataset_spec("mnist", tmp_path / "d.yaml")


@pytest.mark.parametrize("text, expected", [
    ("a: [1, 2\n", "not valid YAML"),
    ("- just\n- a list\n", "must be a mapping"),
])
def test_malformed_yaml(tmp_path, text, expected):
    (tmp_path / "p.yaml").write_text(text)
    with pytest.raises(PipelineError, match=expected):
        config.load_yaml(tmp_path / "p.yaml")


def test_missing_file(tmp_path):
    with pytest.raises(PipelineError, match="not found"):
        config.load_yaml(tmp_path / "nope.yaml")
