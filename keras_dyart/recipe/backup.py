"""Backup and resume of a training run that survives a kill at any instant."""

from __future__ import annotations

import json
import os
import shutil

import keras

from keras_dyart import io

#: The file naming the epoch and the weights file of the backup.
METADATA = "training_metadata.json"


class AtomicBackupAndRestore(keras.callbacks.Callback):
    """Back up a run at epoch ends, safe against a kill at any instant; resume from it.

    Like `keras.callbacks.BackupAndRestore` (at epoch ends), but Keras's callback
    overwrites its weights file and then its metadata file: a process killed while writing
    either leaves a corrupt file, or new weights beside an old epoch number, and the resumed
    run silently retrains an epoch on weights that already saw it.  Here the weights of
    epoch k go to ``epoch-k.weights.h5`` (written under a temporary name, then renamed),
    then the metadata naming that file is replaced atomically, and only then are older
    weight files removed.  Whatever instant the process dies, the metadata names a complete
    weights file of the epoch it records.

    The weights file holds everything ``model.save_weights`` writes: weights, optimizer
    state (with `AveragingSGD`'s averages and the step count) and the methods' seed state.
    On resume, ``fit`` is told the epoch to start from through ``model._initial_epoch``, the
    attribute Keras's own `keras.callbacks.BackupAndRestore` sets (Keras has no public
    way); if a Keras version lacks it, the resume fails with a clear error.

    Args:
        backup_dir: directory of the backup (used by nothing else).
        delete_checkpoint: remove the backup when training completes (default True).
    """

    def __init__(self, backup_dir: str, delete_checkpoint: bool = True):
        super().__init__()
        if not backup_dir:
            raise ValueError("`backup_dir` must be a directory name; got an empty one.")
        self.backup_dir = str(backup_dir)
        self.delete_checkpoint = bool(delete_checkpoint)
        self.metadata_path = os.path.join(self.backup_dir, METADATA)

    def weights_path(self, epoch: int) -> str:
        """The weights file of the backup after ``epoch`` epochs."""
        return os.path.join(self.backup_dir, f"epoch-{epoch:05d}.weights.h5")

    def save(self, epoch: int) -> None:
        """Back up the model as it is after ``epoch`` complete epochs."""
        os.makedirs(self.backup_dir, exist_ok=True)
        path = self.weights_path(epoch)
        tmp = os.path.join(self.backup_dir, ".partial.weights.h5")
        self.model.save_weights(tmp, overwrite=True)
        os.replace(tmp, path)
        io.write_json(self.metadata_path,
                      {"epoch": int(epoch), "batch": 0, "weights": os.path.basename(path)})
        for name in os.listdir(self.backup_dir):
            if name.endswith(".weights.h5") and name != os.path.basename(path):
                os.remove(os.path.join(self.backup_dir, name))

    def restore(self) -> int | None:
        """Load the backup into the model; the number of epochs it had done (None if there
        is no backup)."""
        if not os.path.exists(self.metadata_path):
            return None
        with open(self.metadata_path) as f:
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
        return int(meta["epoch"])

    def on_train_begin(self, logs=None):
        epoch = self.restore()
        if epoch is None:
            return
        if not hasattr(self.model, "_initial_epoch"):
            raise RuntimeError(
                "`AtomicBackupAndRestore` resumes `fit` at the backed-up epoch through "
                "`model._initial_epoch`, the attribute keras.callbacks.BackupAndRestore "
                f"sets; this Keras ({keras.__version__}) has none, so the run cannot resume.")
        self.model._initial_epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        self.save(epoch + 1)

    def on_train_end(self, logs=None):
        if self.delete_checkpoint and os.path.exists(self.backup_dir):
            shutil.rmtree(self.backup_dir)
