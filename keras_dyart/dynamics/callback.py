"""`BoundaryDynamics`: the boundary-dynamics analysis recorded during ``fit()``.

It records how fast the decision boundary moves at a fixed probe set under the optimiser's
own steps (see `keras_dyart.dynamics`).
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Sequence

import keras
import numpy as np
from keras import ops

from keras_dyart import _checks
from keras_dyart.dynamics.analysis import METHODS
from keras_dyart.dynamics.changes import assigned_weights
from keras_dyart.dynamics.points import Analyzer, model_setting
from keras_dyart.dynamics.records import write_records
from keras_dyart.dynamics.speed import SCALARS, bin_edges, summarize


class BoundaryDynamics(keras.callbacks.Callback):
    """Record the boundary speed of a probe set under the training steps of ``fit()``.

    Every ``every`` training steps the callback finds the closest soft-boundary point and
    margin of each probe point at the current weights θ (before the step), lets the step run,
    takes the change it made, Δθ = θ_after − θ_before (whatever the model's ``train_step``
    and optimiser did: DyART, PGD-AT, plain cross-entropy, momentum included), and computes
    each probe point's boundary speed s_i under Δθ (per step), then `summarize`s them.

    Works with any Keras model that outputs logits, on every backend.  The weights are put
    back exactly after each measurement, so training is not affected.

    Args:
        x_probe: fixed probe inputs in [0, 1] (a few hundred points).
        y_probe: their labels.
        every: record every ``every`` training steps (the first step is always recorded).
            With ``steps_per_execution > 1`` a record covers one execution and Δθ is its
            change divided by the number of steps in it (the mean step).
        method: ``"exact"`` (weight JVP, default) or ``"finite_difference"``
            (one extra forward pass: [φ(x̂; θ_after) − φ(x̂; θ_before)] / ‖∇_x φ‖_q).
        r0: vulnerability radius of the summaries (default: the model's ``r0``, else 16/255).
        bins: margin bins (see `keras_dyart.dynamics.summarize`).
        norm: threat model of the boundary search (default: the model's, else L∞).
        beta: soft-margin temperature (default: a `DyARTModel`'s, else 5).
        n_iter: FAB iterations of the search.
        use_filter: apply the quality filter (see `keras_dyart.dynamics.boundary_points`).
        batch_size: probe points per compiled call.
        log_dir: folder for ``dynamics.csv`` (one row per record), ``dynamics_points.csv``
            (one row per probe point and record), ``speed_vs_margin.png`` and
            ``conflict_share.png``; rewritten at every epoch end. None: write nothing.
        prefix: prefix of the keys added to the epoch logs (and so to ``History``).
        jit: compile the search (default: on JAX only).

    Epoch logs gain ``{prefix}conflict_share``, ``{prefix}mean_speed``,
    ``{prefix}mean_speed_vulnerable``, ``{prefix}speed_margin_corr``,
    ``{prefix}n_vulnerable`` and ``{prefix}n_usable``: the mean over the epoch's records
    (NaN in an epoch with no record).  ``records`` holds every record's summary and
    ``point_records`` the per-point arrays (``step``, ``margin``, ``speed``, ``usable``,
    ``vulnerable``).

    Example:

    ```python
    cb = kd.dynamics.BoundaryDynamics(x_test[:256], y_test[:256], every=20,
                                      log_dir="runs/dyn")
    model.fit(x_train, y_train, epochs=2, callbacks=[cb])
    model.history.history["dynamics_conflict_share"]
    ```
    """

    def __init__(self, x_probe, y_probe, every: int = 50, *, method: str = "exact",
                 r0: float | None = None, bins: int | Sequence[float] = 8,
                 norm: str | None = None, beta: float | None = None, n_iter: int = 20,
                 use_filter: bool = True, batch_size: int = 256, log_dir: str | None = None,
                 prefix: str = "dynamics_", jit: bool | None = None):
        super().__init__()
        self.x_probe = _checks.images(x_probe, "x_probe")
        self.y_probe = _checks.labels(y_probe, len(self.x_probe), arg="y_probe")
        self.every = _checks.positive(every, "every", integer=True)
        if method not in METHODS:
            raise ValueError(
                f"`method` must be 'exact' or 'finite_difference'; got {method!r}.")
        self.method = method
        self.r0 = None if r0 is None else _checks.parse_eps(r0, "r0")
        self.bins = bins
        bin_edges(1.0, bins if not np.isscalar(bins) else int(bins))  # validates `bins`
        self.norm = None if norm is None else _checks.norm_name(norm)
        self.beta = beta
        self.n_iter = _checks.positive(n_iter, "n_iter", integer=True)
        self.use_filter = bool(use_filter)
        self.batch_size = _checks.positive(batch_size, "batch_size", integer=True)
        self.log_dir = None if log_dir is None else os.fspath(log_dir)
        self.prefix = str(prefix)
        self.jit = jit
        self.records = []
        self.point_records = []
        self._analyzer = None
        self._pending = None
        self._step = 0
        self._next_record = 0
        self._begin_batch = 0
        self._epoch = 0
        self._epoch_start = 0

    def get_config(self) -> dict:
        return {"every": self.every, "method": self.method, "r0": self.r0,
                "bins": self.bins, "norm": self.norm, "beta": self.beta,
                "n_iter": self.n_iter, "use_filter": self.use_filter,
                "batch_size": self.batch_size, "log_dir": self.log_dir,
                "prefix": self.prefix}

    # -- hooks -----------------------------------------------------------------------------

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._epoch_start = len(self.records)

    def on_train_batch_begin(self, batch, logs=None):
        self._begin_batch = batch
        if self._step < self._next_record:
            return
        model = self.model                  # on JAX this syncs the state into the variables
        if self._analyzer is None:
            self._analyzer = Analyzer(model, self.norm, self.beta, self.n_iter,
                                      use_filter=self.use_filter,
                                      batch_size=self.batch_size, jit=self.jit)
            self._r0 = self.r0 if self.r0 is not None else _checks.parse_eps(
                model_setting(None, model, "r0", 16 / 255), "r0")
            _checks.cap_in_box(self._r0, self._analyzer.norm, (0.0, 1.0), "r0")
        points = self._analyzer.points(self.x_probe, self.y_probe)
        theta = [ops.convert_to_numpy(v).astype("float32") for v in model.trainable_variables]
        self._pending = (points, theta)

    def on_train_batch_end(self, batch, logs=None):
        # With steps_per_execution > 1 one call covers batches begin..batch.
        n_steps = max(1, batch - self._begin_batch + 1)
        step, self._step = self._step, self._step + n_steps
        if self._pending is None:
            return
        points, theta = self._pending
        self._pending = None
        self._next_record = step + self.every
        model = self.model
        after = [ops.convert_to_numpy(v).astype("float32") for v in model.trainable_variables]
        delta = [(a - t) / n_steps for a, t in zip(after, theta)]
        if not all(np.all(np.isfinite(d)) for d in delta):
            # a diverged step (NaN or inf weights) moves the boundary by no defined speed
            warnings.warn(f"BoundaryDynamics: the training step {step} left non-finite "
                          f"weights; no boundary speed is recorded for it.", stacklevel=2)
            return
        with assigned_weights(model, theta):
            speed = self._analyzer.speed(points, delta, self.method)
        summary = summarize(points.margin, speed, points.usable, self._r0, self.bins)
        self.records.append({"step": step, "epoch": self._epoch, **summary})
        self.point_records.append({
            "step": step, "margin": points.margin, "speed": speed, "usable": points.usable,
            "correct": points.correct, "label": points.y,
            "vulnerable": points.usable & (points.margin < self._r0)})

    def on_epoch_end(self, epoch, logs=None):
        recent = self.records[self._epoch_start:]
        if logs is not None:
            for key in SCALARS:
                values = [r[key] for r in recent if not math.isnan(r[key])]
                logs[self.prefix + key] = float(np.mean(values)) if values else math.nan
        if self.log_dir:
            self.write(self.log_dir)

    def on_train_end(self, logs=None):
        self._pending = None
        if self.log_dir:
            self.write(self.log_dir)

    # -- files -----------------------------------------------------------------------------

    def write(self, log_dir: str) -> None:
        """Write ``dynamics.csv``, ``dynamics_points.csv`` and the two plots into
        ``log_dir`` (see `keras_dyart.dynamics.write_records`)."""
        write_records(log_dir, self.records, self.point_records,
                           r0=getattr(self, "_r0", None))


__all__ = ["BoundaryDynamics"]
