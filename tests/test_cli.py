"""`keras-dyart train` on a tiny budget writes every file of a run directory."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from typer.testing import CliRunner

from keras_dyart_apps.main import app

runner = CliRunner()


def test_train_writes_run_directory(tmp_path):
    out = os.path.join(tmp_path, "run")
    result = runner.invoke(app, [
        "train", "--limit", "256", "--burn-in", "1", "--epochs", "1", "--batch-size", "64",
        "--n-iter", "3", "--eval-n", "40", "--pgd-steps", "2", "--eps", "0.1",
        "--eps", "8/255", "--out", out, "--verbose", "0"])
    assert result.exit_code == 0, result.output
    for name in ("config.json", "model.keras", "history.csv", "metrics.json"):
        assert os.path.exists(os.path.join(out, name)), name
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["backend"] == keras.backend.backend()
    assert config["seed"] == 0 and config["n_iter"] == 3
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert 0.0 <= metrics["clean_accuracy"] <= 1.0
    robust = metrics["robust_accuracy"]["pgd2"]
    assert set(robust) == {"0.1", f"{8 / 255:g}"}
    assert all(0.0 <= v <= metrics["clean_accuracy"] for v in robust.values())
    # The end-of-run evaluation is `keras-dyart evaluate`'s code: its report is written too.
    report = json.load(open(os.path.join(out, "eval_pgd.json")))
    assert report["clean_accuracy"] == metrics["clean_accuracy"]
    lines = open(os.path.join(out, "history.csv")).read().strip().splitlines()
    assert lines[0].startswith("epoch,phase") and len(lines) == 3
    assert "clean" in result.output and "pgd2" in result.output
    model = keras.saving.load_model(os.path.join(out, "model.keras"))
    assert model.predict(np.zeros((1, 28, 28, 1), "float32"), verbose=0).shape == (1, 10)
    # The classifiers load in a process that never imports keras_dyart (another library's
    # attack on them, say), with the weights the run saved.
    averaged = keras.saving.load_model(os.path.join(out, "averaged.keras"))
    assert not averaged.compiled
    probe = np.random.RandomState(0).uniform(size=(2, 28, 28, 1)).astype("float32")
    np.save(os.path.join(tmp_path, "probe.npy"), probe)
    script = (
        "import sys, keras, numpy as np\n"
        "for name in ('averaged', 'burn_in'):\n"
        "    m = keras.saving.load_model(sys.argv[1] + f'/{name}.keras')\n"
        "    np.save(sys.argv[1] + f'/{name}_logits.npy',\n"
        "            m.predict(np.load(sys.argv[2]), verbose=0))\n"
        "assert 'keras_dyart' not in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", script, out,
                           os.path.join(tmp_path, "probe.npy")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_allclose(np.load(os.path.join(out, "averaged_logits.npy")),
                               averaged.predict(probe, verbose=0), rtol=1e-5, atol=1e-5)
    burn_in = keras.saving.load_model(os.path.join(out, "burn_in.keras"))
    np.testing.assert_allclose(np.load(os.path.join(out, "burn_in_logits.npy")),
                               burn_in.predict(probe, verbose=0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("args, word", [
    (["--eps", "abc"], "--eps"), (["--eps", "-0.1"], "--eps"), (["--norm", "l7"], "--norm"),
    (["--batch-size", "0"], "--batch-size"), (["--epochs", "0", "--burn-in", "0"], "--epochs"),
    (["--method", "fgsm"], "--method"), (["--train-eps", "x"], "--train-eps"),
    (["--kl-beta", "-1"], "--kl-beta"), (["--clean-weight", "2"], "--clean-weight"),
    (["--init", "missing.keras"], "--init"), (["--resume"], "--resume"),
    (["--ema-tau", "1.5"], "--ema-tau"), (["--schedule", "linear"], "--schedule"),
    (["--weight-decay-mode", "adamw"], "--weight-decay-mode"),
    (["--weight-decay", "-1"], "--weight-decay"), (["--clipnorm", "-1"], "--clipnorm"),
    (["--holdout", "-1"], "--holdout"), (["--limit", "100", "--holdout", "100"], "--holdout"),
    (["--holdout", "4000", "--epochs", "1", "--burn-in", "0"], "--holdout"),
])
def test_train_rejects_bad_options(args, word):
    result = runner.invoke(app, ["train", *args])
    assert result.exit_code != 0
    assert word in result.output


def test_holdout_trains_without_the_validation_points_and_evaluates_on_them(tmp_path):
    from keras_dyart import datasets

    out = os.path.join(tmp_path, "run")
    result = runner.invoke(app, [
        "train", "--method", "clean", "--limit", "300", "--holdout", "100", "--burn-in", "0",
        "--epochs", "2", "--batch-size", "64", "--eval-n", "80", "--pgd-steps", "2",
        "--eps", "0.1", "--out", out, "--verbose", "0"])
    assert result.exit_code == 0, result.output
    assert json.load(open(os.path.join(out, "config.json")))["holdout"] == 100
    x, y, _, _ = datasets.load("mnist5k")
    # The evaluation is on the first 80 of the held-out points 200..299, not on test digits.
    model = keras.saving.load_model(os.path.join(out, "averaged.keras"), compile=False)
    predicted = np.argmax(model.predict(x[200:280], verbose=0), axis=1)
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["evaluated_on"] == "80 held-out training points"
    assert metrics["clean_accuracy"] == pytest.approx(float(np.mean(predicted == y[200:280])))
    assert json.load(open(os.path.join(out, "eval_pgd.json")))["n"] == 80
    # Every method epoch records its wall time.
    lines = open(os.path.join(out, "history.csv")).read().strip().splitlines()
    header = lines[0].split(",")
    seconds = [float(line.split(",")[header.index("epoch_seconds")]) for line in lines[1:]]
    assert len(seconds) == 2 and all(s > 0 for s in seconds)


def test_help_lists_every_option():
    result = runner.invoke(app, ["train", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for option in ("--epochs", "--burn-in", "--eps", "--batch-size", "--seed", "--out",
                   "--lam", "--r0", "--n-iter", "--random-start", "--method", "--init",
                   "--resume", "--train-eps", "--train-step", "--train-steps", "--kl-beta",
                   "--d-max", "--clean-weight", "--ema-tau", "--lr-warmup", "--eval-every",
                   "--preset", "--distribute"):
        assert option in result.output
