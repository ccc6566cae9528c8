"""Data-parallel training over several devices, per backend.

One call gives an object with a ``scope()``: build and compile the model inside it, then
`fit` as usual.  The global batch is split over the devices; every device runs the boundary
search on its share, and the gradients are combined before the update.

- **JAX**: `keras.distribution.DataParallel` (one mesh axis over all devices).  The
  whole DyART step, boundary search included, is one SPMD program over the global batch, so
  it equals the single-device step (up to float round-off) and BatchNorm statistics are
  global.  For CPU tests, ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` must be set
  before JAX is imported.
- **TensorFlow**: `tf.distribute.MirroredStrategy`.  Each replica runs the train step on its
  own slice (``global batch / replicas``); Keras sums the replicas' gradients of
  ``loss / replicas``.  BatchNorm statistics are per replica (use ``synchronized=True`` in
  ``BatchNormalization`` for global ones).  Virtual CPU devices:
  ``tf.config.set_logical_device_configuration`` before TensorFlow initialises.
- **PyTorch**: Keras 3 has no multi-device `fit` for torch (no `keras.distribution`
  support, no strategy); `data_parallel` raises.  Use one device, or drive the model with
  ``torch.nn.parallel.DistributedDataParallel`` in your own loop.

```python
strategy = data_parallel()
with strategy.scope():
    model = DyARTModel(architectures.wrn_28_10())
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True))
model.fit(pipeline(x, y, batch_size=256))
```

(The same example on the "Paper scale" docs page runs as a test.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

BACKENDS = ("jax", "tensorflow")


def data_parallel(devices: Sequence[str] | None = None, set_global: bool = False) -> Any:
    """A data-parallel distribution over ``devices`` (default: all accelerators, else all
    CPU devices) for the current backend.

    Args:
        devices: device names, e.g. ``["gpu:0", "gpu:1"]`` (JAX, as
            `keras.distribution.list_devices` writes them) or ``["/gpu:0", "/gpu:1"]``
            (TensorFlow).
        set_global: JAX only: also make it the global distribution
            (`keras.distribution.set_distribution`), so no ``scope()`` is needed.

    Returns:
        JAX: a `keras.distribution.DataParallel`; TensorFlow: a
        `tf.distribute.MirroredStrategy`.  Both have ``scope()``.

    Raises:
        NotImplementedError: on PyTorch (see the module documentation).
    """
    backend = keras.backend.backend()
    if devices is not None and (isinstance(devices, str) or len(devices) == 0):
        raise ValueError(
            f"`devices` must be a non-empty list of device names; got {devices!r}.")
    if backend == "jax":
        devices = list(devices) if devices is not None else keras.distribution.list_devices()
        distribution = keras.distribution.DataParallel(devices=devices)
        if set_global:
            keras.distribution.set_distribution(distribution)
        return distribution
    if backend == "tensorflow":
        import tensorflow as tf

        if set_global:
            raise ValueError("`set_global` is for JAX; on TensorFlow use `strategy.scope()`.")
        if devices is None:
            gpus = tf.config.list_logical_devices("GPU")
            devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(list(devices))
    raise NotImplementedError(
        f"Data-parallel training needs the jax or tensorflow backend; KERAS_BACKEND is "
        f"{backend!r}. Keras 3 has no multi-device fit for PyTorch: train on one device or "
        "wrap the model in torch.nn.parallel.DistributedDataParallel in your own loop.")


def num_replicas(distribution: Any) -> int:
    """How many devices a distribution from `data_parallel` splits each batch over."""
    if hasattr(distribution, "num_replicas_in_sync"):
        return int(distribution.num_replicas_in_sync)
    return int(distribution.device_mesh.devices.size)
