"""The training recipe: schedule, optimizer with weight averaging, checkpoints, resume."""

import json
import os

import keras
import numpy as np
import pytest
from keras import ops

from keras_dyart import methods, recipe
from tests.conftest import linear_classifier


def np_decay(t, tau, warmup):
    if t < warmup:
        return 0.0
    d = t - warmup
    return min(tau, (1 + d) / (10 + d))


def test_cosine_schedule_warms_up_linearly_then_decays_to_alpha():
    schedule = recipe.cosine_schedule(0.2, 100, warmup=0.1, alpha=0.05)
    lr = [float(ops.convert_to_numpy(schedule(s))) for s in (0, 5, 10, 55, 100)]
    np.testing.assert_allclose(lr, [0.0, 0.1, 0.2, 0.2 * (0.05 + 0.95 * 0.5), 0.01],
                               rtol=1e-5, atol=1e-7)
    flat = recipe.cosine_schedule(0.2, 100, warmup=0.0)
    assert float(ops.convert_to_numpy(flat(0))) == pytest.approx(0.2)


def test_ema_decay_schedule():
    got = ops.convert_to_numpy(recipe.ema_decay(np.arange(30), 0.8, warmup_steps=5))
    np.testing.assert_allclose(got, [np_decay(t, 0.8, 5) for t in range(30)], rtol=1e-6)


def test_averaging_sgd_keeps_the_closed_form_average():
    # Plain SGD steps with known gradients: w_{t+1} = w_t − lr·g_t, and the average moves
    # as avg ← d_t·avg + (1 − d_t)·w_{t+1}, starting at w_0.
    rng = np.random.RandomState(0)
    w0 = rng.normal(size=(3, 2)).astype("float32")
    var = keras.Variable(w0, name="kernel")
    opt = recipe.AveragingSGD(0.1, momentum=0.0, nesterov=False, weight_decay=None,
                              global_clipnorm=None, ema_tau=0.9, ema_warmup_steps=3)
    opt.build([var])
    w, avg = w0.astype("float64"), w0.astype("float64")
    for t in range(25):
        g = rng.normal(size=w0.shape).astype("float32")
        opt.apply([ops.convert_to_tensor(g)], [var])
        w = w - 0.1 * g
        d = np_decay(t, 0.9, 3)
        avg = d * avg + (1 - d) * w
    np.testing.assert_allclose(ops.convert_to_numpy(var), w, rtol=1e-5, atol=1e-6)
    got = ops.convert_to_numpy(opt.averages()[id(var)])
    np.testing.assert_allclose(got, avg, rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, w, atol=1e-3)


def test_weight_decay_skips_biases_and_clipnorm_clips():
    kernel = keras.Variable(np.ones((2, 2), "float32"), name="kernel")
    bias = keras.Variable(np.ones((2,), "float32"), name="bias")
    opt = recipe.AveragingSGD(0.5, momentum=0.0, weight_decay=0.1, global_clipnorm=1.0)
    opt.build([kernel, bias])
    opt.apply([ops.zeros((2, 2)), ops.zeros((2,))], [kernel, bias])
    np.testing.assert_allclose(ops.convert_to_numpy(kernel), 1 - 0.5 * 0.1, rtol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(bias), 1.0)
    opt.apply([ops.full((2, 2), 100.0), ops.zeros((2,))], [kernel, bias])
    step = 0.95 - ops.convert_to_numpy(kernel) - 0.95 * 0.05   # minus the decay part
    np.testing.assert_allclose(np.sqrt((step ** 2).sum()), 0.5 * 1.0, rtol=1e-4)


@pytest.mark.parametrize("cls", [recipe.DecaySGD, recipe.AveragingSGD])
@pytest.mark.parametrize("nesterov", [True, False])
def test_coupled_weight_decay_is_pytorch_sgd(nesterov, cls):
    # The oracle is PyTorch itself (installed for every backend's suite): clip_grad_norm_
    # then SGD(momentum, weight_decay) with the bias in a group without decay.
    torch = pytest.importorskip("torch")
    rng = np.random.RandomState(0)
    k0 = rng.normal(size=(3, 4)).astype("float32")
    b0 = rng.normal(size=(4,)).astype("float32")
    grads = [(rng.normal(size=(3, 4)).astype("float32") * s,
              rng.normal(size=(4,)).astype("float32") * s) for s in (5.0, 0.01, 3.0, 0.2, 1.0)]
    kernel, bias = keras.Variable(k0, name="kernel"), keras.Variable(b0, name="bias")
    opt = cls(0.05, momentum=0.9, nesterov=nesterov, weight_decay=0.05, global_clipnorm=0.5,
              weight_decay_mode="coupled")
    tk, tb = torch.tensor(k0, requires_grad=True), torch.tensor(b0, requires_grad=True)
    ref = torch.optim.SGD([{"params": [tk], "weight_decay": 0.05},
                           {"params": [tb], "weight_decay": 0.0}],
                          lr=0.05, momentum=0.9, nesterov=nesterov)
    for gk, gb in grads:
        opt.apply([ops.convert_to_tensor(gk), ops.convert_to_tensor(gb)], [kernel, bias])
        tk.grad, tb.grad = torch.tensor(gk), torch.tensor(gb)
        torch.nn.utils.clip_grad_norm_([tk, tb], 0.5)
        ref.step()
    np.testing.assert_allclose(ops.convert_to_numpy(kernel), tk.detach().numpy(),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(bias), tb.detach().numpy(),
                               rtol=1e-5, atol=1e-6)
    # ...and it differs from the decoupled form by more than rounding
    kernel2 = keras.Variable(k0, name="kernel")
    dec = cls(0.05, momentum=0.9, nesterov=nesterov, weight_decay=0.05, global_clipnorm=0.5)
    for gk, _ in grads:
        dec.apply([ops.convert_to_tensor(gk)], [kernel2])
    assert np.abs(ops.convert_to_numpy(kernel2) - tk.detach().numpy()).max() > 1e-3


def test_weight_decay_mode_round_trips_and_is_checked():
    opt = recipe.build_optimizer(10, weight_decay_mode="coupled")
    clone = recipe.AveragingSGD.from_config(opt.get_config())
    assert clone.weight_decay_mode == "coupled"
    assert recipe.AveragingSGD().weight_decay_mode == "decoupled"
    plain = recipe.DecaySGD(0.05, weight_decay=1e-3, weight_decay_mode="coupled",
                            no_decay=("bias",))
    plain_clone = recipe.DecaySGD.from_config(plain.get_config())
    assert (plain_clone.weight_decay_mode, plain_clone.no_decay) == ("coupled", ("bias",))
    assert not plain_clone.use_ema
    for cls in (recipe.DecaySGD, recipe.AveragingSGD):
        with pytest.raises(ValueError, match="weight_decay_mode"):
            cls(weight_decay_mode="pytorch")


def bn_classifier(d=6, k=3):
    inputs = keras.Input((d,))
    h = keras.layers.Dense(8)(inputs)
    h = keras.layers.BatchNormalization()(h)
    return keras.Model(inputs, keras.layers.Dense(k)(keras.layers.ReLU()(h)))


def data(n=64, d=6, k=3, seed=0):
    rng = np.random.RandomState(seed)
    return (rng.uniform(0, 1, (n, d)).astype("float32"), rng.randint(0, k, n).astype("int32"))


def test_averaged_model_has_averages_and_raw_batchnorm_stats(tmp_path):
    x, y = data()
    model = methods.CleanModel(bn_classifier())
    model.compile(optimizer=recipe.AveragingSGD(0.1, ema_tau=0.5))
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    avg = recipe.averaged_model(model)
    raw = model.classifier
    averages = model.optimizer.averages()
    for v_avg, v_raw in zip(avg.weights, raw.weights):
        expected = averages[id(v_raw)] if v_raw.trainable else v_raw
        np.testing.assert_allclose(ops.convert_to_numpy(v_avg), ops.convert_to_numpy(expected),
                                   rtol=1e-6)
    bn_raw = [layer for layer in raw.layers if "batch" in layer.name][0]
    bn_avg = [layer for layer in avg.layers if "batch" in layer.name][0]
    assert not np.allclose(ops.convert_to_numpy(bn_raw.moving_mean), 0.0)
    np.testing.assert_array_equal(ops.convert_to_numpy(bn_avg.moving_mean),
                                  ops.convert_to_numpy(bn_raw.moving_mean))
    assert not np.allclose(avg.get_weights()[0], raw.get_weights()[0])
    # The averages are optimizer variables: saved and restored with the model.
    path = str(tmp_path / "run.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    for a, b in zip(recipe.averaged_weights(loaded), recipe.averaged_weights(model)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_averaged_checkpoint_logs_and_keeps_the_best(tmp_path):
    x, y = data(n=48, d=6, k=2)
    model = methods.CleanModel(linear_classifier(np.zeros((6, 2), "float32")))
    model.compile(optimizer=recipe.build_optimizer(9, learning_rate=0.5), metrics=["accuracy"])
    path = str(tmp_path / "best.keras")
    checkpoint = recipe.AveragedCheckpoint(x[:20], y[:20], path, eps=0.05, steps=3, every=2)
    history = model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[checkpoint])
    assert "avg_robust_acc" not in {k for k, v in history.history.items() if len(v) == 3}
    assert len(history.history["avg_robust_acc"]) == 2         # epochs 2 and 3 (the last)
    with open(path + ".json") as f:
        state = json.load(f)
    assert state["best"] == pytest.approx(max(history.history["avg_robust_acc"]))
    best = keras.models.load_model(path)
    assert best.output_shape == (None, 2)
    with pytest.raises(ValueError, match="`filepath`"):
        recipe.AveragedCheckpoint(x, y, str(tmp_path / "best.h5"), eps=0.1)


def run(tmp_path, epochs, stop_after=None, seed=0):
    """PGD-AT with the recipe optimizer on shuffled batches; optionally killed at an epoch."""
    keras.utils.set_random_seed(seed)
    x, y = data(n=48)
    model = methods.PGDATModel(bn_classifier(), eps=0.1, step_size=0.05, steps=2, seed=seed)
    model.compile(optimizer=recipe.build_optimizer(epochs * 3, learning_rate=0.2,
                                                   ema_tau=0.7, ema_warmup=0.1))
    batches = recipe.ArrayBatches(x, y, batch_size=16, seed=seed)
    callbacks = [recipe.SyncEpoch(batches),
                 recipe.AtomicBackupAndRestore(str(tmp_path / "backup"))]

    class Kill(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == stop_after:
                raise KeyboardInterrupt

    if stop_after is not None:
        callbacks.append(Kill())
    try:
        model.fit(batches, epochs=epochs, steps_per_epoch=batches.steps_per_epoch, shuffle=False,
                  verbose=0, callbacks=callbacks)
    except KeyboardInterrupt:
        return None
    return model


def test_resumed_run_ends_like_an_uninterrupted_one(tmp_path):
    reference = run(tmp_path / "a", epochs=4)
    assert run(tmp_path / "b", epochs=4, stop_after=2) is None
    assert os.path.exists(tmp_path / "b" / "backup")
    # A fresh process would rebuild everything: a different seed shows that what matters
    # comes from the backup, not from the seed.
    resumed = run(tmp_path / "b", epochs=4, seed=0)
    assert int(ops.convert_to_numpy(resumed.optimizer.iterations)) == 12
    for a, b in zip(resumed.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(recipe.averaged_weights(resumed), recipe.averaged_weights(reference)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # A run that resumes from another state does differ: the comparison can fail.
    other = run(tmp_path / "c", epochs=4, seed=1)
    assert not np.allclose(other.get_weights()[0], reference.get_weights()[0], atol=1e-4)


def test_atomic_backup_survives_a_kill_between_its_writes(tmp_path):
    """The states a kill can leave behind: new weights written but the metadata not yet
    replaced, and a half-written temporary file.  The backup still restores the epoch its
    metadata names, with that epoch's weights."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    backup = recipe.AtomicBackupAndRestore(str(tmp_path / "backup"))
    backup.set_model(model)
    backup.on_epoch_end(0)
    saved = [w.copy() for w in model.get_weights()]
    assert sorted(os.listdir(tmp_path / "backup")) == ["epoch-00001.weights.h5",
                                                      "training_metadata.json"]
    # Epoch 2's weights renamed into place, the process killed before the metadata.
    model.set_weights([w + 1.0 for w in saved])
    model.save_weights(str(tmp_path / "backup" / "epoch-00002.weights.h5"))
    (tmp_path / "backup" / ".partial.weights.h5").write_bytes(b"half a file")
    model.set_weights([w - 5.0 for w in saved])
    restore = recipe.AtomicBackupAndRestore(str(tmp_path / "backup"))
    restore.set_model(model)
    restore.on_train_begin()
    assert model._initial_epoch == 1
    for a, b in zip(model.get_weights(), saved):
        np.testing.assert_array_equal(a, b)
    # The next save leaves one weights file.
    restore.save(2)
    assert sorted(os.listdir(tmp_path / "backup")) == ["epoch-00002.weights.h5",
                                                      "training_metadata.json"]


def test_atomic_backup_rejects_a_foreign_backup(tmp_path):
    (tmp_path / "backup").mkdir()
    (tmp_path / "backup" / "training_metadata.json").write_text('{"epoch": 3, "batch": 0}')
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    restore = recipe.AtomicBackupAndRestore(str(tmp_path / "backup"))
    restore.set_model(model)
    with pytest.raises(ValueError, match="not one this callback wrote"):
        restore.on_train_begin()


def test_sync_epoch_checks_its_data():
    with pytest.raises(TypeError, match="`data`"):
        recipe.SyncEpoch([1, 2, 3])
    batches = recipe.ArrayBatches(np.arange(10)[:, None], np.arange(10), batch_size=4)
    first = [batches[i][1] for i in range(6)]
    assert sorted(np.concatenate(first[:3])) == list(range(10))      # one epoch
    assert not all(np.array_equal(a, b) for a, b in zip(first[:3], first[3:]))
    batches.start_at_epoch(1)
    for a, b in zip(first[3:], [batches[i][1] for i in range(3)]):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="`total_steps`"):
        recipe.build_optimizer(0)
    with pytest.raises(ValueError, match="`ema_tau`"):
        recipe.AveragingSGD(ema_tau=1.5)


@pytest.mark.parametrize("loss", ["ce", "cw"])
def test_robust_accuracy_matches_closed_form_on_a_linear_model(loss):
    # Two linear classes, inputs in the middle of the box: a point is robust at L∞ eps iff
    # it is correct and its margin |v·x| / ‖v‖_1 exceeds eps.
    rng = np.random.RandomState(2)
    d = 10
    w = rng.normal(size=(d, 2)).astype("float32")
    x = rng.uniform(0.4, 0.6, size=(200, d)).astype("float32")
    v = w[:, 0] - w[:, 1]
    y = rng.randint(0, 2, 200).astype("int32")
    margin = np.where(y == 0, x @ v, -(x @ v)) / np.abs(v).sum()
    eps = float(np.median(np.abs(margin)))              # about half the points robust
    assert eps < 0.4                                    # so the box cannot bind
    keep = np.abs(np.abs(margin) - eps) > 1e-3          # away from the tie
    correct, robust = recipe.robust_accuracy(linear_classifier(w), x[keep], y[keep], eps,
                                             steps=20, loss=loss)
    np.testing.assert_array_equal(correct, margin[keep] > 0)
    np.testing.assert_array_equal(robust, margin[keep] > eps)
    assert 0 < robust.sum() < correct.sum()


def test_atomic_backup_fails_loudly_without_keras_resume_attribute(tmp_path):
    # Resuming sets `model._initial_epoch` (Keras has no public way); a Keras without it
    # must not silently restart from epoch 0.
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    backup = recipe.AtomicBackupAndRestore(str(tmp_path / "backup"))
    backup.set_model(model)
    backup.on_epoch_end(0)
    model.__dict__.pop("_initial_epoch")
    with pytest.raises(RuntimeError, match="_initial_epoch"):
        backup.on_train_begin()


def test_coupled_decay_refuses_what_keras_applies_before_clipping():
    for key, value in (("gradient_accumulation_steps", 2), ("loss_scale_factor", 8.0)):
        with pytest.raises(ValueError, match=key):
            recipe.DecaySGD(weight_decay_mode="coupled", **{key: value})
    opt = recipe.AveragingSGD(weight_decay_mode="coupled", weight_decay=1e-3)
    assert opt.weight_decay is None and opt.coupled_weight_decay == 1e-3   # not Keras's form
    config = opt.get_config()
    assert (config["weight_decay"], config["global_clipnorm"]) == (1e-3, 0.1)


def test_appending_csv_logger_keeps_the_existing_columns(tmp_path):
    # A history written without a column the running fit logs (an older version's, resumed
    # by a newer one): the appended rows stay under the file's own header.
    import csv

    rng = np.random.default_rng(0)
    x = rng.uniform(size=(32, 4)).astype("float32")
    y = rng.integers(0, 2, size=32)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss,accuracy\n0,9.5,0.25\n")           # another column order too
    hist = model.fit(x, y, epochs=3, initial_epoch=1, verbose=0,
                     callbacks=[recipe.EpochSeconds(),
                                recipe.AppendingCSVLogger(str(path))])
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "loss", "accuracy"]
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    for row, loss, acc in zip(rows[1:], hist.history["loss"], hist.history["accuracy"]):
        assert float(row["loss"]) == pytest.approx(loss, rel=1e-6)
        assert float(row["accuracy"]) == pytest.approx(acc, rel=1e-6)
    # a new file gets the logs' own columns, the epoch time among them
    fresh = tmp_path / "fresh.csv"
    model.fit(x, y, epochs=1, verbose=0,
              callbacks=[recipe.EpochSeconds(), recipe.AppendingCSVLogger(str(fresh))])
    with open(fresh, newline="") as f:
        assert "epoch_seconds" in next(csv.reader(f))
