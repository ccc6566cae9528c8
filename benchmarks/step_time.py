"""Median step times per backend: clean, input gradient, PGD-AT, TRADES, DyART and its floor.

Each backend runs in its own subprocess (Keras picks the backend at import). For each, after
warm-up, the median over `--repeats` rounds (each round times every column once, so a drift
in the machine's speed moves all columns alike) of:

- clean: one compiled Keras train step (cross-entropy) on a batch;
- grad: one compiled value-and-input-gradient pass of φ on the batch (inference mode), through
  `keras_dyart.backend.compile_model_fn(..., jit=True)`, i.e. each backend's default;
- forward: one compiled forward pass of φ (inference mode);
- pgd-at, trades: one PGD-AT / TRADES train step (10 inner steps each);
- dyart: one DyART train step (`n_iter` FAB iterations, refinement, filter, loss);
- warm: one DyART step with ``warm_start=--warm`` (5; 0 leaves it out), its searches started
  from the boundary points its memory kept from the previous step on the same batch (the
  same examples, indexed); ``warm / DyART`` is its share of the cold step;
- floor: n_iter·grad + 2·clean, the least a DyART step can cost;
- all passes: floor + grad + 5·forward, every network pass of the default DyART step (the
  gradient at x̂ for the filter and weights, the last iterate's φ check, 4 refinement steps);
- peak memory: the child process's peak resident set size (CPU) or peak device memory.

Models: the small CNN on MNIST-5k at `--batch` (128), and a pre-activation ResNet
(`--resnet-width`, blocks 1-1-1-1 by default, 32×32×3 synthetic inputs) at `--resnet-batch`
(32).  `--scaling` adds DyART step times against n_iter, batch size and input size with their
least-squares slopes; `--attacks` adds the throughput (points per second) of the AutoAttack
components at a fixed iteration budget.  `--threads N` fixes every backend's thread pools
to N (default: each library's own choice).

Usage: python benchmarks/step_time.py [--backends jax tensorflow torch] [--batch 128]
       [--n-iter 20] [--repeats 5] [--warm 5] [--scaling] [--attacks] [--threads N]
       [--out benchmarks/results/step_time.md]
"""

import argparse
import os
import time

from _per_backend import run_per_backend, write_table

CHILD = r"""
import json, os, resource, sys, time
cfg = json.loads(sys.argv[1])
if cfg["threads"]:
    import keras
    b = keras.backend.backend()
    if b == "torch":
        import torch; torch.set_num_threads(cfg["threads"]); torch.set_num_interop_threads(1)
    elif b == "tensorflow":
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(cfg["threads"])
        tf.config.threading.set_inter_op_parallelism_threads(cfg["threads"])
import numpy as np
import keras
import keras_dyart as kd
from keras_dyart import backend as B
from keras_dyart import methods
from keras_dyart.margins import soft_margin
from keras_dyart.methods.warm import indexed

repeats = cfg["repeats"]
backend = keras.backend.backend()

def median_time(fn, warm=2, reps=None):
    for _ in range(warm):
        fn()
    times = []
    for _ in range(reps or repeats):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    return float(np.median(times))

# Median time of each callable, timed in rounds (one call of each per round), so that a
# machine whose speed drifts during the run shifts every column alike.
def interleaved(fns, warm=2, reps=None):
    for fn in fns.values():
        for _ in range(warm):
            fn()
    times = {k: [] for k in fns}
    for _ in range(reps or repeats):
        for k, fn in fns.items():
            t = time.perf_counter(); fn(); times[k].append(time.perf_counter() - t)
    return {k: float(np.median(v)) for k, v in times.items()}

def loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)

def clean_fn(clf, x, y):
    clf.compile(optimizer=keras.optimizers.SGD(0.01), loss=loss())
    return lambda: clf.train_on_batch(x, y)

def grad_fn(clf, x, y):
    def fn(logits_fn, xb, yb):
        return B.value_and_grad(lambda z: soft_margin(logits_fn(z), yb), xb)
    run = B.compile_model_fn(clf, fn, jit=True)
    return lambda: keras.ops.convert_to_numpy(run(x, y)[0])

def forward_fn(clf, x, y):
    run = B.compile_model_fn(clf, lambda logits_fn, xb, yb: soft_margin(logits_fn(xb), yb),
                             jit=True)
    return lambda: keras.ops.convert_to_numpy(run(x, y))

def method_fn(name, clf, x, y, **kw):
    model = methods.get(name, clf, **kw)
    model.compile(optimizer=keras.optimizers.SGD(0.01, global_clipnorm=0.1))
    return lambda: model.train_on_batch(x, y)

def dyart_fn(clf, x, y, n_iter, **kw):
    return method_fn("dyart", clf, x, y, n_iter=n_iter, r0=0.6, eps_fab=0.3, **kw)

def dyart_time(clf, x, y, n_iter, reps=None):
    return median_time(dyart_fn(clf, x, y, n_iter), warm=2, reps=reps)

def row(name, clf, x, y, n_iter, extra=True):
    fns = {"clean": clean_fn(clf, x, y), "grad": grad_fn(clf, x, y),
           "forward": forward_fn(clf, x, y)}
    if extra:
        eps = 0.3 if x.shape[-1] == 1 else 8 / 255
        fns["pgd_at"] = method_fn("pgd-at", clf, x, y, eps=eps, step_size=eps / 4, steps=10)
        fns["trades"] = method_fn("trades", clf, x, y, eps=eps, step_size=eps / 4, steps=10)
    fns["dyart"] = dyart_fn(clf, x, y, n_iter)
    if cfg["warm"]:
        fns["warm"] = dyart_fn(clf, indexed(x), y, n_iter, warm_start=cfg["warm"],
                               n_examples=len(x))
    r = {"model": name, "batch": int(x.shape[0])}
    r.update(interleaved(fns))
    return r

x, y, _, _ = kd.datasets.load("mnist5k")
out = {"backend": backend, "rows": []}
batch, n_iter = cfg["batch"], cfg["n_iter"]
out["rows"].append(row("small CNN (MNIST)", kd.architectures.small_cnn(), x[:batch], y[:batch],
                       n_iter))
if cfg["resnet_batch"]:
    rng = np.random.RandomState(0)
    xr = rng.rand(cfg["resnet_batch"], 32, 32, 3).astype("float32")
    yr = rng.randint(0, 10, cfg["resnet_batch"]).astype("int32")
    blocks = tuple(int(b) for b in cfg["resnet_blocks"].split("-"))
    net = kd.architectures.preact_resnet(blocks=blocks, width=cfg["resnet_width"])
    out["rows"].append(row(f"PreAct ResNet {cfg['resnet_blocks']} w{cfg['resnet_width']} (32×32×3)",
                           net, xr, yr, n_iter))

if cfg["scaling"]:
    sc = {}
    clf = kd.architectures.small_cnn()
    sc["n_iter"] = [(k, dyart_time(clf, x[:batch], y[:batch], k, reps=2)) for k in (5, 10, 20)]
    sc["batch"] = [(b, dyart_time(clf, x[:b], y[:b], n_iter, reps=2)) for b in (32, 64, 128)]
    sizes = []
    for side in (28, 42, 56):
        xs = keras.ops.convert_to_numpy(keras.ops.image.resize(x[:batch], (side, side)))
        xs = np.clip(xs, 0, 1).astype("float32")
        c = kd.architectures.small_cnn(input_shape=(side, side, 1))
        sizes.append((side * side, dyart_time(c, xs, y[:batch], n_iter, reps=2)))
    sc["pixels"] = sizes
    out["scaling"] = sc

if cfg["attacks"]:
    from keras_dyart import attacks as A
    clf = kd.architectures.small_cnn()
    n = cfg["attack_points"]
    xa, ya = x[:n], y[:n]
    it = cfg["attack_iter"]
    comps = {
        f"APGD-CE ({it} it.)": lambda: A.apgd(clf, xa, ya, 0.3, loss="ce", n_iter=it),
        f"APGD-T ({it} it., 1 target)": lambda: A.apgd(clf, xa, ya, 0.3, loss="dlr-t",
                                                       n_iter=it, n_target_classes=1),
        f"FAB-T ({it} it., 1 target)": lambda: A.fab_t(clf, xa, ya, n_iter=it, n_target_classes=1),
        f"Square ({10 * it} queries)": lambda: A.square(clf, xa, ya, 0.3, n_queries=10 * it),
    }
    res = {}
    for name, fn in comps.items():
        try:
            res[name] = n / median_time(fn, warm=1, reps=max(1, repeats // 2))
        except Exception as e:  # report, do not fail the run
            res[name] = f"failed: {type(e).__name__}"
    out["attacks"] = res

peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
out["peak_rss_mib"] = peak
print(json.dumps(out))
"""


REFINE_STEPS = 4   # DyARTModel's default refine_steps


def slope(points):
    """Least-squares slope and intercept of (x, t) pairs."""
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    b = sum((p[0] - mx) * (p[1] - my) for p in points) / sxx
    return b, my - b * mx


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax", "torch"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--n-iter", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--resnet-batch", type=int, default=32, help="0 skips the ResNet")
    parser.add_argument("--resnet-width", type=int, default=16)
    parser.add_argument("--resnet-blocks", default="1-1-1-1")
    parser.add_argument("--scaling", action="store_true")
    parser.add_argument("--attacks", action="store_true")
    parser.add_argument("--attack-points", type=int, default=128)
    parser.add_argument("--attack-iter", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--warm", type=int, default=5,
                        help="warm_start iterations of the warm DyART column (0: none)")
    parser.add_argument("--out", default=os.path.join("benchmarks", "results", "step_time.md"))
    args = parser.parse_args()
    cfg = {k: getattr(args, k) for k in ("batch", "n_iter", "repeats", "resnet_batch",
                                         "resnet_width", "resnet_blocks", "scaling",
                                         "attacks", "attack_points", "attack_iter",
                                         "threads", "warm")}
    extra_env = {}
    if args.threads:
        extra_env = dict(
            OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
            XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen="
                       + ("true" if args.threads > 1 else "false")).strip())
    results = run_per_backend(CHILD, cfg, args.backends, extra_env, echo=True)

    threads = f"{args.threads} thread(s) per pool" if args.threads else "default threads"
    head = (f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores, {threads}, "
            f"n_iter {args.n_iter}, median of {args.repeats} interleaved rounds after 2 "
            f"warm-up steps")
    out = [f"Step times (s): {head}.", "",
           "| backend | model | batch | clean | input grad | forward | PGD-AT (10) | "
           "TRADES (10) | DyART | floor | DyART / floor | all passes | DyART / all passes | "
           f"DyART / clean | DyART, warm {args.warm} | warm / DyART | peak RSS (MiB) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for m in r["rows"]:
            floor = args.n_iter * m["grad"] + 2 * m["clean"]
            passes = floor + m["grad"] + (REFINE_STEPS + 1) * m["forward"]
            out.append(
                f"| {r['backend']} | {m['model']} | {m['batch']} | {m['clean']:.4f} | "
                f"{m['grad']:.4f} | {m['forward']:.4f} | "
                f"{m.get('pgd_at', float('nan')):.3f} | "
                f"{m.get('trades', float('nan')):.3f} | {m['dyart']:.3f} | {floor:.3f} | "
                f"{m['dyart'] / floor:.2f} | {passes:.3f} | {m['dyart'] / passes:.2f} | "
                f"{m['dyart'] / m['clean']:.1f} | {m.get('warm', float('nan')):.3f} | "
                f"{m.get('warm', float('nan')) / m['dyart']:.2f} | {r['peak_rss_mib']:.0f} |")
    out.append("")
    out.append("floor = n_iter · input grad + 2 · clean (the issue's floor).  all passes = floor "
               f"+ input grad + {REFINE_STEPS + 1} · forward: every network pass the default "
               "DyART step makes (the gradient at x̂ for the filter and weights, the "
               f"φ check of the last iterate and {REFINE_STEPS} refinement steps).  Columns "
               "timed in interleaved rounds.  Peak RSS is the whole child process "
               "(every model of the row set, the framework included).")
    text = "\n".join(out) + "\n"
    if args.scaling and any("scaling" in r for r in results):
        s = ["", f"DyART step time (s) against n_iter (batch {args.batch}), batch size "
             f"(n_iter {args.n_iter}) and input pixels (small CNN; batch {args.batch}, "
             f"n_iter {args.n_iter}); median of 2.  Slope: least squares.", "",
             "| backend | n_iter 5 / 10 / 20 | s per iteration | batch 32 / 64 / 128 | "
             "s per 100 images | pixels 784 / 1764 / 3136 | s per 1000 pixels |",
             "|---|---|---|---|---|---|---|"]
        for r in results:
            sc = r.get("scaling")
            if not sc:
                continue
            cells = []
            for key, unit in (("n_iter", 1), ("batch", 100), ("pixels", 1000)):
                pts = sc[key]
                b, _ = slope(pts)
                cells += [" / ".join(f"{t:.2f}" for _, t in pts), f"{b * unit:.3f}"]
            s.append(f"| {r['backend']} | " + " | ".join(cells) + " |")
        text += "\n".join(s) + "\n"
    if args.attacks and any("attacks" in r for r in results):
        names = list(next(r["attacks"] for r in results if "attacks" in r))
        s = ["", f"Attack throughput (points per second; small CNN, eps 0.3, "
             f"{args.attack_points} MNIST-5k points, one run after a warm-up).", "",
             "| backend | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for r in results:
            if "attacks" in r:
                s.append(f"| {r['backend']} | " + " | ".join(
                    f"{v:.0f}" if isinstance(v, float) else str(v)
                    for v in r["attacks"].values()) + " |")
        text += "\n".join(s) + "\n"
    write_table(text, args.out)


if __name__ == "__main__":
    main()
