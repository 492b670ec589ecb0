"""Evaluate's metrics against values computed by hand (and sklearn on random data)."""
import math

import numpy as np
import pytest

from pipeline import evaluate

Y_TRUE = np.array([0, 0, 1, 1, 2, 2])
Y_PRED = np.array([0, 1, 1, 1, 2, 0])
# Four images, three classes: confidences 0.9 (right), 0.8 (wrong), 0.4 (right), 0.45 (wrong).
PROBS = np.array([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.4, 0.35, 0.25], [0.3, 0.45, 0.25]])
LABELS = np.array([0, 1, 0, 2])


def test_confusion_matrix_rows_are_actual():
    cm = evaluate.confusion_matrix(Y_TRUE, Y_PRED, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_per_class_scores_and_macro_f1_by_hand():
    s = evaluate.per_class_scores(evaluate.confusion_matrix(Y_TRUE, Y_PRED, 3))
    assert s["precision"] == pytest.approx([1 / 2, 2 / 3, 1.0])
    assert s["recall"] == pytest.approx([1 / 2, 1.0, 1 / 2])
    assert s["f1"] == pytest.approx([0.5, 0.8, 2 / 3])
    assert evaluate.score(np.eye(3)[Y_PRED], Y_TRUE, ["a", "b", "c"], 10)["macro_f1"] == \
        pytest.approx((0.5 + 0.8 + 2 / 3) / 3)


def test_undefined_scores_are_zero_not_nan():
    s = evaluate.per_class_scores(evaluate.confusion_matrix([0, 0], [0, 0], 2))
    assert s["precision"].tolist() == [1.0, 0.0] and s["f1"].tolist() == [1.0, 0.0]


def test_accuracy_and_log_loss_by_hand():
    assert evaluate.accuracy(Y_TRUE, Y_PRED) == pytest.approx(4 / 6)
    expected = -(math.log(0.9) + math.log(0.1) + math.log(0.4) + math.log(0.25)) / 4
    assert evaluate.log_loss(PROBS, LABELS) == pytest.approx(expected)
    assert math.isfinite(evaluate.log_loss(np.array([[1.0, 0.0]]), np.array([1])))


def test_ece_by_hand():
    # bins (0, .5] and (.5, 1]: each holds 2 images, 1 right.
    # low: |0.5 - 0.425| * 2/4 = 0.0375; high: |0.5 - 0.85| * 2/4 = 0.175
    assert evaluate.expected_calibration_error(PROBS, LABELS, 2) == pytest.approx(0.2125)


def test_ece_edges_and_perfect_calibration():
    # confidence exactly 0.5 belongs to (0, .5], exactly 1.0 to the last bin
    probs = np.array([[0.5, 0.5], [1.0, 0.0]])
    assert evaluate.expected_calibration_error(probs, np.array([1, 0]), 2) == pytest.approx(0.25)
    # all confident and right: zero error
    assert evaluate.expected_calibration_error(np.eye(3), np.arange(3), 15) == 0.0


def test_metrics_match_sklearn_on_random_data():
    from sklearn import metrics as skm

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5), size=400)
    y = rng.integers(0, 5, 400)
    m = evaluate.score(probs, y, list("abcde"), 15)
    pred = probs.argmax(1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["loss"] == pytest.approx(skm.log_loss(y, probs, labels=range(5)))
    assert m["per_class"]["c"]["recall"] == pytest.approx(
        skm.recall_score(y, pred, labels=[2], average=None)[0])


def test_worst_misclassified_most_confident_first():
    assert evaluate.worst_misclassified(PROBS, LABELS, 5).tolist() == [1, 3]
    assert evaluate.worst_misclassified(PROBS, LABELS, 1).tolist() == [1]


def test_measure_latency_times_the_stated_batch():
    calls = []
    lat = evaluate.measure_latency(lambda b: calls.append(b.shape), np.zeros((10, 4, 4, 1), np.uint8), 4, 7)
    assert lat["batch_size"] == 4 and lat["repeats"] == 7
    assert calls == [(4, 4, 4, 1)] * (3 + 7)
    assert 0 <= lat["ms_per_image"] <= lat["ms_per_image_p95"]


def test_csv_rows_use_class_names():
    text = evaluate.confusion_rows(np.array([0, 1]), np.array([1, 1]), ["T-shirt/top", "a,b"])
    assert text.splitlines() == ["actual,predicted", 'T-shirt/top,"a,b"', '"a,b","a,b"']


def test_mlflow_metric_names_are_prefixed_and_safe():
    m = evaluate.score(np.eye(2), np.arange(2), ["T-shirt/top", "Ankle boot"], 5)
    m["latency"] = {"ms_per_image": 1.5}
    flat = evaluate.mlflow_metrics(m)
    assert flat["test_accuracy"] == 1.0 and flat["test_latency_ms_per_image"] == 1.5
    assert "test_f1_T-shirt_top" in flat and "test_f1_Ankle_boot" in flat
