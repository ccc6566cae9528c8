"""`DyARTModel`: a `keras.Model` that trains any logits classifier with DyART."""

from __future__ import annotations

import warnings

import keras
import numpy as np
from keras import ops

from keras_dyart import _checks, boundary, geometry
from keras_dyart import backend as dyart_backend
from keras_dyart import inputs as _inputs
from keras_dyart import pipeline as _pipeline  # a module: pipeline imports methods.warm
from keras_dyart.losses import robust_term
from keras_dyart.methods.base import RobustModel
from keras_dyart.methods.terms import usable_mean
from keras_dyart.methods.warm import (
    INDEX_KEY,
    INPUTS_KEY,
    ExampleCache,
    check_cache_dtype,
    indexed,
    is_indexed,
)
from keras_dyart.recipe.data import ArrayBatches
from keras_dyart.weights import dyart_weights


@keras.saving.register_keras_serializable(package="keras_dyart")
class DyARTModel(RobustModel):
    """Dynamics-Aware Robust Training (Xu et al., ICLR 2023) around a logits classifier.

    Each training step finds, for every correctly classified point of the batch, the closest
    point x̂ on its soft decision boundary φ = 0 (scalar FAB, in inference mode), keeps the
    points that pass the quality filter, weights them by w = h'(R)/‖∇_x φ(x̂)‖_q and minimises

        CE(f(x), y) + lam · (1/N) · Σ_i w_i · (−φ(x̂_i))

    in training mode.  `compile()`, `fit()`, `evaluate()`, `predict()`, callbacks and
    `.keras` saving work as for any Keras model; `evaluate()` reports plain cross-entropy.

    Args:
        classifier: any Keras model or layer mapping inputs to logits ``(N, K)``.
        norm: threat model of the margins, ``"linf"`` (default) or ``"l2"``.
        beta: temperature of the soft margin (default 5).
        lam: weight λ of the robust term (default 1000, the BatchNorm recipe; 400 for
            GroupNorm).
        alpha: decay α of h'(r) = exp(−α·r) (default 3).
        r0: margins at or beyond ``r0`` get no robust term (default 16/255).
        n_iter: FAB iterations per step (default 20).
        eps_fab: radius scale of FAB's random start (default 8/255); unused without one.
        random_start: start FAB at a random point (as the reference code does) instead of at
            x (default False, which finds margins more accurately; see the docs).
        restarts: FAB runs per step (default 1).
        refine: move x̂ onto φ = 0 by a few forward-only secant steps (default True).
        refine_steps: number of those steps (default 4).
        use_filter: apply the L∞ quality ("KKT") filter (default True).
        overshoot: FAB's extrapolation η (default 1.05).
        alpha_max: FAB's largest bias towards the original point, α_max (default 0.1).
        step_back: FAB's step back towards x after a success, β (default 0.9).
        seed: seed of the random starts.
        warm_start: ``None`` (default: every search starts cold, as in the paper) or a
            number of FAB iterations k: the model remembers each training example's last
            boundary point (or, where its search found none, where that search stopped), and
            a batch whose examples have all been visited before (with the same inputs) is
            searched with k iterations starting there (0.2 % further from x; a point
            misclassified at its last visit starts at x); a batch with a new or changed
            example gets the cold ``n_iter`` search.
            The examples' indices travel with the batches: ``fit`` on arrays attaches
            them; a pipeline yields `keras_dyart.methods.warm.indexed` inputs or is a
            `keras_dyart.datasets.pipeline` or `keras_dyart.recipe.ArrayBatches` made
            with ``index=True``.  Needs
            ``random_start=False`` and ``restarts=1``.
        n_examples: number of training examples the memory holds (indices ``0 ..
            n_examples − 1``); ``fit`` on arrays, a ``pipeline`` or an ``ArrayBatches``
            sets it from the data.  Needed up front for other pipelines.
        cache_dtype: storage of the remembered points, ``"float16"`` (default; 2 bytes per
            input coordinate and example) or ``"int8"`` (1 byte).  50,000 CIFAR-10 images:
            307 MB or 154 MB (`keras_dyart.methods.warm.cache_bytes`), saved with the
            model.
        cache_input_shape: the shape of one input, for a memory made before the
            classifier is built (saved models record it; otherwise not needed).
        bounds: ``(lower, upper)`` of the inputs (default ``(0, 1)``); ``r0``, ``alpha``
            (per unit of length), ``eps_fab`` and the logged margins are in these units.
            The weights divide by the gradient norm in the unit box, so with lengths
            converted (``r0·s``, ``alpha/s``, ``eps_fab·s`` for ``s = upper − lower``) the
            same ``lam`` trains the same model whatever the bounds.

    The search, margins and weights run in float32 whatever the dtype policy.

    Each step logs ``loss``, ``ce_loss``, ``robust_loss`` (the λ-weighted term, so
    ``loss = ce_loss + robust_loss`` plus any regularisation), ``boundary_fraction`` (share
    of the batch with a usable boundary point) and ``mean_margin`` (their mean margin).
    """

    hyper_parameters = ("norm", "beta", "lam", "alpha", "r0", "n_iter", "eps_fab",
                        "random_start", "restarts", "refine", "refine_steps", "use_filter",
                        "overshoot", "alpha_max", "step_back", "warm_start", "n_examples",
                        "cache_dtype")
    loss_terms = ("ce_loss", "robust_loss", "boundary_fraction")

    def __init__(self, classifier: keras.layers.Layer, norm: str = "linf", beta: float = 5.0,
                 lam: float = 1000.0, alpha: float = 3.0, r0: float = 16 / 255,
                 n_iter: int = 20, eps_fab: float | str = 8 / 255, random_start: bool = False,
                 restarts: int = 1, refine: bool = True, refine_steps: int = 4,
                 use_filter: bool = True, overshoot: float = 1.05, alpha_max: float = 0.1,
                 step_back: float = 0.9, seed: int = 0, warm_start: int | None = None,
                 n_examples: int | None = None, cache_dtype: str = "float16",
                 cache_input_shape=None, **kwargs):
        super().__init__(classifier, seed=seed, **kwargs)
        self.norm = _checks.norm_name(norm)
        self.beta = _checks.positive(beta, "beta")
        self.lam = _checks.positive(lam, "lam", allow_zero=True)
        self.alpha = _checks.positive(alpha, "alpha", allow_zero=True)
        self.r0 = _checks.cap_in_box(_checks.positive(r0, "r0"), self.norm, self.bounds, "r0")
        self.n_iter = _checks.positive(n_iter, "n_iter", integer=True)
        self.eps_fab = _checks.cap_in_box(_checks.parse_eps(eps_fab, "eps_fab"), self.norm,
                                          self.bounds, "eps_fab")
        self.random_start = bool(random_start)
        self.restarts = _checks.positive(restarts, "restarts", integer=True)
        self.refine = bool(refine)
        self.refine_steps = _checks.positive(refine_steps, "refine_steps", integer=True,
                                             allow_zero=True)
        self.use_filter = bool(use_filter)
        self.overshoot = _checks.positive(overshoot, "overshoot")
        self.alpha_max = _checks.in_range(alpha_max, "alpha_max", 0.0, 1.0)
        self.step_back = _checks.in_range(step_back, "step_back", 0.0, 1.0)
        self.margin_tracker = keras.metrics.Mean(name="mean_margin")
        self.warm_start = (None if warm_start is None else
                           _checks.positive(warm_start, "warm_start", integer=True,
                                            allow_zero=True))
        self.n_examples = (None if n_examples is None else
                           _checks.positive(n_examples, "n_examples", integer=True))
        self.cache_dtype = check_cache_dtype(cache_dtype)
        if self.warm_start is not None and (self.random_start or self.restarts > 1):
            # (the searches run inside a branch that cannot advance the seed generator)
            raise ValueError("`warm_start` replaces the random start of the search: use it "
                             "with `random_start=False` and `restarts=1`.")
        self.cache = None
        if self.warm_start is not None and self.n_examples is not None:
            shape = cache_input_shape or _classifier_input_shape(classifier)
            if shape is not None:
                self._make_cache(self.n_examples, shape)

    # -- the memory of boundary points (``warm_start``) ------------------------------------

    @property
    def uses_index(self):
        return self.warm_start is not None

    def _make_cache(self, n_examples, input_shape):
        self.cache = ExampleCache(self, n_examples, input_shape, self.cache_dtype)
        self.n_examples = self.cache.n_examples
        # a step traced before holds the old list of variables
        self.train_function = None

    def prepare_examples(self, x):
        """With ``warm_start``: the memory sized from the training data (arrays or an
        ``pipeline`` or ``ArrayBatches``), and arrays given their row indices."""
        if self.warm_start is None:
            return x
        if isinstance(x, (ArrayBatches, _pipeline.Batches)):
            if isinstance(x, ArrayBatches):
                n, kind = len(x.x), "`ArrayBatches`"
            else:
                n, kind = x.n_examples, "`keras_dyart.datasets.pipeline`"
            shape = x.x.shape[1:]
            if not x.index:
                raise ValueError("`DyARTModel(warm_start=...)` needs the examples' indices: "
                                 f"make the {kind} with `index=True`.")
            if getattr(x, "augment", False):
                warnings.warn(
                    "`DyARTModel(warm_start=...)` on an augmenting pipeline: every visit of "
                    "an example is another image, so every search starts cold and the "
                    "memory is never used; make the pipeline with `augment=False` for warm "
                    "starts.", stacklevel=3)
        elif _inputs.is_array(x):
            n, shape = len(x), tuple(x.shape[1:])
            x = indexed(x)
        elif is_indexed(x) and _inputs.is_array(x[INPUTS_KEY]):
            # arrays the caller indexed: the memory holds up to the largest index
            n = max(int(np.max(_inputs.to_numpy(x[INDEX_KEY]))) + 1, self.n_examples or 0)
            shape = tuple(x[INPUTS_KEY].shape[1:])
        else:
            n, shape = self.n_examples, None
            if n is None:
                raise ValueError(
                    "`DyARTModel(warm_start=...)` on a pipeline needs `n_examples` (the "
                    "number of training examples, whose indices the batches carry).")
            first, _, x = _inputs.peek(x)
            if not is_indexed(first):
                raise ValueError(
                    "`DyARTModel(warm_start=...)` needs each batch to carry its examples' "
                    "indices: the pipeline's inputs must be "
                    "`keras_dyart.methods.warm.indexed(x)` dicts ({'inputs': x, "
                    "'example_index': indices}).")
        if self.cache is None:
            if shape is None:
                shape = _classifier_input_shape(self.classifier)
            if shape is None:
                raise ValueError("`DyARTModel(warm_start=...)` could not tell the shape of "
                                 "one input: build the classifier first.")
            self._make_cache(n, shape)
        elif n is not None and n > self.cache.n_examples:
            raise ValueError(
                f"The model remembers {self.cache.n_examples} training examples "
                f"(`n_examples`) but `fit` got {n}: make a new model for other data.")
        return x

    def get_config(self):
        config = super().get_config()
        if self.cache is not None:
            config["cache_input_shape"] = list(self.cache.input_shape)
        return config

    def index_errors(self, index):
        if self.cache is None:
            return ops.cast(0.0, "float32")
        return ops.sum(ops.cast(~self.cache.in_range(index), "float32"))

    @property
    def train_only_metrics(self):
        return [*self.term_trackers, self.margin_tracker]

    # -- the boundary search --------------------------------------------------------------

    def search(self, logits_fn, x, y, index=None) -> dict:
        """Closest boundary points, quality filter and DyART weights for one batch.

        ``logits_fn`` evaluates the classifier in inference mode; ``index`` (with
        ``warm_start``) names the batch's examples.  Returns a dict with ``x_hat``,
        ``usable`` (bool), ``margin``, ``weights``, ``phi_hat`` and ``grad_hat``.
        """
        def run(n_iter, start=None):
            found = boundary.search(
                logits_fn, x, y, beta=self.beta, norm=self.norm, n_iter=n_iter,
                overshoot=self.overshoot, alpha_max=self.alpha_max,
                step_back=self.step_back, random_start=self.random_start,
                eps_fab=self.eps_fab, restarts=self.restarts, refine=self.refine,
                refine_steps=self.refine_steps, use_filter=self.use_filter,
                seed=self.seed_generator, bounds=self.bounds, start=start)
            return tuple(found)

        if index is not None and self.cache is None:
            raise ValueError(
                "`DyARTModel(warm_start=...)` has no memory yet: pass `n_examples` (and a "
                "built classifier), or train with `fit`, which sizes it from the data.")
        if index is not None and dyart_backend.num_replicas() > 1:
            raise ValueError(
                "`DyARTModel(warm_start=...)` is not supported under a `tf.distribute` "
                "strategy with several replicas (each would write its own copy of the "
                "memory); train with `warm_start=None` there.")
        if index is None:
            found = boundary.BoundarySearch(*run(self.n_iter))
        else:
            u = self.to_unit(x)
            start, visited = self.cache.read(u, index)
            start = self.from_unit(start)
            found = boundary.BoundarySearch(*ops.cond(
                ops.all(visited), lambda: run(self.warm_start, start),
                lambda: run(self.n_iter)))
            # remember where the search ended: the boundary point where one was found
            # (usable or not), else FAB's last iterate (the next visit continues from it);
            # nothing for misclassified points (φ(x) ≤ 0: no search)
            ended = ops.where(geometry.rows(found.found, len(x.shape)), found.x_hat,
                              found.x_last)
            self.cache.write(u, self.to_unit(ended), found.phi_x > 0, index)
        # w = h'(R)/‖∇φ‖_q with the gradient in the unit box: λ and the weights do not depend
        # on the units of the inputs (R, r0 and α are in input units, so h'(R) does not).
        weights = dyart_weights(found.margin, found.unit_grad_hat, found.usable, self.norm,
                                self.alpha, self.r0)
        return {"x_hat": found.x_hat, "usable": found.usable, "margin": found.margin,
                "weights": ops.stop_gradient(weights), "phi_hat": found.phi_hat,
                "grad_hat": found.grad_hat}

    # -- the objective (see `keras_dyart.methods.base` for the train step) -----------------

    def inner(self, logits_fn, x, y, index=None):
        return self.search(logits_fn, x, y, index)

    def objective(self, x, y, y_pred, sample_weight, inner):
        loss = self.keras_loss(x, y, y_pred, sample_weight)
        weights = inner["weights"]
        if sample_weight is not None:
            weights = weights * ops.cast(ops.reshape(sample_weight, (-1,)), weights.dtype)
        logits_hat = self.train_logits(inner["x_hat"])
        robust = self.lam * robust_term(logits_hat, y, weights, self.beta)
        usable = ops.cast(inner["usable"], "float32")
        self.margin_tracker.update_state(usable_mean(inner["margin"], usable),
                                         sample_weight=ops.sum(usable))
        # Keras divides its loss by the number of replicas under tf.distribute (each
        # replica's gradient is summed); the robust term must be too, and the trackers log
        # per-batch (unscaled) values.
        replicas = dyart_backend.num_replicas()
        if replicas > 1:
            robust_share = ops.multiply(robust, ops.cast(1.0 / replicas, robust.dtype))
            loss_per_batch = ops.multiply(loss, ops.cast(replicas, loss.dtype))
        else:
            robust_share, loss_per_batch = robust, loss
        return {"loss": loss + robust_share, "ce_loss": loss_per_batch,
                "robust_loss": robust, "boundary_fraction": ops.mean(usable)}


def _classifier_input_shape(classifier):
    """The shape of one input of a built classifier (without the batch), or None."""
    try:
        shape = classifier.input_shape
    except (AttributeError, ValueError):
        return None
    if not isinstance(shape, tuple) or len(shape) < 2 or any(s is None for s in shape[1:]):
        return None
    return tuple(shape[1:])
