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
"""

import keras
from keras import ops
from keras.utils import pack_x_y_sample_weight, unpack_x_y_sample_weight

from keras_dyart import backend as dyart_backend


class RobustModel(keras.Model):
    """Base class of the training methods: a classifier plus a robust ``train_step``.

    Args:
        classifier: any Keras model or layer mapping inputs in [0, 1] to logits ``(N, K)``.
        seed: seed of the random starts of the inner attack.

    ``compile()`` defaults ``loss`` to cross-entropy on logits; ``evaluate()`` and
    ``predict()`` use the classifier on clean inputs.
    """

    hyper_parameters = ()
    loss_terms = ()
    adversarial_inputs = None

    def __init__(self, classifier, seed=0, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(classifier, keras.layers.Layer):
            raise TypeError(
                "`classifier` must be a Keras model or layer that outputs logits; "
                f"got {type(classifier).__name__}.")
        self.classifier = classifier
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"`seed` must be an integer; got {seed!r}.")
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.term_trackers = [keras.metrics.Mean(name=name) for name in self.loss_terms]
        self._inner = None
        if getattr(classifier, "built", False):
            self.built = True

    def call(self, inputs, training=None):
        return self.classifier(inputs, training=training)

    def compile(self, optimizer="rmsprop", loss=None, **kwargs):
        """As `keras.Model.compile`; ``loss`` defaults to cross-entropy on logits."""
        if loss is None:
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        super().compile(optimizer=optimizer, loss=loss, **kwargs)

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

    def _prepare_robust_batch(self, logits_fn, x, y):
        inner = self.inner(logits_fn, ops.convert_to_tensor(x), ops.cast(y, "int32"))
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
        return dyart_backend.current().robust_train_step(self, self._keras_train_step, *args)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        inner, self._inner = self._inner, None
        if not training or inner is None:
            return super().compute_loss(x=x, y=y, y_pred=y_pred,
                                        sample_weight=sample_weight, training=training)
        terms = self.objective(x, ops.cast(y, "int32"), y_pred, sample_weight, inner)
        loss = terms.pop("loss")
        for tracker in self.term_trackers:
            tracker.update_state(terms[tracker.name])
        return loss

    # -- serialisation ----------------------------------------------------------------------

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
        config.update({name: getattr(self, name) for name in self.hyper_parameters})
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["classifier"] = keras.saving.deserialize_keras_object(config["classifier"])
        return cls(**config)
