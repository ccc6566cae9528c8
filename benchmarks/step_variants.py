"""Same-process A/B of the DyART step: the default, the FAB update left unfused, no refinement.

For each backend (a subprocess each) and model (the small CNN at batch 128, the PreAct ResNet
1-1-1-1 w16 at batch 32), the median of `--repeats` interleaved rounds (each round times every
variant once, so a drift in the machine's speed moves all of them alike) of:

- clean, input grad: as in `step_time.py`; floor = n_iter · grad + 2 · clean;
- default: `DyARTModel` with its defaults (the FAB update fused where the backend fuses it);
- unfused: the same with `keras_dyart.backend.fuse` the identity (TensorFlow: no XLA for the
  update; PyTorch: no `torch.compile`; JAX fuses nothing either way, so the row is omitted);
- no refinement: ``refine=False`` (4 forward passes fewer).

Usage: python benchmarks/step_variants.py [--backends tensorflow jax torch] [--repeats 9]
       [--out benchmarks/results/step_variants.md]
"""

import argparse
import os
import time

from _per_backend import run_per_backend, write_table

CHILD = r"""
import json, os, sys, time
cfg = json.loads(sys.argv[1])
import numpy as np
import keras
import keras_dyart as kd
from keras_dyart import backend as B
from keras_dyart import methods
from keras_dyart.margins import soft_margin

backend = keras.backend.backend()
module = B.current()
fuse = module.fuse

def dyart(clf, x, y, unfused=False, **kw):
    model = methods.get("dyart", clf, n_iter=cfg["n_iter"], r0=0.6, eps_fab=0.3, **kw)
    model.compile(optimizer=keras.optimizers.SGD(0.01, global_clipnorm=0.1))
    def step():
        # The graph backends read `fuse` when they trace (first call); PyTorch on every call.
        module.fuse = (lambda fn: fn) if unfused else fuse
        try:
            model.train_on_batch(x, y)
        finally:
            module.fuse = fuse
    return step

def variants(clf, x, y):
    clf.compile(optimizer=keras.optimizers.SGD(0.01),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    grad = B.compile_model_fn(
        clf, lambda lf, xb, yb: B.value_and_grad(lambda z: soft_margin(lf(z), yb), xb),
        jit=True)
    fns = {"clean": lambda: clf.train_on_batch(x, y),
           "grad": lambda: keras.ops.convert_to_numpy(grad(x, y)[0]),
           "default": dyart(clf, x, y)}
    if backend != "jax":
        fns["unfused"] = dyart(clf, x, y, unfused=True)
    fns["no refinement"] = dyart(clf, x, y, refine=False)
    for fn in fns.values():
        fn(); fn()
    times = {k: [] for k in fns}
    for _ in range(cfg["repeats"]):
        for k, fn in fns.items():
            t = time.perf_counter(); fn(); times[k].append(time.perf_counter() - t)
    return {k: float(np.median(v)) for k, v in times.items()}

x, y, _, _ = kd.datasets.load("mnist5k")
rows = [("small CNN (MNIST)", 128, variants(kd.architectures.small_cnn(), x[:128], y[:128]))]
rng = np.random.RandomState(0)
xr = rng.rand(32, 32, 32, 3).astype("float32")
yr = rng.randint(0, 10, 32).astype("int32")
net = kd.architectures.preact_resnet(blocks=(1, 1, 1, 1), width=16)
rows.append(("PreAct ResNet 1-1-1-1 w16 (32×32×3)", 32, variants(net, xr, yr)))
print(json.dumps({"backend": backend, "rows": rows}))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax", "torch"])
    parser.add_argument("--n-iter", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--out",
                        default=os.path.join("benchmarks", "results", "step_variants.md"))
    args = parser.parse_args()
    cfg = {"n_iter": args.n_iter, "repeats": args.repeats}
    results = run_per_backend(CHILD, cfg, args.backends)

    out = [f"DyART step variants (s): {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU "
           f"cores, n_iter {args.n_iter}, median of {args.repeats} interleaved rounds after "
           "2 warm-up steps; in brackets the ratio to the floor (n_iter · grad + 2 · clean).",
           "", "| backend | model | batch | floor | default | unfused | no refinement |",
           "|---|---|---|---|---|---|---|"]
    for r in results:
        for name, batch, t in r["rows"]:
            floor = args.n_iter * t["grad"] + 2 * t["clean"]

            def cell(key, t=t, floor=floor):
                return f"{t[key]:.3f} ({t[key] / floor:.2f})" if key in t else "n/a (jit)"

            out.append(f"| {r['backend']} | {name} | {batch} | {floor:.3f} | "
                       f"{cell('default')} | {cell('unfused')} | {cell('no refinement')} |")
    text = "\n".join(out) + "\n"
    write_table(text, args.out)


if __name__ == "__main__":
    main()
