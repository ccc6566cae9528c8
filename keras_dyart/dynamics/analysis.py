"""The analysis API: boundary points, their speeds under a weight change, and both at once."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from keras_dyart import _checks
from keras_dyart.dynamics.changes import check_delta, check_model
from keras_dyart.dynamics.points import Analyzer, BoundaryPoints, model_setting
from keras_dyart.dynamics.speed import summarize

METHODS = ("exact", "finite_difference")


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
    speed: np.ndarray | None
    speed_fd: np.ndarray | None
    summary: dict
    r0: float

    @property
    def vulnerable(self) -> np.ndarray:
        """bool ``(N,)``: usable points with margin < r0."""
        return self.points.usable & (self.points.margin < self.r0)

    def rows(self) -> list[dict]:
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


def boundary_points(model, x, y, *, norm: str | None = None, beta: float | None = None,
                    n_iter: int = 20, refine: bool = True, refine_steps: int = 4,
                    use_filter: bool = True, batch_size: int = 256,
                    jit: bool | None = None) -> BoundaryPoints:
    """Closest soft-boundary point, margin and ‖∇_x φ‖_q of every input at the current weights.

    Args:
        model: a Keras model that outputs logits (a `DyARTModel` works too; its ``norm`` and
            ``beta`` are the defaults).
        x: inputs in [0, 1].
        y: integer labels.
        norm: ``"linf"`` (default) or ``"l2"``.
        beta: soft-margin temperature (default 5).
        n_iter: FAB iterations (see `keras_dyart.boundary.find_boundary_points`).
        refine: put the points on φ = 0 with a few secant steps.
        refine_steps: number of those steps.
        use_filter: apply the L∞ quality filter (points that fail it are not usable).
        batch_size: points per compiled call.
        jit: compile the search (default: on JAX only).

    Returns:
        `BoundaryPoints`.
    """
    return Analyzer(model, norm, beta, n_iter, refine, refine_steps, use_filter,
                    batch_size, jit).points(x, y)


def parse_method(method: str) -> tuple[str, ...]:
    """The speed forms named by ``method``: one of `METHODS`, or ``"both"``."""
    if method not in METHODS + ("both",):
        raise ValueError(
            f"`method` must be 'exact', 'finite_difference' or 'both'; got {method!r}.")
    return METHODS if method == "both" else (method,)


def boundary_speed(model, points: BoundaryPoints, delta: Sequence, *, method: str = "exact",
                   step: float = 1.0, batch_size: int = 256,
                   jit: bool | None = None) -> np.ndarray:
    """Boundary speed of each point of ``points`` under the weight change ``delta``.

    Args:
        model: the model at θ, the weights the ``points`` were found at.
        points: `BoundaryPoints` from `boundary_points`.
        delta: Δθ, one array per entry of ``model.trainable_variables``.
        method: ``"exact"`` (JVP) or ``"finite_difference"``.
        step: h of the finite difference: φ is evaluated at θ + h·Δθ (default 1, the
            whole change). Ignored by the exact form.
        batch_size: points per compiled call.
        jit: compile the φ evaluations (default: on JAX only).

    Returns:
        ``(N,)`` float32 speeds; NaN where the point has no usable boundary point.
    """
    if not isinstance(points, BoundaryPoints):
        raise TypeError(f"`points` must be BoundaryPoints; got {type(points).__name__}.")
    (method,) = parse_method(method)
    step = _checks.positive(step, "step")
    delta = check_delta(model, delta)
    analyzer = Analyzer(model, points.norm, points.beta, batch_size=batch_size, jit=jit)
    return analyzer.speed(points, delta, method, step)


def boundary_dynamics(model, x, y, delta: Sequence, *, method: str = "exact",
                      r0: float | None = None, bins: int | Sequence[float] = 8,
                      step: float = 1.0, norm: str | None = None, beta: float | None = None,
                      n_iter: int = 20, refine: bool = True, refine_steps: int = 4,
                      use_filter: bool = True, batch_size: int = 256,
                      jit: bool | None = None) -> DynamicsResult:
    """Margins, closest boundary points, boundary speeds and their summary in one call.

    Args:
        model: the model at θ.
        x: the probe inputs (in [0, 1]).
        y: their labels.
        delta: Δθ, one array per entry of ``model.trainable_variables``
            (from `step_change`, `weight_change` or your own).
        method: ``"exact"``, ``"finite_difference"`` or ``"both"``.
        r0: vulnerability radius of the summary (default: the model's ``r0`` if it has
            one, else 16/255).
        bins: margin bins of the summary (see `summarize`).
        step: h of the finite difference.
        norm: as in `boundary_points`.
        beta: as in `boundary_points`.
        n_iter: as in `boundary_points`.
        refine: as in `boundary_points`.
        refine_steps: as in `boundary_points`.
        use_filter: as in `boundary_points`.
        batch_size: as in `boundary_points`.
        jit: as in `boundary_points`.

    Returns:
        `DynamicsResult`.
    """
    methods = parse_method(method)
    step = _checks.positive(step, "step")
    r0 = _checks.parse_eps(model_setting(r0, model, "r0", 16 / 255), "r0")
    check_model(model)
    delta = check_delta(model, delta)
    analyzer = Analyzer(model, norm, beta, n_iter, refine, refine_steps, use_filter,
                        batch_size, jit)
    _checks.cap_in_box(r0, analyzer.norm, (0.0, 1.0), "r0")    # the analysis runs in [0, 1]
    points = analyzer.points(x, y)
    speeds = {m: analyzer.speed(points, delta, m, step) for m in methods}
    main = speeds.get("exact", speeds.get("finite_difference"))
    return DynamicsResult(points=points, speed=speeds.get("exact"),
                          speed_fd=speeds.get("finite_difference"),
                          summary=summarize(points.margin, main, points.usable, r0, bins),
                          r0=r0)


__all__ = ["METHODS", "DynamicsResult", "boundary_dynamics", "boundary_points",
           "boundary_speed", "parse_method"]
