"""Seconds per DyART training step for the paper's architectures.

    KERAS_BACKEND=torch python benchmarks/arch_step_time.py --model preact-resnet18 \
        [--batch-size 32] [--n-iter 20] [--steps 2]

Builds the model, wraps it in `DyARTModel` (recipe settings: β 5, r0 16/255, α 3, λ 1000),
compiles with SGD (Nesterov, clipnorm 0.1) and times ``train_on_batch`` on random
CIFAR-sized inputs after one warm-up step (which includes compilation on JAX/TF).  Labels
are the model's own predictions so that every point is searched, the worst case of a DyART
step.  Also prints a plain cross-entropy step for scale, and the estimated time of the full
CIFAR-10 recipe (50,000 images × 200 epochs at the measured rate).
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import keras  # noqa: E402

from keras_dyart import architectures  # noqa: E402
from keras_dyart.methods import DyARTModel  # noqa: E402


def timed(model, x, y, steps):
    t0 = time.perf_counter()
    model.train_on_batch(x, y)                    # warm-up, compilation
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return warm, (time.perf_counter() - t0) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="preact-resnet18",
                        choices=sorted(architectures.BUILDERS))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--n-iter", type=int, default=20, help="FAB iterations per step")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--skip-clean", action="store_true")
    args = parser.parse_args()

    shape = (args.image_size, args.image_size, 3)
    classifier = architectures.get(args.model, num_classes=args.num_classes, input_shape=shape)
    rng = np.random.default_rng(0)
    x = rng.random((args.batch_size,) + shape).astype("float32")
    y = np.argmax(keras.ops.convert_to_numpy(classifier(x, training=False)), axis=1)
    rows = []
    if not args.skip_clean:
        classifier.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True,
                                                          clipnorm=0.1),
                           loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        rows.append(("cross-entropy step",) + timed(classifier, x, y, args.steps))
    model = DyARTModel(classifier, n_iter=args.n_iter)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True,
                                                 clipnorm=0.1))
    rows.append((f"DyART step (FAB {args.n_iter} it.)",) + timed(model, x, y, args.steps))

    print(f"backend {keras.backend.backend()}, {args.model}, batch {args.batch_size}, "
          f"{shape}, {os.cpu_count()} CPUs")
    print(f"{'step':28s} {'first (s)':>10s} {'s/step':>10s} {'images/s':>10s} "
          f"{'CIFAR-10 recipe':>16s}")
    for name, warm, per_step in rows:
        hours = 50000 * 200 / (args.batch_size / per_step) / 3600
        print(f"{name:28s} {warm:10.2f} {per_step:10.3f} {args.batch_size / per_step:10.1f} "
              f"{hours:13.0f} h")


if __name__ == "__main__":
    main()
