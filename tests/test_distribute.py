"""Data parallelism: a DyART step over two virtual CPU devices equals the single-device step
on the same global batch.

The devices must exist before the backend initialises (JAX reads ``XLA_FLAGS`` at import,
TensorFlow fixes its logical devices at first use), so the check runs in a fresh Python
process with the same backend as this test session.
"""

import json
import os
import subprocess
import sys

import keras
import pytest

from keras_dyart import distribute

BACKEND = keras.backend.backend()

CHECK = r'''
import json, os
backend = os.environ["KERAS_BACKEND"]
if backend == "jax":
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import numpy as np
import keras
if backend == "tensorflow":
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from keras_dyart import distribute
from keras_dyart.methods import DyARTModel


def build(lam):
    keras.utils.set_random_seed(0)
    classifier = keras.Sequential([
        keras.Input((6, 6, 1)), keras.layers.Conv2D(4, 3, activation="swish"),
        keras.layers.Flatten(), keras.layers.Dense(3)])
    return DyARTModel(classifier, n_iter=5, lam=lam, r0=1.0, use_filter=False)


def weights_after_one_step(lam, x, y, init, strategy=None):
    if strategy is None:
        model = build(lam)
        model.set_weights(init)
        model.compile(optimizer=keras.optimizers.SGD(0.5))
        logs = model.train_on_batch(x, y, return_dict=True)
    else:
        with strategy.scope():
            model = build(lam)
            model.set_weights(init)
            model.compile(optimizer=keras.optimizers.SGD(0.5))
        logs = model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0).history
        logs = {k: v[0] for k, v in logs.items()}
    return model.get_weights(), {k: float(v) for k, v in logs.items()}


def max_diff(a, b):
    return max(float(np.max(np.abs(u - v))) for u, v in zip(a, b))


x = np.random.default_rng(0).random((8, 6, 6, 1)).astype("float32")
reference = build(50.0)
init = reference.get_weights()
# Labels = the initial predictions: every point is correct, so every point is searched.
y = np.argmax(keras.ops.convert_to_numpy(reference(x)), axis=1)
single, logs_single = weights_after_one_step(50.0, x, y, init)
clean, _ = weights_after_one_step(0.0, x, y, init)
strategy = distribute.data_parallel()
multi, logs_multi = weights_after_one_step(50.0, x, y, init, strategy)
print("RESULT " + json.dumps({
    "replicas": distribute.num_replicas(strategy),
    "diff": max_diff(single, multi),
    "step": max_diff(single, init),
    "robust_effect": max_diff(single, clean),
    "boundary_fraction": logs_single["boundary_fraction"],
    "boundary_fraction_multi": logs_multi["boundary_fraction"],
}))
'''


def run_check(tmp_path):
    script = tmp_path / "check_two_devices.py"
    script.write_text(CHECK)
    env = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                          text=True, timeout=600)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


@pytest.mark.skipif(BACKEND == "torch",
                    reason="Keras 3 has no multi-device fit on the torch backend "
                           "(no keras.distribution support, no strategy)")
def test_two_device_step_equals_single_device_step(tmp_path):
    result = run_check(tmp_path)
    assert result["replicas"] == 2
    # The step is not trivial: points are searched and the robust term moves the weights.
    assert result["boundary_fraction"] > 0
    assert result["boundary_fraction_multi"] == pytest.approx(result["boundary_fraction"])
    assert result["robust_effect"] > 1e-2 and result["step"] > 1e-2
    assert result["diff"] < 1e-5 * max(1.0, result["step"])


def test_data_parallel_on_this_backend():
    with pytest.raises(ValueError, match="`devices`"):
        distribute.data_parallel(devices="cpu:0")
    if BACKEND == "torch":
        with pytest.raises(NotImplementedError, match="PyTorch"):
            distribute.data_parallel()
        return
    strategy = distribute.data_parallel()
    assert distribute.num_replicas(strategy) >= 1
    with strategy.scope():
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    assert model.output_shape == (None, 2)
    if BACKEND == "tensorflow":
        with pytest.raises(ValueError, match="`set_global`"):
            distribute.data_parallel(set_global=True)
