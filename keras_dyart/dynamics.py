"""Boundary dynamics: how fast each point's margin grows or shrinks under a weight change.

For a labelled point (x_i, y_i) with closest soft-boundary point x̂_i and margin R_i, a change
of the weights θ → θ + Δθ moves the margin at the *boundary speed* (spec §4)

    s_i = ∇_θ φ(x̂_i; θ) · Δθ / ‖∇_x φ(x̂_i; θ)‖_q                      (exact, a JVP)
    s_i ≈ [φ(x̂_i; θ + h·Δθ) − φ(x̂_i; θ)] / (h · ‖∇_x φ(x̂_i; θ)‖_q)   (finite difference)

with q the dual norm of the threat model (L∞ → L1, L2 → L2).  ``s_i > 0``: the boundary
moves away from x_i (its margin grows); ``s_i < 0``: towards it.  Δθ is in units of "one
change": one optimiser step (`step_change`), the difference of two checkpoints
(`weight_change`), or any list of arrays shaped like ``model.trainable_variables``.
Non-trainable state (BatchNorm statistics) is held at its θ value in both forms.

Summaries (`summarize`):

- **vulnerable points**: correctly classified points (φ(x) > 0) with a usable closest
  boundary point (found, and passing the quality filter when it is on) at margin R < r0;
- **conflict share**: the share of vulnerable points with s < 0, i.e. whose boundary moves
  towards them under the change;
- **mean speed per margin bin**: the mean of s over usable points whose margin falls in each
  bin (default: ``bins`` equal bins on [0, r0) and one bin [r0, ∞));
- **correlation**: Pearson's correlation of s and R over usable points.

The speed and summary math is written once in `keras.ops`; the weight-JVP is the only
per-backend piece (`keras_dyart.backend.jvp`).

Example (any compiled Keras model that outputs logits)::

    from keras_dyart import dynamics

    delta = dynamics.step_change(model, x_batch, y_batch)   # one optimiser step, undone
    res = dynamics.boundary_dynamics(model, x_probe, y_probe, delta, r0=0.3)
    res.speed                        # per point; NaN where no usable boundary point
    res.summary["conflict_share"]    # share of vulnerable points with s < 0
"""

import contextlib
import dataclasses
import math
import os

import keras
import numpy as np
from keras import ops

from keras_dyart import _checks, io
from keras_dyart import backend as dyart_backend
from keras_dyart.backend.jvp import param_jvp
from keras_dyart.boundary import find_boundary_points, quality_filter
from keras_dyart.margins import dual_norm_name, lp_norm, soft_margin

METHODS = ("exact", "finite_difference")

_TINY = 1e-12


# -- the speed and summary math (keras.ops, written once) --------------------------------------


def _safe_ratio(num, den):
    ok = den > _TINY
    return ops.where(ok, num / ops.where(ok, den, 1.0), 0.0)


def speed_from_jvp(jvp, grad_norm):
    """Exact boundary speed ``∇_θφ(x̂)·Δθ / ‖∇_xφ(x̂)‖_q`` from the weight JVP of φ.

    Args:
        jvp: ``(N,)`` directional derivatives ``∇_θ φ(x̂_i; θ)·Δθ``.
        grad_norm: ``(N,)`` dual norms ``‖∇_x φ(x̂_i; θ)‖_q``.

    Returns:
        ``(N,)`` speeds; 0 where the gradient norm is 0.

    >>> import numpy as np
    >>> from keras import ops
    >>> ops.convert_to_numpy(speed_from_jvp(np.array([1.0, -2.0]), np.array([2.0, 4.0])))
    array([ 0.5, -0.5], dtype=float32)
    """
    jvp = ops.cast(jvp, "float32")
    return _safe_ratio(jvp, ops.cast(grad_norm, "float32"))


def speed_from_difference(phi_after, phi_before, grad_norm, step=1.0):
    """Finite-difference boundary speed ``[φ(x̂;θ+hΔθ) − φ(x̂;θ)] / (h·‖∇_xφ(x̂;θ)‖_q)``.

    Args:
        phi_after: ``(N,)`` φ at the boundary points under the changed weights θ + h·Δθ.
        phi_before: ``(N,)`` φ at the same points under θ (≈ 0 after the refinement).
        grad_norm: ``(N,)`` dual norms ``‖∇_x φ(x̂_i; θ)‖_q``.
        step: h, the fraction of Δθ applied (1: the whole change).

    >>> import numpy as np
    >>> from keras import ops
    >>> ops.convert_to_numpy(speed_from_difference(np.array([0.5]), np.array([0.25]),
    ...                                            np.array([2.0]), step=0.5))
    array([0.25], dtype=float32)
    """
    diff = ops.cast(phi_after, "float32") - ops.cast(phi_before, "float32")
    return _safe_ratio(diff, step * ops.cast(grad_norm, "float32"))


def default_bins(r0, n=8):
    """Margin bin edges: ``n`` equal bins on [0, r0) and one bin [r0, ∞)."""
    return np.concatenate([np.linspace(0.0, r0, n + 1), [np.inf]]).astype("float32")


def summarize(margin, speed, usable, r0, bins=8):
    """Conflict share, mean speed per margin bin and the speed–margin correlation.

    Args:
        margin: ``(N,)`` margins R_i.
        speed: ``(N,)`` boundary speeds s_i.
        usable: ``(N,)`` bool, points with a usable closest boundary point (this implies a
            correct prediction, φ(x) > 0).
        r0: points with ``R < r0`` are *vulnerable*.
        bins: number of equal bins on [0, r0) (one bin [r0, ∞) is added), or increasing
            bin edges.

    Returns:
        dict of Python floats / lists: ``n_points``, ``n_usable``, ``n_vulnerable``,
        ``conflict_share`` (share of vulnerable points with s < 0; NaN without vulnerable
        points), ``mean_speed`` (usable points), ``mean_speed_vulnerable``,
        ``speed_margin_corr`` (Pearson, usable points; NaN with fewer than two or no
        spread), ``bin_edges``, ``bin_count`` and ``bin_mean_speed`` (NaN for empty bins).

    >>> import numpy as np
    >>> s = summarize(np.array([0.1, 0.2, 0.5]), np.array([-1.0, 1.0, 2.0]),
    ...               np.array([True, True, True]), r0=0.3, bins=[0.0, 0.3, np.inf])
    >>> s["conflict_share"], s["bin_mean_speed"]
    (0.5, [0.0, 2.0])
    """
    r0 = _checks.positive(r0, "r0")
    edges = default_bins(r0, bins) if np.isscalar(bins) else np.asarray(bins, "float32")
    if np.isscalar(bins):
        _checks.positive(bins, "bins", integer=True)
    if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(
            f"`bins` must be a positive integer or at least two increasing edges; "
            f"got {bins!r}.")
    margin = ops.cast(ops.convert_to_tensor(margin), "float32")
    speed = ops.cast(ops.convert_to_tensor(speed), "float32")
    use = ops.cast(ops.convert_to_tensor(usable), "bool")
    speed = ops.where(use, speed, 0.0)                 # NaNs of unusable rows drop out
    u = ops.cast(use, "float32")
    vul = u * ops.cast(margin < r0, "float32")
    neg = ops.cast(speed < 0, "float32")
    n_u, n_v = ops.sum(u), ops.sum(vul)

    def mean(w, v):
        return ops.where(ops.sum(w) > 0, ops.sum(w * v) / ops.maximum(ops.sum(w), 1.0),
                         math.nan)

    mr, ms = mean(u, margin), mean(u, speed)
    cov = mean(u, (margin - mr) * (speed - ms))
    var_r, var_s = mean(u, (margin - mr) ** 2), mean(u, (speed - ms) ** 2)
    den = ops.sqrt(var_r * var_s)
    corr = ops.where((n_u > 1) & (den > _TINY), cov / ops.maximum(den, _TINY), math.nan)
    # Bin membership by masks: one column per bin, static shapes.
    lo = ops.convert_to_tensor(edges[:-1])[None, :]
    hi = ops.convert_to_tensor(edges[1:])[None, :]
    member = u[:, None] * ops.cast((margin[:, None] >= lo) & (margin[:, None] < hi),
                                   "float32")
    count = ops.sum(member, axis=0)
    bin_mean = ops.where(count > 0, ops.sum(member * speed[:, None], axis=0)
                         / ops.maximum(count, 1.0), math.nan)
    out = {
        "n_points": int(ops.shape(margin)[0]),
        "n_usable": int(ops.convert_to_numpy(n_u)),
        "n_vulnerable": int(ops.convert_to_numpy(n_v)),
        "conflict_share": float(ops.convert_to_numpy(mean(vul, neg))),
        "mean_speed": float(ops.convert_to_numpy(ms)),
        "mean_speed_vulnerable": float(ops.convert_to_numpy(mean(vul, speed))),
        "speed_margin_corr": float(ops.convert_to_numpy(corr)),
        "bin_edges": [float(e) for e in edges],
        "bin_count": [int(c) for c in ops.convert_to_numpy(count)],
        "bin_mean_speed": [float(b) for b in ops.convert_to_numpy(bin_mean)],
    }
    return out


# -- boundary points ---------------------------------------------------------------------------


@dataclasses.dataclass
class BoundaryPoints:
    """Closest soft-boundary points of a probe set at the weights θ (NumPy arrays).

    Attributes:
        x, y: the inputs and labels.
        x_hat: closest boundary points (equal to ``x`` where none was found).
        margin: ``‖x_hat − x‖_p`` (0 where none was found).
        usable: found (φ(x) > 0 and φ(x̂) ≤ 0 reached) and, if on, passed the quality filter.
        correct: ``argmax f(x) == y``.
        phi_x, phi_hat: φ at ``x`` and at ``x_hat``.
        grad_norm: ``‖∇_x φ(x_hat)‖_q``.
        norm, beta: threat model and soft-margin temperature used.
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


def _search_fn(logits_fn, x, y, beta, norm, n_iter, refine, refine_steps, use_filter):
    y = ops.cast(y, "int32")
    logits = logits_fn(x)

    def phi(z):
        return soft_margin(logits_fn(z), y, beta)

    def phi_and_grad(z):
        return dyart_backend.value_and_grad(phi, z)

    out = find_boundary_points(phi_and_grad, phi, x, norm=norm, n_iter=n_iter,
                               refine=refine, refine_steps=refine_steps)
    x_hat = ops.stop_gradient(out["x_hat"])
    phi_hat, grad_hat = phi_and_grad(x_hat)
    usable = out["found"]
    if use_filter:
        usable = usable & quality_filter(x, x_hat, phi_hat, grad_hat, norm)
    grad_norm = lp_norm(grad_hat, dual_norm_name(norm))
    usable = usable & (grad_norm > _TINY)
    correct = ops.argmax(logits, axis=-1) == y
    return (x_hat, out["margin"], usable, correct, out["phi_x"], phi_hat, grad_norm)


def _phi_fn(logits_fn, x, y, beta):
    return soft_margin(logits_fn(x), ops.cast(y, "int32"), beta)


def _setting(value, model, attr, default):
    """An explicit value, else the `DyARTModel`'s own setting (its ``norm``, soft-margin
    ``beta`` and ``r0``; the threat model ``norm`` of any model that has one), else
    ``default``.  Other methods' ``beta`` (TRADES, MART) is a different quantity."""
    if value is not None:
        return value
    from keras_dyart.models import DyARTModel

    if isinstance(model, DyARTModel) or (attr == "norm" and hasattr(model, "norm")):
        return getattr(model, attr, default)
    return default


def _check_model(model, arg="model"):
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(
            f"`{arg}` must be a Keras model that outputs logits; got {type(model).__name__}.")
    if not model.trainable_variables:
        raise ValueError(f"`{arg}` has no trainable variables; build it first.")
    bounds = tuple(getattr(model, "bounds", (0.0, 1.0)))
    if bounds != (0.0, 1.0):
        raise ValueError(
            f"`{arg}` has input bounds {bounds}; the boundary-dynamics analysis measures "
            f"margins and speeds of inputs in [0, 1] only. Analyse its classifier behind a "
            f"Rescaling layer that maps [0, 1] to those bounds.")


class _Analyzer:
    """Compiled search and φ evaluations for one model; reused by the callback."""

    def __init__(self, model, norm=None, beta=None, n_iter=20, refine=True, refine_steps=4,
                 use_filter=True, batch_size=256, jit=None):
        _check_model(model)
        self.model = model
        self.norm = _checks.norm_name(_setting(norm, model, "norm", "linf"))
        self.beta = _checks.positive(_setting(beta, model, "beta", 5.0), "beta")
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
                return _phi_fn(lambda z: ops.cast(logits_fn(z), "float32"), x, y,
                               settings["beta"])

            cache[key] = (dyart_backend.compile_model_fn(model, search, jit),
                          dyart_backend.compile_model_fn(model, phi, jit))
        self._search, self._phi = cache[key]

    def _batches(self, n):
        for start in range(0, n, self.batch_size):
            yield slice(start, min(n, start + self.batch_size))

    def points(self, x, y):
        x = _checks.images(x, "x")
        y = _checks.labels(y, len(x), arg="y")
        parts = [[ops.convert_to_numpy(t) for t in self._search(x[sl], y[sl])]
                 for sl in self._batches(len(x))]
        cols = [np.concatenate(c) for c in zip(*parts)]
        x_hat, margin, usable, correct, phi_x, phi_hat, grad_norm = cols
        return BoundaryPoints(x=x, y=y, x_hat=x_hat.astype("float32"),
                              margin=margin.astype("float32"), usable=usable.astype(bool),
                              correct=correct.astype(bool), phi_x=phi_x, phi_hat=phi_hat,
                              grad_norm=grad_norm.astype("float32"), norm=self.norm,
                              beta=self.beta)

    def phi(self, x, y):
        return np.concatenate([ops.convert_to_numpy(self._phi(x[sl], y[sl]))
                               for sl in self._batches(len(x))])

    def speed(self, points, delta, method="exact", step=1.0):
        model = self.model
        if method == "exact":
            jvps = []
            for sl in self._batches(len(points.x)):
                _, jvp = param_jvp(model, _phi_fn, delta, points.x_hat[sl], points.y[sl],
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


# -- weight changes ----------------------------------------------------------------------------


@contextlib.contextmanager
def assigned_weights(model, values):
    """Temporarily set ``model.trainable_variables`` to ``values``; restore them on exit."""
    variables = model.trainable_variables
    saved = [ops.convert_to_numpy(v) for v in variables]
    try:
        for v, a in zip(variables, values):
            v.assign(a)
        yield model
    finally:
        for v, s in zip(variables, saved):
            v.assign(s)


def _check_delta(model, delta, arg="delta"):
    variables = model.trainable_variables
    if isinstance(delta, dict) or not isinstance(delta, (list, tuple)):
        raise TypeError(
            f"`{arg}` must be a list of arrays, one per entry of "
            f"`model.trainable_variables` ({len(variables)}); got {type(delta).__name__}.")
    if len(delta) != len(variables):
        raise ValueError(
            f"`{arg}` has {len(delta)} arrays but the model has {len(variables)} trainable "
            "variables.")
    out = []
    for i, (d, v) in enumerate(zip(delta, variables)):
        d = np.asarray(ops.convert_to_numpy(d), dtype="float32")
        if tuple(d.shape) != tuple(v.shape):
            raise ValueError(
                f"`{arg}[{i}]` has shape {tuple(d.shape)} but variable {v.path!r} has "
                f"shape {tuple(v.shape)}.")
        if not np.all(np.isfinite(d)):
            raise ValueError(f"`{arg}[{i}]` contains NaN or inf values.")
        out.append(d)
    return out


def _load(model, arg):
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"`{arg}`: no such model file {path!r}.")
        return keras.saving.load_model(path, compile=False)
    _check_model(model, arg)
    return model


def weight_change(before, after):
    """Δθ = θ_after − θ_before of two models or ``.keras`` checkpoints of the same model.

    Args:
        before, after: Keras models or paths of ``.keras`` files with the same trainable
            variables (same order and shapes).

    Returns:
        list of NumPy arrays, one per entry of ``before.trainable_variables``.
    """
    before, after = _load(before, "before"), _load(after, "after")
    va, vb = before.trainable_variables, after.trainable_variables
    if len(va) != len(vb):
        raise ValueError(
            f"`before` has {len(va)} trainable variables but `after` has {len(vb)}; they "
            "must be checkpoints of the same model.")
    out = []
    for a, b in zip(va, vb):
        if tuple(a.shape) != tuple(b.shape):
            raise ValueError(
                f"variable {a.path!r} has shape {tuple(a.shape)} in `before` but "
                f"{tuple(b.shape)} in `after`; they must be checkpoints of the same model.")
        out.append(ops.convert_to_numpy(b).astype("float32")
                   - ops.convert_to_numpy(a).astype("float32"))
    return out


def _state_variables(model):
    return (list(model.variables) + list(model.optimizer.variables)
            + list(model.metrics_variables))


def step_change(model, x, y, *, steps=1, batch_size=None, restore=True):
    """Δθ made by ``steps`` optimiser steps of a compiled model's own ``train_step``.

    Works with any compiled Keras model whose ``train_step`` updates its weights (a plain
    classifier, `DyARTModel`, the adversarial-training models): the trainable weights are
    read before and after ``model.train_on_batch`` and subtracted.

    Args:
        model: a compiled Keras model.
        x, y: the training batch (all of it is one batch unless ``batch_size`` is given,
            in which case ``steps`` consecutive slices of that size are used, cycling).
        steps: number of optimiser steps.
        batch_size: rows per step (default: all of ``x``).
        restore: put the weights, the optimiser state and the metrics back afterwards
            (default True), so the model is unchanged and Δθ can be measured at θ.

    Returns:
        list of NumPy arrays, one per entry of ``model.trainable_variables``.
    """
    _check_model(model)
    if getattr(model, "optimizer", None) is None or not getattr(model, "compiled", False):
        raise ValueError("`model` must be compiled (with an optimizer) to take a step.")
    steps = _checks.positive(steps, "steps", integer=True)
    x = np.asarray(x)
    y = np.asarray(y)
    if len(x) != len(y):
        raise ValueError(f"`y` has {len(y)} rows but `x` has {len(x)}.")
    if len(x) == 0:
        raise ValueError("`x` is empty; expected at least one training input.")
    size = len(x) if batch_size is None else _checks.positive(batch_size, "batch_size",
                                                              integer=True)
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    state = _state_variables(model)
    saved = [ops.convert_to_numpy(v) for v in state]
    theta = [ops.convert_to_numpy(v).astype("float32") for v in model.trainable_variables]
    try:
        for k in range(steps):
            idx = (np.arange(size) + k * size) % len(x)
            model.train_on_batch(x[idx], y[idx])
        after = [ops.convert_to_numpy(v).astype("float32") for v in model.trainable_variables]
    finally:
        if restore:
            for v, s in zip(_state_variables(model), saved):
                v.assign(s)
    return [a - t for a, t in zip(after, theta)]


# -- the analysis ------------------------------------------------------------------------------


@dataclasses.dataclass
class DynamicsResult:
    """Boundary points, speeds and summary of one weight change.

    Attributes:
        points: the `BoundaryPoints` at θ.
        speed: exact speeds (NaN where no usable boundary point), or None if not computed.
        speed_fd: finite-difference speeds, or None if not computed.
        summary: `summarize` of the primary speed (exact when computed).
        r0: the vulnerability radius of the summary.
    """

    points: BoundaryPoints
    speed: np.ndarray
    speed_fd: np.ndarray
    summary: dict
    r0: float

    @property
    def vulnerable(self):
        """bool ``(N,)``: usable points with margin < r0."""
        return self.points.usable & (self.points.margin < self.r0)

    def rows(self):
        """Per-point rows (dicts) for a CSV file."""
        p = self.points
        rows = []
        for i in range(len(p.margin)):
            row = {"index": i, "label": int(p.y[i]), "correct": bool(p.correct[i]),
                   "usable": bool(p.usable[i]), "margin": float(p.margin[i])}
            if self.speed is not None:
                row["speed"] = float(self.speed[i])
            if self.speed_fd is not None:
                row["speed_fd"] = float(self.speed_fd[i])
            rows.append(row)
        return rows


def boundary_points(model, x, y, *, norm=None, beta=None, n_iter=20, refine=True,
                    refine_steps=4, use_filter=True, batch_size=256, jit=None):
    """Closest soft-boundary point, margin and ‖∇_x φ‖_q of every input at the current weights.

    Args:
        model: a Keras model that outputs logits (a `DyARTModel` works too; its ``norm`` and
            ``beta`` are the defaults).
        x, y: inputs in [0, 1] and integer labels.
        norm: ``"linf"`` (default) or ``"l2"``.
        beta: soft-margin temperature (default 5).
        n_iter, refine, refine_steps: FAB settings (see `find_boundary_points`).
        use_filter: apply the L∞ quality filter (points that fail it are not usable).
        batch_size: points per compiled call.
        jit: compile the search (default: on JAX only).

    Returns:
        `BoundaryPoints`.
    """
    return _Analyzer(model, norm, beta, n_iter, refine, refine_steps, use_filter,
                     batch_size, jit).points(x, y)


def _method(method):
    if method not in METHODS + ("both",):
        raise ValueError(
            f"`method` must be 'exact', 'finite_difference' or 'both'; got {method!r}.")
    return METHODS if method == "both" else (method,)


def boundary_speed(model, points, delta, *, method="exact", step=1.0, batch_size=256,
                   jit=None):
    """Boundary speed of each point of ``points`` under the weight change ``delta``.

    Args:
        model: the model at θ, the weights the ``points`` were found at.
        points: `BoundaryPoints` from `boundary_points`.
        delta: Δθ, one array per entry of ``model.trainable_variables``.
        method: ``"exact"`` (JVP) or ``"finite_difference"``.
        step: h of the finite difference: φ is evaluated at θ + h·Δθ (default 1, the
            whole change). Ignored by the exact form.

    Returns:
        ``(N,)`` float32 speeds; NaN where the point has no usable boundary point.
    """
    if not isinstance(points, BoundaryPoints):
        raise TypeError(f"`points` must be BoundaryPoints; got {type(points).__name__}.")
    (method,) = _method(method)
    step = _checks.positive(step, "step")
    delta = _check_delta(model, delta)
    analyzer = _Analyzer(model, points.norm, points.beta, batch_size=batch_size, jit=jit)
    return analyzer.speed(points, delta, method, step)


def boundary_dynamics(model, x, y, delta, *, method="exact", r0=None, bins=8, step=1.0,
                      norm=None, beta=None, n_iter=20, refine=True, refine_steps=4,
                      use_filter=True, batch_size=256, jit=None):
    """Margins, closest boundary points, boundary speeds and their summary in one call.

    Args:
        model: the model at θ.
        x, y: the probe inputs (in [0, 1]) and labels.
        delta: Δθ, one array per entry of ``model.trainable_variables``
            (from `step_change`, `weight_change` or your own).
        method: ``"exact"``, ``"finite_difference"`` or ``"both"``.
        r0: vulnerability radius of the summary (default: the model's ``r0`` if it has
            one, else 16/255).
        bins: margin bins of the summary (see `summarize`).
        step: h of the finite difference.
        norm, beta, n_iter, refine, refine_steps, use_filter, batch_size, jit: as in
            `boundary_points`.

    Returns:
        `DynamicsResult`.
    """
    methods = _method(method)
    step = _checks.positive(step, "step")
    r0 = _checks.parse_eps(_setting(r0, model, "r0", 16 / 255), "r0")
    _check_model(model)
    delta = _check_delta(model, delta)
    analyzer = _Analyzer(model, norm, beta, n_iter, refine, refine_steps, use_filter,
                         batch_size, jit)
    points = analyzer.points(x, y)
    speeds = {m: analyzer.speed(points, delta, m, step) for m in methods}
    main = speeds.get("exact", speeds.get("finite_difference"))
    return DynamicsResult(points=points, speed=speeds.get("exact"),
                          speed_fd=speeds.get("finite_difference"),
                          summary=summarize(points.margin, main, points.usable, r0, bins),
                          r0=r0)


# -- plots -------------------------------------------------------------------------------------


def plot_speed_vs_margin(results, path=None, labels=None, r0=None, ax=None, title=None):
    """Scatter of boundary speed against margin, one colour per result.

    Args:
        results: one or a list of `DynamicsResult` (or ``(margin, speed)`` pairs).
        path: PNG file to write (optional).
        labels: legend entries, one per result.
        r0: draw the vulnerability radius as a vertical line.
    Returns:
        the matplotlib ``Figure``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if isinstance(results, (DynamicsResult, tuple)):
        results = [results]
    labels = labels or [None] * len(results)
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.5, 4))
    for res, label in zip(results, labels):
        if isinstance(res, DynamicsResult):
            margin = res.points.margin
            speed = res.speed if res.speed is not None else res.speed_fd
            r0 = r0 if r0 is not None else res.r0
        else:
            margin, speed = res
        keep = np.isfinite(speed)
        ax.scatter(np.asarray(margin)[keep], np.asarray(speed)[keep], s=6, alpha=0.5,
                   label=label)
    ax.axhline(0.0, color="k", lw=0.7)
    if r0 is not None:
        ax.axvline(r0, color="gray", ls="--", lw=0.8)
    ax.set_xlabel("margin R")
    ax.set_ylabel("boundary speed s = dR/dt")
    if title:
        ax.set_title(title)
    if any(lb is not None for lb in labels):
        ax.legend(markerscale=3)
    fig = fig or ax.figure
    if path:
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    return fig


def plot_conflict_share(curves, path=None, ax=None, title=None):
    """Conflict share against training step, one line per run.

    Args:
        curves: dict ``label -> (steps, shares)``.
        path: PNG file to write (optional).
    Returns:
        the matplotlib ``Figure``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, (steps, shares) in curves.items():
        ax.plot(steps, shares, marker="o", ms=3, label=label)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("training step")
    ax.set_ylabel("conflict share (s < 0 among R < r0)")
    if title:
        ax.set_title(title)
    ax.legend()
    fig = fig or ax.figure
    if path:
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    return fig


_SCALARS = ("n_usable", "n_vulnerable", "conflict_share", "mean_speed",
            "mean_speed_vulnerable", "speed_margin_corr")


def _write_csv(path, rows):
    io.write_csv(path, rows)


def write_records(log_dir, records, point_records, r0=None, title=None):
    """Write a series of dynamics records as CSV files and plots into ``log_dir``.

    Args:
        records: list of dicts with ``step`` (and optionally ``epoch``) plus a `summarize`
            output each.
        point_records: list of dicts with ``step``, ``margin``, ``speed``, ``usable``,
            ``correct``, ``vulnerable`` (arrays over the probe set) and ``label``.
        r0: the vulnerability radius, drawn on the speed plot.

    Files: ``dynamics.csv`` (one row per record: the summary, with one column per margin
    bin), ``dynamics_points.csv`` (one row per probe point and record),
    ``speed_vs_margin.png`` (first and last record) and ``conflict_share.png``.
    """
    os.makedirs(log_dir, exist_ok=True)
    rows = []
    for rec in records:
        row = {k: rec[k] for k in ("step", "epoch", "n_points") + _SCALARS if k in rec}
        for i, v in enumerate(rec["bin_mean_speed"]):
            lo, hi = rec["bin_edges"][i], rec["bin_edges"][i + 1]
            row[f"bin_mean_speed[{lo:.4g},{hi:.4g})"] = v
        rows.append(row)
    _write_csv(os.path.join(log_dir, "dynamics.csv"), rows)
    point_rows = []
    for rec in point_records:
        for i in range(len(rec["margin"])):
            point_rows.append({
                "step": rec["step"], "index": i, "label": int(rec["label"][i]),
                "correct": bool(rec["correct"][i]), "usable": bool(rec["usable"][i]),
                "vulnerable": bool(rec["vulnerable"][i]),
                "margin": float(rec["margin"][i]), "speed": float(rec["speed"][i])})
    _write_csv(os.path.join(log_dir, "dynamics_points.csv"), point_rows)
    if not records:
        return
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    first, last = point_records[0], point_records[-1]
    pairs, labels = [(first["margin"], first["speed"])], [f"step {first['step']}"]
    if len(point_records) > 1:
        pairs.append((last["margin"], last["speed"]))
        labels.append(f"step {last['step']}")
    fig = plot_speed_vs_margin(pairs, os.path.join(log_dir, "speed_vs_margin.png"),
                               labels=labels, r0=r0, title=title)
    plt.close(fig)
    steps = [r["step"] for r in records]
    shares = [r["conflict_share"] for r in records]
    fig = plot_conflict_share({title or "conflict share": (steps, shares)},
                              os.path.join(log_dir, "conflict_share.png"))
    plt.close(fig)
