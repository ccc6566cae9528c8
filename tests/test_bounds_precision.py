"""Input boxes whose ends a float32 batch cannot hold exactly (normalised data, 0.2, 0.3):
inputs at the ends are inside the box as the model sees it, so training, `evaluate`, the
attacks and `keras-dyart evaluate --bounds` take them; a value beyond the rounded end is
still refused, and the attacks' points stay inside the box in the inputs' precision."""

import keras
import numpy as np
import pytest
from typer.testing import CliRunner

import keras_dyart as kd
from keras_dyart import methods
from keras_dyart_apps.main import app

# ends whose float32 lies outside the float64 box: float32(LO) < LO and float32(HI) > HI
LO, HI = -1.9887, 2.8215
D, K = 6, 3


def _ends_round_outwards():
    assert float(np.float32(LO)) < LO and float(np.float32(HI)) > HI


def _data(n=24, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.uniform(LO, HI, size=(n, D)).astype("float32")
    x[0, 0], x[1, 1] = LO, HI              # rows at both ends, rounded to float32
    w = rng.normal(size=(D, K))
    y = np.argmax(x @ w, axis=1).astype("int32")
    return x, y


def _classifier():
    inputs = keras.Input((D,))
    return keras.Model(inputs, keras.layers.Dense(K)(inputs))


def test_float32_inputs_at_decimal_ends_are_evaluated():
    _ends_round_outwards()
    keras.utils.set_random_seed(0)
    x, y = _data()
    model = _classifier()
    report = kd.evaluate(model, x, y, "pgd", [0.3], bounds=(LO, HI), batch_size=8)
    clean = float(np.mean(np.argmax(model.predict(x, verbose=0), 1) == y))
    assert report.clean_accuracy == pytest.approx(clean)
    assert report.robust_accuracy[0.3] <= report.clean_accuracy


@pytest.mark.parametrize("attack", ["pgd", "apgd", "fab"])
def test_attack_points_stay_in_the_box_in_float32(attack):
    keras.utils.set_random_seed(0)
    x, y = _data()
    model = _classifier()
    run = {"pgd": lambda: kd.attacks.pgd(model, x, y, 0.5, steps=5, bounds=(LO, HI)),
           "apgd": lambda: kd.attacks.apgd(model, x, y, 0.5, n_iter=5, bounds=(LO, HI)),
           "fab": lambda: kd.attacks.fab_t(model, x, y, n_iter=5, n_target_classes=2,
                                           eps=0.5, bounds=(LO, HI))}[attack]
    x_adv, _ = run()
    x_adv = np.asarray(x_adv)
    assert x_adv.min() >= np.float32(LO) and x_adv.max() <= np.float32(HI)
    assert np.abs(x_adv.astype("float64") - x).max() <= 0.5 + 1e-6


def test_a_value_beyond_the_rounded_end_is_still_refused():
    x, y = _data()
    x[2, 2] = np.nextafter(np.float32(HI), np.float32(np.inf))
    with pytest.raises(ValueError, match="`x` must lie in the model's input bounds"):
        kd.evaluate(_classifier(), x, y, "pgd", [0.1], bounds=(LO, HI))
    x, y = _data()
    x[2, 2] = np.nextafter(np.float32(LO), np.float32(-np.inf))
    with pytest.raises(ValueError, match="`x` must lie in the model's input bounds"):
        kd.attacks.pgd(_classifier(), x, y, 0.1, steps=2, bounds=(LO, HI))


@pytest.mark.parametrize("method", ["pgd-at", "dyart"])
def test_training_takes_inputs_at_the_rounded_ends(method):
    keras.utils.set_random_seed(0)
    x, y = _data(48)
    hyper = {"pgd-at": dict(eps=0.3, step_size=0.1, steps=2),
             "dyart": dict(r0=1.0, n_iter=3)}[method]
    model = methods.get(method, _classifier(), bounds=(LO, HI), **hyper)
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    # every batch holds an end: the later batches' in-step check sees them too
    x[::16, 0], x[1::16, 1] = LO, HI
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0, validation_data=(x, y))
    assert np.isfinite(history.history["loss"][-1])
    assert model.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)


def test_cli_evaluate_maps_test_images_onto_a_narrow_decimal_box(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                      keras.layers.Dense(10)]).save(run / "model.keras")
    result = CliRunner().invoke(app, ["evaluate", str(run), "--n", "8", "--attack", "pgd",
                                      "--bounds", "0.1,0.3", "--eps", "0.05"])
    assert result.exit_code == 0, result.output
    assert "inputs in [0.1, 0.3]" in result.output
