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


def _mnist_pixels(path):
    """`_mnist_linear`'s model for 0-255 pixels: Rescaling(1/255) first, same weights."""
    unit = _mnist_linear(str(path) + ".unit.keras")
    inputs = keras.Input((28, 28, 1))
    scaled = keras.layers.Rescaling(1 / 255)(inputs)
    dense = keras.layers.Dense(10)
    outputs = dense(keras.layers.Flatten()(scaled))
    model = keras.Model(inputs, outputs)
    dense.set_weights(unit.layers[-1].get_weights())
    model.save(path)
    return unit


def test_evaluate_command_refuses_then_takes_a_pixel_model_with_bounds(tmp_path):
    # Before: the [0, 1] test images went into a model that divides by 255, so it saw them
    # 255 times too dark, and every score it printed was wrong.
    path = tmp_path / "pixels.keras"
    _mnist_pixels(path)
    runner = CliRunner()
    args = ["evaluate", str(path), "--attack", "apgd-ce", "--n", "16", "--n-iter", "3"]
    result = runner.invoke(app, args + ["--out", str(tmp_path / "no")])
    assert result.exit_code != 0
    assert "begins with Rescaling" in result.output and "--bounds 0,255" in result.output
    result = runner.invoke(app, args + ["--bounds", "0,255", "--eps", "25.5",
                                        "--out", str(tmp_path / "px")])
    assert result.exit_code == 0, result.output
    assert "inputs in [0, 255]" in result.output
    result = runner.invoke(app, ["evaluate", str(path) + ".unit.keras", "--attack",
                                 "apgd-ce", "--n", "16", "--n-iter", "3", "--eps", "0.1",
                                 "--out", str(tmp_path / "unit")])
    assert result.exit_code == 0, result.output
    pixels = json.load(open(tmp_path / "px" / "eval_apgd-ce.json"))
    unit = json.load(open(tmp_path / "unit" / "eval_apgd-ce.json"))
    assert pixels["clean_accuracy"] == unit["clean_accuracy"]
    assert pixels["robust_accuracy"]["25.5"] == unit["robust_accuracy"]["0.1"]
    for bad in ("0", "1,0", "a,b", "0,1,2"):
        result = runner.invoke(app, args + ["--bounds", bad])
        assert result.exit_code != 0 and "--bounds" in result.output, (bad, result.output)


def test_the_api_warns_on_a_pixel_model_attacked_in_the_unit_box(tmp_path):
    import warnings

    import keras_dyart as kd

    path = tmp_path / "pixels.keras"
    _mnist_pixels(path)
    model = keras.saving.load_model(path)
    x = np.full((4, 28, 28, 1), 0.5, "float32")
    y = np.zeros(4, "int32")
    with pytest.warns(UserWarning, match=r"begins with Rescaling.*255 times too dark"):
        kd.evaluate(model, x, y, epsilons=[0.1], attack="apgd-ce",
                    options={"apgd-ce": {"n_iter": 2}})
    with warnings.catch_warnings():
        warnings.filterwarnings("error", category=UserWarning)
        kd.evaluate(model, x * 255, y, epsilons=[25.5], attack="apgd-ce", bounds=(0, 255),
                    options={"apgd-ce": {"n_iter": 2}})


def test_the_attack_budget_reaches_the_attack_that_runs_and_its_label(tmp_path):
    # Before: `--attack pgd --n-iter 3` ran PGD-40 (the flag set only APGD and FAB-T), and
    # options={"pgd": {"steps": 3}} in Python ran 3 steps under a table titled PGD-40.
    import warnings

    import keras_dyart as kd

    path = tmp_path / "m.keras"
    model = _mnist_linear(str(path))
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", str(path), "--attack", "pgd", "--n", "8",
                                 "--n-iter", "3", "--eps", "0.05", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "PGD-3 (CE)" in result.output and "PGD-40" not in result.output
    data = json.load(open(tmp_path / "eval_pgd.json"))
    assert data["options"] == {"pgd": {"steps": 3}}
    for args, flag in ((["--attack", "pgd", "--n-queries", "5"], "--n-queries"),
                       (["--attack", "square", "--n-iter", "5"], "--n-iter")):
        result = runner.invoke(app, ["evaluate", str(path), "--n", "8", *args])
        assert result.exit_code != 0 and flag in result.output, result.output

    x, y = np.full((4, 28, 28, 1), 0.5, "float32"), np.zeros(4, "int32")
    report = kd.evaluate(model, x, y, "pgd-cw", [0.05], options={"pgd-cw": {"steps": 2}})
    assert report.table().startswith("PGD-2 (CW)") and report.rows()[1][0] == "PGD-2 (CW)"
    assert kd.evaluate(model, x, y, "pgd", [0.05]).rows()[1][0] == "PGD-40 (CE)"
    with pytest.warns(UserWarning, match=r"`options` sets \['square'\].*not run"):
        kd.evaluate(model, x, y, "pgd", [0.05], options={"square": {"n_queries": 3}})
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*`options` sets")
        kd.evaluate(model, x, y, "pgd", [0.05], options={"pgd": {"steps": 2}})


def test_a_rescaling_after_augmentation_layers_is_still_seen(tmp_path):
    # Keras's image-classification tutorial puts augmentation first, then Rescaling(1/255);
    # such a model attacked with [0, 1] images saw them 255 times too dark, unwarned.
    import warnings

    import keras_dyart as kd

    unit = _mnist_linear(str(tmp_path / "unit.keras"))
    inputs = keras.Input((28, 28, 1))
    h = keras.Sequential([keras.layers.RandomFlip("horizontal"),
                          keras.layers.RandomRotation(0.1)])(inputs)
    h = keras.layers.Rescaling(1 / 255)(h)
    dense = keras.layers.Dense(10)
    model = keras.Model(inputs, dense(keras.layers.Flatten()(h)))
    dense.set_weights(unit.layers[-1].get_weights())
    rng = np.random.RandomState(0)
    x = rng.uniform(0, 1, (8, 28, 28, 1)).astype("float32")
    y = rng.randint(0, 10, 8).astype("int32")
    opts = {"apgd-ce": {"n_iter": 3}}
    with pytest.warns(UserWarning, match=r"begins with Rescaling.*255 times too dark"):
        kd.evaluate(model, x, y, "apgd-ce", [0.1], options=opts)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", category=UserWarning)
        pixels = kd.evaluate(model, x * 255, y, "apgd-ce", [25.5], bounds=(0, 255),
                             options=opts)
    plain = kd.evaluate(unit, x, y, "apgd-ce", [0.1], options=opts)
    assert pixels.clean_accuracy == plain.clean_accuracy
    np.testing.assert_array_equal(pixels.robust, plain.robust)
    path = tmp_path / "augmented.keras"
    model.save(path)
    result = CliRunner().invoke(app, ["evaluate", str(path), "--attack", "apgd-ce", "--n",
                                      "8", "--n-iter", "2", "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and "--bounds 0,255" in result.output
