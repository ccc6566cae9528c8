"""The same seed gives the same run twice on each backend (on CPU, bit for bit)."""

import json
import os

import keras
import numpy as np
from typer.testing import CliRunner

import keras_dyart  # noqa: F401  (registers the method models for loading)
from keras_dyart_apps.main import app

runner = CliRunner()
TINY = ["train", "--limit", "128", "--batch-size", "32", "--burn-in", "1", "--epochs", "1",
        "--n-iter", "3", "--eval-n", "32", "--pgd-steps", "3", "--eps", "0.3",
        "--verbose", "0"]


def run(out, seed):
    result = runner.invoke(app, [*TINY, "--seed", str(seed), "--out", out])
    assert result.exit_code == 0, result.output
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    metrics.pop("train_seconds")
    weights = keras.saving.load_model(os.path.join(out, "model.keras"),
                                      compile=False).get_weights()
    return metrics, weights


def test_same_seed_same_run_other_seed_other_run(tmp_path):
    m1, w1 = run(str(tmp_path / "a"), seed=3)
    m2, w2 = run(str(tmp_path / "b"), seed=3)
    assert m1 == m2
    for u, v in zip(w1, w2):
        np.testing.assert_array_equal(u, v)
    _, w3 = run(str(tmp_path / "c"), seed=4)
    assert any(not np.array_equal(u, v) for u, v in zip(w1, w3))
