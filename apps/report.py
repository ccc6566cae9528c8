"""Shared pieces of the commands: history rows, PGD metrics and the printed table."""

import numpy as np


def history_rows(history, phase, first_epoch):
    """Turn a Keras ``History.history`` dict into CSV rows with epoch and phase."""
    n = len(next(iter(history.values()))) if history else 0
    return [{"epoch": first_epoch + i + 1, "phase": phase,
             **{k: float(v[i]) for k, v in history.items()}} for i in range(n)]


def pgd_metrics(model, x, y, epsilons, norm="linf", steps=40, seed=0):
    """Clean accuracy and PGD robust accuracy (CE loss, uniform start, step eps/10).

    Returns ``{"clean_accuracy": a, "robust_accuracy": {"pgd40": {"0.1": a, ...}}}``.
    """
    from rich.progress import Progress

    from keras_dyart.attacks import pgd

    logits = model.predict(x, batch_size=500, verbose=0)
    correct = np.argmax(logits, -1) == y
    key = f"pgd{steps}"
    robust = {}
    with Progress(transient=True) as bar:
        for eps in epsilons:
            task = bar.add_task(f"PGD-{steps} eps={eps:g}", total=len(x))
            _, success = pgd(model, x, y, eps, norm=norm, steps=steps, rel_step=0.1,
                             loss="ce", random_start=True, seed=seed,
                             progress=lambda n, t=task: bar.update(t, completed=n))
            robust[f"{eps:g}"] = float(np.mean(correct & ~success))
    return {"clean_accuracy": float(np.mean(correct)), "robust_accuracy": {key: robust}}


def print_metrics(metrics, title="results"):
    """Print clean and robust accuracy as a table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("eps", justify="right")
    table.add_column("accuracy", justify="right")
    table.add_row("clean", "-", f"{metrics['clean_accuracy']:.3f}")
    for attack, per_eps in metrics["robust_accuracy"].items():
        for eps, acc in per_eps.items():
            table.add_row(attack, eps, f"{acc:.3f}")
    Console().print(table)
