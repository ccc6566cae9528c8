"""Plots of the analysis (matplotlib, imported on first use): speed against margin, and the
conflict share against the training step."""

from __future__ import annotations

from types import ModuleType
from typing import Sequence

import numpy as np

from keras_dyart.dynamics.analysis import DynamicsResult


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the Agg backend unless another one was chosen already."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_speed_vs_margin(results, path: str | None = None,
                         labels: Sequence[str | None] | None = None, r0: float | None = None,
                         ax=None, title: str | None = None):
    """Scatter of boundary speed against margin, one colour per result.

    Args:
        results: one or a list of `DynamicsResult` (or ``(margin, speed)`` pairs).
        path: PNG file to write (optional).
        labels: legend entries, one per result.
        r0: draw the vulnerability radius as a vertical line (default: that of the first
            `DynamicsResult`).
        ax: matplotlib axes to draw into (default: a new figure).
        title: title of the axes.

    Returns:
        the matplotlib ``Figure``.
    """
    plt = pyplot()
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


def plot_conflict_share(curves: dict, path: str | None = None, ax=None,
                        title: str | None = None):
    """Conflict share against training step, one line per run.

    Args:
        curves: dict ``label -> (steps, shares)``.
        path: PNG file to write (optional).
        ax: matplotlib axes to draw into (default: a new figure).
        title: title of the axes.

    Returns:
        the matplotlib ``Figure``.
    """
    plt = pyplot()
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


__all__ = ["plot_conflict_share", "plot_speed_vs_margin", "pyplot"]
