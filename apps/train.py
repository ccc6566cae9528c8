"""`keras-dyart train`: clean burn-in, then DyART, then PGD-40 evaluation, into a run dir."""

import os
import time
from typing import List, Optional

import typer


def _fmt(eps):
    return f"{eps:g}"


def train(
    epochs: int = typer.Option(8, help="DyART epochs after the burn-in."),
    burn_in: int = typer.Option(3, "--burn-in", help="Clean (cross-entropy) epochs first."),
    eps: Optional[List[str]] = typer.Option(
        None, help="PGD-40 evaluation radius; repeat for several (text such as 8/255 is "
                   "accepted). Default: 0.1, 0.2, 0.3."),
    batch_size: int = typer.Option(128, "--batch-size", help="Training batch size."),
    seed: int = typer.Option(0, help="Seed of weights, shuffling and attacks."),
    out: Optional[str] = typer.Option(
        None, help="Run directory to write. Default: runs/dyart-<backend>-<time>."),
    dataset: str = typer.Option("mnist5k", help="Data set (mnist5k is embedded)."),
    model: str = typer.Option("small-cnn", help="Architecture."),
    lr: float = typer.Option(0.05, help="SGD learning rate (Nesterov momentum)."),
    momentum: float = typer.Option(0.9, help="SGD momentum."),
    weight_decay: float = typer.Option(5e-4, "--weight-decay", help="Weight decay."),
    clipnorm: float = typer.Option(0.1, help="Global gradient-norm clip."),
    norm: str = typer.Option("linf", help="Threat model of margins and attacks: linf or l2."),
    lam: float = typer.Option(1000.0, help="DyART weight λ of the robust term."),
    alpha: float = typer.Option(3.0, help="DyART α of h'(r) = exp(-α r)."),
    r0: float = typer.Option(0.6, help="DyART r0: margins beyond it get no robust term."),
    eps_fab: str = typer.Option("0.3", "--eps-fab", help="FAB random-start radius scale."),
    beta: float = typer.Option(5.0, help="Soft-margin temperature β."),
    n_iter: int = typer.Option(20, "--n-iter", help="FAB iterations per step."),
    random_start: bool = typer.Option(
        False, "--random-start/--no-random-start",
        help="Start FAB at random (as the reference code) instead of at x."),
    limit: Optional[int] = typer.Option(
        None, help="Use only the first N training points (quick runs)."),
    eval_n: int = typer.Option(1000, "--eval-n", help="Test points to evaluate."),
    pgd_steps: int = typer.Option(40, "--pgd-steps", help="PGD steps of the evaluation."),
    verbose: int = typer.Option(1, help="Keras progress: 0 silent, 1 bars, 2 one line."),
):
    """Train DyART (clean burn-in first) and evaluate it with PGD-40.

    Writes config.json, model.keras, history.csv and metrics.json to the run directory and
    prints clean and robust accuracy. The defaults train the small CNN on MNIST-5k in a few
    minutes on a CPU (MNIST's eps 0.3 L∞ threat model).
    """
    from keras_dyart import _checks

    try:
        eps_values = [_checks.parse_eps(e, "--eps") for e in (eps or ["0.1", "0.2", "0.3"])]
        eps_fab_value = _checks.parse_eps(eps_fab, "--eps-fab")
        norm = _checks.norm_name(norm, "--norm")
        for value, name in ((epochs, "--epochs"), (burn_in, "--burn-in")):
            _checks.positive(value, name, integer=True, allow_zero=True)
        for value, name in ((batch_size, "--batch-size"), (eval_n, "--eval-n"),
                            (pgd_steps, "--pgd-steps")):
            _checks.positive(value, name, integer=True)
        if limit is not None:
            _checks.positive(limit, "--limit", integer=True)
        if epochs + burn_in == 0:
            raise ValueError("`--epochs` and `--burn-in` are both 0: nothing to train.")
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None

    import keras
    import numpy as np

    from keras_dyart import DyARTModel, architectures, datasets, io
    from keras_dyart_apps import report

    backend = keras.backend.backend()
    out = out or os.path.join("runs", f"dyart-{backend}-{time.strftime('%Y%m%d-%H%M%S')}")
    keras.utils.set_random_seed(seed)
    x_train, y_train, x_test, y_test = datasets.load(dataset)
    if limit:
        x_train, y_train = x_train[:limit], y_train[:limit]
    x_test, y_test = x_test[:eval_n], y_test[:eval_n]
    num_classes = int(max(y_train.max(), y_test.max()) + 1)
    classifier = architectures.get(model, num_classes=num_classes,
                                   input_shape=x_train.shape[1:])
    config = {
        "method": "dyart", "backend": backend, "seed": seed, "dataset": dataset,
        "model": model, "epochs": epochs, "burn_in": burn_in, "batch_size": batch_size,
        "lr": lr, "momentum": momentum, "nesterov": True, "weight_decay": weight_decay,
        "clipnorm": clipnorm, "norm": norm, "lam": lam, "alpha": alpha, "r0": r0,
        "eps_fab": eps_fab_value, "beta": beta, "n_iter": n_iter,
        "random_start": random_start, "limit": limit, "eval_n": len(x_test),
        "eval": {"attack": "pgd", "steps": pgd_steps, "rel_step": 0.1, "loss": "ce",
                 "random_start": "uniform", "eps": eps_values},
        "keras_version": keras.__version__,
    }
    io.write_json(os.path.join(out, "config.json"), config)

    def optimizer():
        return keras.optimizers.SGD(lr, momentum=momentum, nesterov=True,
                                    weight_decay=weight_decay, global_clipnorm=clipnorm)

    rows = []
    t0 = time.time()
    if burn_in:
        typer.echo(f"clean burn-in: {burn_in} epochs ({backend})")
        classifier.compile(
            optimizer=optimizer(),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"])
        hist = classifier.fit(x_train, y_train, batch_size=batch_size, epochs=burn_in,
                              verbose=verbose, shuffle=True)
        rows += report.history_rows(hist.history, "burn-in", 0)
    robust = DyARTModel(classifier, norm=norm, beta=beta, lam=lam, alpha=alpha, r0=r0,
                        n_iter=n_iter, eps_fab=eps_fab_value, random_start=random_start,
                        seed=seed)
    robust.compile(optimizer=optimizer(), metrics=["accuracy"])
    if epochs:
        typer.echo(f"DyART: {epochs} epochs")
        hist = robust.fit(x_train, y_train, batch_size=batch_size, epochs=epochs,
                          verbose=verbose, shuffle=True)
        rows += report.history_rows(hist.history, "dyart", burn_in)
    train_seconds = time.time() - t0
    io.write_csv(os.path.join(out, "history.csv"), rows)
    io.save_model(robust, os.path.join(out, "model.keras"))

    metrics = report.pgd_metrics(robust, x_test, y_test, eps_values, norm=norm,
                                 steps=pgd_steps, seed=seed)
    metrics["train_seconds"] = round(train_seconds, 1)
    io.write_json(os.path.join(out, "metrics.json"), metrics)
    report.print_metrics(metrics, title=f"DyART on {dataset} ({backend}), {len(x_test)} "
                                        f"test points")
    typer.echo(f"run directory: {out}")
    return metrics


def register(app):
    app.command("train")(train)
