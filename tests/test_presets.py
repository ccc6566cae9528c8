"""Presets: the recipe's settings, that they fit our API, and the `keras-dyart presets`
command."""

import inspect
import json

import keras
import numpy as np
import pytest
from typer.testing import CliRunner

from keras_dyart import architectures, datasets, presets, recipe
from keras_dyart.methods import DyARTModel
from keras_dyart_apps.main import app


def test_cifar10_preset_is_the_published_recipe():
    p = presets.get("cifar10-wrn28-10")
    assert (p["dataset"], p["model"]) == ("cifar10", "wrn-28-10")
    assert p["model_kwargs"]["activation"] == "swish" and p["model_kwargs"]["norm"] == "batch"
    d = p["dyart"]
    assert (d["lam"], d["alpha"], d["beta"], d["n_iter"]) == (1000.0, 3.0, 5.0, 20)
    assert d["r0"] == pytest.approx(16 / 255) and d["eps_fab"] == pytest.approx(8 / 255)
    assert (p["burn_in_epochs"], p["epochs"], p["batch_size"]) == (10, 200, 256)
    o = p["optimizer"]
    assert (o["name"], o["learning_rate"], o["momentum"], o["nesterov"],
            o["weight_decay"]) == ("sgd", 0.1, 0.9, True, 5e-4)
    assert p["global_clipnorm"] == 0.1 and p["ema"]["tau"] == 0.995
    assert p["augment"] == {"random_crop_pad": 4, "horizontal_flip": True}
    gn = presets.get("cifar10-wrn28-10-gn")
    assert gn["model_kwargs"]["norm"] == "group"
    assert (gn["dyart"]["lam"], gn["dyart"]["alpha"]) == (400.0, 8.0)
    tiny = presets.get("tinyimagenet-preact-resnet18")
    assert tiny["model"] == "preact-resnet18" and tiny["burn_in_epochs"] == 20
    assert tiny["model_kwargs"]["num_classes"] == 200
    extra = presets.get("cifar10-wrn28-10-extra")["extra_data"]
    assert extra["fraction"] == 0.7


@pytest.mark.parametrize("name", presets.names())
def test_every_preset_fits_the_api(name):
    p = presets.get(name)
    assert p["dataset"] in datasets.DATASETS
    builder = architectures.BUILDERS[p["model"]]
    inspect.signature(builder).bind(**p["model_kwargs"])          # valid builder arguments
    inspect.signature(datasets.load).bind(p["dataset"], **p["dataset_kwargs"])
    # The DyART settings are valid `DyARTModel` arguments.
    classifier = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model = DyARTModel(classifier, **p["dyart"])
    assert model.lam == p["dyart"]["lam"] and model.r0 == pytest.approx(p["dyart"]["r0"])
    assert json.loads(json.dumps(p)) == p                          # plain, JSON-able data


def test_get_returns_a_copy_and_rejects_unknown_names():
    p = presets.get("cifar10-wrn28-10")
    p["dyart"]["lam"] = 1.0
    assert presets.get("cifar10-wrn28-10")["dyart"]["lam"] == 1000.0
    with pytest.raises(ValueError, match="`preset` must be one of"):
        presets.get("imagenet-vit")
    flat = presets.flatten(presets.get("cifar10-wrn28-10"))
    assert flat["dyart.lam"] == 1000.0 and flat["optimizer.nesterov"] is True


def test_presets_command_lists_and_shows():
    runner = CliRunner()
    result = runner.invoke(app, ["presets"])
    assert result.exit_code == 0, result.output
    for name in presets.names():
        assert name in result.output
    assert "λ 1000" in result.output and "r0 16/255" in result.output

    result = runner.invoke(app, ["presets", "cifar10-wrn28-10-gn"])
    assert result.exit_code == 0, result.output
    assert "dyart.lam" in result.output and "400.0" in result.output

    result = runner.invoke(app, ["presets", "tinyimagenet-preact-resnet18", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown == presets.get("tinyimagenet-preact-resnet18")
    assert np.isclose(shown["dyart"]["r0"], 32 / 255)

    result = runner.invoke(app, ["presets", "nope"])
    assert result.exit_code != 0 and "must be one of" in result.output


def test_build_optimizer_schedule_clip_ema_and_weight_decay():
    p = presets.get("cifar10-wrn28-10")
    schedule = presets.learning_rate_schedule(p, steps_per_epoch=10)    # 2000 steps
    lr = [float(keras.ops.convert_to_numpy(schedule(s))) for s in (0, 50, 1025, 2000)]
    # The one recipe's warm-up starts from 0 (it used to start from lr/25 here only).
    assert lr[0] == 0.0
    assert lr[1] == pytest.approx(0.1, rel=1e-4)                       # end of warm-up
    assert lr[2] == pytest.approx(0.05, rel=1e-2)                      # half way down
    assert lr[3] == pytest.approx(0.0, abs=1e-6)
    step = presets.learning_rate_schedule("cifar10-wrn28-10-gn", steps_per_epoch=2)
    assert [round(float(keras.ops.convert_to_numpy(step(s))), 6)
            for s in (0, 101, 151)] == [0.1, 0.01, 0.001]
    with pytest.raises(ValueError, match="`steps_per_epoch`"):
        presets.learning_rate_schedule(p, steps_per_epoch=0)

    optimizer = presets.build_optimizer(p, steps_per_epoch=10)
    # Coupled decay (as the CLI): the optimizer clips itself, Keras's own clip is off.
    assert optimizer.get_config()["global_clipnorm"] == 0.1 and optimizer.nesterov
    assert optimizer.coupled_clip["global_clipnorm"] == 0.1
    # The recipe's own weight average (with its warm-up), not Keras's `use_ema`.
    assert isinstance(optimizer, recipe.AveragingSGD) and optimizer.ema_tau == 0.995
    assert optimizer.ema_warmup_steps == 50 and not optimizer.use_ema
    # Weight decay shrinks kernels but not the normalisation's gamma / beta.
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2),
                              keras.layers.BatchNormalization()])
    variables = model.trainable_variables
    before = [keras.ops.convert_to_numpy(v) for v in variables]
    for _ in range(2):                  # the first step's learning rate is 0 (warm-up)
        optimizer.apply_gradients([(keras.ops.zeros(v.shape), v) for v in variables])
    after = {v.path: keras.ops.convert_to_numpy(v) for v in variables}
    for v, b in zip(variables, before):
        if v.path.endswith(("gamma", "beta", "bias")) or not np.any(b):
            np.testing.assert_array_equal(after[v.path], b)
        else:
            assert np.all(np.abs(after[v.path]) < np.abs(b)), v.path


def test_a_preset_runs_on_a_small_slice():
    p = presets.get("cifar10-wrn28-10")
    model = presets.build_model(
        p, model="wide-resnet",
        model_kwargs={"depth": 10, "width": 1, "input_shape": (8, 8, 3)},
        dyart={"n_iter": 2, "refine_steps": 1})
    assert model.lam == 1000.0 and model.alpha == 3.0
    assert any(isinstance(l, keras.layers.Activation) and
               l.activation is keras.activations.get("swish")
               for l in model.classifier.layers)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (4, 8, 8, 3), dtype="uint8")
    kwargs = dict(presets.pipeline_kwargs(p), batch_size=4)
    assert kwargs["pad"] == 4 and kwargs["augment"]
    train = datasets.pipeline(x, rng.integers(0, 10, 4), **kwargs)
    model.compile(optimizer=presets.build_optimizer(p, steps_per_epoch=len(train), epochs=1),
                  run_eagerly=True)
    history = model.fit(train, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert presets.pipeline_kwargs("cifar10-wrn28-10-extra")["extra_fraction"] == 0.7


def cli_optimizer(name, total_steps):
    """The optimizer `keras-dyart train --preset NAME` builds for its method stage."""
    from keras_dyart_apps.settings import method_optimizer
    from keras_dyart_apps.train_options import preset_defaults

    return method_optimizer(total_steps, preset_defaults(name))


@pytest.mark.parametrize("name", presets.names())
def test_python_presets_and_the_cli_train_with_one_recipe(name):
    """`presets.build_optimizer` (what docs/scale.md teaches) and `keras-dyart train
    --preset` build the same optimizer: same config, learning rates and EMA decays."""
    ours = presets.build_optimizer(name, steps_per_epoch=7, epochs=30)
    theirs = cli_optimizer(name, 7 * 30)
    assert type(ours) is type(theirs) is recipe.AveragingSGD
    assert ours.get_config() == theirs.get_config()
    steps = np.arange(0, 7 * 30, 3)
    lr = [[float(keras.ops.convert_to_numpy(schedule(s))) for s in steps]
          for schedule in (presets.learning_rate_schedule(name, 7, 30),
                           keras.optimizers.schedules.deserialize(
                               theirs.get_config()["learning_rate"]))]
    assert lr[0] == lr[1] and lr[0][0] == 0.0 or name.endswith("-gn")
    decays = [keras.ops.convert_to_numpy(recipe.ema_decay(steps, o.ema_tau, o.ema_warmup_steps))
              for o in (ours, theirs)]
    np.testing.assert_array_equal(decays[0], decays[1])
    # ...and a step of each from the same weights gives the same weights and averages.
    results = []
    for optimizer in (ours, theirs):
        kernel = keras.Variable(np.ones((3, 2), "float32"), name="kernel")
        bias = keras.Variable(np.ones((2,), "float32"), name="bias")
        for g in (2.0, -0.5, 1.0):
            optimizer.apply([keras.ops.full((3, 2), g), keras.ops.full((2,), g)],
                            [kernel, bias])
        results.append([keras.ops.convert_to_numpy(v) for v in
                        (kernel, bias, *optimizer.averages().values())])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
