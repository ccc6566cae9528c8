"""`keras-dyart train`: clean burn-in, then a training method with the recipe, then PGD-40
evaluation, into a run directory that can be resumed.

The command reads as its stages: `train_options.check` (every option, before any work),
`run_dir` (the run directory, --overwrite and --resume), `settings.run_config` (what
config.json records) and `phases` (data, burn-in, method, final files).
"""

import os
import time
from typing import Any, List, Optional

import typer

from keras_dyart_apps import train_options
from keras_dyart_apps.settings import METHODS


def train(
    preset: Optional[str] = typer.Option(
        None, "--preset", callback=train_options.preset_callback, is_eager=True, metavar="NAME",
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
    alpha: float = typer.Option(0.3, metavar="X", help="DyART: α in exp(-α r)."),
    r0: float = typer.Option(0.6, metavar="X", help="DyART: margin cut-off."),
    eps_fab: str = typer.Option("0.3", "--eps-fab", metavar="EPS",
                                help="DyART: FAB start scale."),
    beta: float = typer.Option(5.0, metavar="X", help="DyART/MMA: soft-margin β."),
    n_iter: int = typer.Option(20, "--n-iter", metavar="N",
                               help="DyART/MMA: FAB iterations."),
    random_start: bool = typer.Option(
        False, "--random-start/--no-random-start", show_default=False,
        help="DyART: random FAB start (off)."),
    warm_start: Optional[int] = typer.Option(
        None, "--warm-start", metavar="N",
        help="DyART: after its first visit, search each point in N FAB iterations from "
             "its last boundary point (off: every search cold, as in the paper)."),
    cache_dtype: str = typer.Option(
        "float16", "--cache-dtype", metavar="TYPE",
        help="DyART --warm-start: memory per pixel, float16 or int8."),
    eval_every: int = typer.Option(
        0, "--eval-every", metavar="N", help="Keep best.keras (0: off)."),
    limit: Optional[int] = typer.Option(
        None, metavar="N", help="Use only the first N training points."),
    holdout: int = typer.Option(
        0, "--holdout", metavar="N",
        help="Train without the last N training points and evaluate on them, not on the "
             "test set (a validation split)."),
    eval_n: int = typer.Option(1000, "--eval-n", metavar="N", help="Test points to evaluate."),
    pgd_steps: int = typer.Option(40, "--pgd-steps", metavar="N",
                                  help="PGD steps of the evaluation."),
    verbose: int = typer.Option(1, metavar="N", help="0 silent, 1 bars, 2 one line."),
) -> dict[str, Any]:
    """Train a method (clean burn-in first, or --init) and evaluate it.

    The method stage runs the recipe (SGD, weight decay, clipping, weight average); the
    averaged model is evaluated with PGD.  Writes config.json, burn_in.keras, model.keras,
    averaged.keras, history.csv and metrics.json to the run directory.  Resume an
    interrupted run with --resume.  Every option: docs/cli.md.
    """
    options = dict(locals())
    return run(train_options.check(options))


def run(o: dict[str, Any]) -> dict[str, Any]:
    """Train and evaluate with the checked options ``o`` of `train`: the run's stages in
    order.  Returns the metrics (metrics.json)."""
    import keras

    from keras_dyart import io
    from keras_dyart_apps import phases, run_dir, settings

    backend = keras.backend.backend()
    if o["distribute"] and backend == "torch":
        raise typer.BadParameter("`--distribute` needs the jax or tensorflow backend: Keras 3 "
                                 "has no multi-device fit for PyTorch.")
    out = o["out"] or run_dir.default_out(o["method"], backend)
    config = settings.run_config(o, backend, keras.__version__)
    if o["resume"]:
        try:
            run_dir.check_resume(out, config)
        except ValueError as err:
            raise typer.BadParameter(str(err)) from None

    keras.utils.set_random_seed(o["seed"])
    data = phases.load_data(config, o["preset_dict"])
    t0 = time.time()
    stage = {"resume": o["resume"], "verbose": o["verbose"]}
    with phases.device_scope(o["distribute"]):
        classifier = phases.initial_classifier(config, data)
        if o["overwrite"]:
            run_dir.clear_run(out)
        io.write_json(os.path.join(out, "config.json"), config)
        classifier = phases.burn_in(classifier, config, data, out, **stage)
        robust = phases.method_stage(classifier, config, data, out, **stage)
    rows = phases.history(config, out)
    return phases.finish(robust, config, data, out, rows, time.time() - t0)


def register(app: typer.Typer) -> None:
    """Add the ``train`` command to the `keras-dyart` Typer app."""
    app.command("train")(train)
