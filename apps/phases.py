"""The stages of `keras-dyart train`: the data, the starting classifier, the clean burn-in,
the method with the recipe, and the final files and PGD evaluation.

Each stage reads the run's settings (``config``, as written to config.json) and the
run directory ``out``; `keras_dyart_apps.train.run` calls them in order.
"""

from __future__ import annotations

import contextlib
import csv
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import typer

from keras_dyart_apps import settings


@dataclass
class TrainData:
    """The arrays of a run: training images (uint8 under augmentation, else float32),
    the first ``eval_n`` test images in [0, 1], and the extra-data pair of a preset that
    mixes one in (with its share of each batch)."""

    x_train: Any
    y_train: Any
    x_test: Any
    y_test: Any
    extra: Optional[tuple] = None
    extra_fraction: float = 0.0

    @property
    def num_classes(self) -> int:
        """One more than the largest label of the training and test sets."""
        return int(max(self.y_train.max(), self.y_test.max()) + 1)


def load_data(config: Mapping[str, Any], preset: Optional[Mapping[str, Any]]) -> TrainData:
    """The run's data: its data set (with the preset's loader settings), ``limit`` training
    points and ``eval_n`` test points; with ``holdout``, the last ``holdout`` of the
    ``limit`` training points are kept out of training and evaluated instead of the test
    set (``eval_n`` of them).

    Raises:
        typer.BadParameter: the data set cannot be loaded.
    """
    from keras_dyart import datasets

    dataset, uint8 = config["dataset"], config["augment_pad"] is not None
    kwargs = {}
    if preset and preset["dataset"] == dataset:
        kwargs = {k: v for k, v in preset["dataset_kwargs"].items() if k != "dtype"}
    if config["data_path"]:
        kwargs["path"] = config["data_path"]
    if dataset != "mnist5k" and uint8:
        kwargs["dtype"] = "uint8"
    spec = (preset or {}).get("extra_data")
    try:
        x_train, y_train, x_test, y_test = datasets.load(dataset, **kwargs)
        if x_test.dtype == "uint8":
            x_test = x_test.astype("float32") / 255.0
        extra = None
        if spec and config["extra_data"]:
            extra = datasets.load_npz(config["extra_data"], x_key=spec["x_key"],
                                      y_key=spec["y_key"],
                                      dtype="uint8" if uint8 else "float32")
    except Exception as err:  # noqa: BLE001  (downloads and readers raise many kinds)
        # typer's own exception: it vendors click, so click's ClickException would
        # print as a traceback
        raise typer.BadParameter(f"cannot load --dataset {dataset}: {err}") from None
    limit, n = config["limit"], config["eval_n"]
    if limit:
        x_train, y_train = x_train[:limit], y_train[:limit]
    holdout = config.get("holdout") or 0
    if holdout:
        if holdout >= len(x_train):
            raise typer.BadParameter(
                f"`--holdout` ({holdout}) must be smaller than the {len(x_train)} training "
                f"points of {dataset}: some must be left to train on.")
        # the validation split replaces the test set: the run never sees the test points
        x_test, y_test = x_train[-holdout:], y_train[-holdout:]
        x_train, y_train = x_train[:-holdout], y_train[:-holdout]
        if x_test.dtype == "uint8":
            x_test = x_test.astype("float32") / 255.0
    return TrainData(x_train, y_train, x_test[:n], y_test[:n], extra,
                     (spec or {}).get("fraction", 0.0))


def batches(data: TrainData, config: Mapping[str, Any], seed: int, with_extra: bool,
            index: bool = False):
    """The training batches: in memory (`recipe.ArrayBatches`, with the rows' indices when
    ``index``), or augmented with the preset's padding, with its extra data when
    ``with_extra`` (never with ``index``: `train_options.check` refuses --warm-start
    there)."""
    from keras_dyart import datasets, recipe

    if config["augment_pad"] is None:
        return recipe.ArrayBatches(data.x_train, data.y_train,
                                   batch_size=config["batch_size"], seed=seed, index=index)
    fraction = data.extra_fraction if with_extra else 0.0
    return datasets.pipeline(data.x_train, data.y_train, batch_size=config["batch_size"],
                             augment=True, pad=config["augment_pad"],
                             extra=data.extra if fraction else None,
                             extra_fraction=fraction, seed=seed)


def steps_per_epoch(data) -> int:
    """Batches per epoch of `recipe.ArrayBatches` (an endless stream) or a `pipeline`."""
    return getattr(data, "steps_per_epoch", None) or len(data)


def device_scope(distribute: bool):
    """The data-parallel strategy's scope with ``distribute``, else a no-op."""
    if not distribute:
        return contextlib.nullcontext()
    from keras_dyart import distribute as distribute_mod

    strategy = distribute_mod.data_parallel()
    typer.echo(f"data parallel over {distribute_mod.num_replicas(strategy)} devices")
    return strategy.scope()


def load_classifier(path: str):
    """The classifier inside a ``.keras`` file (a method model or a plain classifier)."""
    import keras

    model = keras.saving.load_model(path, compile=False)
    return getattr(model, "classifier", model)


def initial_classifier(config: Mapping[str, Any], data: TrainData):
    """The classifier to train: ``--init``'s, else a new ``--model``.

    Raises:
        typer.BadParameter: the ``--init`` file cannot be loaded.
    """
    from keras_dyart import architectures

    if config["init"] is None:
        return architectures.get(config["model"], num_classes=data.num_classes,
                                 input_shape=data.x_train.shape[1:],
                                 **config["model_kwargs"])
    try:
        return load_classifier(config["init"])
    except Exception as err:  # noqa: BLE001  (Keras raises many kinds)
        raise typer.BadParameter(f"`--init`: cannot load {config['init']!r}: {err}") from None


def burn_in(classifier, config: Mapping[str, Any], data: TrainData, out: str, *,
            resume: bool, verbose: int):
    """The clean burn-in (``burn_in`` epochs of plain SGD): writes history_burn_in.csv and
    burn_in.keras, or restores burn_in.keras when resuming.  Returns the classifier."""
    import keras

    from keras_dyart import io, recipe
    from keras_dyart_apps import report

    epochs, path = config["burn_in"], os.path.join(out, "burn_in.keras")
    if epochs and resume and os.path.exists(path):
        typer.echo(f"burn-in: restored from {path}")
        return load_classifier(path)
    if not epochs:
        return classifier
    typer.echo(f"clean burn-in: {epochs} epochs ({config['backend']})")
    classifier.compile(
        # not clipped: clipping slows clean training; only the robust term needs it
        optimizer=recipe.DecaySGD(config["lr"], momentum=config["momentum"], nesterov=True,
                                  weight_decay=config["weight_decay"],
                                  weight_decay_mode=config["weight_decay_mode"]),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"])
    burn_data = batches(data, config, config["seed"] + 1, with_extra=False)
    hist = classifier.fit(burn_data, epochs=epochs, verbose=verbose,
                          steps_per_epoch=steps_per_epoch(burn_data), shuffle=False,
                          callbacks=[recipe.HostMemory()])
    io.write_csv(os.path.join(out, "history_burn_in.csv"),
                 report.history_rows(hist.history, "burn-in", 0))
    # uncompiled: the file loads without keras_dyart (its optimizer is not needed again)
    io.save_model(recipe.plain_copy(classifier), path)
    return classifier


def method_stage(classifier, config: Mapping[str, Any], data: TrainData, out: str, *,
                 resume: bool, verbose: int):
    """The method (``epochs`` epochs) with the recipe's optimizer, a CSV history, a backup
    each epoch (what ``--resume`` continues) and, with ``eval_every``, best.keras.
    Returns the method model (compiled, also when ``epochs`` is 0)."""
    from keras_dyart import methods, recipe

    method, epochs, seed = config["method"], config["epochs"], config["seed"]
    robust = methods.get(method, classifier, **settings.method_kwargs(method, config))
    warm = method == "dyart" and config.get("warm_start") is not None
    data_batches = batches(data, config, seed, with_extra=True, index=warm)
    steps = steps_per_epoch(data_batches)
    robust.compile(optimizer=settings.method_optimizer(max(epochs, 1) * steps, config),
                   metrics=["accuracy"])
    if not epochs:
        return robust
    typer.echo(f"{method}: {epochs} epochs")
    history = os.path.join(out, "history_method.csv")
    if not resume and os.path.exists(history):
        os.remove(history)
    # The history row of an epoch is written before its backup: a run killed between the
    # two repeats the epoch and rewrites the row (the last row wins).
    # A run resumed from a history written by an older version (without epoch times) keeps
    # that history's columns (`AppendingCSVLogger`).
    callbacks = [recipe.SyncEpoch(data_batches), recipe.EpochSeconds(),
                 recipe.AppendingCSVLogger(history),
                 recipe.AtomicBackupAndRestore(os.path.join(out, "backup"))]
    if config["eval_every"]:
        callbacks.append(recipe.AveragedCheckpoint(
            data.x_test[:500], data.y_test[:500], os.path.join(out, "best.keras"),
            eps=max(config["eval"]["eps"]), norm=config["norm"], steps=40, loss="cw",
            every=config["eval_every"], seed=seed))
    robust.fit(data_batches, epochs=epochs, steps_per_epoch=steps, shuffle=False,
               verbose=verbose, callbacks=callbacks)
    return robust


def read_history(path: str, phase: str, first_epoch: int) -> list[dict[str, Any]]:
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
    return [{k: (v if k == "phase" else int(v) if k == "epoch" else float(v))
             for k, v in by_epoch[epoch].items()
             if k is not None and v is not None and v not in ("", "NA")}
            for epoch in sorted(by_epoch)]


def history(config: Mapping[str, Any], out: str) -> list[dict[str, Any]]:
    """The rows of history.csv: the burn-in's, then the method's (epochs counted on)."""
    return (read_history(os.path.join(out, "history_burn_in.csv"), "burn-in", 0)
            + read_history(os.path.join(out, "history_method.csv"), config["method"],
                           config["burn_in"]))


def finish(robust, config: Mapping[str, Any], data: TrainData, out: str,
           rows: list[dict[str, Any]], train_seconds: float) -> dict[str, Any]:
    """Write history.csv, model.keras and averaged.keras, evaluate the averaged model with
    PGD (metrics.json, eval_pgd.*), print the table.  Returns the metrics."""
    from keras_dyart import io, recipe
    from keras_dyart_apps import report

    io.write_csv(os.path.join(out, "history.csv"), rows)
    io.save_model(robust, os.path.join(out, "model.keras"))
    averaged = recipe.averaged_model(robust)
    io.save_model(averaged, os.path.join(out, "averaged.keras"))
    ev = config["eval"]
    metrics = report.pgd_metrics(averaged, data.x_test, data.y_test, ev["eps"], out,
                                 norm=config["norm"], steps=ev["steps"], seed=config["seed"])
    metrics["train_seconds"] = round(train_seconds, 1)
    points = "held-out training points" if config.get("holdout") else "test points"
    metrics["evaluated_on"] = f"{len(data.x_test)} {points}"
    io.write_json(os.path.join(out, "metrics.json"), metrics)
    report.print_metrics(metrics, title=f"{config['method']} on {config['dataset']} "
                                        f"({config['backend']}), averaged model, "
                                        f"{len(data.x_test)} {points}")
    typer.echo(f"run directory: {out}")
    return metrics
