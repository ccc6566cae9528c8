"""FAB-T: the targeted, multi-class, minimal-norm Fast Adaptive Boundary attack
(Croce & Hein, ICML 2020), L∞ and L2.

For a target class t, each iteration linearises ``f_t − f_y`` at the iterate x1, projects both
x1 and the original x onto that hyperplane inside the box [0, 1]^d (the core's
`keras_dyart.projection.project_to_hyperplane`), and mixes the two steps with an ``overshoot``
of 1.05 and a bias towards x of at most ``alpha_max`` = 0.1.  Whenever the iterate is
misclassified it is remembered if it is the closest so far, and pulled back towards x by the
factor ``step_back`` = 0.9 (the knobs' names are those of the boundary search,
`keras_dyart.boundary`).  FAB-T
runs once per target, the ``n_target_classes`` classes with the highest clean logits after the
label, and keeps the closest misclassified point over all targets.

Our addition (on by default, ``refine=True``): a few forward-only secant steps on the
segment from x to the closest point put it just past the decision boundary (at
``f_y − max_{j≠y} f_j = −1e-4·(f_y − max_{j≠y} f_j)(x)``), so distances are exact to about
1e-4 relative instead of the overshoot's ~0.5 %.  The returned point is always misclassified.
With refinement on, the iterates are ranked by the distance at which the segment from x is
estimated (by linear interpolation of each f_y − f_j, exact for a linear model) to cross the
boundary rather than by their own distance, since that is the distance the refinement
returns.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from keras import ops

from keras_dyart import backend as dyart_backend
from keras_dyart import geometry
from keras_dyart.attacks import driver
from keras_dyart.attacks.losses import cw_margin
from keras_dyart.attacks.registry import register
from keras_dyart.boundary import illinois
from keras_dyart.geometry import TINY, flat
from keras_dyart.projection import project_to_hyperplane

if TYPE_CHECKING:
    import keras

_BIG = 1e10
REFINE_TOL = 1e-4


def _refine(margin_fn, x0, far, found, steps):
    """Illinois steps on m(x0 + t·(far − x0)) + τ, τ = REFINE_TOL·m(x0); returns the end of
    the bracket where m < −τ/2 (misclassified)."""
    m0 = margin_fn(x0)
    m1 = margin_fn(far)
    tau = REFINE_TOL * ops.abs(m0)
    valid = found & (m0 + tau > 0) & (m1 + tau < 0)
    # The secant aims at m = −τ; a point counts as not yet misclassified while m ≥ −τ/2,
    # so that rounding at the aimed point cannot stall the bracket on the wrong side.
    _, hi, _, _ = illinois(margin_fn, x0, far - x0, ops.where(valid, m0, 1.0),
                           ops.where(valid, m1, -1.0), steps, shift=tau,
                           is_lower=lambda m: m + 0.5 * tau >= 0)
    return ops.where(valid[:, None], x0 + hi[:, None] * (far - x0), far)


def fab_batch(logits_fn: Callable, x: Any, y: Any, start: Any, target_rank: Any, *,
              n_iter: int = 100, norm: str = "linf", overshoot: float = 1.05,
              step_back: float = 0.9, alpha_max: float = 0.1, refine: bool = True,
              refine_steps: int = 6) -> dict:
    """FAB-T on one batch for one target rank per row.

    Args:
        logits_fn: ``z -> logits`` (inference mode).
        x, y: inputs ``(B, ...)`` and labels.
        start: offsets added to ``x`` for the first iterate (zeros: start at ``x``).
        target_rank: per row, 2 targets the class with the second-highest clean logit, etc.
        n_iter, norm: iterations and ``"linf"`` / ``"l2"``.
        overshoot: the factor on both projection steps; ``step_back``: a misclassified
            iterate is pulled back to ``x + step_back·(x1 − x)``; ``alpha_max``: the largest
            bias towards ``x``.
        refine, refine_steps: the final secant refinement (see the module docstring).

    Returns:
        dict with ``x_adv`` (the closest misclassified point found, else ``x``), ``found``
        (bool) and ``distance`` (its L∞ / L2 distance; ``1e10`` where none was found).
    """
    return driver.run_loop(_loop(norm, overshoot, step_back, alpha_max, refine,
                                 refine_steps), n_iter, logits_fn, x, y, start, target_rank)


def _loop(norm, overshoot=1.05, step_back=0.9, alpha_max=0.1, refine=True,
          refine_steps=6) -> driver.Loop:
    """FAB-T as a `keras_dyart.attacks.driver.Loop` (setup, one iteration, finish)."""
    body = functools.partial(_body, norm=norm, overshoot=overshoot, step_back=step_back,
                             alpha_max=alpha_max, refine=refine)
    finish = functools.partial(_finish, norm=norm, refine=refine, refine_steps=refine_steps)
    return driver.Loop(_setup, body, finish)


def _setup(logits_fn, x, y, start, target_rank):
    x, start = (ops.convert_to_tensor(v, "float32") for v in (x, start))
    y = ops.cast(ops.convert_to_tensor(y), "int32")
    x0 = flat(x)
    n = ops.shape(x0)[0]
    clean = logits_fn(x)
    k = ops.shape(clean)[-1]
    order = ops.argsort(clean, axis=-1)
    col = ops.clip(k - ops.cast(target_rank, "int32"), 0, k - 1)
    target = ops.take_along_axis(order, col[:, None], axis=-1)[:, 0]
    sel = ops.one_hot(target, k, dtype="float32") - ops.one_hot(y, k, dtype="float32")
    onehot_y = ops.one_hot(y, k, dtype="float32")
    d0 = ops.sum(clean * onehot_y, axis=-1)[:, None] - clean
    x1 = ops.clip(x0 + flat(start), 0.0, 1.0)
    return (x, y, sel, onehot_y, d0), (x1, x0, ops.full((n,), _BIG))


def _body(logits_fn, consts, i, carry, *, norm, overshoot, step_back, alpha_max, refine):
    x, y, sel, onehot_y, d0 = consts
    shape = ops.shape(x)
    ball = geometry.get(norm)
    x0 = flat(x)

    def diff(z):
        return ops.sum(logits_fn(ops.reshape(z, shape)) * sel, axis=-1)

    x1, best, best_r = carry
    df, g = dyart_backend.value_and_grad(diff, x1)
    g = flat(g)
    c = ops.sum(g * x1, axis=-1) - df
    d1 = project_to_hyperplane(x1, g, c, norm)
    d2 = project_to_hyperplane(x0, g, c, norm)
    a1 = ops.maximum(ball.size(d1), 1e-8)
    a2 = ops.maximum(ball.size(d2), 1e-8)
    alpha = ops.clip(a1 / (a1 + a2), 0.0, alpha_max)[:, None]
    x1 = ops.clip((x1 + overshoot * d1) * (1.0 - alpha) + (x0 + overshoot * d2) * alpha,
                  0.0, 1.0)
    logits1 = logits_fn(ops.reshape(x1, shape))
    adv = ops.argmax(logits1, axis=-1) != y
    r = ball.size(x1 - x0)
    if refine:
        # Rank by where the segment x0 -> x1 is estimated to cross the boundary (linear
        # interpolation of the margin), which is what the refinement returns.
        d1 = ops.sum(logits1 * onehot_y, axis=-1)[:, None] - logits1
        ratio = ops.where(d1 < 0, d0 / ops.maximum(d0 - d1, TINY), 1.0)
        r = r * ops.clip(ops.min(ratio, axis=-1), 0.0, 1.0)
    better = adv & (r < best_r)
    best = ops.where(better[:, None], x1, best)
    best_r = ops.where(better, r, best_r)
    x1 = ops.where(adv[:, None], x0 + (x1 - x0) * step_back, x1)
    return x1, best, best_r


def _finish(logits_fn, consts, carry, *, norm, refine, refine_steps):
    x, y = consts[:2]
    shape = ops.shape(x)
    ball = geometry.get(norm)
    x0 = flat(x)
    _, best, best_r = carry

    def margin(z):
        return cw_margin(logits_fn(ops.reshape(z, shape)), y)

    found = best_r < _BIG
    if refine:
        best = _refine(margin, x0, best, found, refine_steps)
    dist = ops.where(found, ball.size(best - x0), _BIG)
    return {"x_adv": ops.reshape(best, shape), "found": found, "distance": dist}


@driver.with_bounds(returns="distance")
def fab_t(model: keras.Model, x: np.ndarray, y: np.ndarray, *, norm: str = "linf",
          n_iter: int = 100, n_target_classes: int = 9, restarts: int = 1,
          eps: float | str | None = None, stop_at: float | np.ndarray | None = None,
          refine: bool = True, batch_size: int = 500, seed: int = 0, jit: bool = True,
          progress: Callable | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Minimal adversarial perturbations by FAB-T.

    Args:
        model: a Keras model that outputs logits.
        x, y: inputs in [0, 1] and integer labels.
        norm: ``"linf"`` or ``"l2"``.
        n_iter: iterations per target (100 in AutoAttack).
        n_target_classes: targets per point (9 in AutoAttack; at most K − 1).
        restarts: runs per target; the first starts at x, later ones at a random point of
            norm ½·min(eps, best distance so far) (needs ``eps``).
        eps: only sets that random-start radius.
        stop_at: optional per-point (or scalar) distance: a point whose best distance is
            already ``<= stop_at`` is not attacked by the remaining targets (AutoAttack uses
            its eps).  ``None`` runs every target on every point.
        refine: put each point just past the decision boundary (see the module docstring).
        batch_size, seed, jit: as for the other attacks.  ``progress(done, total)``
            after each run.
        bounds: ``(lower, upper)`` of the model's inputs (default: the model's own
            ``bounds``, else (0, 1)); x and every length are in their units.

    Returns:
        ``(x_adv, distance)`` as NumPy arrays: ``x_adv`` is misclassified wherever
        ``distance`` is finite (``x`` itself for clean errors, distance 0); ``distance`` is
        ``inf`` where no adversarial was found.
    """
    x, y, ball, eps, n_iter, restarts, batch_size, n_target_classes = driver.check(
        x, y, norm, eps, n_iter=n_iter, restarts=restarts, batch_size=batch_size,
        n_target_classes=n_target_classes)
    if restarts > 1 and eps is None:
        raise ValueError("`eps` must be given when `restarts` > 1 (it sets the random-start "
                         "radius); got eps=None.")
    stop = (np.full(len(x), -1.0) if stop_at is None
            else np.broadcast_to(np.asarray(stop_at, "float64"), (len(x),)))
    k = driver.num_classes(model, x, y)
    targets = list(range(2, min(n_target_classes, k - 1) + 2))
    rng = driver.rng(seed)
    run = driver.compiled_loop(model, ("fab-t", ball.name, n_iter, refine),
                               _loop(ball.name, refine=refine), n_iter, jit)

    x_adv = x.copy()
    dist = np.full(len(x), np.inf)
    dist[driver.predict_labels(model, x, batch_size) != y] = 0.0

    def attack(run_id, idx, size):
        rank, restart = run_id
        shape = (len(idx),) + x.shape[1:]
        if restart == 0:
            start = np.zeros(shape, "float32")
        else:
            radius = 0.5 * np.minimum(dist[idx], eps)
            start = ball.numpy_unit_direction(rng, shape) * radius.reshape(
                driver.row_shape(x.ndim)).astype("float32")
        out = driver.call(run, size, [x[idx], y[idx], start], [np.full(size, rank, "int32")])
        found = out["found"].astype(bool)
        d = driver.distance(out["x_adv"], x[idx], ball)
        better = found & (d < dist[idx])
        x_adv[idx[better]] = out["x_adv"][better]
        dist[idx[better]] = d[better]

    driver.sweep([(rank, r) for rank in targets for r in range(restarts)],
                 lambda: np.flatnonzero((dist > 0) & ~(dist <= stop)), attack,
                 batch_size=batch_size, progress=progress)
    # Honest bookkeeping: a point counts only if the model misclassifies it as returned.
    wrong = driver.predict_labels(model, x_adv, batch_size) != y
    dist[~wrong] = np.inf
    x_adv[~wrong] = x[~wrong]
    return x_adv, dist


register("fab-t", "FAB-T", fab_t, returns="distance")

__all__ = ["fab_batch", "fab_t"]
