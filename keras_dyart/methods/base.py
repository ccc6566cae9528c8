"""Shared pieces of the training methods: random starts, PGD ascent, KL divergence.

The base class `RobustModel` is in `keras_dyart.robust` (see its docstring).
"""

import keras
from keras import ops

from keras_dyart import _checks
from keras_dyart import backend as dyart_backend
from keras_dyart.attacks.pgd import _ascent_direction, project_ball
from keras_dyart.margins import flat
from keras_dyart.robust import RobustModel

_TINY = 1e-12


def weighted_mean(values, sample_weight=None):
    """Batch mean of per-sample ``values``: ``Σ w_i·v_i / N`` (Keras's sum-over-batch)."""
    if sample_weight is not None:
        values = values * ops.cast(ops.reshape(sample_weight, (-1,)), values.dtype)
    return ops.mean(values)


def random_start(x, eps, norm, seed, kind="uniform"):
    """A random start around ``x`` (not yet projected).

    ``kind="uniform"``: uniform in the L∞ ball, or a uniform point of the L2 ball;
    ``kind="gaussian"``: ``0.001·N(0, 1)`` (the TRADES and MART reference start).
    """
    shape = ops.shape(x)
    if kind == "gaussian":
        return x + 0.001 * keras.random.normal(shape, seed=seed)
    if norm == "linf":
        return x + keras.random.uniform(shape, -eps, eps, seed=seed)
    g = keras.random.normal(shape, seed=seed)
    n = ops.sqrt(ops.sum(flat(g) ** 2, axis=-1))
    d = 1
    for s in shape[1:]:
        d *= int(s)
    r = eps * keras.random.uniform((shape[0],), seed=seed) ** (1.0 / d)
    scale = r / ops.maximum(n, _TINY)
    return x + g * ops.reshape(scale, (-1,) + (1,) * (len(shape) - 1))


def pgd_ascent(value, x, start, eps, step_size, steps, norm):
    """Projected gradient ascent of a per-sample ``value(z)`` inside the ball and the box.

    ``value`` maps a batch to ``(N,)``; its gradient is taken through the backend's
    input-gradient helper.  Returns the last iterate (a constant).
    """

    def body(_, z):
        _, g = dyart_backend.value_and_grad(value, z)
        return project_ball(z + step_size * _ascent_direction(g, norm), x, eps, norm)

    z = dyart_backend.fori_loop(0, steps, body, project_ball(start, x, eps, norm))
    return ops.stop_gradient(z)


def kl_divergence(logits_p, logits_q):
    """Per-row KL(p ‖ q) of the softmax distributions of two logit batches."""
    log_p = ops.log_softmax(logits_p, axis=-1)
    log_q = ops.log_softmax(logits_q, axis=-1)
    return ops.sum(ops.exp(log_p) * (log_p - log_q), axis=-1)


def cross_entropy(logits, y):
    """Per-row cross-entropy of logits."""
    return ops.sparse_categorical_crossentropy(ops.cast(y, "int32"), logits, from_logits=True)


def ascend_in_box(model, value, x, eps, step_size, steps, norm, kind="uniform", start=True):
    """PGD ascent of a per-sample ``value(z)`` in the eps ball around ``x`` and ``model``'s
    input box, from a random start (``kind``: see `random_start`; ``start=False``: from x).

    ``eps`` and ``step_size`` are in input units; the ascent runs in the unit box
    (`RobustModel.to_unit`), where `pgd_ascent`'s box is [0, 1].  Returns the last iterate,
    a constant, in input units.
    """
    scale = model.input_scale
    u = model.to_unit(x)
    eps, step_size = eps / scale, step_size / scale
    u0 = random_start(u, eps, norm, model.seed_generator, kind=kind) if start else u
    u_adv = pgd_ascent(lambda z: value(model.from_unit(z)), u, u0, eps, step_size, steps,
                       norm)
    return model.from_unit(u_adv)


@keras.saving.register_keras_serializable(package="keras_dyart")
def check_attack(eps, step_size, steps, norm):
    """Validate the inner attack's hyper-parameters; returns them normalised."""
    return (_checks.parse_eps(eps, "eps"), _checks.parse_eps(step_size, "step_size"),
            _checks.positive(steps, "steps", integer=True), _checks.norm_name(norm))


class KLAttackModel(RobustModel):
    """Shared base of TRADES and MART: a KL weight β and an inner PGD attack started at
    ``x + 0.001·N(0, 1)`` in inference mode (as in the reference code)."""

    hyper_parameters = ("beta", "eps", "step_size", "steps", "norm")

    def __init__(self, classifier, beta=6.0, eps=8 / 255, step_size=2 / 255, steps=10,
                 norm="linf", seed=0, **kwargs):
        super().__init__(classifier, seed=seed, **kwargs)
        self.beta = _checks.positive(beta, "beta", allow_zero=True)
        self.eps, self.step_size, self.steps, self.norm = check_attack(eps, step_size, steps,
                                                                       norm)

    def ascend(self, value, x):
        """``steps`` PGD steps ascending ``value`` from the Gaussian start (in the unit box,
        see `RobustModel.to_unit`)."""
        return ascend_in_box(self, value, x, self.eps, self.step_size, self.steps, self.norm,
                             kind="gaussian")
