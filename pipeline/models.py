"""Model families: one builder turns a hyperparameter set into a compiled Keras model.

It knows nothing of Optuna: tuning and final training call the same function. The
normalization statistics from `prepare` are a layer of the model, so the model takes
raw pixel values (0..255) and serving needs no preprocessing of its own.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

FAMILIES = ("mlp", "cnn")
DEFAULT_BATCH_SIZE = 128


def build_model(hp: Mapping[str, Any], input_shape: Sequence[int], num_classes: int,
                mean: Sequence[float], std: Sequence[float], steps_per_epoch: int = 0,
                epochs: int = 0):
    """Build and compile a model of family ``hp['family']`` from hyperparameters.

    Recognised keys: family, units, dropout, learning_rate; for the CNN also filters,
    conv_blocks, convs_per_block, batch_norm, conv_dropout (after each pooling). With ``steps_per_epoch`` and ``epochs`` the
    learning rate follows a cosine decay over the run (faster convergence on a CPU budget).
    """
    import keras
    from keras import layers

    family = hp.get("family", "cnn")
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")
    inputs = keras.Input(shape=tuple(input_shape), name="pixels")
    variance = [s * s for s in std]
    x = layers.Normalization(axis=-1, mean=list(mean), variance=variance, name="normalize")(inputs)
    if family == "mlp":
        x = layers.Flatten()(x)
    else:
        filters = int(hp.get("filters", 32))
        bn = bool(hp.get("batch_norm", True))
        conv_dropout = float(hp.get("conv_dropout", 0.0))
        for block in range(int(hp.get("conv_blocks", 2))):
            for _ in range(int(hp.get("convs_per_block", 1))):
                x = layers.Conv2D(filters * 2 ** block, 3, padding="same", use_bias=not bn)(x)
                if bn:
                    # Keras' default momentum (0.99) needs ~1000 steps before the moving
                    # statistics used at validation settle: short tuning trials misjudge.
                    x = layers.BatchNormalization(momentum=0.9)(x)
                x = layers.Activation("relu")(x)
            x = layers.MaxPooling2D()(x)
            if conv_dropout:
                x = layers.Dropout(conv_dropout)(x)
        x = layers.Flatten()(x)
    x = layers.Dense(int(hp["units"]), activation="relu")(x)
    x = layers.Dropout(float(hp["dropout"]))(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name=f"{family}_classifier")

    lr: Any = float(hp["learning_rate"])
    if steps_per_epoch and epochs:
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=steps_per_epoch * epochs,
                                                    alpha=0.01)
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def configure_runtime(seed: int, intra_op_threads: int, inter_op_threads: int) -> None:
    """Seed every generator and pin threads: same params + data + machine = same weights.

    Must run before any TensorFlow op is created in the process.
    """
    import keras
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
        tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)
    except RuntimeError:
        pass  # already initialised in this process (tests): the first setting stands
    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(seed)


def fit_model(model, x_train, y_train, x_val, y_val, *, epochs: int, batch_size: int,
              patience: int, callbacks: Sequence[Any] = (), verbose: int = 0) -> dict[str, list[float]]:
    """Train with early stopping on validation accuracy (best weights restored); return history."""
    import keras

    stop = keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=patience,
                                         restore_best_weights=True)
    history = model.fit(x_train, y_train, validation_data=(x_val, y_val), epochs=epochs,
                        batch_size=batch_size, shuffle=True, verbose=verbose,
                        callbacks=[*callbacks, stop])
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}


def as_float(x):
    """uint8 images -> float32 once per process (Keras would otherwise cast every batch)."""
    import numpy as np

    return np.asarray(x, dtype=np.float32)
