"""The averaged model: its weights, a copy carrying them, its PGD accuracy, and a callback
that evaluates it during training and keeps the best checkpoint."""

from __future__ import annotations

import json
import math
import os
import warnings

import keras
import numpy as np
from keras import ops

from keras_dyart import _checks, io
from keras_dyart.recipe.optimizers import AveragingSGD

# How many wrappers (`keras.optimizers.LossScaleOptimizer`, ...) `_averaging_optimizer` looks
# through; a guard against a wrapper that holds itself.
_MAX_WRAPPERS = 16


def plain_copy(classifier, weights=None) -> keras.Model:
    """An uncompiled copy of ``classifier``: the same layers, with its weights (or
    ``weights``, in ``classifier.weights`` order).

    A file it is saved to holds no optimizer or compile settings, so it loads with plain
    ``keras.saving.load_model`` in a process that never imports keras_dyart (as long as
    the layers are Keras's own), e.g. to attack it with another library.  Compile the copy
    to call its Keras ``evaluate`` or ``fit``.
    """
    if not isinstance(classifier, keras.layers.Layer):
        raise TypeError(f"`classifier` must be a Keras model; got {type(classifier).__name__}.")
    # (``keras.models.clone_model`` would carry the compile settings over)
    clone = classifier.__class__.from_config(classifier.get_config())
    if not clone.built:
        try:
            shape = classifier.input_shape
        except (AttributeError, ValueError):      # a subclassed model has none
            shape = None
        if shape is not None:
            clone.build(shape)
        elif classifier.get_build_config():
            # the shapes the classifier was first called with (Keras's own record)
            clone.build_from_config(classifier.get_build_config())
    weights = classifier.get_weights() if weights is None else weights
    if len(clone.weights) != len(weights):
        raise ValueError(
            f"`classifier` could not be copied: its copy from get_config() has "
            f"{len(clone.weights)} weights against {len(weights)}. Call the classifier on a "
            f"batch before copying it, or give its class a get_config that rebuilds it.")
    clone.set_weights(weights)
    return clone


def _averaging_optimizer(optimizer) -> AveragingSGD | None:
    """The `AveragingSGD` that ``optimizer`` is or wraps, else None.

    Keras wraps a model's optimizer in a `keras.optimizers.LossScaleOptimizer` when the
    model is compiled under the ``"mixed_float16"`` dtype policy; the weight averages live in
    the wrapped optimizer (``inner_optimizer``, followed through nested wrappers).
    """
    for _ in range(_MAX_WRAPPERS):
        if optimizer is None or isinstance(optimizer, AveragingSGD):
            return optimizer
        optimizer = getattr(optimizer, "inner_optimizer", None)
    return None


def averaged_weights(model) -> list[np.ndarray]:
    """The classifier's weights with each trainable variable replaced by its average.

    Args:
        model: a method model (its ``classifier`` is used) or a plain classifier, compiled
            with an `AveragingSGD`, possibly wrapped (the `keras.optimizers.LossScaleOptimizer`
            of a ``"mixed_float16"`` model); else the raw weights are returned.

    Returns:
        NumPy arrays in ``classifier.weights`` order: the EMA from the model's
        `AveragingSGD` for trainable variables, the raw model's values for the others (e.g.
        BatchNorm statistics).
    """
    classifier = getattr(model, "classifier", model)
    optimizer = _averaging_optimizer(getattr(model, "optimizer", None))
    averages = optimizer.averages() if optimizer is not None else {}
    return [ops.convert_to_numpy(averages.get(id(v), v)) for v in classifier.weights]


def averaged_model(model) -> keras.Model:
    """A copy of ``model``'s classifier carrying the averaged weights (`averaged_weights`).

    ``model`` is a method model (`keras_dyart.methods`, `keras_dyart.DyARTModel`) or a
    plain classifier compiled with `AveragingSGD`.  The copy is a plain, uncompiled logits
    model (`plain_copy`): attack it (`keras_dyart.evaluation.evaluate`) or ``save`` it; a
    saved copy loads without keras_dyart.  It does not carry the method model's input
    ``bounds``: give them to the attack (``bounds=model.bounds``) when they are not (0, 1).
    A model whose optimizer keeps no average (Adam, plain SGD, not compiled) gets a
    warning, and the copy carries its current weights.
    """
    classifier = getattr(model, "classifier", model)
    if not isinstance(classifier, keras.layers.Layer):
        raise TypeError(f"`model` must be a Keras model; got {type(model).__name__}.")
    optimizer = getattr(model, "optimizer", None)
    if _averaging_optimizer(optimizer) is None:
        kind = "is not compiled" if optimizer is None else (
            f"has an optimizer that keeps no weight average ({type(optimizer).__name__})")
        warnings.warn(
            f"`model` {kind}: the copy carries its current weights, not averaged ones. "
            f"Compile it with `keras_dyart.recipe.build_optimizer(...)` or an `AveragingSGD` "
            f"for a weight average.", stacklevel=2)
    return plain_copy(classifier, averaged_weights(model))


def robust_accuracy(model, x, y, eps, norm: str = "linf", steps: int = 40, loss: str = "cw",
                    batch_size: int = 250, seed: int = 0, rel_step: float = 0.1,
                    bounds: tuple[float, float] | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Per-point clean and robust correctness of a logits model under PGD.

    PGD (`keras_dyart.attacks.pgd`) with ``steps`` steps of ``rel_step · eps`` from one
    random start uniform in the ball (drawn with NumPy from ``seed``), in inference mode,
    kept in the input box ``bounds``.  A point counts as robust when it is classified
    correctly both clean and at the PGD point.

    Args:
        model: a logits model: a method model or a classifier.
        x: inputs in ``bounds``.
        y: their integer labels.
        eps: radius of the attack, in the units of ``bounds`` (a number or text such as
            ``"8/255"``).
        norm: ``"linf"`` or ``"l2"``.
        steps: PGD steps (default 40).
        loss: ``"cw"`` (default) or ``"ce"``.
        batch_size: points per PGD batch.
        seed: seed of PGD's random start.
        rel_step: PGD's step as a fraction of ``eps``.
        bounds: ``(lower, upper)`` of the model's inputs (default: the model's own
            ``bounds``, a method model's, else (0, 1)).  Give them for a copy of a method
            model's classifier (`averaged_model` of a model with ``bounds=(0, 255)``, say).

    Returns:
        Two bool arrays: clean correctness and robust correctness.
    """
    from keras_dyart import attacks
    from keras_dyart import backend as dyart_backend
    from keras_dyart.attacks.driver import model_bounds

    eps = _checks.parse_eps(eps)
    norm = _checks.norm_name(norm)
    box = model_bounds(model, bounds)
    x = _checks.images(x, box=box)
    y = _checks.labels(y, len(x))
    _, success = attacks.pgd(model, x, y, eps, norm=norm, steps=steps, rel_step=rel_step,
                             loss=loss, batch_size=batch_size, seed=seed, bounds=box)
    predict = dyart_backend.compile_model_fn(
        model, lambda logits_fn, xb: ops.argmax(logits_fn(ops.convert_to_tensor(xb)), axis=-1),
        True)
    correct = np.concatenate([
        ops.convert_to_numpy(predict(x[i:i + batch_size])) == y[i:i + batch_size]
        for i in range(0, len(x), batch_size)])
    return correct, correct & ~success


class AveragedCheckpoint(keras.callbacks.Callback):
    """Evaluate the averaged model with PGD every few epochs; keep the best checkpoint.

    At the end of every ``every``-th epoch (and of the last), builds `averaged_model`,
    measures its clean accuracy and its robust accuracy under PGD (``steps`` steps, CW loss
    by default, as the recipe's PGD-40) on ``x, y``, adds ``avg_clean_acc`` and
    ``avg_robust_acc`` to the epoch's logs, and saves the averaged classifier to
    ``filepath`` (``.keras``) when its robust accuracy is the best so far.  The best value
    is kept in ``filepath + ".json"`` so that a resumed run keeps comparing against it.

    The attack keeps its points in the input box ``bounds`` (default: the trained model's
    own ``bounds``, a method model's, else (0, 1)); ``x`` is checked against them when
    training begins, as the callback sees the model only then.

    Args:
        x: evaluation inputs in ``bounds`` (e.g. 0-255 pixels for a method model built with
            ``bounds=(0, 255)``).
        y: their integer labels.
        filepath: where the best averaged model goes (must end in ``.keras``).
        eps: radius of the evaluation attack, in the units of ``bounds`` (a number or text
            such as ``"8/255"``).
        norm: ``"linf"`` or ``"l2"``.
        steps: PGD steps (default 40).
        loss: ``"cw"`` (default) or ``"ce"``.
        every: evaluate every this many epochs (default 1).
        last_filepath: if given, also save the latest averaged model there.
        batch_size: points per PGD batch.
        seed: seed of PGD's random start.
        bounds: ``(lower, upper)`` of the model's inputs (default: the trained model's own
            ``bounds``, else (0, 1)).
    """

    def __init__(self, x, y, filepath: str, eps, norm: str = "linf", steps: int = 40,
                 loss: str = "cw", every: int = 1, last_filepath: str | None = None,
                 batch_size: int = 250, seed: int = 0,
                 bounds: tuple[float, float] | None = None):
        super().__init__()
        self.bounds = None if bounds is None else _checks.bounds(bounds)
        x = np.asarray(x)
        if self.bounds is not None or x.dtype.kind == "f":
            # What does not depend on the model's bounds (shape, NaN) fails here already;
            # the values are checked against the model's bounds when training begins.
            x = _checks.images(x, box=self.bounds or (-np.inf, np.inf))
        self.x = x
        self._checked_box = self.bounds
        self.y = _checks.labels(y, len(self.x) if self.x.ndim else 0)
        for arg, path in (("filepath", filepath), ("last_filepath", last_filepath)):
            if path is not None and not str(path).endswith(".keras"):
                raise ValueError(f"`{arg}` must end in '.keras'; got {path!r}.")
        self.filepath = str(filepath)
        self.last_filepath = None if last_filepath is None else str(last_filepath)
        self.eps = _checks.parse_eps(eps)
        self.norm = _checks.norm_name(norm)
        self.steps = _checks.positive(steps, "steps", integer=True)
        if loss not in ("ce", "cw"):
            raise ValueError(f"`loss` must be 'ce' or 'cw'; got {loss!r}.")
        self.loss = loss
        self.every = _checks.positive(every, "every", integer=True)
        self.batch_size = _checks.positive(batch_size, "batch_size", integer=True)
        self.seed = int(seed)
        self.best = -math.inf
        self.best_epoch = None

    @property
    def state_path(self) -> str:
        """Where the best value so far is kept (``filepath + ".json"``)."""
        return self.filepath + ".json"

    def _input_box(self) -> tuple[float, float]:
        """The box of the evaluation inputs: ``bounds`` if given, else the trained model's
        own ``bounds``, else (0, 1); ``x`` is checked against it."""
        from keras_dyart.attacks.driver import model_bounds

        box = model_bounds(self.model, self.bounds)
        _checks.eps_in_box(self.eps, self.norm, box, "eps")
        if box != self._checked_box:
            self.x = _checks.images(self.x, box=box)
            self._checked_box = box
        return box

    def on_train_begin(self, logs=None):
        self._input_box()
        if os.path.exists(self.state_path):
            with open(self.state_path) as f:
                state = json.load(f)
            self.best, self.best_epoch = state["best"], state["epoch"]

    def evaluate(self) -> tuple[keras.Model, float, float]:
        """``(averaged_model, clean_accuracy, robust_accuracy)`` now."""
        box = self._input_box()
        # the copy is a plain classifier: the method model's bounds are given to the attack
        model = averaged_model(self.model)
        correct, robust = robust_accuracy(model, self.x, self.y, self.eps, self.norm,
                                          self.steps, self.loss, self.batch_size, self.seed,
                                          bounds=box)
        return model, float(correct.mean()), float(robust.mean())

    def on_epoch_end(self, epoch, logs=None):
        last = self.params.get("epochs") == epoch + 1
        if (epoch + 1) % self.every and not last:
            return
        model, clean, robust = self.evaluate()
        if logs is not None:
            logs["avg_clean_acc"], logs["avg_robust_acc"] = clean, robust
        if self.last_filepath:
            io.save_model(model, self.last_filepath)
        if robust > self.best:
            self.best, self.best_epoch = robust, epoch
            io.save_model(model, self.filepath)
            io.write_json(self.state_path, {"best": robust, "epoch": epoch, "clean": clean})
