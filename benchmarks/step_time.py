"""Median step times per backend: clean step, input-gradient pass, DyART step and its floor.

Each backend runs in its own subprocess (Keras picks the backend at import). For each, after
warm-up, the median over `--repeats` of:

- clean: one compiled Keras train step (cross-entropy) on a batch;
- grad: one compiled value-and-input-gradient pass of φ on the batch (inference mode);
- dyart: one DyART train step (`n_iter` FAB iterations, refinement, filter, loss);
- floor: n_iter·grad + 2·clean, the least a DyART step can cost.

Usage: python benchmarks/step_time.py [--backends jax tensorflow torch] [--batch 128]
       [--n-iter 20] [--repeats 10] [--out benchmarks/results/step_time.md]
"""

import argparse
import json
import os
import subprocess
import sys
import time

CHILD = r"""
import json, sys, time
import numpy as np
import keras
import keras_dyart as kd
from keras_dyart import backend as B
from keras_dyart.margins import soft_margin

batch, n_iter, repeats = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
x, y, _, _ = kd.datasets.load("mnist5k")
x, y = x[:batch], y[:batch]

def median_time(fn, warm=2):
    for _ in range(warm):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    return float(np.median(times))

clf = kd.architectures.small_cnn()
clf.compile(optimizer=keras.optimizers.SGD(0.01), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
clean = median_time(lambda: clf.train_on_batch(x, y))

def grad_fn(logits_fn, xb, yb):
    return B.value_and_grad(lambda z: soft_margin(logits_fn(z), yb), xb)

run = B.compile_model_fn(clf, grad_fn, jit=True)
def grad_pass():
    v, g = run(x, y)
    keras.ops.convert_to_numpy(v)
grad = median_time(grad_pass)

model = kd.DyARTModel(clf, n_iter=n_iter, r0=0.6, eps_fab=0.3)
model.compile(optimizer=keras.optimizers.SGD(0.01, global_clipnorm=0.1))
dyart = median_time(lambda: model.train_on_batch(x, y))
print(json.dumps({"backend": keras.backend.backend(), "clean": clean, "grad": grad,
                  "dyart": dyart, "jit_compile": bool(model.jit_compile)}))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax", "torch"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--n-iter", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default=os.path.join("benchmarks", "results", "step_time.md"))
    args = parser.parse_args()
    rows = []
    for backend in args.backends:
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        res = subprocess.run([sys.executable, "-c", CHILD, str(args.batch), str(args.n_iter),
                              str(args.repeats)], env=env, capture_output=True, text=True)
        lines = [l for l in res.stdout.splitlines() if l.startswith("{")]
        if res.returncode or not lines:
            print(f"{backend}: failed\n{res.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(lines[-1]))
    table = [f"Small CNN, MNIST-5k, batch {args.batch}, n_iter {args.n_iter}, median of "
             f"{args.repeats} ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores)", "",
             "| backend | jit | clean step (s) | input-grad pass (s) | DyART step (s) | "
             "floor (s) | DyART / floor | DyART / clean |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        floor = args.n_iter * r["grad"] + 2 * r["clean"]
        table.append(f"| {r['backend']} | {r['jit_compile']} | {r['clean']:.4f} | "
                     f"{r['grad']:.4f} | {r['dyart']:.3f} | {floor:.3f} | "
                     f"{r['dyart'] / floor:.2f} | {r['dyart'] / r['clean']:.1f} |")
    text = "\n".join(table) + "\n"
    print(text)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
