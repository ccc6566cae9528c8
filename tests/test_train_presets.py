"""`keras-dyart train --preset ...` and `--distribute`, end to end on a small slice.

CIFAR-10 is replaced by synthetic images in Keras's own format (no download), and the
WRN-28-10 builder by a WRN-10-1 (a WRN-28-10 DyART step takes minutes on a CPU); everything
else (preset defaults, augmenting pipeline, extra-data mixing, the recipe) is the real path.
"""

import json
import os

import keras
import numpy as np
import pytest
from typer.testing import CliRunner

from keras_dyart import architectures
from keras_dyart_apps.main import app
from tests.conftest import BACKEND

runner = CliRunner()
TINY = ["--limit", "48", "--batch-size", "16", "--burn-in", "1", "--epochs", "1",
        "--n-iter", "2", "--eval-n", "16", "--pgd-steps", "2", "--verbose", "0"]


def small_wrn(**kwargs):
    kwargs.update(depth=10, width=1)
    return architectures.wide_resnet(**kwargs)


@pytest.fixture
def synthetic_cifar(monkeypatch):
    rng = np.random.RandomState(0)

    def load_data():
        x = rng.randint(0, 256, (80, 32, 32, 3)).astype("uint8")
        y = rng.randint(0, 10, (80, 1)).astype("uint8")
        return (x[:64], y[:64]), (x[64:], y[64:])

    monkeypatch.setattr(keras.datasets.cifar10, "load_data", load_data)
    monkeypatch.setitem(architectures.BUILDERS, "wrn-28-10", small_wrn)


@pytest.mark.slow
def test_preset_sets_the_recipe_and_options_still_win(tmp_path, synthetic_cifar):
    out = str(tmp_path / "run")
    result = runner.invoke(app, ["train", "--preset", "cifar10-wrn28-10", *TINY,
                                 "--out", out])
    assert result.exit_code == 0, result.output
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["preset"] == "cifar10-wrn28-10" and config["dataset"] == "cifar10"
    assert config["model"] == "wrn-28-10" and config["model_kwargs"]["activation"] == "swish"
    assert config["lam"] == 1000.0 and config["r0"] == pytest.approx(16 / 255)
    assert config["eps_fab"] == pytest.approx(8 / 255) and config["lr"] == 0.1
    assert config["schedule"] == "cosine" and config["augment_pad"] == 4
    assert config["eval"]["eps"] == [pytest.approx(8 / 255)]
    assert config["batch_size"] == 16 and config["n_iter"] == 2       # given: they win
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert list(metrics["robust_accuracy"]["pgd2"]) == [f"{8 / 255:g}"]


@pytest.mark.slow
def test_extra_data_preset_mixes_the_npz_in(tmp_path, synthetic_cifar):
    result = runner.invoke(app, ["train", "--preset", "cifar10-wrn28-10-extra", *TINY,
                                 "--out", str(tmp_path / "no")])
    assert result.exit_code != 0 and "--extra-data" in result.output
    rng = np.random.RandomState(1)
    path = str(tmp_path / "ddpm.npz")
    np.savez(path, image=rng.randint(0, 256, (40, 32, 32, 3)).astype("uint8"),
             label=rng.randint(0, 10, 40))
    out = str(tmp_path / "run")
    result = runner.invoke(app, ["train", "--preset", "cifar10-wrn28-10-extra", *TINY,
                                 "--extra-data", path, "--out", out])
    assert result.exit_code == 0, result.output
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["extra_data"] == path and config["lam"] == 800.0


def test_bad_preset_and_missing_extra_data_name_the_option(tmp_path):
    result = runner.invoke(app, ["train", "--preset", "cifar11"])
    assert result.exit_code != 0 and "--preset" in result.output
    result = runner.invoke(app, ["train", "--extra-data", str(tmp_path / "none.npz")])
    assert result.exit_code != 0 and "--extra-data" in result.output


def test_distribute(tmp_path):
    out = str(tmp_path / "run")
    result = runner.invoke(app, ["train", *TINY, "--distribute", "--out", out])
    if BACKEND == "torch":
        assert result.exit_code != 0 and "--distribute" in result.output
        return
    assert result.exit_code == 0, result.output
    assert "data parallel over" in result.output
    assert json.load(open(os.path.join(out, "config.json")))["distribute"] is True
