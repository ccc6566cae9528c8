"""MMA: max-margin adversarial training (Ding et al., ICLR 2020)."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_dyart import _checks, boundary
from keras_dyart.methods.base import RobustModel
from keras_dyart.methods.terms import cross_entropy, usable_mean, weighted_mean


def mma_terms(logits: Any, logits_hat: Any, y: Any, usable: Any, wrong: Any) -> Any:
    """Per-sample MMA margin term from training-mode logits of x and of x̂.

    ``usable`` (bool): correctly classified points whose closest boundary point x̂ lies
    within the hinge ``d_max``; ``wrong`` (bool): misclassified points.  The term is
    ``CE(f(x̂_i), y_i)`` for usable points (its gradient raises their margin, Ding et al.,
    Prop. 2.1), ``CE(f(x_i), y_i)`` for misclassified points, and 0 otherwise (correct
    points with margin ≥ d_max: the hinge is inactive).
    """
    usable = ops.cast(usable, logits.dtype)
    wrong = ops.cast(wrong, logits.dtype)
    return usable * cross_entropy(logits_hat, y) + wrong * cross_entropy(logits, y)


def mma_loss(logits: Any, logits_hat: Any, y: Any, usable: Any, wrong: Any,
             clean_weight: float = 1 / 3) -> Any:
    """The MMA loss of one batch: ``clean_weight · mean CE(f(x)) + (1 − clean_weight) ·
    mean(mma_terms)``."""
    ce = ops.mean(cross_entropy(logits, y))
    return clean_weight * ce + (1 - clean_weight) * ops.mean(
        mma_terms(logits, logits_hat, y, usable, wrong))


@keras.saving.register_keras_serializable(package="keras_dyart")
class MMAModel(RobustModel):
    """Max-margin adversarial training: raise each correct point's margin up to ``d_max``.

        clean_weight · CE(f(x), y) + (1 − clean_weight) · [ Σ_{correct, R_i < d_max}
        CE(f(x̂_i), y_i) + Σ_{misclassified} CE(f(x_i), y_i) ] / N

    x̂_i is the closest point on the soft decision boundary (the same scalar-FAB search as
    DyART, `keras_dyart.boundary.search`, in inference mode, without the quality filter)
    instead of the paper's AN-PGD; R_i = ‖x̂_i − x_i‖_p.  Correct points whose soft margin
    φ(x) is already ≤ 0 use x̂ = x (margin 0).  The CE at a boundary point is the paper's
    practical surrogate for the margin gradient.

    Args:
        classifier: a Keras model that outputs logits.
        d_max: the hinge: margins at or beyond it get no term (default 20/255; the paper
            reports MMA-12, -20 and -32 on CIFAR-10, and 0.4 or so on MNIST).
        clean_weight: weight of the clean cross-entropy (default 1/3, the paper's).
        norm: ``"linf"`` (default) or ``"l2"``.
        margin_beta: temperature of the soft margin that the search follows (default 5).
        n_iter, refine_steps: FAB iterations and secant refinement steps (20, 4).
        seed: unused by the default search (it starts at x).

    Logs ``loss``, ``ce_loss`` (clean_weight times the clean cross-entropy plus
    regularisation), ``margin_loss`` (the weighted margin term), ``hinge_fraction`` (share
    of the batch with an active margin term) and ``mean_margin`` (their mean margin).
    """

    hyper_parameters = ("d_max", "clean_weight", "norm", "margin_beta", "n_iter",
                        "refine_steps")
    loss_terms = ("ce_loss", "margin_loss", "hinge_fraction", "mean_margin")

    def __init__(self, classifier: keras.layers.Layer, d_max: float | str = 20 / 255,
                 clean_weight: float = 1 / 3, norm: str = "linf", margin_beta: float = 5.0,
                 n_iter: int = 20, refine_steps: int = 4, seed: int = 0, **kwargs):
        super().__init__(classifier, seed=seed, **kwargs)
        self.norm = _checks.norm_name(norm)
        self.d_max = _checks.cap_in_box(_checks.parse_eps(d_max, "d_max"), self.norm,
                                        self.bounds, "d_max")
        self.clean_weight = _checks.in_range(clean_weight, "clean_weight", 0.0, 1.0)
        self.margin_beta = _checks.positive(margin_beta, "margin_beta")
        self.n_iter = _checks.positive(n_iter, "n_iter", integer=True)
        self.refine_steps = _checks.positive(refine_steps, "refine_steps", integer=True,
                                             allow_zero=True)

    def inner(self, logits_fn, x, y):
        found = boundary.search(
            logits_fn, x, y, beta=self.margin_beta, norm=self.norm, n_iter=self.n_iter,
            refine=self.refine_steps > 0, refine_steps=self.refine_steps, use_filter=False,
            at_boundary=False, seed=self.seed_generator, bounds=self.bounds)
        correct = ops.argmax(logits_fn(x), axis=-1) == y
        at_x = correct & (found.phi_x <= 0)
        usable = correct & (at_x | (found.found & (found.margin < self.d_max)))
        margin = ops.where(at_x, 0.0, found.margin)
        return {"x_hat": found.x_hat, "usable": usable, "wrong": ~correct, "margin": margin}

    def objective(self, x, y, y_pred, sample_weight, inner):
        ce = self.keras_loss(x, y, y_pred, sample_weight, scale=self.clean_weight)
        logits_hat = self.train_logits(inner["x_hat"])
        terms = mma_terms(y_pred, logits_hat, y, inner["usable"], inner["wrong"])
        margin_loss = (1 - self.clean_weight) * weighted_mean(terms, sample_weight)
        usable = ops.cast(inner["usable"], "float32")
        return {"loss": ce + margin_loss, "ce_loss": ce, "margin_loss": margin_loss,
                "hinge_fraction": ops.mean(usable),
                "mean_margin": usable_mean(inner["margin"], usable)}
