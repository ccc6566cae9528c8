"""`RobustModel`: the one pattern every training method here follows.

A robust model wraps a logits classifier.  Its ``train_step`` first prepares the method's
*inner examples* (a PGD attack, a boundary search, ...) with the step's own state and the
classifier in inference mode, through the backend hook ``robust_train_step`` that
`keras_dyart.DyARTModel` uses too; then Keras's own backend ``train_step`` differentiates
``compute_loss``, which each method extends with its loss terms (the inner examples are
constants).  So one ``train_step`` serves TensorFlow, JAX and PyTorch, and ``fit``,
``evaluate``, callbacks and ``.keras`` saving work as for any Keras model.

A method subclass sets

- ``hyper_parameters``: the names of its constructor arguments (saved by ``get_config``);
- ``loss_terms``: the names of the terms it logs besides ``loss``;
- ``inner(logits_fn, x, y)``: a dict of inner examples (or ``None`` for none);
- ``objective(x, y, y_pred, sample_weight, inner)``: a dict of loss terms whose sum is the
  loss; ``y_pred`` are the training-mode logits Keras computed on the step's inputs;
- optionally ``adversarial_inputs = "x_adv"``: Keras's own forward pass (and the compiled
  loss and metrics) then runs on that inner example instead of the clean input.

Input bounds: every robust model takes ``bounds=(lower, upper)`` (default ``(0, 1)``), the box
its inputs live in (foolbox's convention).  The inner search and attacks keep their points in
that box, and every length (eps, step sizes, r0, margins) is in those units.  A method works
in the unit box through `RobustModel.to_unit` / `from_unit`, so the maths below it is written
for [0, 1] only.

Precision: the inner examples, margins and weights are computed in float32 whatever the
global dtype policy (``mixed_float16`` / ``mixed_bfloat16`` keep the network's own compute in
16 bits): ``logits_fn`` and `RobustModel.train_logits` return float32 logits.
"""

import inspect

import keras
from keras import ops
from keras.utils import pack_x_y_sample_weight, unpack_x_y_sample_weight

from keras_dyart import _checks
from keras_dyart import inputs as _inputs
from keras_dyart import backend as dyart_backend


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
    adversarial_inputs = None

    def __init__(self, classifier, seed=0, bounds=(0.0, 1.0), **kwargs):
        super().__init__(**kwargs)
        if not isinstance(classifier, keras.layers.Layer):
            raise TypeError(
                "`classifier` must be a Keras model or layer that outputs logits; "
                f"got {type(classifier).__name__}.")
        _checks_classifier_structure(classifier)
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
        self._inner = None
        self._batch_input_errors = None
        if getattr(classifier, "built", False):
            self.built = True

    @property
    def train_only_metrics(self):
        """The loss-term trackers: measured by training steps only, so `evaluate()` and
        validation leave them out of their logs."""
        return list(self.term_trackers)

    def call(self, inputs, training=None):
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

    def check_data(self, x, y=None, x_arg="x", y_arg="y"):
        """Check the data ``fit`` / ``evaluate`` will see, whatever the pipeline.

        NumPy arrays and tensors are checked whole; a `tf.data.Dataset`, `PyDataset`,
        generator or torch ``DataLoader`` by its first batch.  Inputs must lie in the
        model's ``bounds`` (float, finite); labels must be integer class indices below the
        classifier's number of classes; the classifier must return one tensor of logits.
        Returns ``x`` to train on (a peeked generator is handed back replayed).
        """
        bx, by, x = _inputs.peek(x, y)
        if bx is None or isinstance(bx, (dict, tuple, list)):
            return x
        bx = _checks.input_values(bx, x_arg, self.bounds)
        probe = bx[:8].astype("float32")
        out = self.classifier(probe, training=False)
        if not isinstance(out, (dict, list, tuple)):
            out = ops.convert_to_numpy(ops.cast(out, "float32"))
        k = _checks.logits_output(out, len(probe), "classifier")
        if by is not None:
            _checks.labels(by, len(bx), k, y_arg)
        return x

    def fit(self, *args, **kwargs):
        """As `keras.Model.fit`; the training and validation data are checked first
        (`check_data`), through any input pipeline."""
        bound = inspect.signature(keras.Model.fit).bind(self, *args, **kwargs)
        a = bound.arguments
        if a.get("x") is not None:
            a["x"] = self.check_data(a.get("x"), a.get("y"))
        val = a.get("validation_data")
        if isinstance(val, (tuple, list)) and len(val) in (2, 3):
            self.check_data(val[0], val[1], "validation_data[0]", "validation_data[1]")
        elif val is not None:
            a["validation_data"] = self.check_data(val, None, "validation_data",
                                                   "validation_data")
        callbacks = list(a.get("callbacks") or [])
        a["callbacks"] = [*callbacks, _InputErrorCheck()]
        return super().fit(*bound.args[1:], **bound.kwargs)

    def evaluate(self, *args, **kwargs):
        """As `keras.Model.evaluate` (clean inputs); the data are checked first."""
        bound = inspect.signature(keras.Model.evaluate).bind(self, *args, **kwargs)
        a = bound.arguments
        cached = a.get("kwargs", {}).get("_use_cached_eval_dataset", False)
        if a.get("x") is not None and not cached:
            a["x"] = self.check_data(a.get("x"), a.get("y"))
        return super().evaluate(*bound.args[1:], **bound.kwargs)

    def test_step(self, *args):
        # The loss-term trackers are only updated by training steps; leave them out of the
        # logs of `evaluate()` and validation rather than report zeros.
        return _without(super().test_step(*args),
                        {m.name for m in self.train_only_metrics} | {"input_errors"})

    def _count_input_errors(self, x, y, num_classes, input_errors=None):
        """Add this batch's bad rows (inputs outside the bounds or NaN, labels outside
        [0, K)) to `input_error_tracker`."""
        if input_errors is None:
            input_errors = self._input_errors(x)
        y = ops.reshape(ops.cast(y, "int32"), (-1,))
        label_errors = ops.sum(ops.cast((y < 0) | (y >= num_classes), "float32"))
        self.input_error_tracker.update_state(input_errors + label_errors)

    def _input_errors(self, x):
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

    def inner(self, logits_fn, x, y):
        """Inner examples for one batch (``logits_fn``: the classifier in inference mode)."""
        return None

    def objective(self, x, y, y_pred, sample_weight, inner):
        """The loss terms of one batch; their sum is minimised."""
        return {"loss": self.keras_loss(x, y, y_pred, sample_weight)}

    # -- the train step ---------------------------------------------------------------------

    def keras_loss(self, x, y, y_pred, sample_weight):
        """The compiled loss (cross-entropy by default) on ``y_pred`` plus regularisation.

        Call it at most once per step: it adds the layers' regularisation losses.
        """
        return super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                    training=True)

    # -- input bounds and precision -------------------------------------------------------

    @property
    def input_scale(self):
        """Width of the input box, ``upper − lower``: lengths in the unit box times this
        are lengths in input units."""
        return self.bounds[1] - self.bounds[0]

    def to_unit(self, x):
        """Inputs in ``bounds`` → the unit box (the identity for the default (0, 1))."""
        lo, hi = self.bounds
        if (lo, hi) == (0.0, 1.0):
            return x
        return (x - lo) / (hi - lo)

    def from_unit(self, u):
        """Points of the unit box → input units (the identity for the default (0, 1))."""
        lo, hi = self.bounds
        if (lo, hi) == (0.0, 1.0):
            return u
        return lo + (hi - lo) * u

    def train_logits(self, z):
        """The classifier's training-mode logits of ``z``, in float32."""
        return ops.cast(self(z, training=True), "float32")

    def _prepare_robust_batch(self, logits_fn, x, y):
        def logits32(z):
            return ops.cast(logits_fn(z), "float32")

        self._batch_input_errors = self._input_errors(x)
        inner = self.inner(logits32, ops.cast(x, "float32"), _class_indices(y))
        if inner is not None:
            inner = {k: ops.stop_gradient(v) for k, v in inner.items()}
        self._inner = inner

    def _keras_train_step(self, *args):
        if self.adversarial_inputs is not None:
            *state, data = args
            _, y, sample_weight = unpack_x_y_sample_weight(data)
            data = pack_x_y_sample_weight(self._inner[self.adversarial_inputs], y,
                                          sample_weight)
            args = (*state, data)
        return super().train_step(*args)

    def train_step(self, *args):
        # Prepare the inner examples with the step's own state, then let Keras's backend
        # trainer differentiate `compute_loss`, which adds the method's terms.
        return _without(
            dyart_backend.current().robust_train_step(self, self._keras_train_step, *args),
            {"input_errors"})

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        inner, self._inner = self._inner, None
        input_errors, self._batch_input_errors = self._batch_input_errors, None
        if training and y is not None and y_pred is not None:
            # (the clean inputs: the inner search's own errors, or x where there is none)
            self._count_input_errors(x, y, ops.shape(y_pred)[-1], input_errors)
        if not training or inner is None:
            return super().compute_loss(x=x, y=y, y_pred=y_pred,
                                        sample_weight=sample_weight, training=training)
        terms = self.objective(x, _class_indices(y), ops.cast(y_pred, "float32"),
                               sample_weight, inner)
        loss = terms.pop("loss")
        for tracker in self.term_trackers:
            tracker.update_state(terms[tracker.name])
        return loss

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


def _checks_classifier_structure(classifier):
    """Refuse, at construction, classifiers whose graph shows they cannot give logits: several
    outputs, or a final softmax / sigmoid."""
    try:
        outputs = classifier.outputs
    except (AttributeError, ValueError):
        outputs = None
    if outputs is not None and len(outputs) > 1:
        raise ValueError(
            f"`classifier` must have one output (the class logits); it has {len(outputs)}. "
            "Wrap it in a model that returns only the logits.")
    layers = getattr(classifier, "layers", None)
    last = layers[-1] if layers else classifier
    activation = getattr(last, "activation", None)
    name = getattr(activation, "__name__", "")
    if isinstance(last, keras.layers.Softmax) or name in ("softmax", "sigmoid"):
        raise ValueError(
            f"`classifier` ends in a {name or 'softmax'} ({last.name!r}): it must output "
            "logits. Remove the final activation (e.g. Dense(K) instead of Dense(K, "
            "activation='softmax')); margins and attacks on probabilities are not those the "
            "methods assume. Apply the softmax at prediction time if you need probabilities.")


def _class_indices(y):
    """Labels as int32 of shape (N,): Keras takes (N, 1) too."""
    return ops.reshape(ops.cast(y, "int32"), (-1,))


def _without(out, names):
    """A train / test step's logs without ``names`` (JAX steps return ``(logs, state)``)."""
    if isinstance(out, tuple):
        logs, state = out
        return {k: v for k, v in logs.items() if k not in names}, state
    return {k: v for k, v in out.items() if k not in names}


class _InputErrorCheck(keras.callbacks.Callback):
    """Fails `fit` at the end of an epoch in which some batch had inputs outside the model's
    bounds or labels outside [0, K) (the first batch is checked before training starts;
    this catches the later ones, which a compiled step cannot refuse by itself)."""

    def on_epoch_end(self, epoch, logs=None):
        count = int(round(float(ops.convert_to_numpy(
            self.model.input_error_tracker.result()))))
        if count:
            lo, hi = self.model.bounds
            raise ValueError(
                f"`x` / `y`: {count} training rows of epoch {epoch + 1} had inputs outside "
                f"the model's input bounds [{lo:g}, {hi:g}] (or NaN) or labels outside the "
                f"classifier's classes. The first batch passed the checks; a later batch of "
                f"the input pipeline did not. Fix the pipeline (or declare `bounds`).")
