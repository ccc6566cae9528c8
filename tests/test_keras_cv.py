"""A keras-cv backbone (built from its class, no pretrained weights) under every method.

keras-cv is the optional ``keras-cv`` extra (`make install` installs it); without it these
tests are skipped.  keras-cv 0.9 runs on all three Keras backends, so they run on each.
"""

import keras
import numpy as np
import pytest

from keras_dyart import methods

keras_cv = pytest.importorskip("keras_cv")

SHAPE = (16, 16, 3)
CONFIGS = {
    "clean": {},
    "pgd-at": {"eps": 0.05, "step_size": 0.02, "steps": 2},
    "trades": {"beta": 2.0, "eps": 0.05, "step_size": 0.02, "steps": 2},
    "mart": {"beta": 2.0, "eps": 0.05, "step_size": 0.02, "steps": 2},
    "mma": {"d_max": 0.1, "n_iter": 3},
    "dyart": {"n_iter": 3, "eps_fab": 8 / 255, "r0": 0.1},
}


def cv_classifier(num_classes=3, seed=0):
    """A small pre-activation ResNet from keras-cv with a global-pooling logits head."""
    keras.utils.set_random_seed(seed)
    backbone = keras_cv.models.ResNetV2Backbone(
        stackwise_filters=[8, 16], stackwise_blocks=[2, 2], stackwise_strides=[1, 2],
        include_rescaling=False, input_shape=SHAPE)
    inputs = keras.Input(SHAPE)
    features = keras.layers.GlobalAveragePooling2D()(backbone(inputs))
    return keras.Model(inputs, keras.layers.Dense(num_classes)(features))


def colour_batch(n=48, seed=0):
    """Images whose class is the brighter colour channel: learnable in a few epochs."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n).astype("int32")
    x = 0.6 * rng.random((n, *SHAPE), dtype=np.float32)
    x[np.arange(n), :, :, y] += 0.4
    return x, y


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_keras_cv_backbone_trains_under_each_method_and_round_trips(name, tmp_path):
    x, y = colour_batch(n=32)
    model = methods.get(name, cv_classifier(), **CONFIGS[name])
    model.compile(optimizer=keras.optimizers.SGD(0.05), metrics=["accuracy"])
    before = [w.copy() for w in model.classifier.get_weights()]
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    logs = {k: v[-1] for k, v in history.history.items()}
    assert all(np.isfinite(v) for v in logs.values()), logs
    after = model.classifier.get_weights()
    assert any(not np.allclose(a, b) for a, b in zip(after, before))
    path = str(tmp_path / "cv.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is type(model)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-5)


@pytest.mark.slow
def test_dyart_finds_boundary_points_of_a_trained_keras_cv_model():
    x, y = colour_batch(n=64)
    classifier = cv_classifier()
    classifier.compile(optimizer=keras.optimizers.Adam(3e-3),
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                       metrics=["accuracy"])
    classifier.fit(x, y, batch_size=16, epochs=8, verbose=0)
    assert classifier.evaluate(x, y, verbose=0)[1] > 0.9
    model = methods.DyARTModel(classifier, n_iter=10, eps_fab=0.1, r0=0.5)
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    logs = model.train_on_batch(x, y, return_dict=True)
    assert logs["boundary_fraction"] > 0.5, logs
    assert 0.0 < logs["mean_margin"] < 0.5, logs
    assert np.isfinite(logs["loss"]) and np.isfinite(logs["robust_loss"]), logs
