"""The model builder (families, shapes, normalization inside the model) and the pruning callback."""
from __future__ import annotations

import numpy as np
import optuna
import pytest

from pipeline.models import build_model, fit_model
from pipeline.tune import pruning_callback

HP = {"units": 8, "dropout": 0.1, "learning_rate": 1e-3, "filters": 4}


@pytest.mark.parametrize("family, blocks, batch_norm", [
    ("mlp", 0, False), ("cnn", 1, False), ("cnn", 2, True), ("cnn", 3, False), ("cnn", 3, True),
])
@pytest.mark.parametrize("shape, k", [((28, 28, 1), 10), ((32, 32, 3), 2)])
def test_build_model_shapes_and_probabilities(family, blocks, batch_norm, shape, k):
    hp = {**HP, "family": family, "conv_blocks": max(blocks, 1), "batch_norm": batch_norm}
    c = shape[-1]
    model = build_model(hp, shape, k, mean=[100.0] * c, std=[50.0] * c)
    assert model.input_shape == (None, *shape)
    assert model.output_shape == (None, k)
    convs = [layer for layer in model.layers if layer.__class__.__name__ == "Conv2D"]
    norms = [layer for layer in model.layers if layer.__class__.__name__ == "BatchNormalization"]
    assert len(convs) == (blocks if family == "cnn" else 0)
    assert len(norms) == (len(convs) if batch_norm else 0)
    x = np.random.default_rng(0).integers(0, 256, size=(5, *shape)).astype(np.float32)
    probs = model.predict(x, verbose=0)
    assert probs.shape == (5, k)
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("conv_dropout, expected", [(0.0, 1), (0.2, 3)])
def test_conv_dropout_follows_each_pooling(conv_dropout, expected):
    hp = {**HP, "family": "cnn", "conv_blocks": 2, "conv_dropout": conv_dropout}
    model = build_model(hp, (8, 8, 1), 2, [0.0], [1.0])
    dropouts = [layer for layer in model.layers if layer.__class__.__name__ == "Dropout"]
    assert len(dropouts) == expected  # the dense layer's dropout, plus one per conv block
    assert [d.rate for d in dropouts[:-1]] == [conv_dropout] * (expected - 1)


def test_unknown_family_is_refused():
    with pytest.raises(ValueError, match="unknown model family 'rnn'"):
        build_model({**HP, "family": "rnn"}, (8, 8, 1), 2, [0.0], [1.0])


def test_normalization_layer_carries_the_training_statistics():
    import keras

    mean, std = [10.0, 120.0, 200.0], [2.0, 40.0, 5.0]
    model = build_model({**HP, "family": "cnn"}, (8, 8, 3), 3, mean, std)
    norm = keras.Model(model.inputs, model.get_layer("normalize").output)
    at_mean = np.broadcast_to(np.array(mean, np.float32), (1, 8, 8, 3))
    np.testing.assert_allclose(norm.predict(at_mean, verbose=0), 0.0, atol=1e-5)
    one_std_up = at_mean + np.array(std, np.float32)
    np.testing.assert_allclose(norm.predict(one_std_up, verbose=0), 1.0, atol=1e-4)


class StubTrial:
    """What the pruning callback uses of an Optuna trial; prunes once ``prune_at`` is reported."""

    def __init__(self, prune_at: int):
        self.prune_at = prune_at
        self.reported: list[tuple[int, float]] = []
        self.user_attrs: dict = {}

    def report(self, value: float, step: int) -> None:
        self.reported.append((step, value))

    def should_prune(self) -> bool:
        return self.reported[-1][0] >= self.prune_at

    def set_user_attr(self, key: str, value) -> None:
        self.user_attrs[key] = value


def tiny_problem(seed: int):
    """40 random 8x8 images, 2 classes, and an untrained tiny MLP for them."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(40, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 2, size=40)
    return x, y, build_model({**HP, "family": "mlp"}, (8, 8, 1), 2, [128.0], [64.0])


def test_pruning_callback_stops_the_fit_and_records_what_it_reported():
    x, y, model = tiny_problem(0)
    trial = StubTrial(prune_at=2)
    with pytest.raises(optuna.TrialPruned, match="pruned after epoch 2"):
        fit_model(model, x, y, x, y, epochs=6, batch_size=20, patience=10,
                  callbacks=[pruning_callback(trial)])
    assert [step for step, _ in trial.reported] == [1, 2]
    assert all(0.0 <= value <= 1.0 for _, value in trial.reported)
    assert trial.user_attrs == {"epochs": 2}


def test_fit_model_without_pruning_returns_per_epoch_history():
    x, y, model = tiny_problem(1)
    trial = StubTrial(prune_at=99)
    history = fit_model(model, x, y, x, y, epochs=3, batch_size=20, patience=10,
                        callbacks=[pruning_callback(trial)])
    assert len(history["val_accuracy"]) == 3 and len(history["loss"]) == 3
    assert [v for _, v in trial.reported] == pytest.approx(history["val_accuracy"])
    assert trial.user_attrs == {"epochs": 3}
