"""`keras-dyart dynamics RUN_DIR`: boundary speeds of a run, from its checkpoints or from a
short training segment, as a table, CSV files and plots."""

import glob
import inspect
import json
import os
import re
from typing import Optional

import typer

FORMS = ("exact", "finite-difference")


def _natural(path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", os.path.basename(path))]


def find_checkpoints(run_dir):
    """The ``.keras`` files of a run: ``RUN_DIR/*.keras`` and ``RUN_DIR/checkpoints/*.keras``,
    in natural name order (``ckpt-2`` before ``ckpt-10``); a single file is its own list."""
    if os.path.isfile(run_dir):
        return [run_dir]
    found = (glob.glob(os.path.join(run_dir, "*.keras"))
             + glob.glob(os.path.join(run_dir, "checkpoints", "*.keras")))
    return sorted(found, key=lambda p: (os.path.dirname(p) != run_dir, _natural(p)))


def _config(run_dir):
    path = os.path.join(run_dir if os.path.isdir(run_dir) else os.path.dirname(run_dir),
                        "config.json")
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    return {}


def _method_kwargs(method, config, eps, norm):
    if method == "dyart":
        keys = ("beta", "lam", "alpha", "r0", "n_iter", "eps_fab", "random_start")
        kwargs = {k: config[k] for k in keys if k in config}
        kwargs["norm"] = norm
        return kwargs
    if method in ("pgd-at", "trades", "mart"):
        return {"eps": eps, "step_size": eps / 4, "steps": 10, "norm": norm}
    if method == "mma":
        return {"norm": norm}
    return {}


def _table(records, title):
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("step", "usable", "vulnerable", "conflict share", "mean speed (vuln.)",
                "corr(s, R)"):
        table.add_column(col, justify="right")
    for r in records:
        table.add_row(str(r["step"]), str(r["n_usable"]), str(r["n_vulnerable"]),
                      f"{r['conflict_share']:.3f}", f"{r['mean_speed_vulnerable']:.3g}",
                      f"{r['speed_margin_corr']:.3f}")
    Console().print(table)


def dynamics(
    run_dir: str = typer.Argument(
        ..., help="A run directory (from `keras-dyart train`), a folder of .keras "
                  "checkpoints, or one .keras file."),
    method: Optional[str] = typer.Option(
        None, help="Training method of the segment: clean, pgd-at, trades, mart, mma or "
                   "dyart. Default: the run's method (config.json), else dyart."),
    steps: Optional[int] = typer.Option(
        None, help="Train this many steps from the run's last checkpoint and record the "
                   "speeds under each step. Default: compare consecutive checkpoints when "
                   "there are two or more, else 20 steps."),
    every: int = typer.Option(5, help="Record every N steps of the segment."),
    probe: int = typer.Option(256, help="Probe points: the first N test points."),
    r0: Optional[str] = typer.Option(
        None, help="Vulnerability radius: points with margin < r0 are vulnerable. "
                   "Default: the largest evaluation eps of the run, else 16/255."),
    eps: Optional[str] = typer.Option(
        None, help="Attack radius of pgd-at/trades/mart segments. Default: as --r0."),
    form: str = typer.Option("exact", help="Speed formula: exact (JVP) or "
                                           "finite-difference."),
    norm: Optional[str] = typer.Option(None, help="Threat model: linf or l2 "
                                                  "(default: the run's, else linf)."),
    beta: float = typer.Option(5.0, help="Soft-margin temperature β."),
    lr: Optional[float] = typer.Option(None, help="SGD learning rate of the segment "
                                                  "(default: the run's, else 0.05)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size",
                                             help="Segment batch size (default: the "
                                                  "run's, else 128)."),
    dataset: Optional[str] = typer.Option(None, help="Data set (default: the run's, else "
                                                     "mnist5k)."),
    out: Optional[str] = typer.Option(None, help="Output folder (default: "
                                                 "RUN_DIR/dynamics)."),
    seed: int = typer.Option(0, help="Seed of the segment's batches."),
):
    """Boundary speed of a run: how fast each probe point's margin moves.

    With two or more checkpoints it compares consecutive ones (Δθ = θ_next − θ); otherwise
    (or with --steps) it trains a short segment from the last checkpoint with --method and
    measures every --every steps.  Prints a table of the conflict share (share of
    vulnerable points whose boundary moves towards them), mean speed and speed–margin
    correlation, and writes dynamics.csv, dynamics_points.csv, speed_vs_margin.png and
    conflict_share.png.
    """
    from keras_dyart import _checks

    config = _config(run_dir)
    try:
        if not os.path.exists(run_dir):
            raise ValueError(f"`RUN_DIR`: no such directory or file {run_dir!r}.")
        checkpoints = find_checkpoints(run_dir)
        if not checkpoints:
            raise ValueError(f"`RUN_DIR` {run_dir!r} holds no .keras checkpoint.")
        if form not in FORMS:
            raise ValueError(f"`--form` must be one of {FORMS}; got {form!r}.")
        method = method or config.get("method", "dyart")
        from keras_dyart import methods as kd_methods

        if method not in kd_methods.METHODS:
            raise ValueError(
                f"`--method` must be one of {sorted(kd_methods.METHODS)}; got {method!r}.")
        eval_eps = config.get("eval", {}).get("eps") or []
        r0_value = (_checks.parse_eps(r0, "--r0") if r0 is not None
                    else max(eval_eps) if eval_eps else 16 / 255)
        eps_value = _checks.parse_eps(eps, "--eps") if eps is not None else r0_value
        norm = _checks.norm_name(norm or config.get("norm", "linf"), "--norm")
        beta = _checks.positive(beta, "--beta")
        for value, name in ((every, "--every"), (probe, "--probe")):
            _checks.positive(value, name, integer=True)
        if steps is not None:
            _checks.positive(steps, "--steps", integer=True)
        lr = _checks.positive(lr if lr is not None else config.get("lr", 0.05), "--lr")
        batch_size = _checks.positive(batch_size or config.get("batch_size", 128),
                                      "--batch-size", integer=True)
        dataset = dataset or config.get("dataset", "mnist5k")
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None

    import keras
    import numpy as np

    from keras_dyart import datasets
    from keras_dyart import dynamics as dyn
    from keras_dyart.callbacks import BoundaryDynamics

    x_train, y_train, x_test, y_test = datasets.load(dataset)
    probe_x, probe_y = x_test[:probe], y_test[:probe]
    default_out = os.path.join(run_dir if os.path.isdir(run_dir)
                               else os.path.dirname(run_dir) or ".", "dynamics")
    out = out or default_out
    form_name = form.replace("-", "_")

    if steps is None and len(checkpoints) >= 2:
        records, point_records = [], []
        for i, (a, b) in enumerate(zip(checkpoints[:-1], checkpoints[1:])):
            model = keras.saving.load_model(a, compile=False)
            delta = dyn.weight_change(model, b)
            res = dyn.boundary_dynamics(model, probe_x, probe_y, delta, method=form_name,
                                        r0=r0_value, norm=norm, beta=beta)
            speed = res.speed if res.speed is not None else res.speed_fd
            records.append({"step": i, "checkpoint": os.path.basename(a),
                            "next": os.path.basename(b), **res.summary})
            point_records.append({"step": i, "margin": res.points.margin, "speed": speed,
                                  "usable": res.points.usable,
                                  "correct": res.points.correct, "label": probe_y,
                                  "vulnerable": res.vulnerable})
        title = f"{len(checkpoints)} checkpoints of {run_dir} (speed per interval)"
    else:
        steps = steps or 20
        loaded = keras.saving.load_model(checkpoints[-1], compile=False)
        classifier = getattr(loaded, "classifier", loaded)
        model = kd_methods.get(method, classifier,
                               **_method_kwargs(method, config, eps_value, norm))
        model.compile(
            optimizer=keras.optimizers.SGD(lr, momentum=config.get("momentum", 0.9),
                                           nesterov=True),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        order = np.random.RandomState(seed).permutation(
            np.resize(np.arange(len(x_train)), steps * batch_size))
        cb = BoundaryDynamics(probe_x, probe_y, every=every, method=form_name, r0=r0_value,
                              norm=norm, beta=beta)
        model.fit(x_train[order], y_train[order], batch_size=batch_size, epochs=1,
                  shuffle=False, verbose=0, callbacks=[cb])
        records, point_records = cb.records, cb.point_records
        title = (f"{method}, {steps} steps from {os.path.basename(checkpoints[-1])} "
                 "(speed per step)")
    dyn.write_records(out, records, point_records, r0=r0_value, title=method
                      if steps else None)
    _table(records, title)
    typer.echo(f"r0 = {r0_value:g}, {norm}; files in {out}")
    return records


def _help(doc):
    """The docstring with each paragraph on one line (rich keeps single line breaks)."""
    return "\n\n".join(" ".join(p.split()) for p in inspect.cleandoc(doc).split("\n\n"))


def register(app):
    app.command("dynamics", help=_help(dynamics.__doc__))(dynamics)
