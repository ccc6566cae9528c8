"""`DyARTModel`: a `keras.Model` that trains any logits classifier with DyART."""

from __future__ import annotations

import keras
from keras import ops

from keras_dyart import _checks, boundary
from keras_dyart import backend as dyart_backend
from keras_dyart.losses import robust_term
from keras_dyart.methods.base import RobustModel
from keras_dyart.methods.terms import usable_mean
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
                        "overshoot", "alpha_max", "step_back")
    loss_terms = ("ce_loss", "robust_loss", "boundary_fraction")

    def __init__(self, classifier: keras.layers.Layer, norm: str = "linf", beta: float = 5.0,
                 lam: float = 1000.0, alpha: float = 3.0, r0: float = 16 / 255,
                 n_iter: int = 20, eps_fab: float | str = 8 / 255, random_start: bool = False,
                 restarts: int = 1, refine: bool = True, refine_steps: int = 4,
                 use_filter: bool = True, overshoot: float = 1.05, alpha_max: float = 0.1,
                 step_back: float = 0.9, seed: int = 0, **kwargs):
        super().__init__(classifier, seed=seed, **kwargs)
        self.norm = _checks.norm_name(norm)
        self.beta = _checks.positive(beta, "beta")
        self.lam = _checks.positive(lam, "lam", allow_zero=True)
        self.alpha = _checks.positive(alpha, "alpha", allow_zero=True)
        self.r0 = _checks.positive(r0, "r0")
        self.n_iter = _checks.positive(n_iter, "n_iter", integer=True)
        self.eps_fab = _checks.parse_eps(eps_fab, "eps_fab")
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

    @property
    def train_only_metrics(self):
        return [*self.term_trackers, self.margin_tracker]

    # -- the boundary search --------------------------------------------------------------

    def search(self, logits_fn, x, y) -> dict:
        """Closest boundary points, quality filter and DyART weights for one batch.

        ``logits_fn`` evaluates the classifier in inference mode.  Returns a dict with
        ``x_hat``, ``usable`` (bool), ``margin``, ``weights``, ``phi_hat`` and ``grad_hat``.
        """
        found = boundary.search(
            logits_fn, x, y, beta=self.beta, norm=self.norm, n_iter=self.n_iter,
            overshoot=self.overshoot, alpha_max=self.alpha_max, step_back=self.step_back,
            random_start=self.random_start, eps_fab=self.eps_fab, restarts=self.restarts,
            refine=self.refine, refine_steps=self.refine_steps, use_filter=self.use_filter,
            seed=self.seed_generator, bounds=self.bounds)
        # w = h'(R)/‖∇φ‖_q with the gradient in the unit box: λ and the weights do not depend
        # on the units of the inputs (R, r0 and α are in input units, so h'(R) does not).
        weights = dyart_weights(found.margin, found.unit_grad_hat, found.usable, self.norm,
                                self.alpha, self.r0)
        return {"x_hat": found.x_hat, "usable": found.usable, "margin": found.margin,
                "weights": ops.stop_gradient(weights), "phi_hat": found.phi_hat,
                "grad_hat": found.grad_hat}

    # -- the objective (see `keras_dyart.methods.base` for the train step) -----------------

    def inner(self, logits_fn, x, y):
        return self.search(logits_fn, x, y)

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
