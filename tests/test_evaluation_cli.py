"""`keras-dyart evaluate` on a saved .keras model and on a run directory."""

import json
import os

import keras
import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("keras_dyart_apps.evaluate")

from keras_dyart_apps.main import app  # noqa: E402


def _mnist_linear(path):
    rng = np.random.RandomState(0)
    inputs = keras.Input((28, 28, 1))
    outputs = keras.layers.Dense(10)(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, outputs)
    model.layers[-1].set_weights([rng.normal(size=(784, 10)).astype("float32") * 0.05,
                                  np.zeros(10, "float32")])
    model.save(path)
    return model


def test_evaluate_command_on_a_keras_file_and_a_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _mnist_linear(str(run_dir / "model.keras"))
    (run_dir / "config.json").write_text(json.dumps(
        {"dataset": "mnist5k", "norm": "linf", "eval": {"eps": [0.01, 0.02]}}))
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", str(run_dir), "--n", "8", "--n-iter", "3",
                                 "--n-queries", "5", "--margins"])
    assert result.exit_code == 0, result.output
    for name in ("APGD-CE", "APGD-T", "FAB-T", "Square", "AutoAttack", "eps=0.01"):
        assert name in result.output
    data = json.load(open(run_dir / "eval_autoattack.json"))
    assert data["n"] == 8 and data["epsilons"] == [0.01, 0.02]
    assert data["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    for f in ("eval_autoattack.csv", "margins.csv", "margins.png"):
        assert os.path.getsize(run_dir / f) > 0

    out = tmp_path / "out"
    result = runner.invoke(app, ["evaluate", str(run_dir / "model.keras"), "--attack",
                                 "apgd-ce", "--eps", "2/255", "--n", "8", "--n-iter", "3",
                                 "--dataset", "mnist5k", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.load(open(out / "eval_apgd-ce.json"))
    assert data["epsilons"] == [pytest.approx(2 / 255)]


def test_evaluate_command_bad_input(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", str(tmp_path)])
    assert result.exit_code != 0 and "model.keras" in result.output
    path = tmp_path / "m.keras"
    _mnist_linear(str(path))
    result = runner.invoke(app, ["evaluate", str(path), "--eps", "-1"])
    assert result.exit_code != 0 and "--eps" in result.output
    result = runner.invoke(app, ["evaluate", str(path), "--attack", "deepfool"])
    assert result.exit_code != 0 and "attack" in result.output
