"""The boundary-speed formulas and their summary, in `keras.ops` (written once).

``speed_from_jvp`` and ``speed_from_difference`` turn φ's change at the boundary points into
a speed; ``summarize`` reduces a probe set's speeds and margins to the conflict share, the
mean speed per margin bin and the speed–margin correlation.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from keras import ops

from keras_dyart import _checks
from keras_dyart.geometry import TINY

SCALARS = ("n_usable", "n_vulnerable", "conflict_share", "mean_speed",
           "mean_speed_vulnerable", "speed_margin_corr")
"""The scalar entries of a `summarize` output that are logged per epoch and written as
columns (besides ``n_points`` and the per-bin lists)."""


def _safe_ratio(num, den):
    ok = den > TINY
    return ops.where(ok, num / ops.where(ok, den, 1.0), 0.0)


def speed_from_jvp(jvp: Any, grad_norm: Any) -> Any:
    """Exact boundary speed ``∇_θφ(x̂)·Δθ / ‖∇_xφ(x̂)‖_q`` from the weight JVP of φ.

    Args:
        jvp: ``(N,)`` directional derivatives ``∇_θ φ(x̂_i; θ)·Δθ``.
        grad_norm: ``(N,)`` dual norms ``‖∇_x φ(x̂_i; θ)‖_q``.

    Returns:
        ``(N,)`` float32 speeds; 0 where the gradient norm is 0.

    >>> import numpy as np
    >>> from keras import ops
    >>> ops.convert_to_numpy(speed_from_jvp(np.array([1.0, -2.0]), np.array([2.0, 4.0])))
    array([ 0.5, -0.5], dtype=float32)
    """
    jvp = ops.cast(jvp, "float32")
    return _safe_ratio(jvp, ops.cast(grad_norm, "float32"))


def speed_from_difference(phi_after, phi_before, grad_norm, step: float = 1.0):
    """Finite-difference boundary speed ``[φ(x̂;θ+hΔθ) − φ(x̂;θ)] / (h·‖∇_xφ(x̂;θ)‖_q)``.

    Args:
        phi_after: ``(N,)`` φ at the boundary points under the changed weights θ + h·Δθ.
        phi_before: ``(N,)`` φ at the same points under θ (≈ 0 after the refinement).
        grad_norm: ``(N,)`` dual norms ``‖∇_x φ(x̂_i; θ)‖_q``.
        step: h, the fraction of Δθ applied (1: the whole change).

    Returns:
        ``(N,)`` float32 speeds; 0 where the gradient norm is 0.

    >>> import numpy as np
    >>> from keras import ops
    >>> ops.convert_to_numpy(speed_from_difference(np.array([0.5]), np.array([0.25]),
    ...                                            np.array([2.0]), step=0.5))
    array([0.25], dtype=float32)
    """
    diff = ops.cast(phi_after, "float32") - ops.cast(phi_before, "float32")
    return _safe_ratio(diff, step * ops.cast(grad_norm, "float32"))


def default_bins(r0: float, n: int = 8) -> np.ndarray:
    """Margin bin edges: ``n`` equal bins on [0, r0) and one bin [r0, ∞).

    >>> default_bins(0.3, 3).tolist()
    [0.0, 0.10000000149011612, 0.20000000298023224, 0.30000001192092896, inf]
    """
    return np.concatenate([np.linspace(0.0, r0, n + 1), [np.inf]]).astype("float32")


def bin_edges(r0: float, bins: int | Sequence[float]) -> np.ndarray:
    """The bin edges of `summarize`: ``default_bins(r0, bins)`` for a count, else ``bins``
    itself; anything but a positive count or at least two increasing edges is refused."""
    if np.isscalar(bins):
        edges = default_bins(r0, bins)
        _checks.positive(bins, "bins", integer=True)
    else:
        edges = np.asarray(bins, "float32")
    if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(
            f"`bins` must be a positive integer or at least two increasing edges; "
            f"got {bins!r}.")
    return edges


def summarize(margin, speed, usable, r0: float,
              bins: int | Sequence[float] = 8) -> dict:
    """Conflict share, mean speed per margin bin and the speed–margin correlation.

    Args:
        margin: ``(N,)`` margins R_i.
        speed: ``(N,)`` boundary speeds s_i.
        usable: ``(N,)`` bool, points with a usable closest boundary point (this implies a
            correct prediction, φ(x) > 0); the other rows are ignored whatever their margin
            and speed (inf or NaN included), while a usable row must hold finite values.
        r0: points with ``R < r0`` are *vulnerable*.
        bins: number of equal bins on [0, r0) (one bin [r0, ∞) is added), or increasing
            bin edges.

    Returns:
        dict of Python floats / lists: ``n_points``, ``n_usable``, ``n_vulnerable``,
        ``conflict_share`` (share of vulnerable points with s < 0; NaN without vulnerable
        points), ``mean_speed`` (usable points), ``mean_speed_vulnerable``,
        ``speed_margin_corr`` (Pearson, usable points; NaN with fewer than two or no
        spread), ``bin_edges``, and per margin bin ``bin_count``, ``bin_mean_speed`` and
        ``bin_share_negative`` (share of its points with s < 0; NaN for empty bins).

    >>> import numpy as np
    >>> s = summarize(np.array([0.1, 0.2, 0.5]), np.array([-1.0, 1.0, 2.0]),
    ...               np.array([True, True, True]), r0=0.3, bins=[0.0, 0.3, np.inf])
    >>> s["conflict_share"], s["bin_mean_speed"], s["bin_share_negative"]
    (0.5, [0.0, 2.0], [0.5, 0.0])
    """
    r0 = _checks.positive(r0, "r0")
    edges = bin_edges(r0, bins)
    margin = ops.cast(ops.convert_to_tensor(margin), "float32")
    speed = ops.cast(ops.convert_to_tensor(speed), "float32")
    use = ops.cast(ops.convert_to_tensor(usable), "bool")
    if not (ops.shape(margin) == ops.shape(speed) == ops.shape(use)
            and len(ops.shape(margin)) == 1):
        raise ValueError(
            f"`margin`, `speed` and `usable` must be three vectors of one length; got shapes "
            f"{tuple(ops.shape(margin))}, {tuple(ops.shape(speed))} and "
            f"{tuple(ops.shape(use))}.")
    for arg, v in (("margin", margin), ("speed", speed)):
        bad = ops.convert_to_numpy(use & ~ops.isfinite(v))
        if np.any(bad):
            raise ValueError(
                f"`{arg}` is not finite at {int(np.sum(bad))} point(s) marked `usable` "
                f"(the first: row {int(np.argmax(bad))}); mark such points unusable.")
    # Unusable rows drop out of every statistic, whatever they hold (inf or NaN margins of
    # points without a boundary point would otherwise turn the means into NaN).
    margin = ops.where(use, margin, 0.0)
    speed = ops.where(use, speed, 0.0)
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
    corr = ops.where((n_u > 1) & (den > TINY), cov / ops.maximum(den, TINY), math.nan)
    # Bin membership by masks: one column per bin, static shapes.
    lo = ops.convert_to_tensor(edges[:-1])[None, :]
    hi = ops.convert_to_tensor(edges[1:])[None, :]
    member = u[:, None] * ops.cast((margin[:, None] >= lo) & (margin[:, None] < hi),
                                   "float32")
    count = ops.sum(member, axis=0)
    def bin_mean(v):
        return ops.where(count > 0, ops.sum(member * v[:, None], axis=0)
                         / ops.maximum(count, 1.0), math.nan)

    return {
        "n_points": int(ops.shape(margin)[0]),
        "n_usable": int(ops.convert_to_numpy(n_u)),
        "n_vulnerable": int(ops.convert_to_numpy(n_v)),
        "conflict_share": float(ops.convert_to_numpy(mean(vul, neg))),
        "mean_speed": float(ops.convert_to_numpy(ms)),
        "mean_speed_vulnerable": float(ops.convert_to_numpy(mean(vul, speed))),
        "speed_margin_corr": float(ops.convert_to_numpy(corr)),
        "bin_edges": [float(e) for e in edges],
        "bin_count": [int(c) for c in ops.convert_to_numpy(count)],
        "bin_mean_speed": [float(b) for b in ops.convert_to_numpy(bin_mean(speed))],
        "bin_share_negative": [float(b) for b in ops.convert_to_numpy(bin_mean(neg))],
    }


__all__ = ["SCALARS", "bin_edges", "default_bins", "speed_from_difference", "speed_from_jvp",
           "summarize"]
