"""`keras-dyart dynamics RUN_DIR` on tiny runs (embedded MNIST-5k probes), every backend."""

import csv
import json
import os

import keras
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from keras_dyart import dynamics as dy
from keras_dyart_apps.dynamics import find_checkpoints, register


@pytest.fixture(autouse=True)
def _cached_data(monkeypatch, mnist5k):
    # The command loads its data set; hand it the session's copy (loading takes seconds).
    from keras_dyart import datasets

    monkeypatch.setattr(datasets, "load", lambda name="mnist5k": mnist5k)


@pytest.fixture(scope="module")
def app():
    app = typer.Typer()

    @app.callback()
    def _root():
        """test app"""

    register(app)
    return app


def _linear_mnist(seed, data):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((28, 28, 1))
    outputs = keras.layers.Dense(10)(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, outputs)
    # Fit the logits a little so that some probes are correct with a boundary nearby.
    x, y, _, _ = data
    model.compile(optimizer=keras.optimizers.SGD(0.5),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    for _ in range(5):
        model.train_on_batch(x[:500], y[:500])
    return model


def test_two_checkpoints(app, tmp_path, mnist5k):
    first = _linear_mnist(0, mnist5k)
    rng = np.random.RandomState(0)
    second_weights = [w + 0.01 * rng.normal(size=w.shape).astype("float32")
                      for w in first.get_weights()]
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    first.save(run / "checkpoints" / "ckpt-2.keras")
    first.set_weights(second_weights)
    first.save(run / "checkpoints" / "ckpt-10.keras")
    assert [os.path.basename(p) for p in find_checkpoints(str(run))] == [
        "ckpt-2.keras", "ckpt-10.keras"]
    result = CliRunner().invoke(app, ["dynamics", str(run), "--probe", "16", "--r0", "0.3"])
    assert result.exit_code == 0, result.output
    assert "conflict share" in result.output
    with open(run / "dynamics" / "dynamics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1
    # The same numbers as the library call.
    model = keras.saving.load_model(run / "checkpoints" / "ckpt-2.keras")
    x, y = mnist5k[2][:16], mnist5k[3][:16]
    ref = dy.boundary_dynamics(model, x, y, dy.weight_change(
        model, str(run / "checkpoints" / "ckpt-10.keras")), r0=0.3)
    assert ref.summary["n_usable"] >= 3
    assert int(rows[0]["n_usable"]) == ref.summary["n_usable"]
    assert float(rows[0]["mean_speed"]) == pytest.approx(ref.summary["mean_speed"], rel=1e-4)
    for name in ("dynamics_points.csv", "speed_vs_margin.png", "conflict_share.png"):
        assert os.path.getsize(run / "dynamics" / name) > 0


def test_training_segment_from_a_run(app, tmp_path, mnist5k):
    run = tmp_path / "run"
    run.mkdir()
    _linear_mnist(1, mnist5k).save(run / "model.keras")
    (run / "config.json").write_text(json.dumps(
        {"method": "clean", "dataset": "mnist5k", "lr": 0.1, "batch_size": 32,
         "norm": "linf", "eval": {"eps": [0.1, 0.2]}}))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["dynamics", str(run), "--steps", "3", "--every", "2",
                                      "--probe", "16", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "r0 = 0.2" in result.output          # the run's largest evaluation eps
    with open(out / "dynamics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [0, 2]
    assert os.path.getsize(out / "conflict_share.png") > 0


@pytest.mark.parametrize("args,message", [
    (["missing-dir"], "RUN_DIR"),
    (["RUN", "--method", "sgd"], "--method"),
    (["RUN", "--form", "jvp"], "--form"),
    (["RUN", "--r0", "-1"], "--r0"),
])
def test_bad_arguments(app, tmp_path, args, message):
    run = tmp_path / "run"
    run.mkdir()
    if args[0] == "RUN":
        keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save(run / "m.keras")
        args = [str(run)] + args[1:]
    else:
        args = [str(tmp_path / args[0])] + args[1:]
    result = CliRunner().invoke(app, ["dynamics"] + args)
    assert result.exit_code != 0
    assert message in result.output
