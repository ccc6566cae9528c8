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


def _xla_helps():
    """XLA only where an accelerator is present, as Keras's ``jit_compile="auto"`` decides.

    On CPU the XLA-compiled input gradient of the small CNN takes 0.18 s against 0.076 s
    for the plain graph (batch 128, 2 cores): TensorFlow's oneDNN kernels beat XLA:CPU's.
    """
    return bool(tf.config.list_physical_devices("GPU") or
                tf.config.list_physical_devices("TPU"))


def compile_model_fn(model, fn, jit=False):
    """``jit=True`` compiles a graph (``tf.function``), with XLA only on an accelerator;
    ``jit="xla"`` forces XLA; ``jit=False`` a graph without XLA as well."""
    def run(*args):
        return fn(lambda z: model(z, training=False), *args)

    xla = jit == "xla" or (bool(jit) and _xla_helps())
    return tf.function(run, jit_compile=xla, reduce_retracing=True, autograph=False)


def unroll_loops():
    """Write loops out where there is no accelerator: the graph runtime runs a
    ``tf.while_loop`` body on CPU about 1.6× slower than the same ops unrolled."""
    return not _xla_helps()


_fused = {}


def fuse(fn):
    """XLA for the elementwise work only (no convolutions, which XLA:CPU runs slowly): the
    graph runtime runs each op as its own pass through memory, XLA fuses them."""
    if fn not in _fused:
        _fused[fn] = tf.function(fn, jit_compile=True, autograph=False)
    return _fused[fn]
