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

    monkeypatch.setattr(datasets, "load", lambda name="mnist5k", **kwargs: mnist5k)


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
    assert "conflict" in result.output
    with open(run / "dynamics" / "dynamics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1
    assert (rows[0]["from"], rows[0]["to"]) == (os.path.join("checkpoints", "ckpt-2.keras"),
                                                os.path.join("checkpoints", "ckpt-10.keras"))
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


def _train_run(run, data):
    """A run directory as `keras-dyart train` writes it: burn_in.keras, model.keras (a
    method model), averaged.keras, with weights that differ between the three."""
    from keras_dyart import methods

    run.mkdir()
    classifier = _linear_mnist(0, data)
    classifier.save(run / "burn_in.keras")
    rng = np.random.RandomState(0)
    for name in ("model.keras", "averaged.keras"):
        classifier.set_weights([w + 0.01 * rng.normal(size=w.shape).astype("float32")
                                for w in classifier.get_weights()])
        model = methods.get("clean", classifier) if name == "model.keras" else classifier
        model.save(run / name)


@pytest.mark.parametrize("averaged", [False, True])
def test_run_directory_in_training_order(app, tmp_path, mnist5k, averaged):
    # Alphabetical order would compare averaged -> burn_in -> model: backwards in time and
    # the weight average against raw weights.  Training order: burn_in -> model (or, with
    # --averaged, burn_in -> averaged), and each row names the two files.
    run = tmp_path / "run"
    _train_run(run, mnist5k)
    final = "averaged.keras" if averaged else "model.keras"
    assert [os.path.basename(p) for p in find_checkpoints(str(run), averaged)] == [
        "burn_in.keras", final]
    args = ["dynamics", str(run), "--probe", "16", "--r0", "0.3"]
    result = CliRunner().invoke(app, args + (["--averaged"] if averaged else []))
    assert result.exit_code == 0, result.output
    assert "burn_in.keras" in result.output and final in result.output
    with open(run / "dynamics" / "dynamics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["from"], r["to"]) for r in rows] == [("burn_in.keras", final)]
    info = json.loads((run / "dynamics" / "dynamics.json").read_text())
    assert info["checkpoints"] == ["burn_in.keras", final]
    assert (info["rows"][0]["from"], info["rows"][0]["to"]) == ("burn_in.keras", final)
    before = keras.saving.load_model(run / "burn_in.keras")
    after = keras.saving.load_model(run / final)
    ref = dy.boundary_dynamics(before, mnist5k[2][:16], mnist5k[3][:16], dy.weight_change(
        before, getattr(after, "classifier", after)), r0=0.3)
    assert int(rows[0]["n_usable"]) == ref.summary["n_usable"]
    assert float(rows[0]["mean_speed"]) == pytest.approx(ref.summary["mean_speed"], rel=1e-4)


_RUN_CONFIG = {
    "method": "trades", "dataset": "mnist5k", "seed": 7, "batch_size": 32, "norm": "linf",
    "lr": 0.02, "momentum": 0.8, "weight_decay": 1e-3, "weight_decay_mode": "coupled",
    "clipnorm": 0.5, "schedule": "constant", "lr_warmup": 0.025, "ema_tau": 0.995,
    "ema_warmup": 0.025, "train_eps": 0.1, "train_step": 0.02, "train_steps": 2,
    "kl_beta": 3.0, "d_max": 0.2, "clean_weight": 0.5, "n_iter": 3, "beta": 4.0,
    "lam": 100.0, "alpha": 2.0, "r0": 0.5, "eps_fab": 0.3, "random_start": False,
    "eval": {"eps": [0.1, 0.3]}}


def test_segment_continues_the_run(app, tmp_path, mnist5k):
    # The segment trains the run's own method model (its saved settings) with the run's
    # optimizer (clip, weight decay and its mode, momentum, learning rate), not a rebuilt
    # method (TRADES beta 6, eps = r0, step eps/4, 10 steps) under unclipped SGD.
    from keras_dyart import methods

    run = tmp_path / "run"
    run.mkdir()
    trades = methods.get("trades", _linear_mnist(2, mnist5k), beta=3.0, eps=0.1,
                         step_size=0.02, steps=2, seed=7)
    trades.save(run / "model.keras")
    (run / "config.json").write_text(json.dumps(_RUN_CONFIG))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["dynamics", str(run), "--steps", "4", "--every", "2",
                                      "--probe", "32", "--out", str(out)])
    assert result.exit_code == 0, result.output
    info = json.loads((out / "dynamics.json").read_text())
    segment = info["segment"]
    assert segment["method"] == "trades" and segment["checkpoint"] == "model.keras"
    assert segment["method_settings"] == {"seed": 7, "beta": 3.0, "eps": 0.1,
                                          "step_size": 0.02, "steps": 2, "norm": "linf"}
    opt = segment["optimizer"]
    assert opt["global_clipnorm"] == pytest.approx(0.5)
    assert opt["weight_decay"] == pytest.approx(1e-3)
    assert opt["weight_decay_mode"] == "coupled"
    assert opt["momentum"] == pytest.approx(0.8) and opt["nesterov"] is True
    assert float(opt["learning_rate"]) == pytest.approx(0.02)
    rows = info["rows"]
    assert [r["step"] for r in rows] == [0, 2]
    assert [(r["from"], r["to"]) for r in rows] == [("model.keras +0", "model.keras +1"),
                                                   ("model.keras +2", "model.keras +3")]
    # Probe accuracy does not collapse along the segment.
    assert rows[0]["probe_accuracy"] > 0.5
    assert min(r["probe_accuracy"] for r in rows) >= rows[0]["probe_accuracy"] - 0.15
    with open(out / "dynamics.csv") as f:
        assert list(csv.DictReader(f))[0]["from"] == "model.keras +0"


def test_segment_from_a_classifier_uses_the_runs_settings(tmp_path, mnist5k):
    # A classifier checkpoint (burn_in.keras) is wrapped in the run's method with the
    # settings config.json records, by `train`'s own code; the optimizer is `train`'s.
    from keras_dyart_apps import settings
    from keras_dyart_apps.dynamics import hyper_parameters, segment_model, segment_optimizer

    path = str(tmp_path / "burn_in.keras")
    _linear_mnist(0, mnist5k).save(path)
    config = {**_RUN_CONFIG, "method": "mma"}
    model, method = segment_model(path, config)
    assert method == "mma"
    assert hyper_parameters(model) == {"seed": 7, "d_max": 0.2, "clean_weight": 0.5,
                                       "norm": "linf", "margin_beta": 4.0, "n_iter": 3,
                                       "refine_steps": 4}
    model, _ = segment_model(path, config, method="trades", eps=0.2)
    assert hyper_parameters(model) == {"seed": 7, "beta": 3.0, "eps": 0.2,
                                       "step_size": pytest.approx(0.25), "steps": 2,
                                       "norm": "linf"}
    optimizer, note = segment_optimizer({**config, "schedule": "cosine"}, 10)
    assert "cosine" in note and float(optimizer.learning_rate) == pytest.approx(0.02)
    assert optimizer.get_config() == settings.method_optimizer(
        10, {**config, "schedule": "constant"}).get_config()
