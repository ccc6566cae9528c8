"""Box-constrained minimal-norm projection onto a hyperplane (the FAB projection).

Given points x in [0, 1]^d and hyperplanes {z : w·z = c}, find for each row the step δ of
smallest L∞ or L2 norm with w·(x + δ) = c and x + δ in [0, 1]^d.

Both norms reduce to the same one-dimensional search.  Flip the sign of w so that the
hyperplane lies in the direction of increasing w·z, at distance r = c − w·x ≥ 0.  Each
coordinate j can move by at most u_j (its room to the box face in the direction sign(w_j)).
For a scalar t ≥ 0 the optimal step has the form

    δ_j = sign(w_j) · min(t · s_j, u_j),    s_j = 1 (L∞)  or  |w_j| (L2),

(for L∞ every unsaturated coordinate moves by t; for L2 the step is t·w clipped to the box,
which is the KKT solution).  The progress g(t) = Σ_j |w_j| min(t·s_j, u_j) is piecewise
linear, non-decreasing and concave, with breakpoints u_j / s_j.  Sorting the breakpoints and
taking cumulative sums gives g at every breakpoint in O(d log d); the segment that contains
g(t) = r is found by counting the breakpoints with g < r (g is monotone), and t follows in
closed form.  If even the box corner that maximises w·z falls short of the hyperplane
(g(∞) < r) the problem is infeasible and the step goes to that corner, the box point closest
to the hyperplane in the w direction.

Everything is batched with static shapes: no boolean indexing, no data-dependent loops.
"""

from keras import ops

_TINY = 1e-12
_BIG = 1e10


def project_to_hyperplane(x, w, c, norm="linf"):
    """Minimal-norm step from ``x`` onto ``{z : w·z = c}`` inside the box ``[0, 1]^d``.

    Args:
        x: points, shape ``(N, d)``, values in [0, 1].
        w: hyperplane normals, shape ``(N, d)``.
        c: offsets, shape ``(N,)``.
        norm: ``"linf"`` or ``"l2"``, the norm of the step that is minimised.

    Returns:
        ``delta`` of shape ``(N, d)`` with ``x + delta`` in the box; ``w·(x + delta) = c``
        whenever the box meets the hyperplane, otherwise the step to the box corner
        closest to it.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> x = np.array([[0.5, 0.5]], "float32")
    >>> w = np.array([[1.0, 1.0]], "float32")
    >>> d = project_to_hyperplane(x, w, np.array([1.2], "float32"), "linf")
    >>> np.round(ops.convert_to_numpy(d).astype("float64"), 4).tolist()
    [[0.1, 0.1]]
    """
    if norm not in ("linf", "l2"):
        raise ValueError(f"`norm` must be 'linf' or 'l2'; got {norm!r}.")
    x = ops.convert_to_tensor(x)
    w = ops.cast(w, x.dtype)
    c = ops.cast(c, x.dtype)
    r = c - ops.sum(w * x, axis=-1)
    flip = ops.where(r < 0, -1.0, 1.0)
    w = w * flip[:, None]
    r = r * flip

    aw = ops.abs(w)
    direction = ops.sign(w)
    room = ops.where(w > 0, 1.0 - x, ops.where(w < 0, x, 0.0))
    if norm == "linf":  # unit speed: the breakpoints are the rooms themselves
        speed, rate, breakpoints = None, aw, room
    else:
        speed = aw
        rate = aw * speed
        breakpoints = ops.where(speed > 0, room / ops.maximum(speed, _TINY), _BIG)

    order = ops.argsort(breakpoints, axis=-1)
    bp = ops.take_along_axis(breakpoints, order, axis=-1)
    rate_sorted = ops.take_along_axis(rate, order, axis=-1)
    if speed is None:  # L∞: rate = |w| and room = breakpoint, so no second gather
        saturated = ops.cumsum(rate_sorted * bp, axis=-1)
    else:
        saturated = ops.cumsum(ops.take_along_axis(aw * room, order, axis=-1), axis=-1)
    rate_cum = ops.cumsum(rate_sorted, axis=-1)
    total_rate = rate_cum[:, -1]
    rate_after = total_rate[:, None] - rate_cum
    progress = saturated + bp * rate_after          # g at each breakpoint

    below = ops.sum(ops.cast(progress < r[:, None], "int32"), axis=-1)
    d = ops.shape(x)[-1]
    prev = ops.maximum(below - 1, 0)[:, None]
    first = below == 0
    sat_prev = ops.where(first, 0.0, ops.take_along_axis(saturated, prev, axis=-1)[:, 0])
    rate_prev = ops.where(first, total_rate,
                          ops.take_along_axis(rate_after, prev, axis=-1)[:, 0])
    t = ops.maximum(r - sat_prev, 0.0) / ops.maximum(rate_prev, _TINY)

    feasible = below < d
    move = t[:, None] if speed is None else t[:, None] * speed
    step = direction * ops.minimum(move, room)
    corner = direction * room
    return ops.where(feasible[:, None], step, corner)
