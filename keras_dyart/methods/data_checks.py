"""Checks of a robust model's classifier and of the data it trains on, beyond the first
batch (`RobustModel.check_data` checks that one before training starts)."""

from __future__ import annotations

import keras
from keras import ops

from keras_dyart import _checks


def check_classifier_structure(classifier: keras.Model) -> None:
    """Refuse, at construction, classifiers whose graph shows they cannot give logits of one
    input tensor: several outputs, a final softmax / sigmoid, a dict or several inputs, an
    integer or bool input (token ids: the methods need continuous inputs)."""
    try:
        outputs = classifier.outputs
    except (AttributeError, ValueError):
        outputs = None
    if outputs is not None and len(outputs) > 1:
        raise ValueError(
            f"`classifier` must have one output (the class logits); it has {len(outputs)}. "
            "Wrap it in a model that returns only the logits.")
    _checks.one_input(classifier, "classifier", dict_too=True)
    _checks.continuous_inputs(classifier, "classifier")
    _checks.probability_head(classifier, "classifier")


class InputErrorCheck(keras.callbacks.Callback):
    """Fails `fit` at the end of an epoch in which some batch had inputs outside the model's
    bounds or labels outside [0, K) (the first batch is checked before training starts;
    this catches the later ones, which a compiled step cannot refuse by itself: the step
    counts them, and trains on such labels clipped into [0, K), so that no loss or attack
    fails inside the backend before this check can say what is wrong), and `evaluate` (or
    `fit`'s validation) at its end where a test batch had such rows.

    Keras resets the counter when validation starts, so the epoch's training rows are
    checked then (``on_test_begin`` comes before the reset) as well as at the epoch's end
    (epochs without validation)."""

    def __init__(self):
        super().__init__()
        self._epoch = None                   # the epoch of a running `fit`, else None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_end(self, logs=None):
        self._epoch = None

    def on_epoch_end(self, epoch, logs=None):
        count = self._count()
        if count:
            self._fail(f"`x` / `y`: {count} training rows of epoch {epoch + 1}",
                       _index_text(self.model))

    def on_test_begin(self, logs=None):
        if self._epoch is not None:          # fit's validation: the training rows first
            self.on_epoch_end(self._epoch)

    def on_test_end(self, logs=None):
        count = self._count()
        if count:
            self._fail(f"`x` / `y`: {count} evaluation rows" if self._epoch is None else
                       f"`validation_data`: {count} evaluation rows after epoch "
                       f"{self._epoch + 1}", ", so the scores would be wrong")

    def _count(self) -> int:
        return error_count(self.model)

    def _fail(self, rows: str, tail: str) -> None:
        lo, hi = self.model.bounds
        raise ValueError(
            f"{rows} had inputs outside the model's input bounds [{lo:g}, {hi:g}] (or NaN) "
            f"or labels outside the classifier's classes (or not whole numbers){tail}. The "
            f"first batch passed the checks; a later batch of the input pipeline did not. "
            f"Fix the pipeline (or declare `bounds`).")


def error_count(model) -> int:
    """The bad rows counted since Keras last reset ``model``'s metrics."""
    return int(round(float(ops.convert_to_numpy(model.input_error_tracker.result()))))


def _index_text(model):
    n = getattr(model, "n_examples", None)
    if not getattr(model, "uses_index", False) or n is None:
        return ""
    return f" (or example indices outside [0, {n}), `n_examples`)"


__all__ = ["InputErrorCheck", "check_classifier_structure", "error_count"]
