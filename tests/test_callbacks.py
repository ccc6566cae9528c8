"""`BoundaryDynamics` during `fit()`, on every backend."""

import csv
import os

import keras
import numpy as np
import pytest

from keras_dyart import dynamics as dy
from keras_dyart.dynamics import BoundaryDynamics

D = 6


def _data(n=48, seed=1, k=3):
    rng = np.random.RandomState(seed)
    y = (np.arange(n) % k).astype("int32")
    centres = rng.uniform(0.2, 0.8, size=(k, D))
    x = np.clip(centres[y] + 0.08 * rng.normal(size=(n, D)), 0, 1).astype("float32")
    return x, y


_BURNT_IN = {}


def _mlp(seed=0, k=3):
    """A small tanh MLP, burnt in on `_data` (once per session), with a fresh SGD."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((D,))
    h = keras.layers.Dense(8, activation="tanh")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(k)(h))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if (seed, k) not in _BURNT_IN:
        model.compile(optimizer=keras.optimizers.SGD(0.5, momentum=0.9), loss=loss)
        x, y = _data(k=k)
        for _ in range(60):
            model.train_on_batch(x, y)
        _BURNT_IN[seed, k] = model.get_weights()
    model.set_weights(_BURNT_IN[seed, k])
    model.compile(optimizer=keras.optimizers.SGD(0.2, momentum=0.5), loss=loss)
    return model


def test_history_keys_and_files(tmp_path):
    model = _mlp()
    x, y = _data()
    cb = BoundaryDynamics(x[:24], y[:24], every=2, r0=0.3, log_dir=str(tmp_path))
    hist = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0,
                     callbacks=[cb])
    for key in ("conflict_share", "mean_speed", "mean_speed_vulnerable",
                "speed_margin_corr", "n_vulnerable", "n_usable"):
        values = hist.history["dynamics_" + key]
        assert len(values) == 2
    assert all(v > 0 for v in hist.history["dynamics_n_usable"])
    assert np.isfinite(hist.history["dynamics_mean_speed"]).all()
    # 3 steps per epoch, every 2nd step: steps 0, 2, 4.
    assert [r["step"] for r in cb.records] == [0, 2, 4]
    assert [r["epoch"] for r in cb.records] == [0, 0, 1]
    assert hist.history["dynamics_n_usable"][1] == cb.records[2]["n_usable"]
    with open(tmp_path / "dynamics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [0, 2, 4]
    assert float(rows[2]["mean_speed"]) == pytest.approx(cb.records[2]["mean_speed"],
                                                         rel=1e-6)
    with open(tmp_path / "dynamics_points.csv") as f:
        points = list(csv.DictReader(f))
    assert len(points) == 3 * 24
    assert {"step", "index", "margin", "speed", "usable", "vulnerable"} <= set(points[0])
    import matplotlib.image

    for name in ("speed_vs_margin.png", "conflict_share.png"):
        path = tmp_path / name
        assert os.path.getsize(path) > 1000
        assert matplotlib.image.imread(str(path)).ndim == 3


def test_records_the_speed_of_the_actual_step_and_leaves_training_alone():
    x, y = _data()
    probe_x, probe_y = x[:24], y[:24]
    plain = _mlp()
    start = [w.copy() for w in plain.get_weights()]
    plain.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    model = _mlp()
    cb = BoundaryDynamics(probe_x, probe_y, every=1, r0=0.3)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[cb])
    for a, b in zip(plain.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)    # the measurements changed nothing
    # The first record is the speed under step 0 measured at the initial weights.
    after_first = _mlp()
    after_first.fit(x[:16], y[:16], batch_size=16, epochs=1, shuffle=False, verbose=0)
    delta = [b - a for a, b in zip(start, after_first.get_weights())]
    ref_model = _mlp()
    ref = dy.boundary_dynamics(ref_model, probe_x, probe_y, delta, r0=0.3)
    rec = cb.point_records[0]
    assert rec["usable"].sum() >= 4
    np.testing.assert_array_equal(rec["usable"], ref.points.usable)
    np.testing.assert_allclose(rec["speed"], ref.speed, rtol=1e-4, atol=1e-6)
    assert cb.records[0]["conflict_share"] == pytest.approx(ref.summary["conflict_share"])
    assert len(cb.records) == 3


def test_a_step_that_diverges_is_skipped_with_a_warning_not_a_crash():
    """A step that leaves NaN weights has no boundary speed: the record is skipped (the
    summary would refuse NaN speeds of usable points) and training goes on as Keras's."""
    x, y = _data()
    model = _mlp()
    model.compile(optimizer=keras.optimizers.SGD(float("inf")), loss=model.loss)
    cb = BoundaryDynamics(x[:24], y[:24], every=1, r0=0.3)
    with pytest.warns(UserWarning, match="left non-finite weights; no boundary speed"):
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[cb])
    assert not np.all(np.isfinite(model.get_weights()[0]))
    for r in cb.records:                          # those recorded are whole
        assert np.isfinite(r["mean_speed"]) or r["n_usable"] == 0


@pytest.mark.skipif(keras.backend.backend() == "torch",
                    reason="Keras allows steps_per_execution > 1 only on JAX and TensorFlow")
def test_steps_per_execution_records_the_mean_step():
    x, y = _data()
    probe_x, probe_y = x[:24], y[:24]
    model = _mlp()
    start = model.get_weights()
    model.compile(optimizer=keras.optimizers.SGD(0.2), steps_per_execution=2,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    cb = BoundaryDynamics(probe_x, probe_y, every=1, r0=0.3)
    model.fit(x[:32], y[:32], batch_size=8, epochs=1, shuffle=False, verbose=0,
              callbacks=[cb])
    assert [r["step"] for r in cb.records] == [0, 2]
    ref_model = _mlp()
    ref_model.compile(optimizer=keras.optimizers.SGD(0.2),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ref_model.fit(x[:16], y[:16], batch_size=8, epochs=1, shuffle=False, verbose=0)
    delta = [(b - a) / 2 for a, b in zip(start, ref_model.get_weights())]
    ref = dy.boundary_dynamics(_mlp(), probe_x, probe_y, delta, r0=0.3)
    np.testing.assert_allclose(cb.point_records[0]["speed"], ref.speed, rtol=1e-4,
                               atol=1e-6)


def test_finite_difference_callback_with_a_dyart_model():
    from keras_dyart import DyARTModel

    x, y = _data(n=32)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((D,))
    classifier = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    model = DyARTModel(classifier, lam=10.0, r0=0.3, n_iter=5)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    cb = BoundaryDynamics(x[:16], y[:16], every=1, method="finite_difference", n_iter=10)
    hist = model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[cb])
    assert "dynamics_conflict_share" in hist.history
    assert len(cb.records) == 2
    rec = cb.point_records[0]
    assert np.isfinite(rec["speed"][rec["usable"]]).all()
    assert np.isnan(rec["speed"][~rec["usable"]]).all()


def test_bad_arguments_are_named():
    x, y = _data(n=8)
    with pytest.raises(ValueError, match="`every`"):
        BoundaryDynamics(x, y, every=0)
    with pytest.raises(ValueError, match="`x_probe`"):
        BoundaryDynamics(x * 3.0, y)
    with pytest.raises(ValueError, match="`y_probe`"):
        BoundaryDynamics(x, y[:3])
    with pytest.raises(ValueError, match="`method`"):
        BoundaryDynamics(x, y, method="jvp")
    with pytest.raises(ValueError, match="`bins`"):
        BoundaryDynamics(x, y, bins=[0.5, 0.1])
