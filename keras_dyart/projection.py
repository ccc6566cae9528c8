"""Box-constrained minimal-norm projection onto a hyperplane (the FAB projection).

Given points x in [0, 1]^d and hyperplanes {z : w·z = c}, find for each row the step δ of
smallest L∞ or L2 norm with w·(x + δ) = c and x + δ in [0, 1]^d.

Both norms reduce to the same one-dimensional root.  Flip the sign of w so that the
hyperplane lies in the direction of increasing w·z, at distance r = c − w·x ≥ 0.  Each
coordinate j can move by at most u_j (its room to the box face in the direction sign(w_j)).
For a scalar t ≥ 0 the optimal step has the form

    δ_j = sign(w_j) · min(t · s_j, u_j),    s_j = 1 (L∞)  or  |w_j| (L2),

(for L∞ every unsaturated coordinate moves by t; for L2 the step is t·w clipped to the box,
which is the KKT solution).  The progress g(t) = Σ_j |w_j| min(t·s_j, u_j) is piecewise
linear, non-decreasing and concave, with breakpoints b_j = u_j / s_j, and t solves g(t) = r.
If even the box corner that maximises w·z falls short of the hyperplane (g(∞) < r) the
problem is infeasible and the step goes to that corner, the box point closest to the
hyperplane in the w direction.

The root is found by Newton's method from t = 0: t ← t + (r − g(t)) / g'(t), with
g'(t) = Σ_{b_j > t} |w_j|·s_j the slope of the current segment.  Because g is concave its
tangent lies above it, so the iterates increase and never pass the root; a step that crosses
no breakpoint stayed on one linear piece and has landed on the root exactly.  That is the
stopping test, read off the slope: it falls exactly when the step crossed the breakpoint of a
coordinate that moves (a coordinate with w_j = 0 never matters).  Every other step crosses at
least one breakpoint, so a row needs at most d + 1 steps, and in practice three or four: each
step costs two sums over (N, d), where sorting the breakpoints (the textbook O(d log d)
method) costs far more on CPU than the whole Newton solve.

Everything is batched with static shapes (no boolean indexing); the loop runs until every
row of the batch has stopped.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from keras import ops

_TINY = 1e-12

# Newton steps taken before the loop tests whether every row has stopped: MNIST batches
# during training need 3–4 (the last one confirms the root).
NEWTON_STEPS = 4


def project_to_hyperplane(x: Any, w: Any, c: Any, norm: str = "linf") -> Any:
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
    problem, state = newton_start(x, w, c, norm)
    t = newton_continue(problem, state)[1]
    return newton_finish(*problem.finish_parts(), t, norm)


# The projection in three stages, so that a backend that compiles elementwise work
# (`keras_dyart.backend.fuse`) can fuse the first and the last without the host round trip
# of the middle one, which tests whether every row has stopped:
#   newton_start: the problem and the first `NEWTON_STEPS` steps, no data-dependent exit;
#   newton_continue: Newton steps until every row has stopped (nearly always none);
#   newton_finish: the step δ from t (and the parts of the problem it reads).
# ``state`` is (k, t, slope, done).


class NewtonProblem(NamedTuple):
    """One batch of projection problems (every field per row or per coordinate)."""

    r: object            # distance to the hyperplane along the flipped w, ≥ 0
    direction: object    # ±1 (0 where w_j = 0): the way coordinate j moves
    room: object         # how far it can move before the box face
    cap: object          # its progress once saturated
    aw: object           # |w_j|
    rate: object         # its progress per unit of t while it moves
    breakpoints: object  # the t at which it saturates
    feasible: object     # the box meets the hyperplane

    def finish_parts(self):
        """The fields `newton_finish` reads, in its order."""
        return self.direction, self.room, self.aw, self.feasible


def newton_start(x: Any, w: Any, c: Any, norm: str) -> tuple[NewtonProblem, tuple]:
    """The projection problem of ``x``, ``w``, ``c`` and the state after the first
    `NEWTON_STEPS` Newton steps: ``(problem, state)`` (see above)."""
    x = ops.convert_to_tensor(x)
    w = ops.cast(w, x.dtype)
    c = ops.cast(c, x.dtype)
    r = c - ops.sum(w * x, axis=-1)
    flip = ops.where(r < 0, -1.0, 1.0)
    r = r * flip

    aw = ops.abs(w)
    direction = ops.sign(w) * flip[:, None]
    # The room of coordinate j to the face it moves towards: 1 − x_j (direction +1) or x_j
    # (−1), as arithmetic on the sign: three passes over (N, d) where two masks, two casts
    # and a sum took seven.  A coordinate with w_j = 0 gets room ½, which nothing reads: its
    # rate, cap and step are all 0.
    room = 0.5 * (1.0 + direction) - direction * x
    cap = aw * room                     # the progress of coordinate j once saturated
    if norm == "linf":                  # unit speed: the breakpoints are the rooms
        rate, breakpoints = aw, room
    else:
        rate = aw * aw
        breakpoints = room / ops.maximum(aw, _TINY)
    feasible = ops.sum(cap, axis=-1) >= r
    problem = NewtonProblem(r, direction, room, cap, aw, rate, breakpoints, feasible)

    t0 = ops.zeros_like(r)
    state = (ops.convert_to_tensor(0, "int32"), t0, _slope_at(problem, t0),
             ~feasible | (r <= 0))
    # The typical number of steps, written out: a step of a row that has stopped changes
    # nothing.
    for _ in range(NEWTON_STEPS):
        state = _newton_step(problem, *state)
    return problem, state


def _slope_at(problem, t):
    # Σ rate_j over the coordinates still moving at t (b_j > t).
    moving = ops.cast(problem.breakpoints > t[:, None], problem.rate.dtype)
    return ops.sum(problem.rate * moving, axis=-1)


def _newton_step(problem, k, t, slope, done):
    progress = ops.sum(ops.minimum(problem.rate * t[:, None], problem.cap), axis=-1)
    step = ops.maximum(problem.r - progress, 0.0) / ops.maximum(slope, _TINY)
    t_next = ops.where(done, t, t + step)
    slope_next = _slope_at(problem, t_next)
    # The slope only falls when the step crossed a breakpoint (of a coordinate that moves);
    # where it did not, the step stayed on one linear piece: t_next is the root.
    return k + 1, t_next, slope_next, done | (slope_next >= slope)


def newton_continue(problem: NewtonProblem, state: tuple) -> tuple:
    """Newton steps from ``state`` until every row has stopped (at most d + 1 in all)."""
    d = ops.shape(problem.room)[-1]

    def cond(k, t, slope, done):
        return ops.logical_and(k <= d, ops.logical_not(ops.all(done)))

    def body(k, t, slope, done):
        return _newton_step(problem, k, t, slope, done)

    return ops.while_loop(cond, body, state)


def newton_finish(direction: Any, room: Any, aw: Any, feasible: Any, t: Any, norm: str) -> Any:
    """The step δ of each row from the root ``t`` (the corner step where infeasible)."""
    if norm == "linf":  # infeasible rows go to the corner: every coordinate saturated
        return direction * ops.minimum(ops.where(feasible, t, math.inf)[:, None], room)
    step = direction * ops.minimum(t[:, None] * aw, room)
    return ops.where(feasible[:, None], step, direction * room)
