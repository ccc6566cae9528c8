"""`keras-dyart train`: clean burn-in, then a training method with the recipe, then PGD-40
evaluation, into a run directory that can be resumed."""

import contextlib
import csv
import inspect
import json
import os
import time
from typing import List, Optional

import click
import typer

METHODS = ("clean", "pgd-at", "trades", "mart", "mma", "dyart")


def _method_kwargs(method, *, norm, seed, train_eps, train_step, train_steps, kl_beta,
                   d_max, clean_weight, n_iter, beta, lam, alpha, r0, eps_fab,
                   random_start):
    """The keyword arguments of `keras_dyart.methods.get` for ``method``."""
    attack = {"eps": train_eps, "step_size": train_step, "steps": train_steps, "norm": norm}
    return {
        "clean": {},
        "pgd-at": attack,
        "trades": {"beta": kl_beta, **attack},
        "mart": {"beta": kl_beta, **attack},
        "mma": {"d_max": d_max, "clean_weight": clean_weight, "norm": norm,
                "margin_beta": beta, "n_iter": n_iter},
        "dyart": {"norm": norm, "beta": beta, "lam": lam, "alpha": alpha, "r0": r0,
                  "n_iter": n_iter, "eps_fab": eps_fab, "random_start": random_start},
    }[method] | ({} if method == "clean" else {"seed": seed})


def option_defaults():
    """The default of every `train` option by parameter name: the settings of a run whose
    config.json lacks them."""
    return {name: param.default.default
            for name, param in inspect.signature(train).parameters.items()}


def method_kwargs_from_config(method, config, *, norm=None, train_eps=None):
    """`_method_kwargs` from a run's recorded settings (config.json, over
    `option_defaults`): the method exactly as `train` built it.  ``norm`` and
    ``train_eps`` (with step 2.5 × eps / steps) replace the run's."""
    from keras_dyart import _checks

    s = {**option_defaults(), **{k: v for k, v in config.items() if v is not None}}
    if train_eps is not None:
        s["train_eps"], s["train_step"] = train_eps, None
    eps = _checks.parse_eps(s["train_eps"], "train_eps")
    step = (2.5 * eps / s["train_steps"] if s["train_step"] is None
            else _checks.parse_eps(s["train_step"], "train_step"))
    return _method_kwargs(
        method, norm=norm or s["norm"], seed=s["seed"], train_eps=eps, train_step=step,
        train_steps=s["train_steps"], kl_beta=s["kl_beta"],
        d_max=_checks.parse_eps(s["d_max"], "d_max"), clean_weight=s["clean_weight"],
        n_iter=s["n_iter"], beta=s["beta"], lam=s["lam"], alpha=s["alpha"], r0=s["r0"],
        eps_fab=_checks.parse_eps(s["eps_fab"], "eps_fab"), random_start=s["random_start"])


def method_optimizer(total_steps, settings):
    """The optimizer of the method stage (`recipe.build_optimizer`) for ``total_steps``
    steps from a run's settings (the keys of config.json: lr, momentum, weight_decay,
    weight_decay_mode, clipnorm, schedule, lr_warmup, ema_tau, ema_warmup; missing ones
    take `option_defaults`).  `train` and `keras-dyart dynamics` both build it here."""
    from keras_dyart import recipe

    s = {**option_defaults(), **{k: v for k, v in settings.items() if v is not None}}
    return recipe.build_optimizer(
        total_steps, learning_rate=s["lr"], momentum=s["momentum"],
        weight_decay=s["weight_decay"], global_clipnorm=s["clipnorm"] or None,
        lr_warmup=s["lr_warmup"], ema_tau=s["ema_tau"], ema_warmup=s["ema_warmup"],
        schedule=s["schedule"], weight_decay_mode=s["weight_decay_mode"])


#: Files a run directory holds: written by `train` (and by `evaluate` and `dynamics` on
#: the run); `--overwrite` removes them before the new run starts.
RUN_FILES = ("config.json", "burn_in.keras", "model.keras", "averaged.keras", "best.keras",
             "history.csv", "history_burn_in.csv", "history_method.csv", "metrics.json")
RUN_FOLDERS = ("backup", "dynamics")
RUN_PATTERNS = ("eval_*.json", "eval_*.csv", "margins.*", "best.keras.*", ".tmp-*")


def _finished(out):
    """Whether ``out`` holds a finished run (metrics.json or model.keras)."""
    return any(os.path.exists(os.path.join(out, n)) for n in ("metrics.json", "model.keras"))


def _check_out(out, resume, overwrite):
    """Refuse an --out that is a file, a finished run (without --overwrite) or an
    interrupted one (without --resume or --overwrite)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"`--out` {out!r} is a file; give a directory.")
    if resume or overwrite or not os.path.isdir(out):
        return
    if _finished(out):
        raise ValueError(f"`--out` {out!r} holds a finished run (metrics.json or "
                         "model.keras); pass --overwrite to replace it or choose another "
                         "directory.")
    if os.path.exists(os.path.join(out, "backup")):
        raise ValueError(f"`--out` {out!r} holds an interrupted run (backup/); pass "
                         "--resume to continue it, --overwrite to replace it, or choose "
                         "another directory.")


def _clear_run(out):
    """Remove the files of an earlier run from ``out`` (`RUN_FILES`, `RUN_FOLDERS`,
    `RUN_PATTERNS`); other files stay."""
    import glob
    import shutil

    for name in RUN_FILES:
        path = os.path.join(out, name)
        if os.path.isfile(path):
            os.remove(path)
    for name in RUN_FOLDERS:
        shutil.rmtree(os.path.join(out, name), ignore_errors=True)
    for pattern in RUN_PATTERNS:
        for path in glob.glob(os.path.join(out, pattern)):
            if os.path.isfile(path):
                os.remove(path)


def _steps(data):
    """Batches per epoch of `recipe.ArrayBatches` (an endless stream) or a `pipeline`."""
    return getattr(data, "steps_per_epoch", None) or len(data)


def _load_data(dataset, data_path, extra_data, preset, uint8):
    """``(x_train, y_train, x_test, y_test, extra)``: the test images as float32 in [0, 1];
    the training images as uint8 when ``uint8`` (the augmenting pipeline scales each
    batch); ``extra`` the extra-data pair of a preset that mixes one in, else None."""
    from keras_dyart import datasets

    kwargs = {}
    if preset and preset["dataset"] == dataset:
        kwargs = {k: v for k, v in preset["dataset_kwargs"].items() if k != "dtype"}
    if data_path:
        kwargs["path"] = data_path
    if dataset != "mnist5k" and uint8:
        kwargs["dtype"] = "uint8"
    x_train, y_train, x_test, y_test = datasets.load(dataset, **kwargs)
    if x_test.dtype == "uint8":
        x_test = x_test.astype("float32") / 255.0
    extra = None
    spec = (preset or {}).get("extra_data")
    if spec and extra_data:
        extra = datasets.load_npz(extra_data, x_key=spec["x_key"], y_key=spec["y_key"],
                                  dtype="uint8" if uint8 else "float32")
    return x_train, y_train, x_test, y_test, extra


def _load_init(path):
    """The classifier inside a ``.keras`` file (a method model or a plain classifier)."""
    import keras

    model = keras.saving.load_model(path, compile=False)
    return getattr(model, "classifier", model)


def _read_rows(path, phase, first_epoch):
    """History rows of a CSV written by this command (burn-in) or by `CSVLogger` (the
    method, ``epoch`` 0-based, a resumed run may repeat an epoch: the last row wins)."""
    if not os.path.exists(path):
        return []
    by_epoch = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            if phase == "burn-in":
                by_epoch[int(row["epoch"])] = row
            else:
                epoch = first_epoch + int(row.pop("epoch")) + 1
                by_epoch[epoch] = {"epoch": epoch, "phase": phase, **row}
    out = []
    for epoch in sorted(by_epoch):
        row = by_epoch[epoch]
        out.append({k: (v if k == "phase" else int(v) if k == "epoch" else float(v))
                    for k, v in row.items() if v not in ("", "NA")})
    return out


def _weight_decay_modes():
    """The values of --weight-decay-mode (imported late: --help stays fast)."""
    from keras_dyart import recipe

    return recipe.WEIGHT_DECAY_MODES


def _preset_defaults(name):
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


def _preset_callback(ctx: typer.Context, value: Optional[str]):
    """Eager: make the preset's settings the defaults of the options parsed after it."""
    if value is None:
        return value
    try:
        defaults = _preset_defaults(value)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--preset") from None
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


# Settings a resumed run must share with the run it continues.
_RESUME_KEYS = ("method", "backend", "seed", "dataset", "model", "epochs", "burn_in",
                "batch_size", "limit", "init", "preset")


def train(
    preset: Optional[str] = typer.Option(
        None, "--preset", callback=_preset_callback, is_eager=True, metavar="NAME",
        help="A published recipe (keras-dyart presets) as the defaults."),
    method: str = typer.Option(
        "dyart", metavar="NAME", help="Method after the burn-in: " + ", ".join(METHODS) + "."),
    epochs: int = typer.Option(8, metavar="N", help="Epochs of the method."),
    burn_in: int = typer.Option(3, "--burn-in", metavar="N",
                                help="Clean epochs first."),
    init: Optional[str] = typer.Option(
        None, "--init", metavar="FILE",
        help="Start from this .keras file (no burn-in)."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the interrupted run in --out."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace a finished run in --out."),
    eps: Optional[List[str]] = typer.Option(
        None, metavar="EPS", help="PGD radius; repeat (default 0.1, 0.2, 0.3)."),
    batch_size: int = typer.Option(128, "--batch-size", metavar="N", help="Batch size."),
    seed: int = typer.Option(0, metavar="N", help="Random seed."),
    out: Optional[str] = typer.Option(
        None, metavar="DIR", help="Run directory (default: a new one in runs/)."),
    dataset: str = typer.Option(
        "mnist5k", metavar="NAME", help="Data set (docs/cli.md)."),
    data_path: Optional[str] = typer.Option(
        None, "--data-path", metavar="DIR", help="Folder of svhn or tinyimagenet."),
    extra_data: Optional[str] = typer.Option(
        None, "--extra-data", metavar="FILE", help="Extra-data .npz of a preset."),
    model: str = typer.Option(
        "small-cnn", metavar="NAME", help="Architecture."),
    distribute: bool = typer.Option(
        False, "--distribute/--no-distribute", show_default=False,
        help="Data-parallel on JAX or TensorFlow (off)."),
    lr: float = typer.Option(0.05, metavar="X", help="Peak SGD learning rate."),
    momentum: float = typer.Option(0.9, metavar="X", help="SGD (Nesterov) momentum."),
    weight_decay: float = typer.Option(
        5e-4, "--weight-decay", metavar="X", help="Weight decay."),
    weight_decay_mode: str = typer.Option(
        "coupled", "--weight-decay-mode", metavar="MODE",
        help="coupled or decoupled."),
    clipnorm: float = typer.Option(
        1.0, metavar="X", help="Gradient clip (0: none)."),
    schedule: str = typer.Option(
        "constant", metavar="NAME", help="constant/cosine/step."),
    lr_warmup: float = typer.Option(
        0.025, "--lr-warmup", metavar="X", help="Cosine warm-up share."),
    ema_tau: float = typer.Option(0.995, "--ema-tau", metavar="X",
                                  help="τ of the weight average."),
    ema_warmup: float = typer.Option(
        0.025, "--ema-warmup", metavar="X", help="Average warm-up share."),
    norm: str = typer.Option("linf", metavar="NORM", help="Threat model: linf or l2."),
    train_eps: str = typer.Option(
        "0.3", "--train-eps", metavar="EPS", help="PGD-AT/TRADES/MART radius."),
    train_step: Optional[str] = typer.Option(
        None, "--train-step", metavar="EPS",
        help="PGD-AT/TRADES/MART step (2.5 eps/steps)."),
    train_steps: int = typer.Option(
        10, "--train-steps", metavar="N", help="PGD-AT/TRADES/MART steps."),
    kl_beta: float = typer.Option(
        6.0, "--kl-beta", metavar="X", help="TRADES/MART: KL weight β."),
    d_max: str = typer.Option("0.4", "--d-max", metavar="EPS",
                              help="MMA: margin hinge."),
    clean_weight: float = typer.Option(
        1 / 3, "--clean-weight", metavar="X", show_default="1/3",
        help="MMA: clean-loss weight."),
    lam: float = typer.Option(1000.0, metavar="X", help="DyART: robust weight λ."),
    alpha: float = typer.Option(3.0, metavar="X", help="DyART: α in exp(-α r)."),
    r0: float = typer.Option(0.6, metavar="X", help="DyART: margin cut-off."),
    eps_fab: str = typer.Option("0.3", "--eps-fab", metavar="EPS",
                                help="DyART: FAB start scale."),
    beta: float = typer.Option(5.0, metavar="X", help="DyART/MMA: soft-margin β."),
    n_iter: int = typer.Option(20, "--n-iter", metavar="N",
                               help="DyART/MMA: FAB iterations."),
    random_start: bool = typer.Option(
        False, "--random-start/--no-random-start", show_default=False,
        help="DyART: random FAB start (off)."),
    eval_every: int = typer.Option(
        0, "--eval-every", metavar="N", help="Keep best.keras (0: off)."),
    limit: Optional[int] = typer.Option(
        None, metavar="N", help="Use only the first N training points."),
    eval_n: int = typer.Option(1000, "--eval-n", metavar="N", help="Test points to evaluate."),
    pgd_steps: int = typer.Option(40, "--pgd-steps", metavar="N",
                                  help="PGD steps of the evaluation."),
    verbose: int = typer.Option(1, metavar="N", help="0 silent, 1 bars, 2 one line."),
):
    """Train a method (clean burn-in first, or --init) and evaluate it.

    The method stage runs the recipe (SGD, weight decay, clipping, weight average); the
    averaged model is evaluated with PGD.  Writes config.json, burn_in.keras, model.keras,
    averaged.keras, history.csv and metrics.json to the run directory.  Resume an
    interrupted run with --resume.  Every option: docs/cli.md.
    """
    from keras_dyart import _checks

    try:
        if method not in METHODS:
            raise ValueError(f"`--method` must be one of {list(METHODS)}; got {method!r}.")
        eps_values = [_checks.parse_eps(e, "--eps") for e in (eps or ["0.1", "0.2", "0.3"])]
        eps_fab_value = _checks.parse_eps(eps_fab, "--eps-fab")
        train_eps_value = _checks.parse_eps(train_eps, "--train-eps")
        _checks.positive(train_steps, "--train-steps", integer=True)
        train_step_value = (2.5 * train_eps_value / train_steps if train_step is None
                            else _checks.parse_eps(train_step, "--train-step"))
        d_max_value = _checks.parse_eps(d_max, "--d-max")
        _checks.in_range(clean_weight, "--clean-weight", 0.0, 1.0)
        _checks.positive(kl_beta, "--kl-beta", allow_zero=True)
        _checks.in_range(ema_tau, "--ema-tau", 0.0, 1.0)
        _checks.in_range(ema_warmup, "--ema-warmup", 0.0, 1.0)
        _checks.in_range(lr_warmup, "--lr-warmup", 0.0, 1.0)
        if schedule not in ("constant", "cosine", "step"):
            raise ValueError(f"`--schedule` must be 'constant', 'cosine' or 'step'; got "
                             f"{schedule!r}.")
        _checks.positive(clipnorm, "--clipnorm", allow_zero=True)
        _checks.positive(weight_decay, "--weight-decay", allow_zero=True)
        modes = _weight_decay_modes()
        if weight_decay_mode not in modes:
            raise ValueError(f"`--weight-decay-mode` must be one of {list(modes)}; got "
                             f"{weight_decay_mode!r}.")
        norm = _checks.norm_name(norm, "--norm")
        _checks.positive(lr, "--lr")
        _checks.in_range(momentum, "--momentum", 0.0, 1.0)
        for value, name in ((lam, "--lam"), (alpha, "--alpha")):
            _checks.positive(value, name, allow_zero=True)
        for value, name in ((r0, "--r0"), (beta, "--beta")):
            _checks.positive(value, name)
        _checks.positive(n_iter, "--n-iter", integer=True)
        if verbose not in (0, 1, 2):
            raise ValueError(f"`--verbose` must be 0, 1 or 2; got {verbose!r}.")
        from keras_dyart import architectures, datasets

        if model not in architectures.BUILDERS:
            raise ValueError(f"`--model` must be one of {sorted(architectures.BUILDERS)}; "
                             f"got {model!r}.")
        names = [d for d in datasets.DATASETS if d != "npz"]
        if dataset not in names:
            raise ValueError(f"`--dataset` must be one of {names}; got {dataset!r}.")
        if data_path is not None and not os.path.isdir(data_path):
            raise ValueError(f"`--data-path` must be an existing folder; got {data_path!r}.")
        if dataset in ("svhn", "tinyimagenet") and data_path is None:
            raise ValueError(f"`--data-path`: --dataset {dataset} needs the folder of its "
                             "files.")
        for value, name in ((epochs, "--epochs"), (burn_in, "--burn-in"),
                            (eval_every, "--eval-every")):
            _checks.positive(value, name, integer=True, allow_zero=True)
        for value, name in ((batch_size, "--batch-size"), (eval_n, "--eval-n"),
                            (pgd_steps, "--pgd-steps")):
            _checks.positive(value, name, integer=True)
        if limit is not None:
            _checks.positive(limit, "--limit", integer=True)
        if init is not None:
            if not str(init).endswith(".keras") or not os.path.isfile(init):
                raise ValueError(f"`--init` must be an existing .keras file; got {init!r}.")
            burn_in = 0
        if epochs + burn_in == 0 and init is None:
            raise ValueError("`--epochs` and `--burn-in` are both 0: nothing to train.")
        if resume and not out:
            raise ValueError("`--resume` needs `--out`: the run directory to continue.")
        if resume and overwrite:
            raise ValueError("`--overwrite` and `--resume` exclude each other: replace the "
                             "run in --out, or continue it.")
        if out is not None:
            _check_out(out, resume, overwrite)
        preset_dict = None
        if preset is not None:
            from keras_dyart import presets

            preset_dict = presets.get(preset)
            if preset_dict["extra_data"] and not extra_data:
                raise ValueError(
                    f"`--extra-data`: preset {preset!r} mixes extra images into every batch; "
                    f"pass the .npz (keys {preset_dict['extra_data']['x_key']!r}, "
                    f"{preset_dict['extra_data']['y_key']!r}; the recipe's is "
                    f"{preset_dict['extra_data']['path']!r}).")
        if extra_data is not None and not os.path.isfile(extra_data):
            raise ValueError(f"`--extra-data` must be an existing .npz file; got "
                             f"{extra_data!r}.")
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    # What the preset adds beyond options: model details (when its model is used) and the
    # augmentation (random crop with this padding, flips).
    model_kwargs = {}
    augment = None
    if preset_dict is not None:
        if model == preset_dict["model"]:
            model_kwargs = {k: v for k, v in preset_dict["model_kwargs"].items()
                            if k not in ("num_classes", "input_shape")}
        if preset_dict["augment"]:
            augment = int(preset_dict["augment"]["random_crop_pad"])

    import keras

    from keras_dyart import architectures, datasets, io, methods, recipe
    from keras_dyart import distribute as distribute_mod
    from keras_dyart_apps import report

    backend = keras.backend.backend()
    if distribute and backend == "torch":
        raise typer.BadParameter("`--distribute` needs the jax or tensorflow backend: Keras 3 "
                                 "has no multi-device fit for PyTorch.")
    out = out or os.path.join("runs", f"{method}-{backend}-{time.strftime('%Y%m%d-%H%M%S')}")
    config_path = os.path.join(out, "config.json")
    burn_in_path = os.path.join(out, "burn_in.keras")
    backup_dir = os.path.join(out, "backup")
    config = {
        "preset": preset, "method": method, "backend": backend, "seed": seed,
        "dataset": dataset, "data_path": data_path, "extra_data": extra_data,
        "model": model, "model_kwargs": model_kwargs, "augment_pad": augment,
        "distribute": distribute, "epochs": epochs, "burn_in": burn_in, "init": init,
        "batch_size": batch_size, "lr": lr, "momentum": momentum, "nesterov": True,
        "weight_decay": weight_decay, "weight_decay_mode": weight_decay_mode,
        "clipnorm": clipnorm, "burn_in_clipnorm": None,
        "schedule": schedule, "lr_warmup": lr_warmup,
        "ema_tau": ema_tau, "ema_warmup": ema_warmup, "norm": norm, "limit": limit,
        "train_eps": train_eps_value, "train_step": train_step_value,
        "train_steps": train_steps, "kl_beta": kl_beta, "d_max": d_max_value,
        "clean_weight": clean_weight, "lam": lam, "alpha": alpha, "r0": r0,
        "eps_fab": eps_fab_value, "beta": beta, "n_iter": n_iter,
        "random_start": random_start, "eval_every": eval_every,
        "eval_n": eval_n,
        "eval": {"attack": "pgd", "steps": pgd_steps, "rel_step": 0.1, "loss": "ce",
                 "random_start": "uniform", "eps": eps_values, "model": "averaged"},
        "keras_version": keras.__version__,
    }
    if resume:
        if not os.path.exists(config_path):
            raise typer.BadParameter(f"`--resume`: {out!r} holds no config.json; nothing to "
                                     "resume.")
        with open(config_path) as f:
            previous = json.load(f)
        changed = [k for k in _RESUME_KEYS if previous.get(k) != config.get(k)]
        if changed:
            raise typer.BadParameter(
                "`--resume` needs the options of the interrupted run; these differ: "
                + ", ".join(f"{k} (run: {previous.get(k)!r}, now: {config.get(k)!r})"
                            for k in changed))
        if os.path.exists(os.path.join(out, "metrics.json")):
            raise typer.BadParameter(f"`--resume`: the run in {out!r} is complete "
                                     "(metrics.json exists).")

    keras.utils.set_random_seed(seed)
    try:
        x_train, y_train, x_test, y_test, extra = _load_data(
            dataset, data_path, extra_data, preset_dict, uint8=augment is not None)
    except Exception as err:  # noqa: BLE001  (downloads and readers raise many kinds)
        raise click.ClickException(f"cannot load --dataset {dataset}: {err}") from None
    if limit:
        x_train, y_train = x_train[:limit], y_train[:limit]
    x_test, y_test = x_test[:eval_n], y_test[:eval_n]
    num_classes = int(max(y_train.max(), y_test.max()) + 1)

    def batches_for(stage_seed, with_extra):
        """The training batches: in memory, or augmented (a preset) with extra data."""
        if augment is None:
            return recipe.ArrayBatches(x_train, y_train, batch_size=batch_size,
                                       seed=stage_seed)
        fraction = (preset_dict["extra_data"] or {}).get("fraction", 0.0) if with_extra \
            else 0.0
        return datasets.pipeline(x_train, y_train, batch_size=batch_size, augment=True,
                                 pad=augment, extra=extra if fraction else None,
                                 extra_fraction=fraction, seed=stage_seed)

    t0 = time.time()
    burn_history = os.path.join(out, "history_burn_in.csv")
    method_history = os.path.join(out, "history_method.csv")
    scope = contextlib.nullcontext()
    if distribute:
        strategy = distribute_mod.data_parallel()
        scope = strategy.scope()
        typer.echo(f"data parallel over {distribute_mod.num_replicas(strategy)} devices")
    with scope:
        if init is not None:
            try:
                classifier = _load_init(init)
            except Exception as err:  # noqa: BLE001  (Keras raises many kinds)
                raise typer.BadParameter(f"`--init`: cannot load {init!r}: {err}") from None
        else:
            classifier = architectures.get(model, num_classes=num_classes,
                                           input_shape=x_train.shape[1:], **model_kwargs)
        if overwrite:
            _clear_run(out)
        io.write_json(config_path, config)
        if burn_in and resume and os.path.exists(burn_in_path):
            typer.echo(f"burn-in: restored from {burn_in_path}")
            classifier = _load_init(burn_in_path)
        elif burn_in:
            typer.echo(f"clean burn-in: {burn_in} epochs ({backend})")
            classifier.compile(
                # not clipped: clipping slows clean training; only the robust term needs it
                optimizer=recipe.DecaySGD(lr, momentum=momentum, nesterov=True,
                                          weight_decay=weight_decay,
                                          weight_decay_mode=weight_decay_mode),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
            burn_data = batches_for(seed + 1, with_extra=False)
            hist = classifier.fit(burn_data, epochs=burn_in, verbose=verbose,
                                  steps_per_epoch=_steps(burn_data), shuffle=False)
            io.write_csv(burn_history, report.history_rows(hist.history, "burn-in", 0))
            io.save_model(classifier, burn_in_path)

        robust = methods.get(method, classifier, **_method_kwargs(
            method, norm=norm, seed=seed, train_eps=train_eps_value,
            train_step=train_step_value, train_steps=train_steps, kl_beta=kl_beta,
            d_max=d_max_value, clean_weight=clean_weight, n_iter=n_iter, beta=beta, lam=lam,
            alpha=alpha, r0=r0, eps_fab=eps_fab_value, random_start=random_start))
        batches = batches_for(seed, with_extra=True)
        robust.compile(optimizer=method_optimizer(max(epochs, 1) * _steps(batches), config),
                       metrics=["accuracy"])
        if epochs:
            typer.echo(f"{method}: {epochs} epochs")
            if not resume and os.path.exists(method_history):
                os.remove(method_history)
            # The history row of an epoch is written before its backup: a run killed
            # between the two repeats the epoch and rewrites the row (the last row wins).
            callbacks = [recipe.SyncEpoch(batches),
                         keras.callbacks.CSVLogger(method_history, append=True),
                         recipe.AtomicBackupAndRestore(backup_dir)]
            if eval_every:
                callbacks.append(recipe.AveragedCheckpoint(
                    x_test[:500], y_test[:500], os.path.join(out, "best.keras"),
                    eps=max(eps_values), norm=norm, steps=40, loss="cw", every=eval_every,
                    seed=seed))
            robust.fit(batches, epochs=epochs, steps_per_epoch=_steps(batches),
                       shuffle=False, verbose=verbose, callbacks=callbacks)
    rows = _read_rows(burn_history, "burn-in", 0) + _read_rows(method_history, method,
                                                               burn_in)
    train_seconds = time.time() - t0
    io.write_csv(os.path.join(out, "history.csv"), rows)
    io.save_model(robust, os.path.join(out, "model.keras"))
    averaged = recipe.averaged_model(robust)
    io.save_model(averaged, os.path.join(out, "averaged.keras"))

    metrics = report.pgd_metrics(averaged, x_test, y_test, eps_values, out, norm=norm,
                                 steps=pgd_steps, seed=seed)
    metrics["train_seconds"] = round(train_seconds, 1)
    io.write_json(os.path.join(out, "metrics.json"), metrics)
    report.print_metrics(metrics, title=f"{method} on {dataset} ({backend}), averaged "
                                        f"model, {len(x_test)} test points")
    typer.echo(f"run directory: {out}")
    return metrics


def register(app):
    app.command("train")(train)
