"""Whole `fit` epochs of DyART per backend, beside the step benchmark's floor: what a user waits.

Each backend runs in its own subprocess.  The model is `keras-dyart train`'s (small CNN,
DyART with r0 0.6 and eps_FAB 0.3, the recipe optimizer at lr 0.05, clip 1.0, batch 128)
on the first ``--n`` (4,000) MNIST-5k training digits, so an epoch is 31 full batches and
one partial batch of 32.  After one warm-up epoch through each data path (which compiles
both batch sizes), ``--rounds`` rounds each run one ``fit`` of ``--epochs`` epochs per data
path, the paths taking turns so that a drift in the machine's speed moves both alike:

- ``arrays``: ``fit(x, y, batch_size=128)``, Keras's own array adapter, shuffled;
- ``ArrayBatches``: ``fit(kd.recipe.ArrayBatches(...), steps_per_epoch=...)``, the stream
  `keras-dyart train` feeds (a `PyDataset`, with the callbacks `RobustModel.fit` adds);
- with ``--warm K [K ...]``, also ``warm K`` for each K: a DyART model of its own with
  ``warm_start=K`` (the same starting weights) fed an ``ArrayBatches(..., index=True)``
  (its warm-up epoch is its cold first visit).

Each epoch's wall time comes from `keras_dyart.recipe.EpochSeconds`.  In the same process:
the floor (n_iter input-gradient passes + 2 clean steps, as in `benchmarks/step_time.py`)
and one DyART ``train_on_batch``, each at batch 128 and at the partial batch, summed over the
epoch's 32 batches: ``floor epoch`` and ``step epoch``.  The floor is also timed once after
every ``fit`` call (``round floor``), so that each epoch can be set against the machine's
speed of the same moment: ``epoch / round floor`` and its spread separate the machine's
drift from the epoch's own.  The issue's goals: epoch / floor epoch at most 1.2, and epochs
of one path within 10 % of each other (``spread`` = (max − min) / median).  Run it with
nothing else on the machine.

Usage: python benchmarks/fit_epoch.py [--backends tensorflow jax torch] [--rounds 3]
       [--epochs 2] [--n 4000] [--warm K [K ...]] [--quick] [--out benchmarks/results/fit_epoch.md]
"""

import argparse
import os
import statistics
import time

from _per_backend import run_per_backend, write_table

CHILD = r"""
import json, resource, sys, time
cfg = json.loads(sys.argv[1])
import numpy as np
import keras
import keras_dyart as kd
from keras_dyart import backend as B
from keras_dyart.margins import soft_margin

n, batch, n_iter = cfg["n"], cfg["batch"], cfg["n_iter"]
x, y, _, _ = kd.datasets.load("mnist5k")
x, y = x[:n], y[:n]
full, rest = divmod(n, batch)
steps = full + (1 if rest else 0)
keras.utils.set_random_seed(0)
clf = kd.architectures.small_cnn()
model = kd.DyARTModel(clf, norm="linf", r0=0.6, eps_fab=0.3, n_iter=n_iter)
total = steps * (1 + cfg["rounds"] * cfg["epochs"]) * 2 + 1000
model.compile(optimizer=kd.recipe.build_optimizer(total, learning_rate=0.05,
                                                  global_clipnorm=1.0, schedule="constant"),
              metrics=["accuracy"])
batches = kd.recipe.ArrayBatches(x, y, batch_size=batch, seed=0)

def fit_arrays(epochs, cbs):
    model.fit(x, y, batch_size=batch, epochs=epochs, shuffle=True, verbose=0, callbacks=cbs)

def fit_batches(epochs, cbs):
    model.fit(batches, epochs=epochs, steps_per_epoch=batches.steps_per_epoch, shuffle=False,
              verbose=0, callbacks=cbs)

paths = {"arrays": fit_arrays, "ArrayBatches": fit_batches}
def warm_path(k):
    warm_clf = kd.architectures.small_cnn()
    warm_clf.set_weights(clf.get_weights())
    warm_model = kd.DyARTModel(warm_clf, norm="linf", r0=0.6, eps_fab=0.3, n_iter=n_iter,
                               warm_start=k)
    warm_model.compile(optimizer=kd.recipe.build_optimizer(
        total, learning_rate=0.05, global_clipnorm=1.0, schedule="constant"),
        metrics=["accuracy"])
    indexed_batches = kd.recipe.ArrayBatches(x, y, batch_size=batch, seed=0, index=True)

    def fit_warm(epochs, cbs):
        warm_model.fit(indexed_batches, epochs=epochs,
                       steps_per_epoch=indexed_batches.steps_per_epoch, shuffle=False,
                       verbose=0, callbacks=cbs)
    return fit_warm

for k in cfg["warm"]:
    paths[f"warm {k}"] = warm_path(k)

class Record(keras.callbacks.Callback):
    def __init__(self, into):
        super().__init__()
        self.into = into
    def on_epoch_end(self, epoch, logs=None):
        self.into.append(float(logs["epoch_seconds"]))

# The floor and the step, on a fresh copy of the weights (the same shapes and costs).
probe = kd.architectures.small_cnn()
probe.set_weights(clf.get_weights())
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
probe.compile(optimizer=keras.optimizers.SGD(0.01), loss=loss)
grad = B.compile_model_fn(
    probe, lambda f, xb, yb: B.value_and_grad(lambda z: soft_margin(f(z), yb), xb), jit=True)
step_model = kd.DyARTModel(kd.architectures.small_cnn(), norm="linf", r0=0.6, eps_fab=0.3,
                           n_iter=n_iter)
step_model.classifier.set_weights(clf.get_weights())
step_model.compile(optimizer=kd.recipe.build_optimizer(1000, learning_rate=0.05,
                                                      global_clipnorm=1.0,
                                                      schedule="constant"))
sizes = [batch] + ([rest] if rest else [])
fns = {}
for b in sizes:
    xb, yb = x[:b], y[:b]
    fns[("clean", b)] = (lambda xb=xb, yb=yb: probe.train_on_batch(xb, yb))
    fns[("grad", b)] = (lambda xb=xb, yb=yb: keras.ops.convert_to_numpy(grad(xb, yb)[0]))
    fns[("dyart", b)] = (lambda xb=xb, yb=yb: step_model.train_on_batch(xb, yb))
for fn in fns.values():
    fn(); fn()
count = {batch: full}
if rest:
    count[rest] = 1

def floor_now(repeats=2):
    # the floor epoch at this moment: the median of `repeats` timings per piece
    med = {}
    for k in (k for k in fns if k[0] != "dyart"):
        ts = []
        for _ in range(repeats):
            t = time.perf_counter(); fns[k](); ts.append(time.perf_counter() - t)
        med[k] = float(np.median(ts))
    return sum(c * (n_iter * med[("grad", b)] + 2 * med[("clean", b)])
               for b, c in count.items())

for fit in paths.values():                       # warm-up: both batch sizes compiled
    fit(1, [])
epochs = {k: [] for k in paths}
round_floors = {k: [] for k in paths}
for _ in range(cfg["rounds"]):
    for name, fit in paths.items():
        before = len(epochs[name])
        fit(cfg["epochs"], [kd.recipe.EpochSeconds(), Record(epochs[name])])
        f = floor_now()
        round_floors[name] += [f] * (len(epochs[name]) - before)

times = {k: [] for k in fns}
for _ in range(cfg["step_repeats"]):
    for k, fn in fns.items():
        t = time.perf_counter(); fn(); times[k].append(time.perf_counter() - t)
med = {k: float(np.median(v)) for k, v in times.items()}
floor_epoch = sum(c * (n_iter * med[("grad", b)] + 2 * med[("clean", b)])
                  for b, c in count.items())
step_epoch = sum(c * med[("dyart", b)] for b, c in count.items())
print(json.dumps({"backend": keras.backend.backend(), "epochs": epochs, "steps": steps,
                  "round_floors": round_floors,
                  "floor_epoch": floor_epoch, "step_epoch": step_epoch,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def spread(values):
    return (max(values) - min(values)) / statistics.median(values)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax", "torch"])
    parser.add_argument("--n", type=int, default=4000, help="training digits (MNIST-5k)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--n-iter", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per fit call")
    parser.add_argument("--step-repeats", type=int, default=5)
    parser.add_argument("--warm", type=int, nargs="+", default=[], metavar="K",
                        help="also time DyART with warm_start=K for each K (ArrayBatches "
                             "with index)")
    parser.add_argument("--quick", action="store_true",
                        help="a pipeline check (200 digits, 2 iterations): not a result")
    parser.add_argument("--out", default=None,
                        help="the Markdown table (default benchmarks/results/fit_epoch.md; "
                             "with --quick, printed only)")
    args = parser.parse_args()
    if any(k < 1 for k in args.warm):
        parser.error(f"--warm: the warm searches' iteration counts must be >= 1, got "
                     f"{args.warm}")
    if args.quick:
        args.n, args.batch, args.n_iter, args.rounds, args.epochs, args.step_repeats = (
            200, 64, 2, 1, 1, 1)
    cfg = {k: getattr(args, k) for k in ("n", "batch", "n_iter", "rounds", "epochs",
                                         "step_repeats", "warm")}
    results = run_per_backend(CHILD, cfg, args.backends)
    out = [f"`fit` epochs of DyART (s): {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU "
           f"cores, small CNN, {args.n} MNIST-5k digits, batch {args.batch}, n_iter "
           f"{args.n_iter}; {args.rounds} rounds of one {args.epochs}-epoch `fit` per data "
           f"path, after a warm-up epoch each.", "",
           "| backend | data | epochs | median | spread | step epoch | floor epoch | "
           "median / step epoch | median / floor epoch | epoch / round floor | its spread |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for path, values in r["epochs"].items():
            m = statistics.median(values)
            ratios = [v / f for v, f in zip(values, r["round_floors"][path])]
            out.append(
                f"| {r['backend']} | {path} | {', '.join(f'{v:.1f}' for v in values)} | "
                f"{m:.2f} | {spread(values):.0%} | {r['step_epoch']:.2f} | "
                f"{r['floor_epoch']:.2f} | {m / r['step_epoch']:.2f} | "
                f"{m / r['floor_epoch']:.2f} | "
                f"{', '.join(f'{q:.2f}' for q in ratios)} | {spread(ratios):.0%} |")
    out += ["", "step epoch: the median DyART `train_on_batch` time at each batch size, summed "
            "over the epoch's batches; floor epoch: the same sum of n_iter input-gradient "
            "passes + 2 clean steps.  spread: (max − min) / median of a path's epochs.  "
            "round floor: the floor epoch timed right after the `fit` call that ran the "
            "epoch (the machine's speed of that moment)."]
    text = "\n".join(out) + "\n"
    if args.quick and args.out is None:
        print(text)
    else:
        write_table(text, args.out or os.path.join("benchmarks", "results", "fit_epoch.md"))


if __name__ == "__main__":
    main()
