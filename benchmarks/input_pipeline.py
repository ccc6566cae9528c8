"""Images per second of the training input pipeline (crop pad 4 + flip, extra-data mixing).

    KERAS_BACKEND=jax python benchmarks/input_pipeline.py [--n 20000] [--batch-size 256]

Rows:
- ``pipeline``: `keras_dyart.datasets.pipeline` batches (uint8 → float32, per-image NumPy
  crop + flip), read sequentially from the `PyDataset`, as `fit` does with one worker;
- ``pipeline + extra 0.7``: the same with 70 % of every batch from an extra set;
- ``pipeline, N threads``: `fit`'s own threaded prefetching (``workers=N``);
- ``RandomCropFlip layer``: the `keras.ops` layer on device batches (compiled on JAX/TF);
- ``keras RandomCrop+Flip``: Keras's preprocessing layers (one offset per *batch*), for
  comparison.

Synthetic CIFAR-sized data (32×32×3 uint8); nothing is downloaded.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import keras  # noqa: E402

from keras_dyart import augment, datasets  # noqa: E402


def rate(fn, images, repeats):
    fn()                                          # warm-up (compilation, caches)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return images * repeats / (time.perf_counter() - start)


def sequential(data, batches):
    def run():
        for i in range(batches):
            data[i]
    return run


def threaded(data, batches, workers):
    """Batches built by a thread pool, as `PyDataset(workers=N)` does inside `fit`."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(workers)

    def run():
        for _ in pool.map(data.__getitem__, range(batches)):
            pass
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20000, help="images in the base set")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=40, help="batches per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.n, 32, 32, 3), dtype="uint8")
    y = rng.integers(0, 10, args.n)
    extra = (rng.integers(0, 256, (args.n, 32, 32, 3), dtype="uint8"), y.copy())
    b, nb = args.batch_size, args.batches
    images = b * nb
    rows = []

    data = datasets.pipeline(x, y, batch_size=b)
    nb = min(nb, len(data))
    images = b * nb
    rows.append(("pipeline", rate(sequential(data, nb), images, args.repeats)))
    mixed = datasets.pipeline(x, y, batch_size=b, extra=extra, extra_fraction=0.7)
    nm = min(args.batches, len(mixed))
    rows.append(("pipeline + extra 0.7", rate(sequential(mixed, nm), b * nm, args.repeats)))
    rows.append((f"pipeline, {args.workers} threads",
                 rate(threaded(data, nb, args.workers), images, args.repeats)))

    batch = (x[:b] / 255.0).astype("float32")
    layer = augment.RandomCropFlip(pad=4, seed=0)
    keras_layers = keras.Sequential([keras.layers.ZeroPadding2D(4),
                                     keras.layers.RandomCrop(32, 32, seed=0),
                                     keras.layers.RandomFlip("horizontal", seed=0)])
    layer(batch, training=True)                   # build both
    keras_layers(batch, training=True)
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        def compiled(target):
            state = [v.value for v in target.non_trainable_variables]
            jitted = jax.jit(lambda s, z: target.stateless_call([], s, z, training=True))
            holder = {"state": state}

            def run():
                out, holder["state"] = jitted(holder["state"], batch)
                out.block_until_ready()
            return run
        run_layer, run_keras = compiled(layer), compiled(keras_layers)
    elif backend == "tensorflow":
        import tensorflow as tf

        f_layer = tf.function(lambda z: layer(z, training=True), jit_compile=False)
        f_keras = tf.function(lambda z: keras_layers(z, training=True), jit_compile=False)
        run_layer = lambda: f_layer(batch).numpy()              # noqa: E731
        run_keras = lambda: f_keras(batch).numpy()              # noqa: E731
    else:
        run_layer = lambda: keras.ops.convert_to_numpy(layer(batch, training=True))  # noqa
        run_keras = lambda: keras.ops.convert_to_numpy(                           # noqa
            keras_layers(batch, training=True))
    rows.append(("RandomCropFlip layer (per image)", rate(run_layer, b, 20 * args.repeats)))
    try:
        rows.append(("keras RandomCrop+Flip (per batch)",
                     rate(run_keras, b, 20 * args.repeats)))
    except Exception as err:                      # Keras's RandomCrop does not jit on JAX
        rows.append((f"keras RandomCrop+Flip: {type(err).__name__}", float("nan")))
    rows.append(("random_crop_flip NumPy only",
                 rate(lambda: augment.random_crop_flip(batch, 4), b, 20 * args.repeats)))

    print(f"backend {backend}, batch {b}, {os.cpu_count()} CPUs")
    print(f"{'input pipeline':40s} {'images/s':>12s}")
    for name, value in rows:
        print(f"{name:40s} {value:12,.0f}")


if __name__ == "__main__":
    main()
