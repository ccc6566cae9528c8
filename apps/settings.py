"""A run's settings (the keys of config.json) and what `train` and `dynamics` build from
them: the method's keyword arguments and the method-stage optimizer.

`train` writes the settings; `dynamics` reads them back (over `option_defaults`, the
settings of a run whose config.json lacks some) and builds the method and optimizer
through the same two functions, so a segment continues the run as it was trained.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

#: The values of `train --method`.
METHODS = ("clean", "pgd-at", "trades", "mart", "mma", "dyart")

#: Methods that train on an attack of radius ``train_eps`` (the others search margins).
ATTACK_METHODS = ("pgd-at", "trades", "mart")


def default_step(eps: float, steps: int) -> float:
    """The attack step of PGD-AT, TRADES and MART when none is given: 2.5 eps / steps."""
    return 2.5 * eps / steps


def option_defaults() -> dict[str, Any]:
    """The default of every `train` option by parameter name: the settings of a run whose
    config.json lacks them."""
    from keras_dyart_apps.train import train

    return {name: param.default.default
            for name, param in inspect.signature(train).parameters.items()}


def _given(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` over `option_defaults` (a None in ``config`` keeps the default)."""
    return {**option_defaults(), **{k: v for k, v in config.items() if v is not None}}


def run_settings(config: Mapping[str, Any], *, train_eps: float | None = None
                 ) -> dict[str, Any]:
    """A run's recorded settings (config.json) over `option_defaults`, with the radii
    parsed and the attack step resolved, as `train` records them.

    Args:
        config: the run's config.json (may be partial or empty).
        train_eps: replaces the run's attack radius; the step is then
            `default_step` of it.

    Returns:
        The settings, ready for `method_kwargs` and `method_optimizer`.
    """
    from keras_dyart._checks import parse_eps  # the library's own parser; no public one

    s = _given(config)
    if train_eps is not None:
        s["train_eps"], s["train_step"] = train_eps, None
    eps = parse_eps(s["train_eps"], "train_eps")
    step = (default_step(eps, s["train_steps"]) if s["train_step"] is None
            else parse_eps(s["train_step"], "train_step"))
    s.update(train_eps=eps, train_step=step, d_max=parse_eps(s["d_max"], "d_max"),
             eps_fab=parse_eps(s["eps_fab"], "eps_fab"))
    return s


def method_kwargs(method: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``keras_dyart.methods.get(method, classifier, ...)`` from a
    run's settings (`train`'s config, or `run_settings`): the one map from option names
    to method arguments.

    Args:
        method: one of `METHODS`.
        settings: the run's settings with parsed radii (``train_eps``, ``train_step``,
            ``d_max``, ``eps_fab`` as floats).
    """
    s = settings
    attack = {"eps": s["train_eps"], "step_size": s["train_step"],
              "steps": s["train_steps"], "norm": s["norm"]}
    kwargs = {
        "clean": {},
        "pgd-at": attack,
        "trades": {"beta": s["kl_beta"], **attack},
        "mart": {"beta": s["kl_beta"], **attack},
        "mma": {"d_max": s["d_max"], "clean_weight": s["clean_weight"], "norm": s["norm"],
                "margin_beta": s["beta"], "n_iter": s["n_iter"]},
        "dyart": {"norm": s["norm"], "beta": s["beta"], "lam": s["lam"], "alpha": s["alpha"],
                  "r0": s["r0"], "n_iter": s["n_iter"], "eps_fab": s["eps_fab"],
                  "random_start": s["random_start"], "warm_start": s.get("warm_start"),
                  "cache_dtype": s.get("cache_dtype") or "float16"},
    }[method]
    return kwargs | ({} if method == "clean" else {"seed": s["seed"]})


def method_optimizer(total_steps: int, settings: Mapping[str, Any]):
    """The optimizer of the method stage (`recipe.build_optimizer`) for ``total_steps``
    steps from a run's settings (the keys of config.json: lr, momentum, weight_decay,
    weight_decay_mode, clipnorm, schedule, lr_warmup, ema_tau, ema_warmup; missing ones
    take `option_defaults`).  `train` and `keras-dyart dynamics` both build it here."""
    from keras_dyart import recipe

    s = _given(settings)
    return recipe.build_optimizer(
        total_steps, learning_rate=s["lr"], momentum=s["momentum"],
        weight_decay=s["weight_decay"], global_clipnorm=s["clipnorm"] or None,
        lr_warmup=s["lr_warmup"], ema_tau=s["ema_tau"], ema_warmup=s["ema_warmup"],
        schedule=s["schedule"], weight_decay_mode=s["weight_decay_mode"])


def run_config(o: Mapping[str, Any], backend: str, keras_version: str) -> dict[str, Any]:
    """The settings `train` records in config.json, from its checked options ``o``
    (`train_options.check`)."""
    return {
        "preset": o["preset"], "method": o["method"], "backend": backend,
        "seed": o["seed"], "dataset": o["dataset"], "data_path": o["data_path"],
        "extra_data": o["extra_data"], "model": o["model"],
        "model_kwargs": o["model_kwargs"], "augment_pad": o["augment_pad"],
        "distribute": o["distribute"], "epochs": o["epochs"], "burn_in": o["burn_in"],
        "init": o["init"], "batch_size": o["batch_size"], "lr": o["lr"],
        "momentum": o["momentum"], "nesterov": True, "weight_decay": o["weight_decay"],
        "weight_decay_mode": o["weight_decay_mode"], "clipnorm": o["clipnorm"],
        "burn_in_clipnorm": None, "schedule": o["schedule"], "lr_warmup": o["lr_warmup"],
        "ema_tau": o["ema_tau"], "ema_warmup": o["ema_warmup"], "norm": o["norm"],
        "limit": o["limit"], "holdout": o["holdout"], "train_eps": o["train_eps"],
        "train_step": o["train_step"],
        "train_steps": o["train_steps"], "kl_beta": o["kl_beta"], "d_max": o["d_max"],
        "clean_weight": o["clean_weight"], "lam": o["lam"], "alpha": o["alpha"],
        "r0": o["r0"], "eps_fab": o["eps_fab"], "beta": o["beta"], "n_iter": o["n_iter"],
        "random_start": o["random_start"], "warm_start": o["warm_start"],
        "cache_dtype": o["cache_dtype"], "eval_every": o["eval_every"],
        "eval_n": o["eval_n"],
        "eval": {"attack": "pgd", "steps": o["pgd_steps"], "rel_step": 0.1, "loss": "ce",
                 "random_start": "uniform", "eps": o["eps"], "model": "averaged"},
        "keras_version": keras_version,
    }
