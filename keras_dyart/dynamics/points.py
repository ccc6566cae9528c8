"""Closest boundary points of a probe set and φ at them: the compiled part of the analysis.

`Analyzer` holds, for one model and one setting, the compiled boundary search
(`keras_dyart.boundary.search`) and φ evaluation, and turns a weight change into per-point
speeds (`keras_dyart.backend.jvp.param_jvp` for the exact form, two φ evaluations for the
finite difference).  `boundary_points` and the callback both use it.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import keras
import numpy as np
from keras import ops

from keras_dyart import _checks, boundary, geometry
from keras_dyart import backend as dyart_backend
from keras_dyart.attacks import driver
from keras_dyart.backend.jvp import param_jvp
from keras_dyart.dynamics.changes import assigned_weights, check_model
from keras_dyart.dynamics.speed import speed_from_difference, speed_from_jvp
from keras_dyart.margins import soft_margin
from keras_dyart.methods import DyARTModel


@dataclasses.dataclass
class BoundaryPoints:
    """Closest soft-boundary points of a probe set at the weights θ (NumPy arrays).

    Attributes:
        x: the inputs.
        y: their labels.
        x_hat: closest boundary points (equal to ``x`` where none was found).
        margin: ``‖x_hat − x‖_p`` (0 where none was found).
        usable: found (φ(x) > 0 and φ(x̂) ≤ 0 reached), ``‖∇_x φ(x_hat)‖_q > 0`` and, if
            on, passed the quality filter.
        correct: ``argmax f(x) == y``.
        phi_x: φ at ``x``.
        phi_hat: φ at ``x_hat``.
        grad_norm: ``‖∇_x φ(x_hat)‖_q``.
        norm: the threat model used.
        beta: the soft-margin temperature used.
    """

    x: np.ndarray
    y: np.ndarray
    x_hat: np.ndarray
    margin: np.ndarray
    usable: np.ndarray
    correct: np.ndarray
    phi_x: np.ndarray
    phi_hat: np.ndarray
    grad_norm: np.ndarray
    norm: str
    beta: float


def model_setting(value, model, attr: str, default):
    """An explicit value, else the `DyARTModel`'s own setting (its ``norm``, soft-margin
    ``beta`` and ``r0``; the threat model ``norm`` of any model that has one), else
    ``default``.  Other methods' ``beta`` (TRADES, MART) is a different quantity."""
    if value is not None:
        return value
    if isinstance(model, DyARTModel) or (attr == "norm" and hasattr(model, "norm")):
        return getattr(model, attr, default)
    return default


def phi_fn(logits_fn, x, y, beta: float):
    """φ(x) = soft margin of ``logits_fn(x)`` at the labels ``y`` (per row)."""
    return soft_margin(logits_fn(x), ops.cast(y, "int32"), beta)


def _search_fn(logits_fn, x, y, *, norm, **settings):
    """The boundary search plus what the speeds need: ‖∇_x φ(x̂)‖_q > 0 and correctness."""
    found = boundary.search(logits_fn, x, y, norm=norm, bounds=(0.0, 1.0), **settings)
    grad_norm = geometry.get(norm).dual_size(found.grad_hat)
    usable = found.usable & (grad_norm > geometry.TINY)
    correct = ops.argmax(logits_fn(x), axis=-1) == ops.cast(y, "int32")
    return (found.x_hat, found.margin, usable, correct, found.phi_x, found.phi_hat,
            grad_norm)


class Analyzer:
    """Compiled boundary search and φ evaluations for one model and one setting.

    Args:
        model: a Keras model that outputs logits, inputs in [0, 1].
        norm: ``"linf"`` or ``"l2"`` (default: the model's, else ``"linf"``).
        beta: soft-margin temperature (default: a `DyARTModel`'s, else 5).
        n_iter: FAB iterations of the search.
        refine: put the boundary points on φ = 0 with secant steps.
        refine_steps: number of those steps.
        use_filter: apply the quality filter (points that fail it are not usable).
        batch_size: points per compiled call.
        jit: compile the search (default: on JAX only).
    """

    def __init__(self, model, norm: str | None = None, beta: float | None = None,
                 n_iter: int = 20, refine: bool = True, refine_steps: int = 4,
                 use_filter: bool = True, batch_size: int = 256, jit: bool | None = None):
        check_model(model)
        self.model = model
        self.norm = _checks.norm_name(model_setting(norm, model, "norm", "linf"))
        self.beta = _checks.positive(model_setting(beta, model, "beta", 5.0), "beta")
        self.n_iter = _checks.positive(n_iter, "n_iter", integer=True)
        self.refine_steps = _checks.positive(refine_steps, "refine_steps", integer=True,
                                             allow_zero=True)
        self.batch_size = _checks.positive(batch_size, "batch_size", integer=True)
        if jit is None:
            jit = keras.backend.backend() == "jax"
        settings = dict(beta=self.beta, norm=self.norm, n_iter=self.n_iter,
                        refine=bool(refine), refine_steps=self.refine_steps,
                        use_filter=bool(use_filter))

        # Compiled functions are kept on the model, one pair per setting, so that repeated
        # analyses of the same model (the callback, a sweep of steps) trace only once.
        cache = model.__dict__.setdefault("_dyart_dynamics_cache", {})
        key = (tuple(sorted(settings.items())), bool(jit))
        if key not in cache:
            # float32 logits whatever the dtype policy (a mixed-precision network keeps its
            # own compute in 16 bits; the search and the speeds do not).
            def search(logits_fn, x, y):
                return _search_fn(lambda z: ops.cast(logits_fn(z), "float32"), x, y,
                                  **settings)

            def phi(logits_fn, x, y):
                return phi_fn(lambda z: ops.cast(logits_fn(z), "float32"), x, y,
                              settings["beta"])

            cache[key] = (dyart_backend.compile_model_fn(model, search, jit),
                          dyart_backend.compile_model_fn(model, phi, jit))
        self._search, self._phi = cache[key]

    def _batches(self, n: int) -> Iterator[slice]:
        for start in range(0, n, self.batch_size):
            yield slice(start, min(n, start + self.batch_size))

    def points(self, x, y) -> BoundaryPoints:
        """The `BoundaryPoints` of inputs ``x`` in [0, 1] with labels ``y``."""
        x = _checks.images(x, "x")
        y = _checks.labels(y, len(x), arg="y")
        driver.num_classes(self.model, x, y)      # logits, not probabilities; y in [0, K)
        parts = [[ops.convert_to_numpy(t) for t in self._search(x[sl], y[sl])]
                 for sl in self._batches(len(x))]
        cols = [np.concatenate(c) for c in zip(*parts)]
        x_hat, margin, usable, correct, phi_x, phi_hat, grad_norm = cols
        return BoundaryPoints(x=x, y=y, x_hat=x_hat.astype("float32"),
                              margin=margin.astype("float32"), usable=usable.astype(bool),
                              correct=correct.astype(bool), phi_x=phi_x, phi_hat=phi_hat,
                              grad_norm=grad_norm.astype("float32"), norm=self.norm,
                              beta=self.beta)

    def phi(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """φ of the rows of ``x`` at the model's current weights."""
        return np.concatenate([ops.convert_to_numpy(self._phi(x[sl], y[sl]))
                               for sl in self._batches(len(x))])

    def speed(self, points: BoundaryPoints, delta: Sequence[np.ndarray],
              method: str = "exact", step: float = 1.0) -> np.ndarray:
        """Per-point speeds under ``delta`` (checked), NaN where not usable.

        Args:
            points: boundary points found at the model's current weights.
            delta: Δθ, one array per trainable variable.
            method: ``"exact"`` or ``"finite_difference"``.
            step: h of the finite difference.
        """
        model = self.model
        if method == "exact":
            jvps = []
            for sl in self._batches(len(points.x)):
                _, jvp = param_jvp(model, phi_fn, delta, points.x_hat[sl], points.y[sl],
                                   self.beta)
                jvps.append(ops.convert_to_numpy(jvp))
            s = speed_from_jvp(np.concatenate(jvps), points.grad_norm)
        else:
            before = self.phi(points.x_hat, points.y)
            theta = [ops.convert_to_numpy(v) for v in model.trainable_variables]
            with assigned_weights(model, [t + step * d for t, d in zip(theta, delta)]):
                after = self.phi(points.x_hat, points.y)
            s = speed_from_difference(after, before, points.grad_norm, step)
        s = ops.convert_to_numpy(s).astype("float32")
        return np.where(points.usable, s, np.nan).astype("float32")


__all__ = ["Analyzer", "BoundaryPoints", "model_setting", "phi_fn"]
