"""Shared pieces of the commands: history rows, PGD metrics and the printed table."""

from __future__ import annotations

from typing import Any, Mapping, Sequence


def history_rows(history: Mapping[str, Sequence[float]], phase: str, first_epoch: int
                 ) -> list[dict[str, Any]]:
    """Turn a Keras ``History.history`` dict into CSV rows with epoch and phase."""
    n = len(next(iter(history.values()))) if history else 0
    return [{"epoch": first_epoch + i + 1, "phase": phase,
             **{k: float(v[i]) for k, v in history.items()}} for i in range(n)]


def pgd_metrics(model, x, y, epsilons: Sequence[float], out_dir: str, norm: str = "linf",
                steps: int = 40, seed: int = 0) -> dict[str, Any]:
    """Clean accuracy and PGD robust accuracy (CE loss, uniform start, step eps/10), through
    the same code as `keras-dyart evaluate` (which also writes ``eval_pgd.json``/``.csv`` to
    ``out_dir``).

    Returns ``{"clean_accuracy": a, "robust_accuracy": {"pgd40": {"0.1": a, ...}}}``.
    """
    from keras_dyart_apps.evaluate import run_evaluation

    rep = run_evaluation(model, x, y, out_dir, attack="pgd", epsilons=epsilons, norm=norm,
                         seed=seed, options={"pgd": {"steps": steps, "rel_step": 0.1,
                                                     "random_start": True}},
                         table=False)
    return {"clean_accuracy": rep.clean_accuracy,
            "robust_accuracy": {f"pgd{steps}": {f"{e:g}": rep.robust_accuracy[e]
                                                for e in rep.epsilons}}}


def print_metrics(metrics: Mapping[str, Any], title: str = "results") -> None:
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
