"""`RobustModel`: the base of every training method, and its train step.

A robust model wraps a logits classifier.  The whole train step is `RobustModel.train_step`:

1. **Inner examples.** ``inner = self.inner(logits_fn, x, y)``: the method's PGD attack or
   boundary search, with ``logits_fn`` the classifier in inference mode at the step's own
   weights (`keras_dyart.backend.inference`), float32 logits; constants of the loss.
2. **Hand-over.** The batch given to Keras's own backend ``train_step`` is
   ``(step, y, sample_weight)`` where ``step`` is a dict (`step_inputs`): the inputs of
   Keras's forward pass (``forward_inputs(x, inner)``: ``x``, or PGD-AT's adversarial
   batch), the clean ``x``, ``inner`` and the batch's count of bad rows (inputs outside
   the bounds, labels outside [0, K): such labels are clipped into [0, K) for the whole
   step, so that no attack or loss fails inside the backend, and `InputErrorCheck` fails
   ``fit`` at the epoch's end with a message that says what was wrong).
3. **Loss.** Keras runs ``y_pred = self(step)`` (`call` reads the forward inputs), then
   differentiates ``compute_loss(step, y, y_pred, sample_weight)``, which returns the sum of
   ``objective(x, y, y_pred, sample_weight, inner)`` and logs its other terms.

So one ``train_step`` serves TensorFlow, JAX and PyTorch (Keras's trainers do the
differentiation, the optimizer, mixed-precision loss scaling and metrics), and ``fit``,
``evaluate``, callbacks and ``.keras`` saving work as for any Keras model.

A method subclass sets

- ``hyper_parameters``: the names of its constructor arguments (saved by ``get_config``);
- ``loss_terms``: the names of the terms it logs besides ``loss``;
- ``inner(logits_fn, x, y)``: a dict of inner examples (or ``None`` for none);
- ``objective(x, y, y_pred, sample_weight, inner)``: a dict of loss terms whose sum
  (``"loss"``) is minimised; ``y_pred`` are the training-mode float32 logits Keras computed
  on the forward inputs;
- optionally ``forward_inputs(x, inner)``: the inputs of Keras's forward pass (and so of
  the compiled loss and metrics), ``x`` by default.

Input bounds: every robust model takes ``bounds=(lower, upper)`` (default ``(0, 1)``), the box
its inputs live in (foolbox's convention).  The inner search and attacks keep their points in
that box, and every length (eps, step sizes, r0, margins) is in those units.  A method works
in the unit box through `RobustModel.to_unit` / `from_unit`, so the maths below it is written
for [0, 1] only.

Precision: the inner examples, margins and weights are computed in float32 whatever the
global dtype policy (``mixed_float16`` / ``mixed_bfloat16`` keep the network's own compute in
16 bits): ``logits_fn`` and `RobustModel.train_logits` return float32 logits.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import keras
from keras import ops
from keras.utils import pack_x_y_sample_weight, unpack_x_y_sample_weight

from keras_dyart import _checks, geometry
from keras_dyart import backend as dyart_backend
from keras_dyart import inputs as _inputs
from keras_dyart.methods.data_checks import InputErrorCheck, check_classifier_structure, error_count
from keras_dyart.methods.warm import is_indexed, split_indexed
from keras_dyart.recipe.data import HostMemory

# The keys of the dict that carries a train step's batch into Keras's step (`step_inputs`).
STEP_KEYS = ("forward", "inner", "input_errors", "x")


class RobustModel(keras.Model):
    """Base class of the training methods: a classifier plus a robust ``train_step``.

    Args:
        classifier: any Keras model or layer mapping inputs to logits ``(N, K)`` (one
            output, no final softmax).
        seed: seed of the random starts of the inner attack.
        bounds: ``(lower, upper)``, the box the inputs live in (default ``(0, 1)``; e.g.
            ``(0, 255)`` for a classifier that starts with ``Rescaling(1/255)``).  Every
            length the method takes (eps, step sizes, r0, ...) is in these units.

    ``compile()`` defaults ``loss`` to cross-entropy on logits; ``evaluate()`` and
    ``predict()`` use the classifier on clean inputs.
    """

    hyper_parameters = ()
    loss_terms = ()

    def __init__(self, classifier: keras.layers.Layer, seed: int = 0,
                 bounds: tuple[float, float] = (0.0, 1.0), **kwargs):
        super().__init__(**kwargs)
        if not isinstance(classifier, keras.layers.Layer):
            raise TypeError(
                "`classifier` must be a Keras model or layer that outputs logits; "
                f"got {type(classifier).__name__}.")
        check_classifier_structure(classifier)
        self.classifier = classifier
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"`seed` must be an integer; got {seed!r}.")
        self.seed = seed
        self.bounds = _checks.bounds(bounds)
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.term_trackers = [keras.metrics.Mean(name=name) for name in self.loss_terms]
        # Rows of the epoch whose inputs left the bounds or whose labels left [0, K):
        # counted inside every training step (a few reductions), checked at the epoch's end.
        self.input_error_tracker = keras.metrics.Sum(name="input_errors")
        # K, the classifier's number of classes (from `check_data`'s probe, or the first
        # train step's): the range labels are checked and clipped into.
        self._num_classes = None
        if getattr(classifier, "built", False):
            self.built = True

    @property
    def train_only_metrics(self) -> list:
        """The loss-term trackers: measured by training steps only, so `evaluate()` and
        validation leave them out of their logs."""
        return list(self.term_trackers)

    def call(self, inputs, training=None):
        step = step_inputs(inputs)
        if step is not None:
            inputs = step["forward"]
        inputs, _ = split_indexed(inputs)
        return self.classifier(inputs, training=training)

    def compile(self, optimizer="rmsprop", loss=None, **kwargs):
        """As `keras.Model.compile`; ``loss`` defaults to cross-entropy on logits.

        A cross-entropy on probabilities (``"sparse_categorical_crossentropy"`` or any
        ``from_logits=False`` cross-entropy) is refused: the classifier outputs logits."""
        if loss is None:
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        _checks.logits_loss(loss)
        super().compile(optimizer=optimizer, loss=loss, **kwargs)

    # -- input checks (any pipeline) ---------------------------------------------------------

    def check_data(self, x: Any, y: Any = None, x_arg: str = "x", y_arg: str = "y") -> Any:
        """Check the data ``fit`` / ``evaluate`` will see, whatever the pipeline.

        NumPy arrays and tensors are checked whole; a `tf.data.Dataset`, `PyDataset`,
        generator or torch ``DataLoader`` by its first batch.  Inputs must lie in the
        model's ``bounds`` (float, finite); labels must be integer class indices below the
        classifier's number of classes; the classifier must return one tensor of logits.
        Returns ``x`` to train on (a peeked generator is handed back replayed).
        """
        if isinstance(x, (dict, list, tuple)) and not is_indexed(x):
            _checks.single_input(x, x_arg)
        bx, by, x = _inputs.peek(x, y, x_arg)
        if isinstance(bx, dict):
            bx = _inputs.to_numpy(split_indexed(bx)[0])
        if isinstance(bx, (dict, tuple, list)):
            _checks.single_input(bx, x_arg)
        if bx is None:
            return x
        bx = _checks.input_values(bx, x_arg, self.bounds)
        _checks.input_shape(self.classifier, bx.shape, "classifier", x_arg)
        probe = bx[:8].astype("float32")
        out = self.classifier(probe, training=False)
        if not isinstance(out, (dict, list, tuple)):
            out = ops.convert_to_numpy(ops.cast(out, "float32"))
        k = _checks.logits_output(out, len(probe), "classifier")
        self._num_classes = k
        if by is not None:
            _checks.labels(by, len(bx), k, y_arg)
        return x

    def fit(self, *args, **kwargs):
        """As `keras.Model.fit`; the training and validation data are checked first
        (`check_data`), through any input pipeline, and a `PyDataset` or generator does
        not slow the host allocator (`keras_dyart.recipe.HostMemory`)."""
        bound = inspect.signature(keras.Model.fit).bind(self, *args, **kwargs)
        a = bound.arguments
        if a.get("x") is not None:
            a["x"] = self.prepare_examples(self.check_data(a.get("x"), a.get("y")))
        val = a.get("validation_data")
        if isinstance(val, (tuple, list)) and len(val) in (2, 3):
            self.check_data(val[0], val[1], "validation_data[0]", "validation_data[1]")
        elif val is not None:
            a["validation_data"] = self.check_data(val, None, "validation_data",
                                                   "validation_data")
        callbacks = list(a.get("callbacks") or [])
        # The check before the user's callbacks: one that calls `evaluate` at an epoch's end
        # resets the error counter, and a checkpoint of a bad epoch should not be written.
        a["callbacks"] = [HostMemory(), InputErrorCheck(), *callbacks]
        return super().fit(*bound.args[1:], **bound.kwargs)

    def evaluate(self, *args, **kwargs):
        """As `keras.Model.evaluate` (clean inputs); the data are checked first."""
        bound = inspect.signature(keras.Model.evaluate).bind(self, *args, **kwargs)
        a = bound.arguments
        callbacks = a.get("callbacks")
        if callbacks is None or isinstance(callbacks, (list, tuple)):
            # (fit's validation passes its own CallbackList, with HostMemory and
            # InputErrorCheck already in it)
            a["callbacks"] = [HostMemory(), *(callbacks or []), InputErrorCheck()]
        cached = a.get("kwargs", {}).get("_use_cached_eval_dataset", False)
        if a.get("x") is not None and not cached:
            a["x"] = self.check_data(a.get("x"), a.get("y"))
        # Keras resets every metric when evaluation begins, the error counter too: bad
        # training rows counted before a callback's mid-epoch `evaluate` are carried over,
        # so that `fit` still fails at the epoch's end.  (`fit`'s own validation checks the
        # training rows before the reset.)
        pending = 0 if cached else error_count(self)
        result = super().evaluate(*bound.args[1:], **bound.kwargs)
        if pending:
            self.input_error_tracker.update_state(float(pending))
        return result

    def test_step(self, *args):
        # The loss-term trackers are only updated by training steps; leave them out of the
        # logs of `evaluate()` and validation rather than report zeros.
        return _without(super().test_step(*args),
                        {m.name for m in self.train_only_metrics} | {"input_errors"})

    def _checked_labels(self, logits_fn, x, y):
        """``(y, errors)``: a batch's labels with those outside [0, K) clipped into it, and
        how many there were (K from `check_data`'s probe, else the classifier's output
        shape, else ``logits_fn`` on one row).  The step trains on the clipped labels, so
        that no attack or loss indexes past the logits (a backend error that names
        nothing); `InputErrorCheck` fails the run at the epoch's end with a clear
        message."""
        k = self._num_classes
        if k is None:
            try:
                shape = self.classifier.output_shape
            except (AttributeError, ValueError):
                shape = None
            k = shape[-1] if isinstance(shape, tuple) and shape else None
            if not isinstance(k, int):
                k = ops.shape(logits_fn(x[:1]))[-1]     # an unbuilt subclassed classifier
            if isinstance(k, int):
                self._num_classes = k
        return _clipped_labels(y, k)

    def _checked_test_labels(self, x, y, y_pred):
        """A test step's labels (`evaluate`, validation) clipped into [0, K) as in training,
        the rows with bad labels or inputs counted by the error counter (`InputErrorCheck`
        fails the evaluation at its end), so that a later bad batch neither crashes the
        loss inside the backend nor gives a silently wrong validation score."""
        y, errors = _clipped_labels(y, ops.shape(y_pred)[-1])
        bare, _ = split_indexed(x)
        if bare is not None and not isinstance(bare, (dict, list, tuple)):
            errors = errors + self.input_errors(bare)
        self.input_error_tracker.update_state(errors)
        return y

    def input_errors(self, x):
        """The number of rows of ``x`` outside the model's bounds or with a NaN."""
        lo, hi = self.bounds
        flat = ops.reshape(ops.cast(x, "float32"), (ops.shape(x)[0], -1))
        bad = ((ops.min(flat, axis=-1) < lo) | (ops.max(flat, axis=-1) > hi)
               | ops.any(ops.isnan(flat), axis=-1))
        return ops.sum(ops.cast(bad, "float32"))

    def compile_from_config(self, config):
        # Keras skips compiling a loaded model whose `compile` is overridden; ours only adds
        # a default loss, so compile it (and build the optimizer so that its saved state,
        # weight averages included, is restored).
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    # -- what a method defines -------------------------------------------------------------

    #: Whether `inner` takes the batch's example indices (``index=``; see
    #: `keras_dyart.methods.warm`): a method that remembers something per example.
    uses_index = False

    def prepare_examples(self, x: Any) -> Any:
        """The training data ``fit`` hands to Keras (after `check_data`): ``x`` itself.  A
        method with ``uses_index`` attaches each row's index here."""
        return x

    def index_errors(self, index):
        """The number of example indices of a batch that the method cannot use (0)."""
        return ops.cast(0.0, "float32")

    def inner(self, logits_fn: Callable, x, y) -> dict | None:
        """Inner examples for one batch (``logits_fn``: the classifier in inference mode,
        float32 logits); ``None`` for none."""
        return None

    def forward_inputs(self, x, inner: dict):
        """The inputs of Keras's forward pass, compiled loss and metrics: ``x``."""
        return x

    def objective(self, x, y, y_pred, sample_weight, inner: dict | None) -> dict:
        """The loss terms of one batch; their sum ``"loss"`` is minimised."""
        return {"loss": self.keras_loss(x, y, y_pred, sample_weight)}

    def keras_loss(self, x, y, y_pred, sample_weight, scale=None):
        """The compiled loss (cross-entropy by default) on ``y_pred``, times ``scale`` if
        given, plus the layers' regularisation (never scaled).

        Call it at most once per step: it adds the layers' regularisation losses.
        """
        loss = super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                    training=True)
        if scale is None:
            return loss
        terms = [ops.sum(ops.cast(t, loss.dtype)) for t in self.losses]
        if not terms:
            return scale * loss
        regularisation = ops.sum(ops.stack(terms))
        return scale * (loss - regularisation) + regularisation

    # -- the train step ---------------------------------------------------------------------

    def train_step(self, *args):
        """One step (see the module docstring): the inner examples, then Keras's own step on
        the batch that carries them to `compute_loss`.  ``args`` are Keras's: ``(data,)``,
        or ``(state, data)`` under JAX."""
        *state, data = args
        x, y, sample_weight = unpack_x_y_sample_weight(data)
        x, index = split_indexed(x)
        if self.uses_index and index is None:
            raise ValueError(
                f"{type(self).__name__} remembers each training example between visits, so "
                "each batch must carry the examples' indices: pass arrays to `fit`, a "
                "`keras_dyart.recipe.ArrayBatches(..., index=True)`, or batches whose "
                "inputs are `keras_dyart.methods.warm.indexed(x)` dicts "
                "({'inputs': x, 'example_index': indices}).")
        hooks = dyart_backend.current()
        with hooks.step_scope():
            (inner, y, label_errors), state = hooks.inference(
                self, self._inner_examples, tuple(state), x, y, index)
            errors = self.input_errors(x) + label_errors
            if index is not None:
                errors = errors + self.index_errors(index)
            step = {"forward": self.forward_inputs(x, inner), "x": x, "inner": inner,
                    "input_errors": errors}
            logs = super().train_step(*state, pack_x_y_sample_weight(step, y, sample_weight))
        return _without(logs, {"input_errors"})

    def _inner_examples(self, logits_fn, x, y, index=None):
        """``(inner, y, label_errors)``: the inner examples, and the labels as
        `_checked_labels` leaves them."""
        def logits32(z):
            return ops.cast(logits_fn(z), "float32")

        x = ops.cast(x, "float32")
        y, label_errors = self._checked_labels(logits32, x, y)
        extra = {"index": index} if self.uses_index else {}
        inner = self.inner(logits32, x, _class_indices(y), **extra)
        if inner is None:
            return {}, y, label_errors
        return {k: ops.stop_gradient(v) for k, v in inner.items()}, y, label_errors

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """As Keras's, plus the method's terms in a train step: ``x`` is then the step's
        dict (`step_inputs`) and the loss is ``objective(...)["loss"]``."""
        step = step_inputs(x)
        if step is None:
            if y is not None and y_pred is not None and not isinstance(y_pred, (dict, list,
                                                                                  tuple)):
                y = self._checked_test_labels(x, y, y_pred)
            return super().compute_loss(x=x, y=y, y_pred=y_pred,
                                        sample_weight=sample_weight, training=training)
        self.input_error_tracker.update_state(step["input_errors"])
        terms = self.objective(step["x"], _class_indices(y), ops.cast(y_pred, "float32"),
                               sample_weight, step["inner"] or None)
        loss = terms.pop("loss")
        for tracker in self.term_trackers:
            tracker.update_state(terms[tracker.name])
        return loss

    # -- input bounds and precision -------------------------------------------------------

    @property
    def input_scale(self) -> float:
        """Width of the input box, ``upper − lower``: lengths in the unit box times this
        are lengths in input units."""
        return self.bounds[1] - self.bounds[0]

    def to_unit(self, x):
        """Inputs in ``bounds`` → the unit box (the identity for the default (0, 1))."""
        return geometry.to_unit(x, self.bounds)

    def from_unit(self, u):
        """Points of the unit box → input units (the identity for the default (0, 1))."""
        return geometry.from_unit(u, self.bounds)

    def train_logits(self, z):
        """The classifier's training-mode logits of ``z``, in float32."""
        return ops.cast(self(z, training=True), "float32")

    # -- serialisation ----------------------------------------------------------------------

    def export(self, filepath, format="tf_saved_model", **kwargs):
        """As `keras.Model.export`: exports the inference function, which is the
        classifier's (the robust model adds training only)."""
        return self.classifier.export(filepath, format=format, **kwargs)

    # Keras does not save a SeedGenerator's state; keep it with the weights so that a run
    # restored by `BackupAndRestore` draws the same random starts as an uninterrupted one.
    _SEED_KEY = "seed_generator_state"

    def save_own_variables(self, store):
        super().save_own_variables(store)
        store[self._SEED_KEY] = ops.convert_to_numpy(self.seed_generator.state)

    def load_own_variables(self, store):
        keys = list(store.keys())
        if self._SEED_KEY in keys:
            self.seed_generator.state.assign(store[self._SEED_KEY])
        super().load_own_variables({k: store[k] for k in keys if k != self._SEED_KEY})

    def get_config(self):
        config = super().get_config()
        config["classifier"] = keras.saving.serialize_keras_object(self.classifier)
        config["seed"] = self.seed
        config["bounds"] = list(self.bounds)
        config.update({name: getattr(self, name) for name in self.hyper_parameters})
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["classifier"] = keras.saving.deserialize_keras_object(config["classifier"])
        return cls(**config)


def step_inputs(x: Any) -> dict | None:
    """The dict a train step hands to Keras's step (keys `STEP_KEYS`), or ``None`` where
    ``x`` is a plain batch."""
    if isinstance(x, dict) and set(x) == set(STEP_KEYS):
        return x
    return None


def _clipped_labels(y, k):
    """``(y, errors)``: labels that are not class indices (outside [0, ``k``), or float labels
    that are not whole numbers or NaN, which the cast would truncate) clipped into it
    (dtype and shape kept), and how many there were (float32)."""
    labels = ops.cast(y, "int32")
    bad = (labels < 0) | (labels >= k)
    dtype = keras.backend.standardize_dtype(y.dtype)
    if "float" in dtype:
        bad = bad | (ops.cast(labels, dtype) != y)
    safe = ops.cast(ops.clip(labels, 0, k - 1), dtype)
    errors = ops.sum(ops.cast(ops.reshape(bad, (-1,)), "float32"))
    return ops.where(bad, safe, y), errors


def _class_indices(y):
    """Labels as int32 of shape (N,): Keras takes (N, 1) too."""
    return ops.reshape(ops.cast(y, "int32"), (-1,))


def _without(out, names):
    """A train / test step's logs without ``names`` (JAX steps return ``(logs, state)``)."""
    if isinstance(out, tuple):
        logs, state = out
        return {k: v for k, v in logs.items() if k not in names}, state
    return {k: v for k, v in out.items() if k not in names}
