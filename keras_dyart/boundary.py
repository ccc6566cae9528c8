"""The closest point on the soft decision boundary: scalar FAB, refinement and the filter.

`find_boundary_points` adapts FAB (Croce & Hein, ICML 2020) from "the nearest other class" to
the zero set of the scalar soft margin φ.  Each iteration linearises φ at the current iterate
x1, projects both x1 and the original x onto that hyperplane inside the box [0, 1]^d
(`keras_dyart.projection`), mixes the two steps with an overshoot, and remembers the closest
iterate with φ < 0, after which it steps back towards x.

One value-and-gradient evaluation per iteration: the φ < 0 check of an update is read from the
value computed at the start of the next iteration, and the step-back point is projected onto
the hyperplane of the linearisation just computed.  For an affine φ this is the reference
update exactly; it saves the extra forward pass per iteration of the reference code.

The refinement (on by default) runs a few Illinois (safeguarded secant) steps on φ along the
segment from x to the best point, so that the returned point lies on φ = 0 to tolerance rather
than the overshoot's ~0.5 % past it.  It costs a few forward passes and no gradients.

Everything between two network passes (record, step back, projection, mix) is `_fab_update`,
whose two pieces around the projection's one data-dependent exit the backend may compile into
fused kernels (`keras_dyart.backend.fuse`): op by op it is some 80 passes through memory per
iteration.

Everything is batched with static shapes; points that are not searched are carried along and
masked out at the end.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import keras
from keras import ops

from keras_dyart import backend as dyart_backend
from keras_dyart import geometry
from keras_dyart.geometry import flat, lp_norm
from keras_dyart.margins import soft_margin
from keras_dyart.projection import newton_continue, newton_finish, newton_start

_TINY = geometry.TINY


def _random_start(x, radius, norm, seed):
    """A random point at distance ``radius`` (per row) from ``x``, clipped to the box."""
    u = geometry.get(norm).unit_direction(ops.shape(x), seed)
    return ops.clip(x + radius[:, None] * u, 0.0, 1.0)


def illinois(fn: Callable, x: Any, direction: Any, m_lo: Any, m_hi: Any, steps: int,
             shift: Any = 0.0, is_lower: Callable | None = None) -> tuple[Any, Any, Any, Any]:
    """Safeguarded secant (Illinois) steps for a root of g(t) = fn(x + t·direction) + shift
    on t in [0, 1], per row, forward passes only.

    ``m_lo`` and ``m_hi`` are fn at t = 0 and t = 1, with g(0) > 0 > g(1) on the rows that
    matter.  A trial point replaces the lower end where ``is_lower(fn(point))`` (default
    g > 0), else the upper end; an end kept twice in a row has its g halved (the Illinois
    rule), and a secant point outside the bracket falls back to the midpoint.

    Returns ``(lo, hi, m_at_lo, m_at_hi)``: the final bracket and fn at its ends.
    """
    if is_lower is None:
        def is_lower(m):
            return m + shift > 0
    n = ops.shape(x)[0]
    lo, hi = ops.zeros((n,)), ops.ones((n,))
    g_lo, g_hi = m_lo + shift, m_hi + shift     # scaled by the Illinois rule
    v_lo, v_hi = m_lo, m_hi                     # fn itself at lo and hi
    last = ops.zeros((n,))                      # +1: lo moved last, -1: hi moved last
    one = ops.ones((n,))
    for _ in range(steps):
        denom = g_hi - g_lo
        t = (lo * g_hi - hi * g_lo) / ops.where(ops.abs(denom) > _TINY, denom, -1.0)
        t = ops.where((t > lo) & (t < hi), t, 0.5 * (lo + hi))
        m_t = fn(x + t[:, None] * direction)
        g_t = m_t + shift
        # The whole bracket moves in one select on one mask.  Several selects on `low` let a
        # compiler recompute m_t for each (XLA does): near the root, where m_t is a rounding
        # error away from 0, the copies can disagree on its sign and tear the bracket apart
        # (an end moved without its value).
        low = is_lower(m_t)
        if_low = ops.stack([t, hi, g_t, ops.where(last > 0, 0.5 * g_hi, g_hi), m_t, v_hi,
                            one], axis=-1)
        if_high = ops.stack([lo, t, ops.where(last < 0, 0.5 * g_lo, g_lo), g_t, v_lo, m_t,
                             -one], axis=-1)
        state = ops.where(low[:, None], if_low, if_high)
        lo, hi, g_lo, g_hi, v_lo, v_hi, last = (state[:, k] for k in range(7))
    return lo, hi, v_lo, v_hi


def _refine(value, x, x_far, phi_x, phi_far, steps):
    """Illinois steps for φ = 0 on the segment x + t·(x_far − x), t in [0, 1].

    ``phi_x > 0 > phi_far`` brackets the root.  Returns ``(t, phi_t)`` of the bracket end whose
    |φ| is smallest.
    """
    lo, hi, v_lo, v_hi = illinois(value, x, x_far - x, phi_x, phi_far, steps)
    take_lo = ops.abs(v_lo) < ops.abs(v_hi)
    return ops.where(take_lo, lo, hi), ops.where(take_lo, v_lo, v_hi)


def _record(z, phi, x0, best, best_r, best_phi, norm):
    """Keep ``z`` as the best point of a row where φ(z) < 0 and it is closer to ``x0``."""
    r = lp_norm(z - x0, norm)
    better = (phi < 0) & (r < best_r)
    return (ops.where(better[:, None], z, best), ops.where(better, r, best_r),
            ops.where(better, phi, best_phi))


def _fab_head(x1, phi1, g1, x0, best, best_r, best_phi, *, norm, step_back):
    """Record x1, step back where φ < 0, and start projecting both points (see `_fab_update`)."""
    best, best_r, best_phi = _record(x1, phi1, x0, best, best_r, best_phi, norm)
    x1b = ops.where((phi1 < 0)[:, None], x0 + step_back * (x1 - x0), x1)
    c = ops.sum(g1 * x1, axis=-1) - phi1
    # Both points onto the same hyperplane in one batched projection (half the dispatched
    # ops of two calls; every row is independent, so the same result).
    problem, state = newton_start(ops.concatenate([x1b, x0], axis=0),
                                  ops.concatenate([g1, g1], axis=0),
                                  ops.concatenate([c, c], axis=0), norm)
    return best, best_r, best_phi, x1b, problem, state


def _fab_tail(direction, room, aw, feasible, t, x1b, x0, *, norm, overshoot, alpha_max):
    """Finish the projection and mix the two steps into the next iterate."""
    n = ops.shape(x0)[0]
    d12 = newton_finish(direction, room, aw, feasible, t, norm)
    n12 = lp_norm(d12, norm)
    d1, d2, n1, n2 = d12[:n], d12[n:], n12[:n], n12[n:]
    a = ops.clip(n1 / ops.maximum(n1 + n2, _TINY), 0.0, alpha_max)[:, None]
    return ops.clip((x1b + overshoot * d1) * (1 - a) + (x0 + overshoot * d2) * a, 0.0, 1.0)


def _fab_update(x1, phi1, g1, x0, best, best_r, best_phi, *, norm, overshoot, alpha_max,
                step_back, head=_fab_head, tail=_fab_tail):
    """One FAB iteration after its value-and-gradient: record x1, step back where φ < 0,
    project x1 and x0 onto the linearisation's hyperplane, mix.  Returns ``(x1_next, best,
    best_r, best_phi)``.

    Elementwise work only, in two pieces, ``head`` and ``tail`` (`_fab_head` and `_fab_tail`,
    or those compiled by `keras_dyart.backend.fuse`), around the one step with a
    data-dependent exit (the projection's test that every row has stopped, nearly always true
    already)."""
    best, best_r, best_phi, x1b, problem, state = head(
        x1, phi1, g1, x0, best, best_r, best_phi, norm=norm, step_back=step_back)
    t = newton_continue(problem, state)[1]
    # (only the tensors it reads: a compiled function checks each input on every call)
    x1 = tail(*problem.finish_parts(), t, x1b, x0, norm=norm, overshoot=overshoot,
              alpha_max=alpha_max)
    return x1, best, best_r, best_phi


def find_boundary_points(value_and_grad: Callable, value: Callable, x: Any, *, norm: str = "linf",
                         n_iter: int = 20, overshoot: float = 1.05, alpha_max: float = 0.1,
                         step_back: float = 0.9, random_start: bool = False,
                         eps_fab: float = 8 / 255, restarts: int = 1, refine: bool = True,
                         refine_steps: int = 4, seed: Any = None, start: Any = None) -> dict:
    """Closest point on the soft boundary φ = 0 for each input, by scalar FAB.

    Args:
        value_and_grad: ``z -> (φ(z), ∇_z φ(z))`` for a batch shaped like ``x``; ``φ`` has
            shape ``(N,)``.  The gradient is that of ``sum(φ)``, which is per-row because
            rows are independent (inference mode).
        value: ``z -> φ(z)``, forward only.
        x: inputs ``(N, ...)`` in [0, 1].
        norm: ``"linf"`` or ``"l2"``.
        n_iter: FAB iterations per restart (one value-and-gradient pass each).
        overshoot: η, the factor applied to both projection steps.
        alpha_max: upper bound of the mixing weight towards the projection of x.
        step_back: β, iterates with φ < 0 are pulled back to x + β·(x1 − x).
        random_start: start the first restart at a random point of norm
            ½·min(eps_fab, best radius so far) instead of at x (later restarts always do).
        eps_fab: sets the random start radius only.
        restarts: number of FAB runs; the closest success over all runs is kept.
        refine: put the result on φ = 0 with a few forward-only secant steps.
        refine_steps: number of those steps.
        seed: seed for the random starts (an int, a `keras.random.SeedGenerator` or a
            seed tensor of shape (2,)).
        start: where the first run starts instead of ``x`` (shaped like ``x``, in [0, 1]):
            a warm start, for instance the boundary points an earlier search found for the
            same inputs under slightly different weights.  φ at ``x`` then costs one more
            forward pass.  Takes the place of ``random_start`` for the first run.

    Returns:
        dict with ``x_hat`` (shape of ``x``; equal to ``x`` where nothing was found),
        ``found`` (bool ``(N,)``: φ(x) > 0 and a point with φ ≤ 0 was found),
        ``margin`` (``(N,)``, ‖x_hat − x‖_p, 0 where not found), ``phi_x`` (φ at x) and
        ``x_last`` (the last run's final iterate: where a search that found nothing
        stopped, a start for the next one).
    """
    for arg, fn in (("value_and_grad", value_and_grad), ("value", value)):
        if isinstance(fn, keras.layers.Layer):
            raise TypeError(
                f"`{arg}` is a Keras model; `find_boundary_points` takes two functions of a "
                f"batch z, `value_and_grad(z) -> (φ(z), ∇φ(z))` and `value(z) -> φ(z)`, of a "
                f"scalar margin φ. For a classifier, `keras_dyart.boundary.search(model, x, "
                f"y)` finds the closest points of its soft decision boundary (DyART's "
                f"search), and `keras_dyart.margins_report(model, x, y)` its minimal "
                f"adversarial distances.")
    shape = ops.shape(x)
    x0 = flat(ops.convert_to_tensor(x))
    n = ops.shape(x0)[0]
    p = norm

    def vg(z):
        v, g = value_and_grad(ops.reshape(z, shape))
        return v, flat(g)

    def val(z):
        return value(ops.reshape(z, shape))

    def dist(z):
        return lp_norm(z - x0, p)

    settings = dict(norm=p, overshoot=float(overshoot), alpha_max=float(alpha_max),
                    step_back=float(step_back), head=dyart_backend.fuse(_fab_head),
                    tail=dyart_backend.fuse(_fab_tail))

    def one_run(x1, phi_x, best, best_r, best_phi, capture_phi_x):
        def body(i, carry):
            x1, phi_x, best, best_r, best_phi = carry
            phi1, g1 = vg(x1)
            if capture_phi_x:
                phi_x = ops.where(i == 0, phi1, phi_x)
            x1, best, best_r, best_phi = _fab_update(x1, phi1, g1, x0, best, best_r,
                                                     best_phi, **settings)
            return x1, phi_x, best, best_r, best_phi

        carry = dyart_backend.fori_loop(0, n_iter, body, (x1, phi_x, best, best_r, best_phi))
        x1, phi_x, best, best_r, best_phi = carry
        best, best_r, best_phi = _record(x1, val(x1), x0, best, best_r, best_phi, p)
        return x1, phi_x, best, best_r, best_phi

    best = x0
    best_r = ops.full((n,), math.inf)
    best_phi = ops.zeros((n,))
    phi_x = ops.zeros((n,))
    for k in range(restarts):
        at_random = random_start or k > 0
        if k == 0 and start is not None:
            phi_x = val(x0)
            x1 = flat(ops.cast(ops.convert_to_tensor(start), x0.dtype))
            at_random = True                    # φ(x) is not the first iterate's
        elif at_random:
            if k == 0:
                phi_x = val(x0)
            run_seed = seed
            if seed is not None and not isinstance(seed, (int, keras.random.SeedGenerator)):
                run_seed = ops.cast(seed, "uint32") + ops.cast([0, k], "uint32")
            elif isinstance(seed, int):
                run_seed = seed + k
            radius = 0.5 * ops.minimum(eps_fab, best_r)
            x1 = _random_start(x0, radius, p, run_seed)
        else:
            x1 = x0
        last, phi_x, best, best_r, best_phi = one_run(x1, phi_x, best, best_r, best_phi,
                                                      capture_phi_x=not at_random)

    found = (phi_x > 0) & (best_r < math.inf)
    far = ops.where(found[:, None], best, x0)
    if refine and refine_steps > 0:
        t, _ = _refine(val, x0, far, ops.where(found, phi_x, 1.0),
                       ops.where(found, best_phi, -1.0), refine_steps)
        far = x0 + t[:, None] * (far - x0)
    x_hat = ops.where(found[:, None], far, x0)
    return {
        "x_hat": ops.reshape(x_hat, shape),
        "found": found,
        "margin": ops.where(found, dist(x_hat), 0.0),
        "phi_x": phi_x,
        "x_last": ops.reshape(last, shape),
    }


def quality_filter(x: Any, x_hat: Any, phi_hat: Any, grad_hat: Any, norm: str = "linf",
                   phi_min: float = -0.3, max_frac: float = 0.8, align: float = 0.9,
                   small_grad: float = 0.1) -> Any:
    """Keep boundary points that are close to a locally closest point (the "KKT check").

    At a locally closest L∞ boundary point the gradient of φ points against the step on the
    coordinates that attain ‖δ‖∞, and vanishes on interior coordinates that do not.  A point
    ``x_hat`` (δ = x_hat − x) is kept when

    - ``φ(x_hat) > phi_min`` and ``∇φ(x_hat) ≠ 0``;
    - for L∞: among coordinates with ``|δ_j| > max_frac·‖δ‖∞``, more than ``align`` of them
      have ``δ_j·∂_jφ(x_hat) < 0``; and, if there are other coordinates, at least one of them
      has ``|∂_jφ| ≤ small_grad``.

    For L2 only the first condition applies.  Returns a bool tensor of shape ``(N,)``.
    """
    x, x_hat, phi_hat, grad_hat = (ops.convert_to_tensor(v) for v in (x, x_hat, phi_hat,
                                                                        grad_hat))
    delta = flat(x_hat) - flat(x)
    g = flat(grad_hat)
    ok = (phi_hat > phi_min) & (ops.max(ops.abs(g), axis=-1) > 0)
    if norm != "linf":
        return ok
    size = ops.max(ops.abs(delta), axis=-1, keepdims=True)
    top = ops.cast(ops.abs(delta) > max_frac * size, "float32")
    n_top = ops.sum(top, axis=-1)
    against = ops.sum(top * ops.cast(delta * g < -1e-7, "float32"), axis=-1)
    rest = 1.0 - top
    n_rest = ops.sum(rest, axis=-1)
    n_small = ops.sum(rest * ops.cast(ops.abs(g) <= small_grad, "float32"), axis=-1)
    aligned = (n_top > 0) & (against > align * n_top)
    interior = (n_rest == 0) | (n_small > 0)
    return ok & aligned & interior


class BoundarySearch(NamedTuple):
    """What `search` finds for a batch (tensors; lengths in input units).

    Attributes:
        x_hat: closest soft-boundary points (equal to ``x`` where none was found).
        found: φ(x) > 0 and a point with φ ≤ 0 was reached.
        usable: ``found`` and, with ``use_filter``, passed `quality_filter`.
        margin: ``‖x_hat − x‖_p`` in input units (0 where none was found).
        phi_x: φ at ``x``.
        phi_hat: φ at ``x_hat`` (``None`` with ``at_boundary=False``).
        grad_hat: ``∇_x φ(x_hat)`` in input units (``None`` with ``at_boundary=False``).
        unit_grad_hat: the same gradient in the unit box, ``grad_hat·(upper − lower)``
            (what DyART's weights divide by; ``None`` with ``at_boundary=False``).
        x_last: FAB's final iterate (where a search that found nothing stopped).
    """

    x_hat: object
    found: object
    usable: object
    margin: object
    phi_x: object
    phi_hat: object = None
    grad_hat: object = None
    unit_grad_hat: object = None
    x_last: object = None


def search(logits_fn: Callable, x, y, *, beta: float = 5.0, norm: str = "linf",
           n_iter: int = 20, overshoot: float = 1.05, alpha_max: float = 0.1,
           step_back: float = 0.9, random_start: bool = False, eps_fab: float = 8 / 255,
           restarts: int = 1, refine: bool = True, refine_steps: int = 4,
           use_filter: bool = True, at_boundary: bool = True, seed=None,
           bounds: tuple = (0.0, 1.0), start=None) -> BoundarySearch:
    """The closest points on the soft decision boundary of a batch: the one boundary search
    of DyART, MMA and the boundary-dynamics analysis.

    φ is the soft margin (`keras_dyart.margins.soft_margin`, temperature ``beta``) of the
    float32 logits of ``logits_fn`` (the classifier in inference mode).  The search
    (`find_boundary_points`) runs in the unit box: ``x`` in ``bounds = (lower, upper)`` is
    mapped to [0, 1]^d, so its settings are those of [0, 1] inputs whatever the units; the
    results are mapped back (``eps_fab`` and the margins are in input units).

    Args:
        logits_fn: ``z -> logits (N, K)`` of a batch in input units.
        x: inputs ``(N, ...)`` in ``bounds``.
        y: integer labels ``(N,)``.
        beta: temperature of the soft margin.
        norm: ``"linf"`` or ``"l2"``.
        n_iter: FAB iterations (see `find_boundary_points` for this and the next eight).
        overshoot: FAB's extrapolation η.
        alpha_max: FAB's largest bias towards x.
        step_back: FAB's step back towards x after a success, β.
        random_start: start the first run at a random point.
        eps_fab: radius scale of the random starts, in input units.
        restarts: FAB runs; the closest success is kept.
        refine: put the result on φ = 0 by secant steps.
        refine_steps: number of those steps.
        seed: seed of the random starts.
        use_filter: keep only points that pass `quality_filter` (L∞ checks; L2: φ and the
            gradient only).
        at_boundary: evaluate φ and its gradient at ``x_hat`` (one more input-gradient
            pass; needed by ``use_filter``, DyART's weights and the dynamics analysis).
        bounds: ``(lower, upper)`` of the inputs.
        start: optional starting points of the first run, in input units (a warm start:
            ``x_hat`` of an earlier search of the same inputs).

    Returns:
        A `BoundarySearch`.
    """
    y = ops.cast(y, "int32")
    bounds = tuple(float(b) for b in bounds)
    scale = bounds[1] - bounds[0]

    def phi(z):
        return soft_margin(ops.cast(logits_fn(z), "float32"), y, beta)

    def phi_unit(u):
        return phi(geometry.from_unit(u, bounds))

    x = ops.cast(x, "float32")
    u = geometry.to_unit(x, bounds)
    out = find_boundary_points(
        lambda z: dyart_backend.value_and_grad(phi_unit, z), phi_unit, u, norm=norm,
        n_iter=n_iter, overshoot=overshoot, alpha_max=alpha_max, step_back=step_back,
        random_start=random_start, eps_fab=eps_fab / scale, restarts=restarts,
        refine=refine, refine_steps=refine_steps, seed=seed,
        start=None if start is None else geometry.to_unit(ops.cast(start, "float32"), bounds))
    u_hat = ops.stop_gradient(out["x_hat"])
    x_hat = geometry.from_unit(u_hat, bounds)
    margin = out["margin"] * scale
    found = out["found"]
    x_last = geometry.from_unit(ops.stop_gradient(out["x_last"]), bounds)
    if not at_boundary:
        if use_filter:
            raise ValueError("`use_filter=True` needs `at_boundary=True`.")
        return BoundarySearch(x_hat, found, found, margin, out["phi_x"], x_last=x_last)
    phi_hat, grad_hat = dyart_backend.value_and_grad(phi, x_hat)
    unit_grad = grad_hat * scale
    usable = found
    if use_filter:
        # in the unit box, where its thresholds are set
        usable = usable & quality_filter(u, u_hat, phi_hat, unit_grad, norm)
    return BoundarySearch(x_hat, found, usable, margin, out["phi_x"], phi_hat, grad_hat,
                          unit_grad, x_last)
