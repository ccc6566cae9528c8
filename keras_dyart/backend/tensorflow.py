"""TensorFlow: `tf.GradientTape` for input gradients (outside any outer tape)."""

import tensorflow as tf
from keras.utils import unpack_x_y_sample_weight


def value_and_grad(f, x):
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        v = f(x)
    g = tape.gradient(v, x)
    if g is None:
        g = tf.zeros_like(x)
    return tf.stop_gradient(v), g


def robust_train_step(model, parent_step, data):
    x, y, _ = unpack_x_y_sample_weight(data)
    model._prepare_robust_batch(lambda z: model(z, training=False), x, y)
    return parent_step(data)


def compile_model_fn(model, fn, jit=False):
    def run(*args):
        return fn(lambda z: model(z, training=False), *args)

    return tf.function(run, jit_compile=bool(jit), reduce_retracing=True, autograph=False)
