"""Pure parts of pipeline.retrain: reading dvc status, deciding the outcome, the report."""
from __future__ import annotations

from pipeline import retrain


def test_report_of_a_failed_run_quotes_the_stage_error():
    tail = ["Running stage 'validate':", "", "ERROR [validate]: tiny in data/raw failed 1 data",
            "    expectation(s): label 42 not in set.", "", "ERROR: failed to reproduce 'validate'"]
    outcome = retrain.outcome_for(1, [], None)
    text = retrain.render_report(
        outcome=outcome, changes={"download": ["dep datasets.yaml modified"]}, ran=[],
        forced=False, seconds=3.0, metrics_md="_no metric changed since HEAD_", validation=None,
        best=None, tune_summary=None, decision=None, errors=retrain.error_paragraphs(tail),
        tail=tail)
    assert outcome.code == retrain.EXIT_FAILED
    assert "> ERROR [validate]: tiny in data/raw failed 1 data expectation(s): label 42 not in set." in text
    assert "- `download`: dep datasets.yaml modified" in text


def test_stages_that_rerun_without_a_new_model_are_not_a_retrain():
    before = {"validate": {"md5": "a"}, "register": {"md5": "r"}}
    after = {"validate": {"md5": "b"}, "register": {"md5": "r"}}
    ran = retrain.stages_rerun(before, after)
    assert ran == ["validate"]
    outcome = retrain.outcome_for(0, ran, {"decision": "promoted"})
    assert outcome.code == retrain.EXIT_NOTHING_TO_DO and "no new model" in outcome.headline


def test_pending_changes_reads_params_and_outs():
    status = {"train": [{"changed deps": {"params.yaml": {"train.epochs": "modified"}}},
                        {"changed outs": {"models/model.keras": "deleted"}}],
              "dvc.yaml:evaluate": ["always changed"]}
    assert retrain.pending_changes(status) == {
        "train": ["param train.epochs modified", "out models/model.keras deleted"],
        "evaluate": ["always changed"]}
