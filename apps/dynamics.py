"""`keras-dyart dynamics RUN_DIR`: boundary speeds of a run, from its checkpoints or from a
short training segment that continues the run, as a table, CSV/JSON files and plots."""

import glob
import json
import math
import os
import re
from typing import Any, Mapping, Optional

import typer

FORMS = ("exact", "finite-difference")

#: The checkpoints `keras-dyart train` writes, in training order (the averaged model is
#: compared only with --averaged, in place of the raw method model).
BURN_IN, MODEL, AVERAGED = "burn_in.keras", "model.keras", "averaged.keras"


def _natural(path: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", os.path.basename(path))]


def is_train_run(run_dir: str) -> bool:
    """Whether ``run_dir`` is a run directory of `keras-dyart train` (it holds one of
    burn_in.keras, model.keras, averaged.keras)."""
    return os.path.isdir(run_dir) and any(
        os.path.isfile(os.path.join(run_dir, n)) for n in (BURN_IN, MODEL, AVERAGED))


def find_checkpoints(run_dir: str, averaged: bool = False) -> list[str]:
    """The ``.keras`` files of a run in training order; a single file is its own list.

    A run directory of `keras-dyart train`: ``burn_in.keras``, then
    ``checkpoints/*.keras`` (natural order), then ``model.keras`` (the method model) or,
    with ``averaged=True``, ``averaged.keras`` (the weight average) in its place; other
    top-level files (``best.keras``) are left out.  Any other folder: ``*.keras`` then
    ``checkpoints/*.keras``, each in natural name order (``ckpt-2`` before ``ckpt-10``).
    """
    if os.path.isfile(run_dir):
        return [run_dir]
    inner = sorted(glob.glob(os.path.join(run_dir, "checkpoints", "*.keras")), key=_natural)
    if is_train_run(run_dir):
        final = AVERAGED if averaged else MODEL
        return ([p for p in [os.path.join(run_dir, BURN_IN)] if os.path.isfile(p)] + inner
                + [p for p in [os.path.join(run_dir, final)] if os.path.isfile(p)])
    return sorted(glob.glob(os.path.join(run_dir, "*.keras")), key=_natural) + inner


def _config(run_dir: str) -> dict:
    """The config.json next to ``run_dir`` (a folder or a .keras file); ``{}`` if none."""
    from keras_dyart_apps.run_dir import read_config

    folder = run_dir if os.path.isdir(run_dir) else os.path.dirname(run_dir)
    return read_config(os.path.join(folder, "config.json"), "RUN_DIR")


def _load(path):
    """A ``.keras`` file, loaded without compiling; a ValueError naming it if it fails."""
    import keras

    import keras_dyart  # noqa: F401  (registers the method models for loading)

    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as err:  # noqa: BLE001  (Keras raises many kinds for a bad file)
        raise ValueError(f"`RUN_DIR`: cannot load {path}: {type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}") from None


def _method_of(model):
    """The method name of a loaded method model (e.g. ``"trades"``), None for a
    classifier."""
    from keras_dyart import methods

    return next((name for name, cls in methods.METHODS.items() if type(model) is cls), None)


def hyper_parameters(model) -> dict[str, Any]:
    """A method model's own settings: ``seed`` and its ``hyper_parameters`` (as saved in
    its config); ``{}`` for a classifier."""
    if _method_of(model) is None:
        return {}
    config = model.get_config()
    return {k: config[k] for k in ("seed", *model.hyper_parameters)}


def segment_model(checkpoint: str, config: Mapping[str, Any], method: Optional[str] = None,
                  eps: Optional[float] = None) -> tuple[Any, str]:
    """``(model, method)``: the method model that a segment trains from ``checkpoint``.

    A checkpoint that is a method model of ``method`` (a run's ``model.keras``) is reused
    as loaded, with its own settings (``eps`` replaces its attack radius, with the step
    `settings.default_step`).  Otherwise the classifier inside is wrapped in ``method``
    with the settings the run recorded (``config``, over `keras-dyart train`'s defaults),
    through `settings.method_kwargs`, as `train` builds it.  Either way the method keeps
    the run's threat model (``--norm`` sets only the measurement's).
    """
    from keras_dyart import methods
    from keras_dyart_apps import settings

    loaded = _load(checkpoint)
    own = _method_of(loaded)
    method = method or own or config.get("method") or "dyart"
    if eps is not None and method not in settings.ATTACK_METHODS:
        raise ValueError(f"`--eps` sets the attack radius of pgd-at, trades and mart "
                         f"segments; this segment's method is {method!r}.")
    if own == method:
        if eps is None:
            return loaded, method
        kwargs = hyper_parameters(loaded)
        kwargs.update(eps=eps, step_size=settings.default_step(eps, kwargs["steps"]))
        return methods.get(method, loaded.classifier, **kwargs), method
    classifier = getattr(loaded, "classifier", loaded)
    kwargs = settings.method_kwargs(method, settings.run_settings(config, train_eps=eps))
    return methods.get(method, classifier, **kwargs), method


def segment_optimizer(config: Mapping[str, Any], steps: int, lr: Optional[float] = None
                      ) -> tuple[Any, Optional[str]]:
    """``(optimizer, note)``: the run's method-stage optimizer (`keras-dyart train`'s
    `settings.method_optimizer`: clip, weight decay and its mode, momentum, learning
    rate) for a segment of ``steps`` steps.  A cosine or step schedule is replaced by its
    peak learning rate (the run's schedule has decayed to about 0 by its end); ``note``
    says so, else it is None.  ``lr`` replaces the learning rate."""
    from keras_dyart_apps import settings

    run = {**config, "schedule": "constant"}
    if lr is not None:
        run["lr"] = lr
    note = None
    if config.get("schedule", "constant") != "constant":
        note = (f"the run's {config['schedule']} schedule is replaced by its peak learning "
                f"rate {run.get('lr', settings.option_defaults()['lr']):g}")
    return settings.method_optimizer(steps, run), note


_SCALARS = ("n_usable", "n_vulnerable", "conflict_share", "mean_speed",
            "mean_speed_vulnerable", "speed_margin_corr")


def _number(value):
    """A JSON-safe float (None for NaN)."""
    value = float(value)
    return None if math.isnan(value) else value


def _rows(records, point_records, pairs):
    """One row per record: step, the two models it compares, probe accuracy, summary."""
    import numpy as np

    rows = []
    for rec, points, (a, b) in zip(records, point_records, pairs):
        rows.append({"step": int(rec["step"]), "from": a, "to": b,
                     "probe_accuracy": float(np.mean(points["correct"])),
                     **{k: _number(rec[k]) for k in _SCALARS if k in rec}})
    return rows


def _write(out, records, point_records, rows, info, r0, title):
    """The callback's files (`dynamics.write_records`) with ``from``, ``to`` and
    ``probe_accuracy`` added to dynamics.csv, and dynamics.json (rows and settings)."""
    import csv

    from keras_dyart import dynamics as dyn
    from keras_dyart import io

    dyn.write_records(out, records, point_records, r0=r0, title=title)
    path = os.path.join(out, "dynamics.csv")
    with open(path) as f:
        table = list(csv.DictReader(f))
    extra = ("from", "to", "probe_accuracy")
    io.write_csv(path, [{"step": t.pop("step"), **{k: row[k] for k in extra}, **t}
                        for t, row in zip(table, rows)])
    io.write_json(os.path.join(out, "dynamics.json"), {**info, "rows": rows})


def _table(rows, title):
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("step", "acc", "usable", "vuln", "conflict", "speed", "corr"):
        table.add_column(col, justify="right")
    table.add_column("from → to", overflow="fold")

    def fmt(value, spec):
        return "nan" if value is None else format(value, spec)

    for r in rows:
        table.add_row(str(r["step"]), f"{r['probe_accuracy']:.2f}", str(int(r["n_usable"])),
                      str(int(r["n_vulnerable"])), fmt(r["conflict_share"], ".3f"),
                      fmt(r["mean_speed_vulnerable"], ".3g"),
                      fmt(r["speed_margin_corr"], ".3f"), f"{r['from']} → {r['to']}")
    console = Console()
    console.print(table)
    console.print("acc: probe accuracy before the update; vuln: usable points with margin < "
                  "r0; conflict: share of them whose boundary moves towards them; speed: "
                  "their mean speed; corr: corr(speed, margin).")


def dynamics(
    run_dir: str = typer.Argument(..., metavar="RUN_DIR", hidden=True),
    averaged: bool = typer.Option(
        False, "--averaged", help="Use averaged.keras in place of model.keras."),
    method: Optional[str] = typer.Option(
        None, metavar="NAME", help="Method of the segment. Default: the run's."),
    steps: Optional[int] = typer.Option(
        None, metavar="N", help="Train N steps from the last checkpoint."),
    every: int = typer.Option(5, metavar="N", help="Record every N steps of the segment."),
    probe: int = typer.Option(256, metavar="N", help="Probe points: the first N test "
                                                      "points."),
    r0: Optional[str] = typer.Option(
        None, metavar="EPS", help="Vulnerability radius. Default: the run's largest eps."),
    eps: Optional[str] = typer.Option(
        None, metavar="EPS", help="Attack radius of a pgd-at/trades/mart segment."),
    form: str = typer.Option("exact", metavar="FORM",
                             help="Speed formula: exact or finite-difference."),
    norm: Optional[str] = typer.Option(None, metavar="NORM",
                                       help="linf or l2. Default: the run's."),
    beta: float = typer.Option(5.0, metavar="X", help="Soft-margin temperature β."),
    lr: Optional[float] = typer.Option(None, metavar="X",
                                       help="Segment learning rate. Default: the run's."),
    batch_size: Optional[int] = typer.Option(
        None, "--batch-size", metavar="N", help="Segment batch size. Default: the run's."),
    dataset: Optional[str] = typer.Option(None, metavar="NAME",
                                          help="Data set. Default: the run's."),
    out: Optional[str] = typer.Option(None, metavar="DIR",
                                      help="Output folder. Default: RUN_DIR/dynamics."),
    seed: int = typer.Option(0, metavar="N", help="Seed of the segment's batches."),
):
    """Boundary speed of a run: how fast each probe point's margin moves.

    RUN_DIR is a run directory of `keras-dyart train`, a folder of .keras checkpoints or
    one .keras file.  With two or more checkpoints it compares them in training order
    (burn_in.keras, then model.keras); otherwise, or with --steps, it continues the run
    for a short segment with the run's own method settings and optimizer.  The table and
    the files (dynamics.csv, dynamics.json) name the two models each row compares.
    """
    from keras_dyart import _checks

    try:
        if not os.path.exists(run_dir):
            raise ValueError(f"`RUN_DIR`: no such directory or file {run_dir!r}.")
        if os.path.isfile(run_dir) and not run_dir.endswith(".keras"):
            raise ValueError(f"`RUN_DIR` must be a directory or a .keras file; got "
                             f"{run_dir!r}.")
        config = _config(run_dir)
        if averaged and not os.path.isfile(os.path.join(run_dir, AVERAGED)):
            raise ValueError(f"`--averaged`: {run_dir!r} holds no {AVERAGED}.")
        checkpoints = find_checkpoints(run_dir, averaged=averaged)
        if not checkpoints:
            raise ValueError(f"`RUN_DIR` {run_dir!r} holds no .keras checkpoint.")
        if form not in FORMS:
            raise ValueError(f"`--form` must be one of {FORMS}; got {form!r}.")
        from keras_dyart import datasets
        from keras_dyart import methods as kd_methods

        if method is not None and method not in kd_methods.METHODS:
            raise ValueError(
                f"`--method` must be one of {sorted(kd_methods.METHODS)}; got {method!r}.")
        eval_eps = config.get("eval", {}).get("eps") or []
        r0_value = (_checks.parse_eps(r0, "--r0") if r0 is not None
                    else max(eval_eps) if eval_eps else 16 / 255)
        eps_value = _checks.parse_eps(eps, "--eps") if eps is not None else None
        norm = _checks.norm_name(norm or config.get("norm", "linf"), "--norm")
        if eps_value is not None:             # the analysis runs in [0, 1] only
            _checks.eps_in_box(eps_value, norm, (0.0, 1.0), "--eps")
        beta = _checks.positive(beta, "--beta")
        for value, name in ((every, "--every"), (probe, "--probe")):
            _checks.positive(value, name, integer=True)
        if steps is not None:
            _checks.positive(steps, "--steps", integer=True)
        if lr is not None:
            _checks.positive(lr, "--lr")
        batch_size = _checks.positive(batch_size or config.get("batch_size", 128),
                                      "--batch-size", integer=True)
        dataset = dataset or config.get("dataset", "mnist5k")
        if dataset not in datasets.DATASETS or dataset == "npz":
            raise ValueError(f"`--dataset` must be one of "
                             f"{[d for d in datasets.DATASETS if d != 'npz']}; got "
                             f"{dataset!r}.")
        data_kwargs = ({"path": config["data_path"]}
                       if config.get("data_path") and dataset == config.get("dataset")
                       else {})
        if dataset in ("svhn", "tinyimagenet") and not data_kwargs:
            raise ValueError(f"`--dataset` {dataset} needs the run's data_path "
                             "(config.json); it has none.")
        base = run_dir if os.path.isdir(run_dir) else os.path.dirname(run_dir) or "."
        out = out or os.path.join(base, "dynamics")
        if os.path.exists(out) and not os.path.isdir(out):
            raise ValueError(f"`--out` {out!r} is a file, not a folder.")
        segment = steps is not None or len(checkpoints) < 2
        if segment:
            model, method = segment_model(checkpoints[-1], config, method, eps_value)
        elif method is not None or eps_value is not None or lr is not None:
            raise ValueError("`--method`, `--eps` and `--lr` set a training segment; add "
                             "`--steps N` to train one.")
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None

    import numpy as np

    from keras_dyart import dynamics as dyn
    from keras_dyart.dynamics import BoundaryDynamics

    x_train, y_train, x_test, y_test = datasets.load(dataset, **data_kwargs)
    probe_x, probe_y = x_test[:probe], y_test[:probe]
    form_name = form.replace("-", "_")

    def name(path):
        return os.path.relpath(path, base)

    info = {"run_dir": run_dir, "mode": "segment" if segment else "checkpoints",
            "r0": r0_value, "norm": norm, "form": form, "beta": beta, "probe": probe,
            "dataset": dataset}
    if not segment:
        records, point_records, pairs = [], [], []
        for i, (a, b) in enumerate(zip(checkpoints[:-1], checkpoints[1:])):
            try:
                before, after = _load(a), _load(b)
                before = getattr(before, "classifier", before)
                delta = dyn.weight_change(before, getattr(after, "classifier", after))
            except ValueError as err:
                raise typer.BadParameter(f"{name(a)} → {name(b)}: {err}") from None
            res = dyn.boundary_dynamics(before, probe_x, probe_y, delta, method=form_name,
                                        r0=r0_value, norm=norm, beta=beta)
            speed = res.speed if res.speed is not None else res.speed_fd
            records.append({"step": i, **res.summary})
            point_records.append({"step": i, "margin": res.points.margin, "speed": speed,
                                  "usable": res.points.usable,
                                  "correct": res.points.correct, "label": probe_y,
                                  "vulnerable": res.vulnerable})
            pairs.append((name(a), name(b)))
        info["checkpoints"] = [name(p) for p in checkpoints]
        title = f"{run_dir}: {len(checkpoints)} checkpoints in training order"
    else:
        steps = steps or 20
        optimizer, note = segment_optimizer(config, steps, lr)
        model.compile(optimizer=optimizer)
        order = np.random.RandomState(seed).permutation(
            np.resize(np.arange(len(x_train)), steps * batch_size))
        cb = BoundaryDynamics(probe_x, probe_y, every=every, method=form_name, r0=r0_value,
                              norm=norm, beta=beta)
        model.fit(x_train[order], y_train[order], batch_size=batch_size, epochs=1,
                  shuffle=False, verbose=0, callbacks=[cb])
        records, point_records = cb.records, cb.point_records
        start = name(checkpoints[-1])
        pairs = [(f"{start} +{r['step']}", f"{start} +{r['step'] + 1}") for r in records]
        info["segment"] = {
            "checkpoint": start, "method": method, "steps": steps,
            "batch_size": batch_size, "seed": seed,
            "method_settings": hyper_parameters(model),
            "optimizer": json.loads(json.dumps(optimizer.get_config(), default=str)),
            "note": note}
        title = f"{method}: {steps} steps from {start} (speed per step)"
        if note:
            typer.echo(f"note: {note}")
    rows = _rows(records, point_records, pairs)
    _write(out, records, point_records, rows, info, r0_value, method if segment else None)
    _table(rows, title)
    typer.echo(f"r0 = {r0_value:g}, {norm}; files in {out}")
    return rows


def register(app: typer.Typer) -> None:
    """Add the ``dynamics`` command to the `keras-dyart` Typer app."""
    app.command("dynamics")(dynamics)
