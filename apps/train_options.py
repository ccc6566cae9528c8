"""The options of `keras-dyart train`: the defaults a `--preset` sets, and the checks that
refuse a bad option before any work (one error naming the option).

The library is imported inside the functions: `keras-dyart --help` stays fast.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import typer

from keras_dyart_apps.settings import METHODS, default_step

SCHEDULES = ("constant", "cosine", "step")


def preset_defaults(name: str) -> dict[str, Any]:
    """Option defaults of a preset (by parameter name); options given on the command line
    still win."""
    from keras_dyart import presets

    p = presets.get(name)
    d, o, ema = p["dyart"], p["optimizer"], p["ema"] or {}
    schedule = p["schedule"]
    during = p["evaluation"]["during_training"]
    return {
        "method": p["method"], "dataset": p["dataset"], "model": p["model"],
        "burn_in": p["burn_in_epochs"], "epochs": p["epochs"], "batch_size": p["batch_size"],
        "lr": o["learning_rate"], "momentum": o["momentum"],
        "weight_decay": o["weight_decay"], "clipnorm": p["global_clipnorm"] or 0.0,
        "schedule": schedule["name"], "lr_warmup": schedule.get("warmup_fraction", 0.0),
        "ema_tau": ema.get("tau", 0.0), "ema_warmup": ema.get("warmup_fraction", 0.0),
        "norm": d["norm"], "lam": d["lam"], "alpha": d["alpha"], "r0": d["r0"],
        "eps_fab": repr(d["eps_fab"]), "beta": d["beta"], "n_iter": d["n_iter"],
        "eps": [p["evaluation"]["final"]["eps"]], "train_eps": during["eps"],
        "train_step": during["step_size"], "train_steps": 10,
    }


def preset_callback(ctx: typer.Context, value: Optional[str]) -> Optional[str]:
    """Eager: make the preset's settings the defaults of the options parsed after it."""
    if value is None:
        return value
    try:
        defaults = preset_defaults(value)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--preset") from None
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def check(options: dict[str, Any]) -> dict[str, Any]:
    """The options of `train`, checked, with the radii parsed (``eps``, ``train_eps``,
    ``train_step``, ``d_max``, ``eps_fab`` as floats), ``norm`` normalized, ``burn_in``
    0 under ``--init``, and what the preset adds: ``preset_dict``, ``model_kwargs``,
    ``augment_pad``.

    Raises:
        typer.BadParameter: the first bad option, by name.
    """
    o = dict(options)
    try:
        _check_method_settings(o)
        _check_run_settings(o)
        _check_files(o)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    _add_preset(o)
    if o["warm_start"] is not None and o["augment_pad"] is not None:
        raise typer.BadParameter(
            "`--warm-start` needs the same images at every visit; this preset augments "
            "them (random crops and flips). Drop `--warm-start`.")
    return o


def _check_method_settings(o: dict[str, Any]) -> None:
    """The method, its radii and weights, the optimizer and schedule, --verbose."""
    from keras_dyart import _checks  # the library's option checks; no public ones
    from keras_dyart.methods.warm import check_cache_dtype

    if o["method"] not in METHODS:
        raise ValueError(f"`--method` must be one of {list(METHODS)}; got {o['method']!r}.")
    o["eps"] = [_checks.parse_eps(e, "--eps") for e in (o["eps"] or ["0.1", "0.2", "0.3"])]
    o["eps_fab"] = _checks.parse_eps(o["eps_fab"], "--eps-fab")
    o["train_eps"] = _checks.parse_eps(o["train_eps"], "--train-eps")
    _checks.positive(o["train_steps"], "--train-steps", integer=True)
    o["train_step"] = (default_step(o["train_eps"], o["train_steps"])
                       if o["train_step"] is None
                       else _checks.parse_eps(o["train_step"], "--train-step"))
    o["d_max"] = _checks.parse_eps(o["d_max"], "--d-max")
    _checks.in_range(o["clean_weight"], "--clean-weight", 0.0, 1.0)
    _checks.positive(o["kl_beta"], "--kl-beta", allow_zero=True)
    for name in ("ema_tau", "ema_warmup", "lr_warmup"):
        _checks.in_range(o[name], _flag(name), 0.0, 1.0)
    if o["schedule"] not in SCHEDULES:
        raise ValueError(f"`--schedule` must be 'constant', 'cosine' or 'step'; got "
                         f"{o['schedule']!r}.")
    _checks.positive(o["clipnorm"], "--clipnorm", allow_zero=True)
    _checks.positive(o["weight_decay"], "--weight-decay", allow_zero=True)
    from keras_dyart import recipe

    if o["weight_decay_mode"] not in recipe.WEIGHT_DECAY_MODES:
        raise ValueError(f"`--weight-decay-mode` must be one of "
                         f"{list(recipe.WEIGHT_DECAY_MODES)}; got {o['weight_decay_mode']!r}.")
    o["norm"] = _checks.norm_name(o["norm"], "--norm")
    _checks.positive(o["lr"], "--lr")
    _checks.in_range(o["momentum"], "--momentum", 0.0, 1.0)
    for name in ("lam", "alpha"):
        _checks.positive(o[name], _flag(name), allow_zero=True)
    for name in ("r0", "beta"):
        _checks.positive(o[name], _flag(name))
    # The data sets are in [0, 1]: an L∞ radius beyond their width is one in pixel levels
    # (thresholds such as --r0 and --d-max may exceed it: "no threshold").
    for value, flag in [*((e, "--eps") for e in o["eps"]), (o["train_eps"], "--train-eps")]:
        _checks.eps_in_box(value, o["norm"], (0.0, 1.0), flag)
    _checks.positive(o["n_iter"], "--n-iter", integer=True)
    if o["warm_start"] is not None:
        _checks.positive(o["warm_start"], "--warm-start", integer=True, allow_zero=True)
        if o["random_start"]:
            raise ValueError("`--warm-start` replaces the random start: drop "
                             "`--random-start`.")
        if o["distribute"]:
            raise ValueError("`--warm-start` is not supported with `--distribute` (one "
                             "memory per replica); drop one of them.")
    check_cache_dtype(o["cache_dtype"], "--cache-dtype")
    if o["verbose"] not in (0, 1, 2):
        raise ValueError(f"`--verbose` must be 0, 1 or 2; got {o['verbose']!r}.")


def _check_run_settings(o: dict[str, Any]) -> None:
    """The model, the data set and its folder, epochs, batch and evaluation sizes."""
    from keras_dyart import _checks, architectures, datasets

    if o["model"] not in architectures.BUILDERS:
        raise ValueError(f"`--model` must be one of {sorted(architectures.BUILDERS)}; "
                         f"got {o['model']!r}.")
    names = [d for d in datasets.DATASETS if d != "npz"]
    if o["dataset"] not in names:
        raise ValueError(f"`--dataset` must be one of {names}; got {o['dataset']!r}.")
    data_path = o["data_path"]
    if data_path is not None and not os.path.isdir(data_path):
        raise ValueError(f"`--data-path` must be an existing folder; got {data_path!r}.")
    if o["dataset"] in ("svhn", "tinyimagenet") and data_path is None:
        raise ValueError(f"`--data-path`: --dataset {o['dataset']} needs the folder of its "
                         "files.")
    for name in ("epochs", "burn_in", "eval_every", "holdout"):
        _checks.positive(o[name], _flag(name), integer=True, allow_zero=True)
    for name in ("batch_size", "eval_n", "pgd_steps"):
        _checks.positive(o[name], _flag(name), integer=True)
    if o["limit"] is not None:
        _checks.positive(o["limit"], "--limit", integer=True)


def _check_files(o: dict[str, Any]) -> None:
    """--init, --resume/--overwrite/--out, the preset and its --extra-data."""
    from keras_dyart_apps import run_dir

    init = o["init"]
    if init is not None:
        if not str(init).endswith(".keras") or not os.path.isfile(init):
            raise ValueError(f"`--init` must be an existing .keras file; got {init!r}.")
        o["burn_in"] = 0
    if o["epochs"] + o["burn_in"] == 0 and init is None:
        raise ValueError("`--epochs` and `--burn-in` are both 0: nothing to train.")
    if o["resume"] and not o["out"]:
        raise ValueError("`--resume` needs `--out`: the run directory to continue.")
    if o["resume"] and o["overwrite"]:
        raise ValueError("`--overwrite` and `--resume` exclude each other: replace the "
                         "run in --out, or continue it.")
    if o["out"] is not None:
        run_dir.check_out(o["out"], o["resume"], o["overwrite"])
    o["preset_dict"] = None
    if o["preset"] is not None:
        from keras_dyart import presets

        p = o["preset_dict"] = presets.get(o["preset"])
        if p["extra_data"] and not o["extra_data"]:
            raise ValueError(
                f"`--extra-data`: preset {o['preset']!r} mixes extra images into every "
                f"batch; pass the .npz (keys {p['extra_data']['x_key']!r}, "
                f"{p['extra_data']['y_key']!r}; the recipe's is "
                f"{p['extra_data']['path']!r}).")
    if o["extra_data"] is not None and not os.path.isfile(o["extra_data"]):
        raise ValueError(f"`--extra-data` must be an existing .npz file; got "
                         f"{o['extra_data']!r}.")


def _add_preset(o: dict[str, Any]) -> None:
    """What the preset adds beyond options: model details (when its model is used) and the
    augmentation (random crop with this padding, flips)."""
    p = o["preset_dict"]
    o["model_kwargs"], o["augment_pad"] = {}, None
    if p is None:
        return
    if o["model"] == p["model"]:
        o["model_kwargs"] = {k: v for k, v in p["model_kwargs"].items()
                             if k not in ("num_classes", "input_shape")}
    if p["augment"]:
        o["augment_pad"] = int(p["augment"]["random_crop_pad"])


def _flag(name: str) -> str:
    """The option of a parameter: ``ema_tau`` -> ``--ema-tau``."""
    return "--" + name.replace("_", "-")
