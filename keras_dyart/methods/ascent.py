"""The inner attack of PGD-AT, TRADES and MART: projected gradient ascent in the eps ball
and the model's input box."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
from keras import ops

from keras_dyart import _checks, geometry
from keras_dyart import backend as dyart_backend
from keras_dyart.methods.base import RobustModel


def pgd_ascent(value: Callable, x: Any, start: Any, eps: float, step_size: float, steps: int,
               norm: str) -> Any:
    """Projected gradient ascent of a per-sample ``value(z)`` inside the ball and the box
    [0, 1].

    ``value`` maps a batch to ``(N,)``; its gradient is taken through the backend's
    input-gradient helper.  Returns the last iterate (a constant).
    """
    ball = geometry.get(norm)

    def body(_, z):
        _, g = dyart_backend.value_and_grad(value, z)
        return ball.project(z + step_size * ball.ascent(g), x, eps)

    z = dyart_backend.fori_loop(0, steps, body, ball.project(start, x, eps))
    return ops.stop_gradient(z)


def ascend_in_box(model: RobustModel, value: Callable, x: Any, eps: float, step_size: float,
                  steps: int, norm: str, kind: str = "uniform", start: bool = True) -> Any:
    """PGD ascent of a per-sample ``value(z)`` in the eps ball around ``x`` and ``model``'s
    input box.

    ``kind="uniform"`` starts at a uniform point of the ball, ``kind="gaussian"`` at
    ``x + 0.001·N(0, 1)`` (the TRADES and MART reference start); ``start=False`` at x.
    ``eps`` and ``step_size`` are in input units; the ascent runs in the unit box
    (`RobustModel.to_unit`), where `pgd_ascent`'s box is [0, 1].  Returns the last iterate,
    a constant, in input units.
    """
    scale = model.input_scale
    u = model.to_unit(x)
    eps, step_size = eps / scale, step_size / scale
    u0 = u
    if start and kind == "gaussian":
        u0 = u + 0.001 * keras.random.normal(ops.shape(u), seed=model.seed_generator)
    elif start:
        u0 = u + geometry.get(norm).uniform_ball(ops.shape(u), eps, model.seed_generator)
    u_adv = pgd_ascent(lambda z: value(model.from_unit(z)), u, u0, eps, step_size, steps,
                       norm)
    return model.from_unit(u_adv)


def check_attack(eps: float | str, step_size: float | str, steps: int,
                 norm: str, bounds: tuple = (0.0, 1.0)) -> tuple[float, float, int, str]:
    """Validate the inner attack's hyper-parameters (``eps`` within the input box
    ``bounds``, `keras_dyart._checks.eps_in_box`); returns them normalised."""
    norm = _checks.norm_name(norm)
    return (_checks.eps_in_box(_checks.parse_eps(eps, "eps"), norm, bounds, "eps"),
            _checks.parse_eps(step_size, "step_size"),
            _checks.positive(steps, "steps", integer=True), norm)


class KLAttackModel(RobustModel):
    """Shared base of TRADES and MART: a KL weight β and an inner PGD attack started at
    ``x + 0.001·N(0, 1)`` in inference mode (as in the reference code)."""

    hyper_parameters = ("beta", "eps", "step_size", "steps", "norm")

    def __init__(self, classifier: keras.layers.Layer, beta: float = 6.0,
                 eps: float | str = 8 / 255, step_size: float | str = 2 / 255,
                 steps: int = 10, norm: str = "linf", seed: int = 0, **kwargs):
        super().__init__(classifier, seed=seed, **kwargs)
        self.beta = _checks.positive(beta, "beta", allow_zero=True)
        self.eps, self.step_size, self.steps, self.norm = check_attack(eps, step_size, steps,
                                                                       norm, self.bounds)

    def ascend(self, value, x):
        """``steps`` PGD steps ascending ``value`` from the Gaussian start (in the unit box,
        see `RobustModel.to_unit`)."""
        return ascend_in_box(self, value, x, self.eps, self.step_size, self.steps, self.norm,
                             kind="gaussian")


__all__ = ["KLAttackModel", "ascend_in_box", "check_attack", "pgd_ascent"]
