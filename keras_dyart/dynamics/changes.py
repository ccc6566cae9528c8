"""Weight changes Δθ: one optimiser step, two checkpoints, or a temporary assignment.

A change is a list of float32 NumPy arrays, one per entry of ``model.trainable_variables``
(same order and shapes).  `check_model` and `check_delta` are the argument checks the rest
of the analysis shares.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Sequence

import keras
import numpy as np
from keras import ops

from keras_dyart import _checks


def check_model(model, arg: str = "model") -> None:
    """Refuse anything but a built Keras model with inputs in [0, 1] (errors name ``arg``)."""
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(
            f"`{arg}` must be a Keras model that outputs logits; got {type(model).__name__}.")
    if not model.trainable_variables:
        raise ValueError(f"`{arg}` has no trainable variables; build it first.")
    bounds = tuple(getattr(model, "bounds", (0.0, 1.0)))
    if bounds != (0.0, 1.0):
        raise ValueError(
            f"`{arg}` has input bounds {bounds}; the boundary-dynamics analysis measures "
            f"margins and speeds of inputs in [0, 1] only. Analyse its classifier behind a "
            f"Rescaling layer that maps [0, 1] to those bounds.")


def check_delta(model, delta, arg: str = "delta") -> list[np.ndarray]:
    """``delta`` as finite float32 arrays shaped like ``model.trainable_variables``."""
    variables = model.trainable_variables
    if isinstance(delta, dict) or not isinstance(delta, (list, tuple)):
        raise TypeError(
            f"`{arg}` must be a list of arrays, one per entry of "
            f"`model.trainable_variables` ({len(variables)}); got {type(delta).__name__}.")
    if len(delta) != len(variables):
        raise ValueError(
            f"`{arg}` has {len(delta)} arrays but the model has {len(variables)} trainable "
            "variables.")
    out = []
    for i, (d, v) in enumerate(zip(delta, variables)):
        d = np.asarray(ops.convert_to_numpy(d), dtype="float32")
        if tuple(d.shape) != tuple(v.shape):
            raise ValueError(
                f"`{arg}[{i}]` has shape {tuple(d.shape)} but variable {v.path!r} has "
                f"shape {tuple(v.shape)}.")
        if not np.all(np.isfinite(d)):
            raise ValueError(f"`{arg}[{i}]` contains NaN or inf values.")
        out.append(d)
    return out


@contextlib.contextmanager
def assigned_weights(model, values: Sequence) -> Iterator:
    """Temporarily set ``model.trainable_variables`` to ``values``; restore them on exit."""
    variables = model.trainable_variables
    saved = [ops.convert_to_numpy(v) for v in variables]
    try:
        for v, a in zip(variables, values):
            v.assign(a)
        yield model
    finally:
        for v, s in zip(variables, saved):
            v.assign(s)


def _load(model, arg):
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"`{arg}`: no such model file {path!r}.")
        return keras.saving.load_model(path, compile=False)
    check_model(model, arg)
    return model


def weight_change(before, after) -> list[np.ndarray]:
    """Δθ = θ_after − θ_before of two models or ``.keras`` checkpoints of the same model.

    Args:
        before: a Keras model or the path of a ``.keras`` file.
        after: the same, with the same trainable variables (same order and shapes).

    Returns:
        list of NumPy arrays, one per entry of ``before.trainable_variables``.
    """
    before, after = _load(before, "before"), _load(after, "after")
    va, vb = before.trainable_variables, after.trainable_variables
    if len(va) != len(vb):
        raise ValueError(
            f"`before` has {len(va)} trainable variables but `after` has {len(vb)}; they "
            "must be checkpoints of the same model.")
    out = []
    for a, b in zip(va, vb):
        if tuple(a.shape) != tuple(b.shape):
            raise ValueError(
                f"variable {a.path!r} has shape {tuple(a.shape)} in `before` but "
                f"{tuple(b.shape)} in `after`; they must be checkpoints of the same model.")
        out.append(ops.convert_to_numpy(b).astype("float32")
                   - ops.convert_to_numpy(a).astype("float32"))
    return out


def _state_variables(model):
    return (list(model.variables) + list(model.optimizer.variables)
            + list(model.metrics_variables))


def step_change(model, x, y, *, steps: int = 1, batch_size: int | None = None,
                restore: bool = True) -> list[np.ndarray]:
    """Δθ made by ``steps`` optimiser steps of a compiled model's own ``train_step``.

    Works with any compiled Keras model whose ``train_step`` updates its weights (a plain
    classifier, `DyARTModel`, the adversarial-training models): the trainable weights are
    read before and after ``model.train_on_batch`` and subtracted.

    Args:
        model: a compiled Keras model.
        x: the training inputs (all of them are one batch unless ``batch_size`` is given,
            in which case ``steps`` consecutive slices of that size are used, cycling).
        y: their labels.
        steps: number of optimiser steps.
        batch_size: rows per step (default: all of ``x``).
        restore: put the weights, the optimiser state and the metrics back afterwards
            (default True), so the model is unchanged and Δθ can be measured at θ.

    Returns:
        list of NumPy arrays, one per entry of ``model.trainable_variables``.
    """
    check_model(model)
    if getattr(model, "optimizer", None) is None or not getattr(model, "compiled", False):
        raise ValueError("`model` must be compiled (with an optimizer) to take a step.")
    steps = _checks.positive(steps, "steps", integer=True)
    x = np.asarray(x)
    y = np.asarray(y)
    if len(x) != len(y):
        raise ValueError(f"`y` has {len(y)} rows but `x` has {len(x)}.")
    if len(x) == 0:
        raise ValueError("`x` is empty; expected at least one training input.")
    size = len(x) if batch_size is None else _checks.positive(batch_size, "batch_size",
                                                              integer=True)
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    state = _state_variables(model)
    saved = [ops.convert_to_numpy(v) for v in state]
    theta = [ops.convert_to_numpy(v).astype("float32") for v in model.trainable_variables]
    try:
        for k in range(steps):
            idx = (np.arange(size) + k * size) % len(x)
            model.train_on_batch(x[idx], y[idx])
        after = [ops.convert_to_numpy(v).astype("float32") for v in model.trainable_variables]
    finally:
        if restore:
            for v, s in zip(_state_variables(model), saved):
                v.assign(s)
    return [a - t for a, t in zip(after, theta)]


__all__ = ["assigned_weights", "check_delta", "check_model", "step_change", "weight_change"]
