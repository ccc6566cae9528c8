"""The training recipe of the DyART paper (and its baselines) as Keras pieces.

One recipe serves the CLI (`keras-dyart train`), the presets (`keras_dyart.presets`) and
Python users.  By concern:

- `keras_dyart.recipe.schedules`: `cosine_schedule` (cosine decay with linear warm-up from
  0), `learning_rate_schedule` (cosine, constant or step) and `ema_decay` (the weight
  average's decay with its warm-up).
- `keras_dyart.recipe.optimizers`: `DecaySGD` (SGD with Nesterov momentum and weight decay
  that skips biases and normalisation parameters, in Keras's decoupled form or PyTorch's
  coupled one), `AveragingSGD` (`DecaySGD` with ``global_clipnorm`` and an exponential
  moving average (EMA) of the weights kept in optimizer variables, so ``model.save``,
  ``save_weights`` and `AtomicBackupAndRestore` keep it and it is updated inside the
  compiled train step on every backend) and `build_optimizer` (an `AveragingSGD` with the
  recipe's defaults and schedule, from a step budget).
- `keras_dyart.recipe.averaged`: `averaged_weights` and `averaged_model` (the classifier
  with the averaged weights and the raw model's BatchNorm statistics, uncompiled),
  `plain_copy` (an uncompiled copy of a classifier, whose saved file loads without
  keras_dyart), `robust_accuracy`
  (PGD accuracy per point) and `AveragedCheckpoint` (a callback that evaluates the averaged
  model with PGD every few epochs, logs clean and robust accuracy and keeps the best
  checkpoint).
- `keras_dyart.recipe.data`: `ArrayBatches` (in-memory batches whose shuffle depends only
  on (seed, epoch)) and `SyncEpoch` (moves such data to the epoch ``fit`` starts), so a run
  resumed with `AtomicBackupAndRestore` sees the same data as one that was never
  interrupted; `EpochSeconds` (each epoch's wall time in the logs); `AppendingCSVLogger`
  (a resumed run's rows under the existing history's columns); `HostMemory` (keeps
  malloc fast when TensorFlow reads a `PyDataset`).
- `keras_dyart.recipe.backup`: `AtomicBackupAndRestore`, a backup at epoch ends that is
  safe against a kill at any instant (weights and epoch are replaced as one consistent
  state).  Everything else a resumed run needs (weights, optimizer state with the weight
  averages and the step count, the seed state of the methods' random starts) is in the
  weights file it writes.

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

from keras_dyart.recipe.averaged import (
                                         AveragedCheckpoint,
                                         averaged_model,
                                         averaged_weights,
                                         plain_copy,
                                         robust_accuracy,
)
from keras_dyart.recipe.backup import AtomicBackupAndRestore
from keras_dyart.recipe.data import (
                                         AppendingCSVLogger,
                                         ArrayBatches,
                                         EpochSeconds,
                                         HostMemory,
                                         SyncEpoch,
)
from keras_dyart.recipe.optimizers import (
                                         NO_DECAY,
                                         WEIGHT_DECAY_MODES,
                                         AveragingSGD,
                                         DecaySGD,
                                         build_optimizer,
)
from keras_dyart.recipe.schedules import (
                                         SCHEDULES,
                                         cosine_schedule,
                                         ema_decay,
                                         learning_rate_schedule,
)

__all__ = [
    "NO_DECAY", "SCHEDULES", "WEIGHT_DECAY_MODES", "AppendingCSVLogger", "ArrayBatches",
    "AtomicBackupAndRestore", "AveragedCheckpoint", "AveragingSGD", "DecaySGD", "EpochSeconds",
    "HostMemory", "SyncEpoch",
    "averaged_model", "averaged_weights", "build_optimizer", "cosine_schedule", "ema_decay",
    "learning_rate_schedule", "plain_copy", "robust_accuracy",
]
