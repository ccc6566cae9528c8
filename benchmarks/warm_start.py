"""How well a warm-started boundary search keeps the margins, what its memory costs, and
what it saves per training epoch.

    KERAS_BACKEND=tensorflow python benchmarks/warm_start.py [--points 512] [--quick]

DyART's boundary search starts at each point and runs 20 FAB iterations.  Between two
visits of a training point (one epoch) the boundary moves little, so a search that starts
at the boundary point found at the last visit needs fewer (`DyARTModel(warm_start=k)`).
This measures it on `keras-dyart train`'s setting (small CNN, MNIST-5k, 4,000 digits, DyART
with r0 0.6, eps_FAB 0.3, α 0.3, the recipe optimizer at lr 0.05, clip 1.0):

1. two clean epochs, then one DyART epoch: weights A; the default search (20 iterations,
   cold) of ``--points`` training digits under A, recorded in the model's memory
   (`keras_dyart.methods.warm.ExampleCache`, as training records it: the boundary point
   where one was found, else FAB's last iterate), once in float16 and once in int8;
2. one more DyART epoch: weights B;
3. under B, on the same digits: the cold search at 20 iterations (the reference), the cold
   search at k iterations, and the search started from the memory at k iterations (the
   start training uses: the remembered point, 0.2 % further from x; x where nothing was
   remembered), for each k of ``--iters`` (3, 5, 10).

Per row: the share of the reference's usable points (found, through the quality filter)
that the search also returns usable, the median and 90th percentile of |R − R_ref| / R_ref
over points usable in both, the share of points whose margin is more than 5 % above the
reference's (a too-large R under-weights a point), and the median search time (compiled,
interleaved).

Then the memory's bytes (MNIST-4k and CIFAR-10's 50,000 images; measured as the variables'
sizes of a memory built for a CIFAR-shaped synthetic set), and whole ``fit`` epochs of
DyART from weights B, cold against ``warm_start`` (5 by default), each model's first epoch
(its first visit, cold for both) then ``--timed-epochs`` epochs each, taking turns.
Prints Markdown tables; ``--out`` writes them.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import keras  # noqa: E402

import keras_dyart as kd  # noqa: E402
from keras_dyart import backend as dyart_backend  # noqa: E402
from keras_dyart import boundary  # noqa: E402
from keras_dyart.methods.warm import ExampleCache, cache_bytes  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=512, help="training digits searched")
    parser.add_argument("--iters", default="3,5,10", help="iterations of the short searches")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timing rounds (3; 1 with --quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warm", type=int, default=5, help="warm iterations of the epochs")
    parser.add_argument("--timed-epochs", type=int, default=None,
                        help="fit epochs timed per model after its first (2; 1 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="a pipeline check (256 digits, 32 points): not a result")
    parser.add_argument("--out", default=None, help="write the tables here too")
    args = parser.parse_args()
    n_train, batch = (256, 64) if args.quick else (4000, 128)
    points = min(args.points, 32 if args.quick else args.points)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.timed_epochs is None:
        args.timed_epochs = 1 if args.quick else 2
    iters = [int(k) for k in args.iters.split(",")]

    x, y, _, _ = kd.datasets.load("mnist5k")
    x, y = x[:n_train], y[:n_train]
    keras.utils.set_random_seed(args.seed)
    clf = kd.architectures.small_cnn()
    clf.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    clf.fit(x, y, batch_size=batch, epochs=2, verbose=0)
    settings = dict(norm="linf", r0=0.6, eps_fab=0.3, alpha=0.3)
    model = kd.DyARTModel(clf, **settings)
    steps = -(-n_train // batch)
    model.compile(optimizer=kd.recipe.build_optimizer(2 * steps, learning_rate=0.05,
                                                      global_clipnorm=1.0,
                                                      schedule="constant"))
    xs, ys = x[:points], y[:points]

    def searcher(n_iter, cache=None):
        def fn(logits_fn, xb, yb, index):
            start = None
            if cache is not None:
                start, _ = cache.read(xb, index)
            out = boundary.search(
                logits_fn, xb, yb, beta=model.beta, norm=model.norm, n_iter=n_iter,
                overshoot=model.overshoot, alpha_max=model.alpha_max,
                step_back=model.step_back, eps_fab=model.eps_fab,
                refine=model.refine, refine_steps=model.refine_steps,
                use_filter=model.use_filter, start=start)
            return out.x_hat, out.usable, out.margin, out.found, out.x_last, out.phi_x
        run = dyart_backend.compile_model_fn(clf, fn, jit=True)

        def call():
            return [keras.ops.convert_to_numpy(t) for t in run(xs, ys, index)]
        return call

    index = np.arange(points, dtype="int32")
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0)             # weights A
    x_hat_a, _, _, found_a, last_a, phi_a = searcher(20)()
    found_a = found_a.astype(bool)
    caches = {}
    for dtype in ("float16", "int8"):
        caches[dtype] = ExampleCache(keras.layers.Layer(), points, x.shape[1:], dtype)
        ended = np.where(found_a.reshape((-1,) + (1,) * (x_hat_a.ndim - 1)), x_hat_a, last_a)
        caches[dtype].write(xs, ended, phi_a > 0, index)
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0)             # weights B

    runs = {("cold", 20): searcher(20)}
    for k in iters:
        runs[("cold", k)] = searcher(k)
        for dtype, cache in caches.items():
            runs[(f"warm, {dtype}", k)] = searcher(k, cache)
    results = {key: fn() for key, fn in runs.items()}                  # also compiles
    times = {key: [] for key in runs}
    for _ in range(args.repeats):
        for key, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t)

    _, ref_ok, ref_r = results[("cold", 20)][:3]
    ref_ok = ref_ok.astype(bool)
    lines = [f"Warm-started boundary search, {keras.backend.backend()}: {points} training "
             f"digits, weights one DyART epoch after the search that gave the starts "
             f"({ref_ok.sum()} usable under the reference).", "",
             "| search | iterations | usable (share of reference's) | median rel. error of R "
             "| 90th pct | R > 1.05 R_ref | time (s) | time / reference |",
             "|---|---|---|---|---|---|---|---|"]
    t_ref = float(np.median(times[("cold", 20)]))
    for (kind, k), (_, ok, r, *_) in results.items():
        ok = ok.astype(bool)
        both = ok & ref_ok
        rel = np.abs(r[both] - ref_r[both]) / ref_r[both]
        over = np.mean(r[both] > 1.05 * ref_r[both]) if both.any() else float("nan")
        t = float(np.median(times[(kind, k)]))
        label = "reference (cold)" if (kind, k) == ("cold", 20) else kind
        lines.append(
            f"| {label} | {k} | {both.sum() / max(ref_ok.sum(), 1):.3f} | "
            f"{np.median(rel) if both.any() else float('nan'):.4f} | "
            f"{np.percentile(rel, 90) if both.any() else float('nan'):.4f} | {over:.3f} | "
            f"{t:.3f} | {t / t_ref:.2f} |")
    lines += ["", *memory_table(n_train, x.shape[1:]), "",
              *epoch_table(model, clf, x, y, batch, args)]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)


def memory_table(n_train, shape):
    """Bytes of the memory: by `cache_bytes`, and the variables of one built for 50,000
    CIFAR-shaped images."""
    lines = ["| data | examples | input | float16 | int8 | int8 measured |",
             "|---|---|---|---|---|---|"]
    for name, n, s in (("MNIST-5k (train)", n_train, tuple(shape)),
                       ("CIFAR-10 (train)", 50_000, (32, 32, 3))):
        measured = ""
        if name.startswith("CIFAR"):
            cache = ExampleCache(keras.layers.Layer(), n, s, "int8")
            measured = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
                           for v in (cache.offsets, cache.scales, cache.signatures))
            measured = f"{measured / 1e6:.0f} MB"
        lines.append(f"| {name} | {n:,} | {'×'.join(map(str, s))} | "
                     f"{cache_bytes(n, s, 'float16') / 1e6:.1f} MB | "
                     f"{cache_bytes(n, s, 'int8') / 1e6:.1f} MB | {measured} |")
    return lines


def epoch_table(model, clf, x, y, batch, args):
    """Whole `fit` epochs from the same weights: cold DyART against `warm_start`."""
    settings = {name: getattr(model, name) for name in ("norm", "r0", "eps_fab", "alpha")}
    steps = -(-len(x) // batch)
    models = {}
    for label, warm in (("cold (paper)", None), (f"warm_start={args.warm}", args.warm)):
        twin = keras.models.clone_model(clf)
        twin.set_weights(clf.get_weights())
        m = kd.DyARTModel(twin, warm_start=warm, **settings)
        m.compile(optimizer=kd.recipe.build_optimizer(
            (1 + args.timed_epochs) * steps, learning_rate=0.05, global_clipnorm=1.0,
            schedule="constant"), metrics=["accuracy"])
        models[label] = m
    logs = {label: [] for label in models}
    for m in models.values():                        # first visit: cold for both
        m.fit(x, y, batch_size=batch, epochs=1, verbose=0)
    for _ in range(args.timed_epochs):
        for label, m in models.items():
            t = time.perf_counter()
            h = m.fit(x, y, batch_size=batch, epochs=1, verbose=0).history
            logs[label].append((time.perf_counter() - t, h["boundary_fraction"][0],
                                h["mean_margin"][0], h["accuracy"][0]))
    lines = [f"Whole `fit` epochs ({len(x)} digits, batch {batch}) after each model's "
             "first, from the same weights:", "",
             "| search | epoch (s), median | epoch / cold | boundary fraction | mean margin "
             "| training accuracy |",
             "|---|---|---|---|---|---|"]
    cold = float(np.median([r[0] for r in logs["cold (paper)"]]))
    for label, rows in logs.items():
        t = float(np.median([r[0] for r in rows]))
        lines.append(f"| {label} | {t:.1f} | {t / cold:.2f} | "
                     f"{np.mean([r[1] for r in rows]):.3f} | "
                     f"{np.mean([r[2] for r in rows]):.3f} | "
                     f"{np.mean([r[3] for r in rows]):.3f} |")
    return lines


if __name__ == "__main__":
    main()
