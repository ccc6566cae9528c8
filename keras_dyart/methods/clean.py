"""Clean (standard) training: cross-entropy on the clean inputs."""

from __future__ import annotations

import keras

from keras_dyart.methods.base import RobustModel


@keras.saving.register_keras_serializable(package="keras_dyart")
class CleanModel(RobustModel):
    """Standard training, in the same wrapper as the robust methods.

    Minimises the compiled loss (cross-entropy by default) on the clean inputs; useful as
    the burn-in stage and as the baseline of a comparison.

    Args:
        classifier: a Keras model that outputs logits.
        seed: unused (kept so that every method takes it).

    Its train step is `RobustModel`'s without inner examples, so its later batches are
    checked as every method's are (`keras_dyart.methods.data_checks.InputErrorCheck`).
    """
