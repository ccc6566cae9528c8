"""How well a warm-started boundary search keeps the margins, one epoch of training later.

    KERAS_BACKEND=tensorflow python benchmarks/warm_start.py [--points 512] [--quick]

DyART's boundary search starts at each point and runs 20 FAB iterations.  Between two
visits of a training point (one epoch) the boundary moves little, so a search that starts
at the boundary point found at the last visit might need far fewer iterations.  This
measures it on `keras-dyart train`'s setting (small CNN, MNIST-5k, 4,000 digits, DyART with
r0 0.6, eps_FAB 0.3, α 0.3, the recipe optimizer at lr 0.05, clip 1.0):

1. two clean epochs, then one DyART epoch: weights A; the default search (20 iterations,
   cold) of ``--points`` training digits under A: their boundary points x̂_A;
2. one more DyART epoch: weights B;
3. under B, on the same digits: the cold search at 20 iterations (the reference), the cold
   search at k iterations, and the search started at x̂_A at k iterations, for each k of
   ``--iters`` (3, 5, 10).

Per row: the share of the reference's usable points (found, through the quality filter)
that the search also returns usable, the median and 90th percentile of |R − R_ref| / R_ref
over points usable in both, the share of points whose margin is more than 5 % above the
reference's (a too-large R under-weights a point), and the median search time (compiled,
interleaved).  Warm-started points whose earlier search found nothing start at x (a cold
start).  Prints a Markdown table; ``--out`` writes it.
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=512, help="training digits searched")
    parser.add_argument("--iters", default="3,5,10", help="iterations of the short searches")
    parser.add_argument("--repeats", type=int, default=3, help="timing rounds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="a pipeline check (500 digits, 64 points): not a result")
    parser.add_argument("--out", default=None, help="write the table here too")
    args = parser.parse_args()
    n_train, batch = (500, 64) if args.quick else (4000, 128)
    points = min(args.points, 64 if args.quick else args.points)
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

    def searcher(n_iter, warm):
        def fn(logits_fn, xb, yb, start):
            out = boundary.search(
                logits_fn, xb, yb, beta=model.beta, norm=model.norm, n_iter=n_iter,
                overshoot=model.overshoot, alpha_max=model.alpha_max,
                step_back=model.step_back, eps_fab=model.eps_fab,
                refine=model.refine, refine_steps=model.refine_steps,
                use_filter=model.use_filter, start=start if warm else None)
            return out.x_hat, out.usable, out.margin
        run = dyart_backend.compile_model_fn(clf, fn, jit=True)

        def call(start):
            return [keras.ops.convert_to_numpy(t) for t in run(xs, ys, start)]
        return call

    model.fit(x, y, batch_size=batch, epochs=1, verbose=0)             # weights A
    x_hat_a, _, _ = searcher(20, False)(xs)
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0)             # weights B

    runs = {("cold", 20): searcher(20, False)}
    for k in iters:
        runs[("cold", k)] = searcher(k, False)
        runs[("warm", k)] = searcher(k, True)
    results = {key: fn(x_hat_a) for key, fn in runs.items()}           # also compiles
    times = {key: [] for key in runs}
    for _ in range(args.repeats):
        for key, fn in runs.items():
            t = time.perf_counter()
            fn(x_hat_a)
            times[key].append(time.perf_counter() - t)

    _, ref_ok, ref_r = results[("cold", 20)]
    ref_ok = ref_ok.astype(bool)
    lines = [f"Warm-started boundary search, {keras.backend.backend()}: {points} training "
             f"digits, weights one DyART epoch after the search that gave the starts "
             f"({ref_ok.sum()} usable under the reference).", "",
             "| search | iterations | usable (share of reference's) | median rel. error of R "
             "| 90th pct | R > 1.05 R_ref | time (s) | time / reference |",
             "|---|---|---|---|---|---|---|---|"]
    t_ref = float(np.median(times[("cold", 20)]))
    for (kind, k), (_, ok, r) in results.items():
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
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
