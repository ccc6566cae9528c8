"""Model builders. Every builder returns a `keras.Model` that outputs logits."""

import keras
from keras import layers


def small_cnn(num_classes=10, input_shape=(28, 28, 1), name="small_cnn"):
    """Small CNN for MNIST-sized inputs: conv 32 → pool → conv 64 → pool → dense 128 → logits.

    >>> model = small_cnn()
    >>> model.output_shape
    (None, 10)
    """
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"`num_classes` must be an integer >= 2; got {num_classes!r}.")
    if len(tuple(input_shape)) != 3:
        raise ValueError(
            f"`input_shape` must be (height, width, channels); got {input_shape!r}.")
    inputs = keras.Input(shape=tuple(input_shape))
    h = layers.Conv2D(32, 3, activation="relu")(inputs)
    h = layers.MaxPooling2D(2)(h)
    h = layers.Conv2D(64, 3, activation="relu")(h)
    h = layers.MaxPooling2D(2)(h)
    h = layers.Flatten()(h)
    h = layers.Dense(128, activation="relu")(h)
    outputs = layers.Dense(num_classes)(h)
    return keras.Model(inputs, outputs, name=name)


BUILDERS = {"small-cnn": small_cnn}


def get(name, **kwargs):
    """Build an architecture by name (``"small-cnn"``)."""
    if name not in BUILDERS:
        raise ValueError(f"`model` must be one of {sorted(BUILDERS)}; got {name!r}.")
    return BUILDERS[name](**kwargs)
