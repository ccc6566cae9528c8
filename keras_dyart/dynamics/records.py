"""Writing a series of dynamics records: CSV files and the two plots."""

from __future__ import annotations

import os

from keras_dyart import io
from keras_dyart.dynamics.plots import plot_conflict_share, plot_speed_vs_margin, pyplot
from keras_dyart.dynamics.speed import SCALARS


def write_records(log_dir: str, records: list[dict], point_records: list[dict],
                  r0: float | None = None, title: str | None = None) -> None:
    """Write a series of dynamics records as CSV files and plots into ``log_dir``.

    Args:
        log_dir: the folder (created if missing).
        records: list of dicts with ``step`` (and optionally ``epoch``) plus a `summarize`
            output each.
        point_records: list of dicts with ``step``, ``margin``, ``speed``, ``usable``,
            ``correct``, ``vulnerable`` (arrays over the probe set) and ``label``.
        r0: the vulnerability radius, drawn on the speed plot.
        title: title of the plots.

    Files: ``dynamics.csv`` (one row per record: the summary, with one column per margin
    bin), ``dynamics_points.csv`` (one row per probe point and record),
    ``speed_vs_margin.png`` (first and last record) and ``conflict_share.png``.
    """
    os.makedirs(log_dir, exist_ok=True)
    rows = []
    for rec in records:
        row = {k: rec[k] for k in ("step", "epoch", "n_points") + SCALARS if k in rec}
        for key in ("bin_mean_speed", "bin_share_negative"):
            for i, v in enumerate(rec.get(key, ())):
                lo, hi = rec["bin_edges"][i], rec["bin_edges"][i + 1]
                row[f"{key}[{lo:.4g},{hi:.4g})"] = v
        rows.append(row)
    io.write_csv(os.path.join(log_dir, "dynamics.csv"), rows)
    point_rows = []
    for rec in point_records:
        for i in range(len(rec["margin"])):
            point_rows.append({
                "step": rec["step"], "index": i, "label": int(rec["label"][i]),
                "correct": bool(rec["correct"][i]), "usable": bool(rec["usable"][i]),
                "vulnerable": bool(rec["vulnerable"][i]),
                "margin": float(rec["margin"][i]), "speed": float(rec["speed"][i])})
    io.write_csv(os.path.join(log_dir, "dynamics_points.csv"), point_rows)
    if not records:
        return
    plt = pyplot()
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


__all__ = ["write_records"]
