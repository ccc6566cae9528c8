"""The training recipe of the DyART paper (and its baselines) as Keras pieces.

- `cosine_schedule`: cosine decay with linear warm-up
  (`keras.optimizers.schedules.CosineDecay` with ``warmup_target``).
- `DecaySGD`: SGD with Nesterov momentum and weight decay that skips biases and
  normalisation parameters (`exclude_from_weight_decay`), in Keras's decoupled form or
  PyTorch's coupled one.
- `AveragingSGD`: `DecaySGD` with ``global_clipnorm`` and an
  exponential moving average (EMA) of the weights with the recipe's decay warm-up.  The
  averages are optimizer variables, so ``model.save``, ``save_weights`` and
  `AtomicBackupAndRestore` keep them, and they are updated inside the compiled
  train step on every backend.
- `build_optimizer`: an `AveragingSGD` with the recipe's defaults (and schedule), from a
  step budget.
- `averaged_model`: the classifier with the averaged weights and the raw model's
  BatchNorm statistics, ready for evaluation or saving.
- `AveragedCheckpoint`: a callback that evaluates the averaged model with PGD (CW loss)
  every few epochs, logs clean and robust accuracy and keeps the best checkpoint.
- `ArrayBatches` and `SyncEpoch`: in-memory batches whose shuffle depends only on
  (seed, epoch), and a callback that moves such data to the epoch ``fit`` starts, so a run
  resumed with `AtomicBackupAndRestore` sees the same data as one that was never
  interrupted.  Everything else a resumed run needs (weights, optimizer state with the
  weight averages and the step count, the seed state of the methods' random starts) is in
  the weights file that the backup writes.
- `AtomicBackupAndRestore`: `keras.callbacks.BackupAndRestore` made safe against a kill
  at any instant (SIGKILL, power loss of the process): weights and epoch are replaced as
  one consistent state.

Example:

```python
steps = epochs * math.ceil(len(x_train) / 128)
model.compile(optimizer=kd.recipe.build_optimizer(steps), metrics=["accuracy"])
batches = kd.recipe.ArrayBatches(x_train, y_train, batch_size=128, seed=0)
model.fit(batches, epochs=epochs, steps_per_epoch=batches.steps_per_epoch, shuffle=False,
          callbacks=[
    kd.recipe.SyncEpoch(batches),
    kd.recipe.AtomicBackupAndRestore("run/backup"),
    kd.recipe.AveragedCheckpoint(x_test[:500], y_test[:500], "run/best.keras", eps=0.3),
])
final = kd.recipe.averaged_model(model)          # averaged weights, raw BatchNorm stats
```
"""

import json
import math
import os

import keras
import numpy as np
from keras import ops

from keras_dyart import _checks, io

#: How weight decay is applied: Keras's decoupled form or PyTorch SGD's coupled one.
WEIGHT_DECAY_MODES = ("decoupled", "coupled")

#: Variable names that get no weight decay: biases and normalisation scales and offsets.
NO_DECAY = ("bias", "gamma", "beta")


def cosine_schedule(learning_rate, total_steps, warmup=0.025, alpha=0.0):
    """Cosine decay with a linear warm-up from 0, over ``total_steps`` optimizer steps.

    Args:
        learning_rate: peak learning rate, reached after the warm-up.
        total_steps: number of optimizer steps of the run (epochs × steps per epoch).
        warmup: share of the steps spent warming up (default 2.5 %; 0 for none).
        alpha: final learning rate as a fraction of the peak.

    Returns:
        A `keras.optimizers.schedules.CosineDecay`.
    """
    learning_rate = _checks.positive(learning_rate, "learning_rate")
    total_steps = _checks.positive(total_steps, "total_steps", integer=True)
    warmup = _checks.in_range(warmup, "warmup", 0.0, 1.0)
    warmup_steps = min(int(round(warmup * total_steps)), total_steps - 1)
    if warmup_steps == 0:
        return keras.optimizers.schedules.CosineDecay(learning_rate, total_steps, alpha)
    return keras.optimizers.schedules.CosineDecay(
        0.0, total_steps - warmup_steps, alpha, warmup_target=learning_rate,
        warmup_steps=warmup_steps)


def ema_decay(step, tau=0.995, warmup_steps=0):
    """The recipe's EMA decay at optimizer step ``step`` (0 for the first update):
    0 (copy the weights) during the first ``warmup_steps`` steps, then
    ``min(tau, (1 + t) / (10 + t))`` with ``t = step − warmup_steps``."""
    step = ops.cast(step, "float32")
    t = ops.maximum(step - warmup_steps, 0.0)
    return ops.where(step < warmup_steps, 0.0, ops.minimum(tau, (1.0 + t) / (10.0 + t)))


@keras.saving.register_keras_serializable(package="keras_dyart")
class DecaySGD(keras.optimizers.SGD):
    """SGD (Nesterov by default) whose weight decay skips names and follows Keras or PyTorch.

    Weight decay is not applied to variables whose name matches one of ``no_decay``.  With
    ``weight_decay_mode="decoupled"`` (the default) it is Keras's form, ``w ← w − lr·wd·w``
    before the step.  With ``"coupled"`` it is PyTorch's ``SGD(weight_decay=wd)``: ``wd·w``
    is added to the (clipped) gradient, so momentum m amplifies it by about 1/(1 − m) and the
    clipping does not bound it, as in the reference code.

    Args:
        learning_rate: a float or a schedule (`cosine_schedule`).
        momentum, nesterov: as `keras.optimizers.SGD` (defaults 0.9, True).
        weight_decay: weight decay (default 5e-4).
        weight_decay_mode: ``"decoupled"`` (Keras, default) or ``"coupled"`` (PyTorch).
        no_decay: variable-name patterns excluded from weight decay.
        **kwargs: other `keras.optimizers.SGD` arguments (``global_clipnorm``, ...).
    """

    def __init__(self, learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
                 no_decay=NO_DECAY, weight_decay_mode="decoupled", name="decay_sgd",
                 **kwargs):
        if weight_decay_mode not in WEIGHT_DECAY_MODES:
            raise ValueError(f"`weight_decay_mode` must be one of {WEIGHT_DECAY_MODES}; got "
                             f"{weight_decay_mode!r}.")
        super().__init__(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov,
                         weight_decay=weight_decay or None, name=name, **kwargs)
        self.weight_decay_mode = weight_decay_mode
        self.no_decay = tuple(no_decay or ())
        if self.no_decay:
            self.exclude_from_weight_decay(var_names=list(self.no_decay))

    def _apply_weight_decay(self, variables):
        if self.weight_decay_mode == "decoupled":
            super()._apply_weight_decay(variables)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        # Every backend's `apply` clips, calls `_apply_weight_decay`, then this: the coupled
        # term joins the gradient after clipping, as in PyTorch's SGD step.
        if self.weight_decay_mode == "coupled" and self.weight_decay:
            grads = [g if g is None or not self._use_weight_decay(v)
                     else g + ops.cast(self.weight_decay, g.dtype) * v
                     for g, v in zip(grads, trainable_variables)]
        super()._backend_update_step(grads, trainable_variables, learning_rate)

    def get_config(self):
        config = super().get_config()
        config.update({"no_decay": list(self.no_decay),
                       "weight_decay_mode": self.weight_decay_mode})
        return config


@keras.saving.register_keras_serializable(package="keras_dyart")
class AveragingSGD(DecaySGD):
    """`DecaySGD` that also keeps an EMA of the weights.

    After each update the average moves as ``avg ← d·avg + (1 − d)·w`` with
    ``d = ema_decay(t, ema_tau, ema_warmup_steps)`` (`ema_decay`); it starts equal to the
    weights.  Non-trainable variables (BatchNorm statistics) are not averaged: use
    `averaged_model`, which takes them from the raw model, as the recipe does.  Unlike
    Keras's ``use_ema``, the model keeps its raw weights at the end of ``fit``.  Weight
    decay (``weight_decay``, ``weight_decay_mode``, ``no_decay``) is `DecaySGD`'s.

    Args:
        learning_rate: a float or a schedule (`cosine_schedule`).
        momentum, nesterov: as `keras.optimizers.SGD` (defaults 0.9, True).
        weight_decay: weight decay (default 5e-4).
        weight_decay_mode: ``"decoupled"`` (Keras, default) or ``"coupled"`` (PyTorch).
        global_clipnorm: clip the global gradient norm (default 0.1; None for none).
        ema_tau: the EMA's τ (default 0.995).
        ema_warmup_steps: steps during which the average just copies the weights.
        no_decay: variable-name patterns excluded from weight decay.
    """

    def __init__(self, learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
                 global_clipnorm=0.1, ema_tau=0.995, ema_warmup_steps=0, no_decay=NO_DECAY,
                 weight_decay_mode="decoupled", name="averaging_sgd", **kwargs):
        for key in ("use_ema", "ema_momentum", "ema_overwrite_frequency"):
            kwargs.pop(key, None)
        ema_tau = _checks.in_range(ema_tau, "ema_tau", 0.0, 1.0)
        ema_warmup_steps = _checks.positive(ema_warmup_steps, "ema_warmup_steps",
                                            integer=True, allow_zero=True)
        super().__init__(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov,
                         weight_decay=weight_decay, no_decay=no_decay,
                         weight_decay_mode=weight_decay_mode, global_clipnorm=global_clipnorm,
                         use_ema=True, ema_momentum=ema_tau, name=name, **kwargs)
        self.ema_tau, self.ema_warmup_steps = ema_tau, ema_warmup_steps

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        for var, average in zip(variables, self._model_variables_moving_average):
            if average is not None:
                average.assign(ops.copy(var.value))     # a copy: JAX must not alias them

    def _update_model_variables_moving_average(self, trainable_variables):
        decay = ema_decay(self.iterations, self.ema_tau, self.ema_warmup_steps)
        for var, average in zip(trainable_variables, self._model_variables_moving_average):
            if average is not None:
                d = ops.cast(decay, var.dtype)
                average.assign(d * average + (1.0 - d) * var)

    def finalize_variable_values(self, var_list):
        """Keep the raw weights at the end of ``fit`` (see `averaged_model`)."""

    def averages(self):
        """``{id(variable): average}`` for the variables this optimizer was built with."""
        if not self.built:
            return {}
        return {id(v): a for v, a in zip(self._trainable_variables,
                                         self._model_variables_moving_average)
                if a is not None}

    def get_config(self):
        config = super().get_config()
        for key in ("use_ema", "ema_momentum", "ema_overwrite_frequency"):
            config.pop(key, None)
        config.update({"ema_tau": self.ema_tau, "ema_warmup_steps": self.ema_warmup_steps})
        return config


SCHEDULES = ("cosine", "constant", "step")


def build_optimizer(total_steps, learning_rate=0.1, momentum=0.9, nesterov=True,
                    weight_decay=5e-4, global_clipnorm=0.1, lr_warmup=0.025, ema_tau=0.995,
                    ema_warmup=0.025, schedule="cosine", weight_decay_mode="decoupled"):
    """The recipe's optimizer for a run of ``total_steps`` optimizer steps.

    SGD with Nesterov momentum 0.9, peak learning rate 0.1 on a cosine schedule with linear
    warm-up (``lr_warmup`` share of the steps), decoupled weight decay 5e-4 except on biases
    and normalisation parameters, global gradient-norm clipping 0.1, and an EMA of the
    weights with τ = 0.995 after a warm-up of ``ema_warmup`` (2.5 %) of the steps.
    ``schedule="constant"`` keeps the learning rate fixed instead (no warm-up);
    ``schedule="step"`` divides it by 10 after half and after three quarters of the steps
    (the GroupNorm recipe).  ``weight_decay_mode="coupled"`` applies the decay as
    PyTorch's SGD does (see `AveragingSGD`).  Returns an `AveragingSGD`.
    """
    total_steps = _checks.positive(total_steps, "total_steps", integer=True)
    if schedule not in SCHEDULES:
        raise ValueError(f"`schedule` must be one of {SCHEDULES}; got {schedule!r}.")
    ema_warmup = _checks.in_range(ema_warmup, "ema_warmup", 0.0, 1.0)
    if schedule == "cosine":
        lr = cosine_schedule(learning_rate, total_steps, lr_warmup)
    elif schedule == "step":
        lr = keras.optimizers.schedules.PiecewiseConstantDecay(
            [max(1, total_steps // 2), max(2, (3 * total_steps) // 4)],
            [learning_rate, learning_rate / 10, learning_rate / 100])
    else:
        lr = learning_rate
    return AveragingSGD(
        lr, momentum=momentum,
        nesterov=nesterov, weight_decay=weight_decay, global_clipnorm=global_clipnorm,
        ema_tau=ema_tau, ema_warmup_steps=int(round(ema_warmup * total_steps)),
        weight_decay_mode=weight_decay_mode)


def _clone(classifier):
    try:
        clone = keras.models.clone_model(classifier)
    except Exception:  # noqa: BLE001 - subclassed models: rebuild from their config
        clone = classifier.__class__.from_config(classifier.get_config())
    if not clone.built and getattr(classifier, "input_shape", None) is not None:
        clone.build(classifier.input_shape)
    return clone


def averaged_weights(model):
    """The classifier's weights (``classifier.weights`` order, NumPy) with each trainable
    variable replaced by its EMA from the model's `AveragingSGD`; non-trainable ones (e.g.
    BatchNorm statistics) are the raw model's.  Without an averaging optimizer, the raw
    weights."""
    classifier = getattr(model, "classifier", model)
    optimizer = getattr(model, "optimizer", None)
    averages = optimizer.averages() if isinstance(optimizer, AveragingSGD) else {}
    return [ops.convert_to_numpy(averages.get(id(v), v)) for v in classifier.weights]


def averaged_model(model):
    """A copy of ``model``'s classifier carrying the averaged weights (`averaged_weights`).

    ``model`` is a method model (`keras_dyart.methods`, `keras_dyart.DyARTModel`) or a
    plain classifier compiled with `AveragingSGD`.  The copy is a plain logits model:
    evaluate it, attack it or ``save`` it.
    """
    classifier = getattr(model, "classifier", model)
    if not isinstance(classifier, keras.layers.Layer):
        raise TypeError(f"`model` must be a Keras model; got {type(model).__name__}.")
    clone = _clone(classifier)
    clone.set_weights(averaged_weights(model))
    return clone


def robust_accuracy(model, x, y, eps, norm="linf", steps=40, loss="cw", batch_size=250,
                    seed=0, rel_step=0.1):
    """Per-point clean and robust correctness of a logits model under PGD.

    PGD with ``steps`` steps of ``rel_step · eps`` from a uniform random start (the
    attacks module's `pgd_batch`), in inference mode.  A point counts as robust when it is
    classified correctly both clean and at the PGD point.  Returns two bool arrays.
    """
    from keras_dyart import backend as dyart_backend
    from keras_dyart.attacks.pgd import pgd_batch

    eps = _checks.parse_eps(eps)
    norm = _checks.norm_name(norm)

    def fn(logits_fn, xb, yb, noise):
        xb, yb, noise = (ops.convert_to_tensor(a) for a in (xb, yb, noise))
        clean = ops.argmax(logits_fn(xb), axis=-1) == yb
        _, success = pgd_batch(logits_fn, xb, yb, noise, eps, rel_step * eps, steps, norm,
                               loss)
        return clean, success

    run = dyart_backend.compile_model_fn(model, fn, True)
    rng = np.random.RandomState(seed)
    correct, robust = [], []
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        if norm == "linf":
            noise = rng.uniform(-eps, eps, size=xb.shape).astype("float32")
        else:
            g = rng.normal(size=xb.shape).astype("float32")
            g /= np.sqrt((g.reshape(len(g), -1) ** 2).sum(1)).reshape(
                (-1,) + (1,) * (g.ndim - 1)) + 1e-12
            noise = (g * eps * rng.uniform(size=(len(g),) + (1,) * (g.ndim - 1))).astype(
                "float32")
        clean, success = (ops.convert_to_numpy(t).astype(bool) for t in run(xb, yb, noise))
        correct.append(clean)
        robust.append(clean & ~success)
    return np.concatenate(correct), np.concatenate(robust)


class AveragedCheckpoint(keras.callbacks.Callback):
    """Evaluate the averaged model with PGD every few epochs; keep the best checkpoint.

    At the end of every ``every``-th epoch (and of the last), builds `averaged_model`,
    measures its clean accuracy and its robust accuracy under PGD (``steps`` steps, CW loss
    by default, as the recipe's PGD-40) on ``x, y``, adds ``avg_clean_acc`` and
    ``avg_robust_acc`` to the epoch's logs, and saves the averaged classifier to
    ``filepath`` (``.keras``) when its robust accuracy is the best so far.  The best value
    is kept in ``filepath + ".json"`` so that a resumed run keeps comparing against it.

    Args:
        x, y: evaluation inputs in [0, 1] and integer labels.
        filepath: where the best averaged model goes (must end in ``.keras``).
        eps: radius of the evaluation attack (a number or text such as ``"8/255"``).
        norm: ``"linf"`` or ``"l2"``.
        steps: PGD steps (default 40); ``loss``: ``"cw"`` (default) or ``"ce"``.
        every: evaluate every this many epochs (default 1).
        last_filepath: if given, also save the latest averaged model there.
        seed: seed of PGD's random start.
    """

    def __init__(self, x, y, filepath, eps, norm="linf", steps=40, loss="cw", every=1,
                 last_filepath=None, batch_size=250, seed=0):
        super().__init__()
        self.x = _checks.images(x)
        self.y = _checks.labels(y, len(self.x))
        for arg, path in (("filepath", filepath), ("last_filepath", last_filepath)):
            if path is not None and not str(path).endswith(".keras"):
                raise ValueError(f"`{arg}` must end in '.keras'; got {path!r}.")
        self.filepath = str(filepath)
        self.last_filepath = None if last_filepath is None else str(last_filepath)
        self.eps = _checks.parse_eps(eps)
        self.norm = _checks.norm_name(norm)
        self.steps = _checks.positive(steps, "steps", integer=True)
        if loss not in ("ce", "cw"):
            raise ValueError(f"`loss` must be 'ce' or 'cw'; got {loss!r}.")
        self.loss = loss
        self.every = _checks.positive(every, "every", integer=True)
        self.batch_size = _checks.positive(batch_size, "batch_size", integer=True)
        self.seed = int(seed)
        self.best = -math.inf
        self.best_epoch = None

    @property
    def _state_path(self):
        return self.filepath + ".json"

    def on_train_begin(self, logs=None):
        if os.path.exists(self._state_path):
            with open(self._state_path) as f:
                state = json.load(f)
            self.best, self.best_epoch = state["best"], state["epoch"]

    def evaluate(self):
        """``(averaged_model, clean_accuracy, robust_accuracy)`` now."""
        model = averaged_model(self.model)
        correct, robust = robust_accuracy(model, self.x, self.y, self.eps, self.norm,
                                          self.steps, self.loss, self.batch_size, self.seed)
        return model, float(correct.mean()), float(robust.mean())

    def on_epoch_end(self, epoch, logs=None):
        last = self.params.get("epochs") == epoch + 1
        if (epoch + 1) % self.every and not last:
            return
        model, clean, robust = self.evaluate()
        if logs is not None:
            logs["avg_clean_acc"], logs["avg_robust_acc"] = clean, robust
        if self.last_filepath:
            io.save_model(model, self.last_filepath)
        if robust > self.best:
            self.best, self.best_epoch = robust, epoch
            io.save_model(model, self.filepath)
            io.write_json(self._state_path, {"best": robust, "epoch": epoch, "clean": clean})


class ArrayBatches(keras.utils.PyDataset):
    """Batches of in-memory arrays, reshuffled each epoch by ``RandomState(seed + epoch)``.

    The batches form one stream indexed by the global batch number g: batch g is batch
    ``g mod n`` of epoch ``g // n`` (n = ``steps_per_epoch``), so what a batch holds depends
    on its index only, never on when Keras prefetches it.  The stream is endless: pass
    ``steps_per_epoch=data.steps_per_epoch`` and ``shuffle=False`` to ``fit``, and
    `SyncEpoch(data)` so that a run resumed by `keras.callbacks.BackupAndRestore` at
    epoch k continues with epoch k's batches, as an uninterrupted run does.

    Args:
        x, y: arrays with the same first dimension.
        batch_size: batch size (the last batch of an epoch may be smaller).
        seed: seed of the shuffles; ``shuffle=False`` keeps the given order.
        sample_weight: optional per-sample weights.
    """

    def __init__(self, x, y, batch_size=128, seed=0, shuffle=True, sample_weight=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.x, self.y = np.asarray(x), np.asarray(y)
        if len(self.y) != len(self.x):
            raise ValueError(f"`y` has {len(self.y)} rows but `x` has {len(self.x)}.")
        if len(self.x) == 0:
            raise ValueError("`x` is empty; expected at least one row.")
        self.sample_weight = None if sample_weight is None else np.asarray(sample_weight)
        self.batch_size = _checks.positive(batch_size, "batch_size", integer=True)
        self.seed, self.shuffle = int(seed), bool(shuffle)
        self.steps_per_epoch = math.ceil(len(self.x) / self.batch_size)
        self.offset = 0
        self._orders = {}

    @property
    def num_batches(self):
        return None

    def order(self, epoch):
        """The row order of epoch ``epoch``."""
        if epoch not in self._orders:
            self._orders = {epoch: (np.random.RandomState(self.seed + epoch)
                                    .permutation(len(self.x)) if self.shuffle
                                    else np.arange(len(self.x))),
                            **{e: o for e, o in self._orders.items() if e >= epoch - 1}}
        return self._orders[epoch]

    def start_at_epoch(self, epoch):
        """Make the stream that ``fit`` starts reading begin with epoch ``epoch``."""
        self.offset = int(epoch) * self.steps_per_epoch

    def __getitem__(self, index):
        epoch, position = divmod(self.offset + int(index), self.steps_per_epoch)
        rows = self.order(epoch)[position * self.batch_size:(position + 1) * self.batch_size]
        if self.sample_weight is None:
            return self.x[rows], self.y[rows]
        return self.x[rows], self.y[rows], self.sample_weight[rows]


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` (at epoch ends) whose backup survives a kill at any
    instant.

    Keras's callback overwrites its weights file and then its metadata file: a process
    killed while writing either leaves a corrupt file, or new weights beside an old epoch
    number, and the resumed run silently retrains an epoch on weights that already saw it.
    Here the weights of epoch k go to ``epoch-k.weights.h5`` (written under a temporary
    name, then renamed), then the metadata naming that file is replaced atomically, and
    only then are older weight files removed.  Whatever instant the process dies, the
    metadata names a complete weights file of the epoch it records.

    Args:
        backup_dir: directory of the backup (used by nothing else).
        delete_checkpoint: remove the backup when training completes (default True).
    """

    def __init__(self, backup_dir, delete_checkpoint=True):
        super().__init__(backup_dir, save_freq="epoch", delete_checkpoint=delete_checkpoint)

    def _weights_file(self, epoch):
        return os.path.join(self.backup_dir, f"epoch-{epoch:05d}.weights.h5")

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        path = self._weights_file(self._current_epoch)
        tmp = os.path.join(self.backup_dir, ".partial.weights.h5")
        self.model.save_weights(tmp, overwrite=True)
        os.replace(tmp, path)
        io.write_json(self._training_metadata_path,
                      {"epoch": self._current_epoch, "batch": 0,
                       "weights": os.path.basename(path)})
        for name in os.listdir(self.backup_dir):
            if name.endswith(".weights.h5") and name != os.path.basename(path):
                os.remove(os.path.join(self.backup_dir, name))

    def _load_model(self):
        if not os.path.exists(self._training_metadata_path):
            return
        with open(self._training_metadata_path) as f:
            meta = json.load(f)
        path = os.path.join(self.backup_dir, str(meta.get("weights", "")))
        if "epoch" not in meta or not os.path.isfile(path):
            raise ValueError(
                f"The backup in {self.backup_dir!r} is not one this callback wrote "
                f"(metadata {meta!r}); remove it to start afresh.")
        if not self.model.built:
            raise ValueError("`AtomicBackupAndRestore` needs a built model before `fit()`.")
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(path)
        self.model._initial_epoch = int(meta["epoch"])


class SyncEpoch(keras.callbacks.Callback):
    """Start a data stream at the epoch ``fit`` starts (after a resume, not 0).

    ``data`` has a ``start_at_epoch(epoch)`` method (`ArrayBatches`).  After
    `keras.callbacks.BackupAndRestore` restores a run at epoch k, ``fit`` starts at epoch
    k but a fresh data object would start at epoch 0's batches; this callback moves it to
    epoch k's before the first batch is read.
    """

    def __init__(self, data):
        super().__init__()
        if not callable(getattr(data, "start_at_epoch", None)):
            raise TypeError(
                "`data` must have a `start_at_epoch(epoch)` method (e.g. `ArrayBatches`); "
                f"got {type(data).__name__}.")
        self.data = data
        self._first = True

    def on_train_begin(self, logs=None):
        self._first = True

    def on_epoch_begin(self, epoch, logs=None):
        if self._first:
            self.data.start_at_epoch(epoch)
            self._first = False
