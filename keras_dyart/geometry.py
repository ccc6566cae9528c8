"""Norms and balls: the threat models' geometry, written once.

Every search, attack and training method measures lengths with one of two norms, ``"linf"``
and ``"l2"``.  `get` returns the `Norm` object that holds what differs between them: the
per-row size of a batch, the dual norm (the one gradients are measured in), the steepest
ascent direction, the projection onto a ball intersected with the input box, and random
points (in ``keras.ops`` with a Keras seed, or in NumPy with a ``RandomState`` where an
attack must draw the same noise on every backend).  Code above this module asks the norm
object instead of testing ``norm == "linf"``.

Everything works on batches ``(N, ...)``, one row per example; ``eps`` is a scalar or one
radius per row ``(N,)``.

>>> import numpy as np
>>> from keras import ops
>>> x = ops.zeros((1, 2))
>>> z = ops.convert_to_tensor(np.array([[0.5, -0.2]], "float32"))
>>> ops.convert_to_numpy(get("linf").project(z, x, 0.1)).tolist()   # box [0, 1] too
[[0.10000000149011612, 0.0]]
>>> float(ops.convert_to_numpy(get("l2").size(np.array([[3.0, 4.0]], "float32")))[0])
5.0
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from keras_dyart import _checks

TINY = 1e-12

NORMS = _checks.NORMS


def flat(x: Any) -> Any:
    """Reshape a batch ``(N, ...)`` to ``(N, d)``."""
    return ops.reshape(x, (ops.shape(x)[0], -1))


def rows(v, ndim: int):
    """A per-row tensor ``(N,)`` reshaped to broadcast against a batch of rank ``ndim``."""
    return ops.reshape(v, (-1,) + (1,) * (ndim - 1))


def lp_norm(x, p: str):
    """Per-row norm of a batch: ``p`` is ``"linf"``, ``"l1"`` or ``"l2"``."""
    v = flat(x)
    if p == "linf":
        return ops.amax(ops.abs(v), axis=-1)
    if p == "l1":
        return ops.sum(ops.abs(v), axis=-1)
    if p == "l2":
        return ops.sqrt(ops.sum(v * v, axis=-1))
    raise ValueError(f"`p` must be 'linf', 'l1' or 'l2'; got {p!r}.")


def to_unit(x, bounds: tuple = (0.0, 1.0)):
    """Inputs in the box ``bounds = (lower, upper)`` → the unit box (the identity for
    (0, 1))."""
    lo, hi = bounds
    if (lo, hi) == (0.0, 1.0):
        return x
    return (x - lo) / (hi - lo)


def from_unit(u, bounds: tuple = (0.0, 1.0)):
    """Points of the unit box → the box ``bounds`` (the identity for (0, 1))."""
    lo, hi = bounds
    if (lo, hi) == (0.0, 1.0):
        return u
    return lo + (hi - lo) * u


class Norm:
    """One threat model's norm (use `get`).

    Attributes:
        name: ``"linf"`` or ``"l2"``.
        dual: the dual norm's name (``"l1"`` for L∞, ``"l2"`` for L2).
    """

    name = ""
    dual = ""

    def size(self, v):
        """Per-row norm ``‖v_i‖`` of a batch."""
        return lp_norm(v, self.name)

    def dual_size(self, g):
        """Per-row dual norm ``‖g_i‖_q`` (gradients are measured in it)."""
        return lp_norm(g, self.dual)

    def ascent(self, g):
        """The unit-norm direction of steepest ascent along the gradient ``g``."""
        raise NotImplementedError

    def clip_delta(self, delta, eps):
        """``delta`` pulled into the ball of radius ``eps`` (no box)."""
        raise NotImplementedError

    def project(self, z, x, eps, box=(0.0, 1.0)):
        """``z`` pulled into the ``eps`` ball around ``x``, then into ``box``."""
        return ops.clip(x + self.clip_delta(z - x, eps), box[0], box[1])

    def unit_direction(self, shape, seed):
        """Random directions of unit norm per row (Keras random ops)."""
        raise NotImplementedError

    def uniform_ball(self, shape, eps, seed):
        """Random offsets uniform in the ball of radius ``eps`` (Keras random ops)."""
        raise NotImplementedError

    def numpy_unit_direction(self, rng: np.random.RandomState, shape) -> np.ndarray:
        """`unit_direction` in NumPy (float32): the same draw on every backend."""
        raise NotImplementedError

    def numpy_uniform_ball(self, rng: np.random.RandomState, shape, eps) -> np.ndarray:
        """`uniform_ball` in NumPy (float32): the same draw on every backend."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"Norm({self.name!r})"


class _Linf(Norm):
    name, dual = "linf", "l1"

    def ascent(self, g):
        return ops.sign(g)

    def clip_delta(self, delta, eps):
        if len(getattr(eps, "shape", ())) == 1:     # one radius per row
            eps = rows(eps, len(delta.shape))
        return ops.clip(delta, -eps, eps)

    def unit_direction(self, shape, seed):
        u = keras.random.uniform(shape, -1.0, 1.0, seed=seed)
        return u / rows(ops.maximum(self.size(u), TINY), len(shape))

    def uniform_ball(self, shape, eps, seed):
        return keras.random.uniform(shape, -eps, eps, seed=seed)

    def numpy_unit_direction(self, rng, shape):
        t = rng.uniform(-1.0, 1.0, size=shape)
        m = np.abs(t.reshape(shape[0], -1)).max(axis=1)
        return (t / np.maximum(m, TINY).reshape(_row_shape(shape))).astype("float32")

    def numpy_uniform_ball(self, rng, shape, eps):
        return rng.uniform(-eps, eps, size=shape).astype("float32")


class _L2(Norm):
    name, dual = "l2", "l2"

    def ascent(self, g):
        return g / rows(ops.maximum(self.size(g), TINY), len(g.shape))

    def clip_delta(self, delta, eps):
        scale = ops.minimum(1.0, eps / ops.maximum(self.size(delta), TINY))
        return delta * rows(scale, len(delta.shape))

    def unit_direction(self, shape, seed):
        u = keras.random.normal(shape, seed=seed)
        return u / rows(ops.maximum(self.size(u), TINY), len(shape))

    def uniform_ball(self, shape, eps, seed):
        # A uniform point of the ball: a Gaussian direction and radius eps·U^(1/d).
        g = keras.random.normal(shape, seed=seed)
        r = eps * keras.random.uniform((shape[0],), seed=seed) ** (1.0 / _dim(shape))
        return g * rows(r / ops.maximum(self.size(g), TINY), len(shape))

    def numpy_unit_direction(self, rng, shape):
        t = rng.normal(size=shape)
        m = np.sqrt((t.reshape(shape[0], -1) ** 2).sum(axis=1))
        return (t / np.maximum(m, TINY).reshape(_row_shape(shape))).astype("float32")

    def numpy_uniform_ball(self, rng, shape, eps):
        g = rng.normal(size=shape).astype("float32")
        g /= np.maximum(np.sqrt((g.reshape(shape[0], -1) ** 2).sum(1)), TINY).reshape(
            _row_shape(shape))
        r = rng.uniform(0, 1, size=_row_shape(shape)) ** (1.0 / _dim(shape))
        return (g * eps * r).astype("float32")


def _dim(shape) -> int:
    d = 1
    for s in shape[1:]:
        d *= int(s)
    return d


def _row_shape(shape) -> tuple:
    return (-1 if shape[0] is None else shape[0],) + (1,) * (len(shape) - 1)


_NORMS = {"linf": _Linf(), "l2": _L2()}


def get(norm: str | Norm, arg: str = "norm") -> Norm:
    """The `Norm` named ``"linf"`` or ``"l2"`` (a `Norm` is returned as is); anything else
    is refused with an error naming ``arg``."""
    if isinstance(norm, Norm):
        return norm
    return _NORMS[_checks.norm_name(norm, arg)]


__all__ = ["NORMS", "Norm", "TINY", "flat", "from_unit", "get", "lp_norm", "rows",
           "to_unit"]
