"""`keras-dyart train`: clean burn-in, then a training method with the recipe, then PGD-40
evaluation, into a run directory that can be resumed."""

import contextlib
import csv
import json
import os
import time
from typing import List, Optional

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
        None, "--preset", callback=_preset_callback, is_eager=True,
        help="A published recipe (see `keras-dyart presets`): its data set, model, "
             "epochs, optimizer, DyART settings, augmentation and evaluation radius become "
             "the defaults; options given on the command line still win."),
    method: str = typer.Option(
        "dyart", help="Training method after the burn-in: " + ", ".join(METHODS) + "."),
    epochs: int = typer.Option(8, help="Epochs of the method after the burn-in."),
    burn_in: int = typer.Option(3, "--burn-in", help="Clean (cross-entropy) epochs first."),
    init: Optional[str] = typer.Option(
        None, "--init", help="Start from this .keras checkpoint (a classifier or a run's "
                             "model.keras) instead of a burn-in; --burn-in is ignored."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the interrupted run in --out (same options): "
                                "restores weights, optimizer, averages, seeds and epoch."),
    eps: Optional[List[str]] = typer.Option(
        None, help="PGD-40 evaluation radius; repeat for several (text such as 8/255 is "
                   "accepted). Default: 0.1, 0.2, 0.3."),
    batch_size: int = typer.Option(128, "--batch-size", help="Training batch size."),
    seed: int = typer.Option(0, help="Seed of weights, shuffling and attacks."),
    out: Optional[str] = typer.Option(
        None, help="Run directory to write. Default: runs/<method>-<backend>-<time>."),
    dataset: str = typer.Option(
        "mnist5k", help="Data set: mnist5k (embedded), cifar10, cifar100 (downloaded by "
                        "Keras), svhn, tinyimagenet (need --data-path)."),
    data_path: Optional[str] = typer.Option(
        None, "--data-path", help="Directory of svhn (.mat files) or tinyimagenet."),
    extra_data: Optional[str] = typer.Option(
        None, "--extra-data", help="Extra-data .npz (keys image, label) for a preset that "
                                   "mixes generated images into every batch."),
    model: str = typer.Option(
        "small-cnn", help="Architecture: small-cnn, wide-resnet, wrn-28-10, wrn-34-10, "
                          "preact-resnet18, resnet18."),
    distribute: bool = typer.Option(
        False, "--distribute/--no-distribute",
        help="Data-parallel over all accelerators (else all CPU devices): "
             "keras.distribution.DataParallel on JAX, tf.distribute.MirroredStrategy on "
             "TensorFlow; not available on PyTorch."),
    lr: float = typer.Option(0.05, help="Peak SGD learning rate (Nesterov momentum)."),
    momentum: float = typer.Option(0.9, help="SGD momentum."),
    weight_decay: float = typer.Option(
        5e-4, "--weight-decay", help="Weight decay (none on biases and normalisation "
                                     "parameters)."),
    weight_decay_mode: str = typer.Option(
        "coupled", "--weight-decay-mode",
        help="coupled: added to the clipped gradient, as PyTorch's SGD and the reference "
             "code do (momentum amplifies it about 10x); decoupled: Keras's w <- w - "
             "lr*wd*w."),
    clipnorm: float = typer.Option(
        1.0, help="Global gradient-norm clip of the method stage (0: none). 1.0 on MNIST: "
                  "the CIFAR recipe's 0.1 stalls the margins there (eps-0.3 robust "
                  "accuracy 0.43 against 0.77), none diverges. The clean burn-in is not "
                  "clipped: clipping slows clean training, and only the robust terms "
                  "need it."),
    schedule: str = typer.Option(
        "constant", help="Learning-rate schedule of the method stage: constant, cosine "
                         "(with --lr-warmup; the CIFAR recipe) or step (÷10 at 50 % and "
                         "75 % of the steps)."),
    lr_warmup: float = typer.Option(
        0.025, "--lr-warmup", help="Share of the method's steps with a linear learning-rate "
                                   "warm-up before the cosine decay."),
    ema_tau: float = typer.Option(
        0.995, "--ema-tau", help="τ of the weight average (EMA); decay min(τ, (1+t)/(10+t))."),
    ema_warmup: float = typer.Option(
        0.025, "--ema-warmup", help="Share of the method's steps before averaging starts."),
    norm: str = typer.Option("linf", help="Threat model of margins and attacks: linf or l2."),
    train_eps: str = typer.Option(
        "0.3", "--train-eps", help="PGD-AT/TRADES/MART: radius of the inner attack."),
    train_step: Optional[str] = typer.Option(
        None, "--train-step", help="PGD-AT/TRADES/MART: inner step size. Default: "
                                   "2.5 × train-eps / train-steps."),
    train_steps: int = typer.Option(
        10, "--train-steps", help="PGD-AT/TRADES/MART: inner attack steps."),
    kl_beta: float = typer.Option(
        6.0, "--kl-beta", help="TRADES/MART: weight β of the KL term."),
    d_max: str = typer.Option("0.4", "--d-max", help="MMA: margin hinge d_max."),
    clean_weight: float = typer.Option(
        1 / 3, "--clean-weight", help="MMA: weight of the clean cross-entropy."),
    lam: float = typer.Option(1000.0, help="DyART weight λ of the robust term."),
    alpha: float = typer.Option(3.0, help="DyART α of h'(r) = exp(-α r)."),
    r0: float = typer.Option(0.6, help="DyART r0: margins beyond it get no robust term."),
    eps_fab: str = typer.Option("0.3", "--eps-fab", help="FAB random-start radius scale."),
    beta: float = typer.Option(5.0, help="DyART/MMA: soft-margin temperature β."),
    n_iter: int = typer.Option(20, "--n-iter", help="DyART/MMA: FAB iterations per step."),
    random_start: bool = typer.Option(
        False, "--random-start/--no-random-start",
        help="Start FAB at random (as the reference code) instead of at x."),
    eval_every: int = typer.Option(
        0, "--eval-every", help="Every N epochs, attack the averaged model (PGD-40, CW "
                                "loss, first --eval-n test points, largest --eps) and keep "
                                "the best as best.keras; 0: off."),
    limit: Optional[int] = typer.Option(
        None, help="Use only the first N training points (quick runs)."),
    eval_n: int = typer.Option(1000, "--eval-n", help="Test points to evaluate."),
    pgd_steps: int = typer.Option(40, "--pgd-steps", help="PGD steps of the evaluation."),
    verbose: int = typer.Option(1, help="Keras progress: 0 silent, 1 bars, 2 one line."),
):
    """Train a method (clean burn-in first, or --init) with the recipe and evaluate it.

    The method stage uses SGD with Nesterov momentum, a constant learning rate (or, with
    --schedule cosine, cosine decay after a linear warm-up), weight decay except on biases
    and normalisation parameters, global gradient-norm clipping and an average (EMA) of the
    weights; the *averaged* model is evaluated with PGD-40 (CE) by the code of `keras-dyart
    evaluate` and saved as averaged.keras.

    Writes config.json, model.keras (the method model with its optimizer state),
    averaged.keras, history.csv and metrics.json to the run directory and prints clean and
    robust accuracy. While the method trains, backup/ holds the state after each epoch:
    rerun the same command with --resume to continue an interrupted run. The defaults train
    the small CNN on MNIST-5k in a few minutes on a CPU (MNIST's eps 0.3 L∞ threat model).
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
    elif os.path.exists(backup_dir):
        raise typer.BadParameter(
            f"`--out` {out!r} holds an interrupted run (backup/); pass --resume to continue "
            "it or choose another directory.")
    io.write_json(config_path, config)

    keras.utils.set_random_seed(seed)
    x_train, y_train, x_test, y_test, extra = _load_data(
        dataset, data_path, extra_data, preset_dict, uint8=augment is not None)
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
            classifier = _load_init(init)
        else:
            classifier = architectures.get(model, num_classes=num_classes,
                                           input_shape=x_train.shape[1:], **model_kwargs)
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
        robust.compile(optimizer=recipe.build_optimizer(
            max(epochs, 1) * _steps(batches), learning_rate=lr, momentum=momentum,
            weight_decay=weight_decay, global_clipnorm=clipnorm or None, lr_warmup=lr_warmup,
            ema_tau=ema_tau, ema_warmup=ema_warmup, schedule=schedule,
            weight_decay_mode=weight_decay_mode), metrics=["accuracy"])
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
