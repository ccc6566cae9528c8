"""`keras-dyart train --method ...`: every method, --init and --resume on a tiny budget."""

import json
import os

import keras
import numpy as np
import pytest
from typer.testing import CliRunner

from keras_dyart import recipe
from keras_dyart_apps.main import app

runner = CliRunner()
TINY = ["--limit", "64", "--batch-size", "32", "--eval-n", "8", "--pgd-steps", "2",
        "--eps", "0.1", "--train-steps", "2", "--n-iter", "2", "--verbose", "0"]


def train(*args):
    result = runner.invoke(app, ["train", *TINY, *args])
    return result


@pytest.mark.parametrize("method", [
    pytest.param("clean", marks=pytest.mark.slow), pytest.param("pgd-at", marks=pytest.mark.slow),
    "trades", pytest.param("mart", marks=pytest.mark.slow),
    pytest.param("mma", marks=pytest.mark.slow)])
def test_each_method_trains_from_a_burn_in(method, tmp_path):
    out = str(tmp_path / "run")
    result = train("--method", method, "--burn-in", "1", "--epochs", "1", "--out", out)
    assert result.exit_code == 0, result.output
    for name in ("config.json", "burn_in.keras", "model.keras", "averaged.keras",
                 "history.csv", "metrics.json"):
        assert os.path.exists(os.path.join(out, name)), name
    assert not os.path.exists(os.path.join(out, "backup"))      # removed when complete
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["method"] == method and config["train_step"] == pytest.approx(0.375)
    lines = open(os.path.join(out, "history.csv")).read().strip().splitlines()
    assert lines[0].startswith("epoch,phase") and len(lines) == 3
    assert lines[2].startswith(f"2,{method},")
    model = keras.saving.load_model(os.path.join(out, "model.keras"))
    assert type(model).__name__ != "Functional"
    assert model.optimizer is not None                            # saved with its averages


@pytest.mark.slow
def test_init_starts_from_a_checkpoint_and_skips_the_burn_in(tmp_path):
    first = str(tmp_path / "first")
    assert train("--method", "clean", "--burn-in", "1", "--epochs", "0",
                 "--out", first).exit_code == 0
    out = str(tmp_path / "second")
    result = train("--method", "trades", "--init", os.path.join(first, "burn_in.keras"),
                   "--burn-in", "5", "--epochs", "1", "--out", out)
    assert result.exit_code == 0, result.output
    assert "burn-in" not in result.output
    assert not os.path.exists(os.path.join(out, "burn_in.keras"))
    assert json.load(open(os.path.join(out, "config.json")))["burn_in"] == 0


@pytest.mark.slow
def test_resume_after_an_interruption_ends_like_an_uninterrupted_run(tmp_path, monkeypatch):
    args = ["--method", "pgd-at", "--burn-in", "1", "--epochs", "3", "--ema-tau", "0.7"]
    reference = str(tmp_path / "reference")
    assert train(*args, "--out", reference).exit_code == 0

    out = str(tmp_path / "run")
    original = recipe.SyncEpoch.on_epoch_begin

    def interrupt(self, epoch, logs=None):
        if epoch == 2:
            raise KeyboardInterrupt
        original(self, epoch, logs)

    monkeypatch.setattr(recipe.SyncEpoch, "on_epoch_begin", interrupt)
    assert train(*args, "--out", out).exit_code != 0
    monkeypatch.undo()
    assert os.path.isdir(os.path.join(out, "backup"))
    assert train(*args, "--out", out).exit_code != 0         # would overwrite: refused
    result = train(*args, "--out", out, "--resume")
    assert result.exit_code == 0, result.output
    assert "restored" in result.output
    for name in ("model.keras", "averaged.keras"):
        a = keras.saving.load_model(os.path.join(out, name)).get_weights()
        b = keras.saving.load_model(os.path.join(reference, name)).get_weights()
        for u, v in zip(a, b):
            np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)
    rows = open(os.path.join(out, "history.csv")).read().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]
    assert train(*args, "--out", out, "--resume").exit_code != 0   # complete: refused


def test_dyart_warm_start_run_remembers_every_point(tmp_path):
    out = str(tmp_path / "run")
    result = train("--warm-start", "1", "--cache-dtype", "int8", "--burn-in", "1",
                   "--epochs", "2", "--out", out)
    assert result.exit_code == 0, result.output
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["warm_start"] == 1 and config["cache_dtype"] == "int8"
    model = keras.saving.load_model(os.path.join(out, "model.keras"))
    assert model.warm_start == 1 and model.cache.n_examples == 64
    # every training point was visited (the memory says so: scale >= 0)
    assert np.all(keras.ops.convert_to_numpy(model.cache.scales) >= 0)
