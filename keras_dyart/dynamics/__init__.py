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

The modules, from the bottom up:

- `keras_dyart.dynamics.speed`: the speed formulas and `summarize`, in `keras.ops`;
- `keras_dyart.dynamics.changes`: weight changes (`step_change`, `weight_change`,
  `assigned_weights`);
- `keras_dyart.dynamics.points`: `BoundaryPoints` and the compiled `Analyzer` (the boundary
  search is `keras_dyart.boundary.search`; the weight-JVP, the only per-backend piece, is
  `keras_dyart.backend.jvp`);
- `keras_dyart.dynamics.analysis`: `boundary_points`, `boundary_speed`,
  `boundary_dynamics`, `DynamicsResult`;
- `keras_dyart.dynamics.plots` and `keras_dyart.dynamics.records`: figures and CSV files;
- `keras_dyart.dynamics.callback`: `BoundaryDynamics`, the analysis during ``fit()``.

Example (any compiled Keras model that outputs logits)::

    from keras_dyart import dynamics

    delta = dynamics.step_change(model, x_batch, y_batch)   # one optimiser step, undone
    res = dynamics.boundary_dynamics(model, x_probe, y_probe, delta, r0=0.3)
    res.speed                        # per point; NaN where no usable boundary point
    res.summary["conflict_share"]    # share of vulnerable points with s < 0
"""

from keras_dyart.dynamics.analysis import (
    METHODS,
    DynamicsResult,
    boundary_dynamics,
    boundary_points,
    boundary_speed,
)
from keras_dyart.dynamics.callback import BoundaryDynamics
from keras_dyart.dynamics.changes import assigned_weights, step_change, weight_change
from keras_dyart.dynamics.plots import plot_conflict_share, plot_speed_vs_margin
from keras_dyart.dynamics.points import Analyzer, BoundaryPoints
from keras_dyart.dynamics.records import write_records
from keras_dyart.dynamics.speed import (
    SCALARS,
    default_bins,
    speed_from_difference,
    speed_from_jvp,
    summarize,
)

__all__ = [
    "METHODS", "SCALARS", "Analyzer", "BoundaryDynamics", "BoundaryPoints",
    "DynamicsResult", "assigned_weights", "boundary_dynamics", "boundary_points",
    "boundary_speed", "default_bins", "plot_conflict_share", "plot_speed_vs_margin",
    "speed_from_difference", "speed_from_jvp", "step_change", "summarize", "weight_change",
    "write_records",
]
