"""`keras-dyart evaluate`: attack a trained model (a run directory or a .keras file).

    keras-dyart evaluate runs/dyart-jax-... --attack autoattack --eps 0.1 --eps 0.2 --eps 0.3
    keras-dyart evaluate model.keras --dataset cifar10 --eps 8/255 --n 1000

Writes ``eval_<attack>.json`` (summary and per-point outcome) and ``eval_<attack>.csv``
(per point) to the run directory (or next to the .keras file, or ``--out``), and prints the
table.  ``--margins`` also writes the FAB-T margins report (``margins.csv``, ``margins.png``).
`run_evaluation` is the same code for other commands (e.g. the end of ``keras-dyart train``).
"""

import os
from typing import Any, Callable, List, Optional, Sequence

import typer


def _progress_callback(bar, options=None) -> Callable[[str, Optional[float], int, int], None]:
    """A ``progress(attack, eps, done, total)`` callback drawing one bar per attack and eps
    (labelled as the attack runs with ``options``)."""
    from keras_dyart.attacks.autoattack import ATTACKS

    tasks = {}

    def update(attack, eps, done, total):
        key = (attack, eps)
        if key not in tasks:
            name = (ATTACKS[attack].label_for((options or {}).get(attack))
                    if attack in ATTACKS else attack)
            label = name + ("" if eps is None else f" eps={eps:.4g}")
            tasks[key] = bar.add_task(label, total=total)
        bar.update(tasks[key], completed=done, total=total)

    return update


def print_report(report) -> None:
    """Print a `RobustnessReport` as a rich table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{report.label(report.attack)} ({report.norm}), "
                        f"{report.n} points, {report.backend}: accuracy (%)")
    table.add_column("")
    for e in report.epsilons:
        table.add_column(f"eps={e:.4g}", justify="right")
    for name, acc in report.rows():
        table.add_row(name, *[f"{100 * acc[e]:.1f}" for e in report.epsilons])
    console = Console()
    console.print(table)
    if len(report.attacks) > 1:
        console.print("Rows after the first: accuracy after that attack, each attack running "
                      "only on the points still robust; the last row is the worst case.")
    console.print("time: " + ", ".join(f"{report.label(a)} {s:.1f} s"
                                       for a, s in report.seconds.items()))


def run_evaluation(model, x, y, out_dir: str, *, attack: str = "autoattack",
                   epsilons: Sequence[float] = (0.1, 0.2, 0.3), norm: str = "linf",
                   batch_size: int = 500, seed: int = 0,
                   options: Optional[dict[str, dict[str, Any]]] = None,
                   margins: bool = False, margins_n_iter: Optional[int] = None,
                   show: bool = True, table: bool = True, bounds: Optional[tuple] = None):
    """Evaluate, write ``eval_<attack>.json`` / ``.csv`` (and the margins report, FAB-T of
    ``margins_n_iter`` iterations, default `margins_report`'s) to ``out_dir``, show
    progress bars (``show``) and print the table (``show`` and ``table``); ``bounds``: the
    model's input box (default: its own, else (0, 1)).  Returns the `RobustnessReport`."""
    from rich.progress import Progress

    from keras_dyart.evaluation import evaluate, margins_report

    with Progress(transient=True, disable=not show) as bar:
        report = evaluate(model, x, y, attack, list(epsilons), norm=norm,
                          batch_size=batch_size, seed=seed, options=options,
                          progress=_progress_callback(bar, options),
                          bounds=bounds)
    tag = report.attack.replace(",", "+")
    report.to_json(os.path.join(out_dir, f"eval_{tag}.json"))
    report.to_csv(os.path.join(out_dir, f"eval_{tag}.csv"))
    if show and table:
        print_report(report)
    if margins:
        with Progress(transient=True, disable=not show) as bar:
            task = bar.add_task("FAB-T margins", total=1)
            budget = {} if margins_n_iter is None else {"n_iter": margins_n_iter}
            rep = margins_report(model, x, y, norm=norm, epsilons=report.epsilons,
                                 batch_size=batch_size, seed=seed, bounds=bounds, **budget,
                                 progress=lambda d, t: bar.update(task, completed=d, total=t))
        rep.to_csv(os.path.join(out_dir, "margins.csv"))
        rep.to_json(os.path.join(out_dir, "margins.json"))
        rep.plot(os.path.join(out_dir, "margins.png"))
        if show:
            typer.echo(rep.table())
    return report


#: The iteration argument of each attack that `--n-iter` sets.
_ITERATIONS = {"apgd-ce": "n_iter", "apgd-dlr": "n_iter", "apgd-t": "n_iter",
               "fab-t": "n_iter", "pgd": "steps", "pgd-cw": "steps"}


def _budget_options(attacks, n_iter, n_queries, margins: bool) -> dict:
    """``options`` of `evaluate` from ``--n-iter`` / ``--n-queries``, for the attacks that
    run; a budget that no attack of the run (nor ``--margins``) would use is refused."""
    from keras_dyart import _checks

    options = {}
    if n_iter is not None:
        _checks.positive(n_iter, "--n-iter", integer=True)
        iterative = [a for a in attacks if a in _ITERATIONS]
        if not iterative and not margins:
            raise ValueError(
                f"`--n-iter` sets the iterations of APGD, FAB-T and PGD, and --attack "
                f"{','.join(attacks)} runs none of them (Square's budget is --n-queries).")
        options.update({a: {_ITERATIONS[a]: n_iter} for a in iterative})
    if n_queries is not None:
        _checks.positive(n_queries, "--n-queries", integer=True)
        if "square" not in attacks:
            raise ValueError(
                f"`--n-queries` sets the queries of Square, and --attack "
                f"{','.join(attacks)} does not run it.")
        options["square"] = {"n_queries": n_queries}
    return options


def _resolve_target(target: str) -> tuple[str, dict, str]:
    """``(model_path, config, out_dir)`` for a run directory or a .keras file."""
    if os.path.isdir(target):
        # The averaged (EMA) model is the run's final model, the one `train` reports.
        path = os.path.join(target, "averaged.keras")
        if not os.path.isfile(path):
            path = os.path.join(target, "model.keras")
        if not os.path.isfile(path):
            raise typer.BadParameter(
                f"TARGET must be a run directory holding averaged.keras or model.keras, or "
                f"a .keras file; {target!r} has neither.")
        from keras_dyart_apps.run_dir import read_config

        try:
            config = read_config(os.path.join(target, "config.json"), "TARGET")
        except ValueError as err:
            raise typer.BadParameter(str(err)) from None
        return path, config, target
    if os.path.isfile(target) and target.endswith(".keras"):
        return target, {}, os.path.dirname(os.path.abspath(target))
    raise typer.BadParameter(
        f"TARGET must be a run directory holding model.keras or a .keras file; got "
        f"{target!r}.")


def evaluate(
    target: str = typer.Argument(..., metavar="TARGET", hidden=True),
    attack: str = typer.Option(
        "autoattack", metavar="NAME", help="Attack(s), comma-joined (docs/cli.md)."),
    eps: Optional[List[str]] = typer.Option(
        None, metavar="EPS", help="Radius; repeat. Default: the run's."),
    n: int = typer.Option(1000, "--n", metavar="N", help="Test points (the first N)."),
    dataset: Optional[str] = typer.Option(
        None, metavar="NAME", help="Data set. Default: the run's, else mnist5k."),
    data_path: Optional[str] = typer.Option(
        None, "--data-path", metavar="PATH", help="Files of svhn, tinyimagenet or npz."),
    norm: Optional[str] = typer.Option(None, metavar="NORM",
                                       help="linf or l2. Default: the run's."),
    batch_size: int = typer.Option(500, "--batch-size", metavar="N",
                                   help="Points per compiled call."),
    seed: int = typer.Option(0, metavar="N", help="Seed of the attacks."),
    n_iter: Optional[int] = typer.Option(
        None, "--n-iter", metavar="N",
        help="Iterations of APGD and FAB-T (100; --margins too) and of PGD (40)."),
    n_queries: Optional[int] = typer.Option(
        None, "--n-queries", metavar="N", help="Square queries (5000)."),
    margins: bool = typer.Option(False, "--margins/--no-margins", show_default=False,
                                 help="Also write FAB-T margins (off)."),
    out: Optional[str] = typer.Option(None, metavar="DIR",
                                      help="Output folder. Default: TARGET's."),
    bounds: Optional[str] = typer.Option(
        None, metavar="LO,HI",
        help="Input range the model takes, e.g. 0,255 for one that rescales 0-255 pixels "
             "itself: the test images are mapped into it and --eps is in its units. "
             "Default: the model's own bounds, else 0,1."),
) -> None:
    """Evaluate robustness: clean and robust accuracy per attack and eps.

    TARGET is a run directory (its averaged.keras, else model.keras, and config.json) or
    a .keras file.  Writes eval_ATTACK.json and .csv next to it (or to --out).
    """
    from keras_dyart import _checks

    model_path, config, out_dir = _resolve_target(target)
    try:
        epsilons = [_checks.parse_eps(e, "--eps") for e in (
            eps or config.get("eval", {}).get("eps") or ["0.1", "0.2", "0.3"])]
        norm = _checks.norm_name(norm or config.get("norm", "linf"), "--norm")
        for value, name in ((n, "--n"), (batch_size, "--batch-size")):
            _checks.positive(value, name, integer=True)
        from keras_dyart.attacks.autoattack import resolve

        options = _budget_options(resolve(attack), n_iter, n_queries, margins)
        from keras_dyart import datasets

        name = dataset or config.get("dataset") or "mnist5k"
        if name not in datasets.DATASETS:
            raise ValueError(f"`--dataset` must be one of {list(datasets.DATASETS)}; got "
                             f"{name!r}.")
        if data_path is not None and not os.path.exists(data_path):
            raise ValueError(f"`--data-path`: no such file or folder {data_path!r}.")
        if data_path is None and name == config.get("dataset"):
            data_path = config.get("data_path")
        if name in ("svhn", "tinyimagenet", "npz") and not data_path:
            raise ValueError(f"`--data-path`: --dataset {name} needs its files.")
        if out is not None and os.path.exists(out) and not os.path.isdir(out):
            raise ValueError(f"`--out` {out!r} is a file; give a folder.")
        box = None if bounds is None else _parse_bounds(bounds)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None

    import keras
    import numpy as np

    import keras_dyart  # noqa: F401  (registers DyARTModel for loading)
    from keras_dyart import datasets

    try:
        model = keras.saving.load_model(model_path, compile=False)
    except Exception as err:  # noqa: BLE001  (Keras raises many kinds for a bad file)
        raise typer.BadParameter(f"TARGET: cannot load {model_path!r}: {err}") from None
    kwargs = {"path": data_path} if data_path else {}
    try:
        if name == "npz":       # the test images and labels of one .npz (keys x, y)
            x_test, y_test = datasets.load_npz(data_path)
        else:
            _, _, x_test, y_test = datasets.load(name, **kwargs)
    except Exception as err:  # noqa: BLE001  (downloads and readers raise many kinds)
        raise typer.BadParameter(f"cannot load --dataset {name}: {err}") from None
    x_test, y_test = x_test[:n], y_test[:n]
    if box is None:
        try:
            box = _checks.bounds(getattr(model, "bounds", (0.0, 1.0)), "the model's bounds")
        except ValueError as err:
            raise typer.BadParameter(str(err)) from None
        _check_pixel_model(model, box)
    lo, hi = box
    if box != (0.0, 1.0):
        # the data sets are in [0, 1]; the clip only absorbs float32 rounding at the ends
        x_test = np.clip(lo + (hi - lo) * x_test.astype("float64"), lo, hi).astype("float32")
        if not eps:
            epsilons = [(hi - lo) * e for e in epsilons]
    try:                                        # the radii as they will run, in box's units
        for e in epsilons:
            _checks.eps_in_box(e, norm, box, "--eps")
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    typer.echo(f"{model_path}: {len(x_test)} {name} test points, {keras.backend.backend()} "
               f"backend" + (f", inputs in [{lo:g}, {hi:g}]" if box != (0.0, 1.0) else ""))
    run_evaluation(model, x_test, y_test, out or out_dir, attack=attack, epsilons=epsilons,
                   norm=norm, batch_size=batch_size, seed=seed, options=options,
                   margins=margins, margins_n_iter=n_iter, bounds=box)


def _parse_bounds(text: str) -> tuple:
    from keras_dyart import _checks

    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 2:
        raise ValueError(f"`--bounds` must be LO,HI (e.g. 0,255); got {text!r}.")
    try:
        pair = tuple(float(p) for p in parts)
    except ValueError:
        raise ValueError(f"`--bounds` must be two numbers LO,HI (e.g. 0,255); got "
                         f"{text!r}.") from None
    return _checks.bounds(pair, "--bounds")


def _check_pixel_model(model, box) -> None:
    """Refuse a model that begins by rescaling its inputs by a small factor (0-255 pixels
    by 1/255) when the test images go in as they are, in ``box``: it would see them 255
    times too dark, and every score would be wrong."""
    from keras_dyart.attacks.driver import pixel_scale

    scale = pixel_scale(model, box)
    if scale is not None:
        lo, hi = box
        raise typer.BadParameter(
            f"TARGET's model begins with Rescaling(scale={scale:.4g}): it takes inputs in "
            f"about [0, {1 / scale:.4g}] (pixels), but the test images would go in as "
            f"[{lo:g}, {hi:g}]. Pass --bounds 0,{1 / scale:.4g} (then --eps is in those "
            f"units, e.g. 8 for 8/255 of 0-255), or --bounds {lo:g},{hi:g} to feed them "
            f"as they are.")


def register(app: typer.Typer) -> None:
    """Add the ``evaluate`` command to the `keras-dyart` Typer app."""
    app.command("evaluate")(evaluate)
