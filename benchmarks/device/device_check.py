"""The device check for one Keras backend (the backend is ``KERAS_BACKEND``): a few
correctness checks, then DyART step times against their floor.  `run.sh` beside this file
runs it once per backend; see that script for the whole run.

Checks (each reported, none stops the run):

- ``device``: the backend sees a GPU and the classifier's weights live on it (``--mode gpu``
  only; on ``--mode cpu`` it records the platform);
- ``closed-form margin``: `boundary.find_boundary_points` on two-class linear models finds
  the closed-form L∞ and L2 margins (as tests/test_boundary.py);
- ``dyart fit``: a DyART fit of the small CNN on MNIST-5k learns (GPU: 2048 points, 2 epochs,
  test accuracy above 0.4, as tests/test_dyart_model.py; CPU: a tiny fit, finite metrics);
- ``autoattack``: AutoAttack on the fitted classifier (GPU: standard, 200 points; CPU: a short
  budget on a few points): every adversarial point in the eps ball and the box, and its
  success flags agree with the model's predictions;
- ``save/load``: the fitted DyART model through a ``.keras`` file predicts the same.

Timings (median of interleaved rounds after warm-up, every call ending in a host read, so
asynchronous GPU work is counted): one clean Keras train step, one input-gradient pass of the
soft margin, one DyART train step (``n_iter`` 20), the floor ``n_iter · grad + 2 · clean``,
images/s of the DyART step, and peak device memory (PyTorch: ``max_memory_allocated`` since
the row began; JAX: the device's ``peak_bytes_in_use``, a process-wide peak; CPU: the process's
peak RSS).  Mixed precision rows build the classifier under ``mixed_bfloat16`` (the search and
the margins stay float32).

Every finished row is appended to its Markdown file at once and a progress line printed, so
a run cut off by a time limit still says where it was.  Rows that the time budget leaves no
room for are written as skipped.

Usage: python benchmarks/device/device_check.py --mode gpu|cpu --out DIR [--budget SECONDS]
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import tempfile
import time
import traceback

import numpy as np

T0 = time.time()


def log(msg: str) -> None:
    """A progress line, flushed at once (a cut-off run still shows it)."""
    print(f"[device-check {os.environ.get('KERAS_BACKEND', '?')} {time.time() - T0:6.1f}s] "
          f"{msg}", flush=True)


# -- sizes per mode ------------------------------------------------------------------------

MODES = {
    "gpu": dict(
        closed_form_norms=("linf", "l2"), closed_form_paths=("eager", "compiled"),
        fit_points=2048, fit_epochs=2, fit_batch=64, fit_n_iter=5, fit_min_acc=0.4,
        aa_points=200, aa_eps=0.1, aa_options=None,
        models=("small_cnn", "preact_resnet18", "wrn_28_10"), batches=(128, 256),
        precisions=("float32", "mixed_bfloat16"), n_iter=20, warm=2, reps=3,
        # Rows with keras_dyart.config.fast_kernels off (the JAX pooling and PyTorch layout
        # replacements chosen on CPU): does each still pay on a GPU?
        fast_off=(("small_cnn", 128), ("preact_resnet18", 128))),
    "cpu": dict(
        closed_form_norms=("linf",), closed_form_paths=("compiled",),
        fit_points=128, fit_epochs=1, fit_batch=64, fit_n_iter=2, fit_min_acc=None,
        aa_points=16, aa_eps=0.1,
        aa_options={"apgd-ce": {"n_iter": 5}, "apgd-t": {"n_iter": 5, "n_target_classes": 1},
                    "fab-t": {"n_iter": 3, "n_target_classes": 1},
                    "square": {"n_queries": 20}},
        models=("small_cnn",), batches=(8,), precisions=("float32", "mixed_bfloat16"),
        n_iter=2, warm=1, reps=2, fast_off=()),
}

MODEL_LABELS = {"small_cnn": "small CNN (28×28×1)",
                "preact_resnet18": "PreAct ResNet-18 (32×32×3)",
                "wrn_28_10": "WRN-28-10 (32×32×3)"}


# -- the backend's device -----------------------------------------------------------------

def platform() -> str:
    """The device the backend computes on, in words."""
    import keras

    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return f"cuda: {torch.cuda.get_device_name(0)} (torch {torch.__version__})"
        return f"cpu (torch {torch.__version__})"
    if backend == "jax":
        import jax

        d = jax.devices()[0]
        return f"{d.platform}: {getattr(d, 'device_kind', d)} (jax {jax.__version__})"
    return backend


def on_gpu() -> bool:
    import keras

    if keras.backend.backend() == "torch":
        import torch

        return torch.cuda.is_available()
    if keras.backend.backend() == "jax":
        import jax

        return jax.default_backend() == "gpu"
    return False


def tensor_device(t) -> str:
    """Where a backend tensor lives (``cuda:0``, ``gpu:0``, ``cpu``...)."""
    if hasattr(t, "device") and hasattr(t.device, "type"):          # torch
        return str(t.device)
    devices = getattr(t, "devices", None)                            # jax
    if callable(devices):
        return ",".join(sorted(f"{d.platform}:{d.id}" for d in devices()))
    return str(getattr(t, "device", "?"))


def reset_peak() -> None:
    import keras

    if keras.backend.backend() == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()


def peak_mib() -> str:
    """Peak device memory in MiB (see the module docstring for what each backend counts)."""
    import keras

    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.max_memory_allocated() / 2**20:.0f}"
    if backend == "jax":
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            return f"{stats['peak_bytes_in_use'] / 2**20:.0f} (process)"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return f"{rss:.0f} (RSS)"


def release() -> None:
    """Free what the last row left (models, compiled functions, cached device memory)."""
    import keras

    keras.backend.clear_session()
    gc.collect()
    if keras.backend.backend() == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# -- Markdown output -----------------------------------------------------------------------

class Table:
    """A Markdown table appended to ``path`` row by row."""

    def __init__(self, path: str, title: str, columns: list[str]):
        self.path = path
        with open(path, "w") as f:
            f.write(f"{title}\n\n| " + " | ".join(columns) + " |\n|"
                    + "---|" * len(columns) + "\n")

    def row(self, cells: list) -> None:
        with open(self.path, "a") as f:
            f.write("| " + " | ".join(str(c) for c in cells) + " |\n")

    def note(self, text: str) -> None:
        with open(self.path, "a") as f:
            f.write(f"\n{text}\n")


# -- checks --------------------------------------------------------------------------------

def check_device(mode: str) -> str:
    import keras

    import keras_dyart as kd

    clf = kd.architectures.small_cnn()
    where = tensor_device(clf.trainable_variables[0].value)
    out = tensor_device(clf(keras.ops.zeros((2, 28, 28, 1))))
    detail = f"{platform()}; weights on {where}; outputs on {out}"
    if mode == "gpu":
        assert on_gpu(), f"no GPU visible to the backend ({detail})"
        assert "cpu" not in where and "cpu" not in out, f"tensors on the CPU ({detail})"
    return detail


def _two_class_problem(seed: int, n: int = 48, d: int = 20):
    rng = np.random.RandomState(seed)
    weights = rng.randn(d, 2).astype("float32")
    x = rng.uniform(0.3, 0.7, (n, d)).astype("float32")
    logits = x @ weights
    y = logits.argmax(1).astype("int32")
    v = weights[:, 0] - weights[:, 1]
    v = np.where(y[:, None] == 0, v, -v)
    phi = np.abs(logits[:, 0] - logits[:, 1])
    return weights, x, y, v, phi


def check_closed_form(mode: str, cfg: dict) -> str:
    """The eager search and the compiled one (as the train step runs it) within
    tests/test_boundary.py's tolerance, 1e-3 (on a GPU, TF32 convolutions and products would
    show here), each error reported."""
    import keras
    from keras import ops

    from keras_dyart import backend as B
    from keras_dyart.boundary import find_boundary_points
    from keras_dyart.margins import soft_margin

    def search(logits_fn, xb, yb, norm):
        def phi_fn(z):
            return soft_margin(logits_fn(z), yb, 5.0)

        return find_boundary_points(lambda z: B.value_and_grad(phi_fn, z), phi_fn, xb,
                                    norm=norm)

    results = []
    for norm in cfg["closed_form_norms"]:
        weights, x, y, v, phi = _two_class_problem(0)
        inputs = keras.Input((x.shape[1],))
        clf = keras.Model(inputs, keras.layers.Dense(2)(inputs))
        clf.layers[-1].set_weights([weights, np.zeros(2, "float32")])
        q = 1 if norm == "linf" else 2
        margin = phi / np.linalg.norm(v, ord=q, axis=1)
        reach = margin if norm == "linf" else (
            margin * np.abs(v).max(1) / np.linalg.norm(v, axis=1))
        inside = reach < 0.29          # the box does not bind: the closed form holds
        xt, yt = ops.convert_to_tensor(x), ops.convert_to_tensor(y)
        runs = {"eager": lambda xb, yb, clf=clf, norm=norm: search(
                    lambda z: clf(z, training=False), xb, yb, norm),
                "compiled": lambda xb, yb, clf=clf, norm=norm: B.compile_model_fn(
                    clf, lambda f, a, b: search(f, a, b, norm), jit=True)(xb, yb)}
        for how in cfg["closed_form_paths"]:
            tol = 1e-3
            out = runs[how](xt, yt)
            got = ops.convert_to_numpy(out["margin"])
            assert ops.convert_to_numpy(out["found"]).all(), f"{norm} {how}: not all found"
            err = np.max(np.abs(got[inside] - margin[inside]) / margin[inside])
            assert err < tol, f"{norm} {how}: relative margin error {err:.2e} >= {tol}"
            results.append(f"{norm} {how} rel. err {err:.1e}")
    return "; ".join(results) + " (points inside the box: closed form)"


def check_fit(mode: str, cfg: dict, state: dict) -> str:
    import keras

    import keras_dyart as kd

    x, y, xt, yt = kd.datasets.load("mnist5k")
    n = cfg["fit_points"]
    model = kd.DyARTModel(kd.architectures.small_cnn(), n_iter=cfg["fit_n_iter"], r0=0.6,
                          eps_fab=0.3)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True,
                                                 global_clipnorm=1.0),
                  metrics=["accuracy"])
    hist = model.fit(x[:n], y[:n], batch_size=cfg["fit_batch"], epochs=cfg["fit_epochs"],
                     verbose=0).history
    for key in ("loss", "ce_loss", "robust_loss", "boundary_fraction", "mean_margin"):
        assert key in hist and np.all(np.isfinite(hist[key])), f"{key}: {hist.get(key)}"
    m = 300 if mode == "gpu" else 64
    acc = model.evaluate(xt[:m], yt[:m], verbose=0, return_dict=True)["accuracy"]
    state.update(model=model, x_test=xt, y_test=yt)
    detail = (f"{n} points, {cfg['fit_epochs']} epoch(s), n_iter {cfg['fit_n_iter']}: "
              f"test accuracy {acc:.3f}, boundary fraction "
              f"{hist['boundary_fraction'][-1]:.2f}")
    if cfg["fit_min_acc"] is not None:
        assert acc > cfg["fit_min_acc"], detail
    return detail


def check_autoattack(mode: str, cfg: dict, state: dict) -> str:
    from keras_dyart.attacks import autoattack

    clf = state["model"].classifier
    n, eps = cfg["aa_points"], cfg["aa_eps"]
    x, y = state["x_test"][:n], state["y_test"][:n]
    x_adv, success = autoattack(clf, x, y, eps, options=cfg["aa_options"])
    x64, a64 = x.astype("float64"), x_adv.astype("float64")
    assert np.all(np.abs(a64 - x64) <= eps + 1e-7), "a point left the eps ball"
    assert np.all((a64 >= 0) & (a64 <= 1)), "a point left the box"
    pred = np.argmax(clf.predict(x_adv, verbose=0, batch_size=256), 1)
    assert np.array_equal(pred != y, success), "success flags disagree with predictions"
    return f"{n} points, L∞ eps {eps}: robust accuracy {1 - success.mean():.3f}"


def check_save_load(mode: str, cfg: dict, state: dict) -> str:
    import keras

    import keras_dyart as kd

    model = state["model"]
    x = state["x_test"][:64]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
    assert isinstance(loaded, kd.DyARTModel), type(loaded)
    for key in ("norm", "lam", "alpha", "r0", "n_iter", "eps_fab", "refine_steps"):
        assert getattr(loaded, key) == getattr(model, key), key
    a, b = loaded.predict(x, verbose=0), model.predict(x, verbose=0)
    assert np.array_equal(a, b), f"max difference {np.abs(a - b).max()}"
    return "hyper-parameters and predictions identical after .keras save/load"


def run_checks(mode: str, cfg: dict, out: str) -> int:
    backend = os.environ.get("KERAS_BACKEND", "?")
    table = Table(os.path.join(out, f"checks_{backend}.md"),
                  f"Device checks, {backend} backend ({mode} mode): {platform()}.",
                  ["backend", "check", "result", "seconds", "detail"])
    state: dict = {}
    checks = [("device", lambda: check_device(mode)),
              ("closed-form margin", lambda: check_closed_form(mode, cfg)),
              ("dyart fit", lambda: check_fit(mode, cfg, state)),
              ("autoattack", lambda: check_autoattack(mode, cfg, state)),
              ("save/load", lambda: check_save_load(mode, cfg, state))]
    failed = 0
    for name, fn in checks:
        log(f"check {name} ...")
        t = time.time()
        try:
            detail, result = fn(), "pass"
        except Exception as e:  # noqa: BLE001 - report and go on
            detail, result = f"{type(e).__name__}: {e}".replace("|", "/")[:300], "FAIL"
            failed += 1
            traceback.print_exc()
        table.row([backend, name, result, f"{time.time() - t:.1f}", detail])
        log(f"check {name}: {result} ({detail})")
        if name == "device" and result != "pass" and mode == "gpu":
            table.note("No GPU: the other checks and the timings were not run.")
            return -1
    release()
    return failed


# -- timings -------------------------------------------------------------------------------

def build(name: str):
    import keras_dyart as kd

    if name == "small_cnn":
        return kd.architectures.small_cnn()
    return getattr(kd.architectures, name)(input_shape=(32, 32, 3))


def batch_of(name: str, batch: int):
    import keras_dyart as kd

    if name == "small_cnn":
        x, y, _, _ = kd.datasets.load("mnist5k")
        return x[:batch], y[:batch]
    rng = np.random.RandomState(0)
    return (rng.rand(batch, 32, 32, 3).astype("float32"),
            rng.randint(0, 10, batch).astype("int32"))


def time_row(name: str, batch: int, precision: str, n_iter: int, warm: int, reps: int,
             fast: bool = True):
    """Median seconds of a clean step, an input-gradient pass and a DyART step (with
    `keras_dyart.config.fast_kernels` set to ``fast`` for the row)."""
    import keras

    from keras_dyart import backend as B
    from keras_dyart import config, methods
    from keras_dyart.margins import soft_margin

    keras.config.set_dtype_policy(precision)
    try:
        clf = build(name)
    finally:
        keras.config.set_dtype_policy("float32")
    x, y = batch_of(name, batch)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    clf.compile(optimizer=keras.optimizers.SGD(0.01), loss=loss)

    def grad_pass(logits_fn, xb, yb):
        return B.value_and_grad(lambda z: soft_margin(logits_fn(z), yb), xb)

    grad = B.compile_model_fn(clf, grad_pass, jit=True)
    xt, yt = keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y)
    model = methods.get("dyart", clf, n_iter=n_iter, r0=0.6, eps_fab=0.3)
    model.compile(optimizer=keras.optimizers.SGD(0.01, global_clipnorm=0.1))
    saved = config.fast_kernels()
    config.set_fast_kernels(fast)
    try:
        return _time_fns(clf, model, grad, x, y, xt, yt, warm, reps)
    finally:
        config.set_fast_kernels(saved)


def _time_fns(clf, model, grad, x, y, xt, yt, warm, reps):
    import keras

    fns = {"clean": lambda: clf.train_on_batch(x, y),
           "grad": lambda: keras.ops.convert_to_numpy(grad(xt, yt)[0]),
           "dyart": lambda: model.train_on_batch(x, y)}
    t = time.time()
    for key, fn in fns.items():
        for _ in range(warm):
            fn()
        log(f"  warm-up {key} done ({time.time() - t:.1f}s)")
    times = {k: [] for k in fns}
    for _ in range(reps):
        for key, fn in fns.items():
            s = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - s)
    return {k: float(np.median(v)) for k, v in times.items()}, time.time() - t


def run_timings(mode: str, cfg: dict, out: str, deadline: float) -> int:
    backend = os.environ.get("KERAS_BACKEND", "?")
    n_iter = cfg["n_iter"]
    table = Table(
        os.path.join(out, f"timings_{backend}.md"),
        f"DyART step times (s), {backend} backend ({mode} mode): {platform()}; n_iter "
        f"{n_iter}, median of {cfg['reps']} interleaved rounds after {cfg['warm']} warm-up "
        f"call(s).",
        ["backend", "model", "batch", "precision", "clean", "input grad", "DyART", "floor",
         "DyART / floor", "DyART images/s", "peak memory (MiB)", "seconds"])
    # Most wanted first: every model and precision at the smaller batch, then the larger.
    rows = [(m, b, p, True) for b in cfg["batches"] for p in cfg["precisions"]
            for m in cfg["models"]]
    rows += [(m, b, "float32", False) for m, b in cfg["fast_off"]]
    spent: dict = {}
    failed = 0
    for name, batch, dtype, fast in rows:
        label = MODEL_LABELS[name]
        precision = dtype if fast else f"{dtype}, fast kernels off"
        # A row at twice the batch of a measured one is predicted to take twice as long.
        guess = 2 * spent.get((name, batch // 2, precision), 0) or spent.get(
            (name, batch, "float32"), 0) or spent.get((name, batch, dtype), 0)
        left = deadline - time.time()
        if left < guess or left <= 0:
            table.row([backend, label, batch, precision] + ["skipped (time)"] + [""] * 7)
            log(f"timing {name} batch {batch} {precision}: skipped, {left:.0f}s left")
            continue
        log(f"timing {name} batch {batch} {precision} ...")
        reset_peak()
        try:
            t, seconds = time_row(name, batch, dtype, n_iter, cfg["warm"], cfg["reps"], fast)
        except Exception as e:  # noqa: BLE001 - report and go on
            failed += 1
            traceback.print_exc()
            msg = f"FAIL {type(e).__name__}: {e}".replace("|", "/")[:200]
            table.row([backend, label, batch, precision, msg] + [""] * 7)
            log(f"timing {name} batch {batch} {precision}: {msg}")
            release()
            continue
        spent[(name, batch, precision)] = seconds
        floor = n_iter * t["grad"] + 2 * t["clean"]
        table.row([backend, label, batch, precision, f"{t['clean']:.4f}", f"{t['grad']:.4f}",
                   f"{t['dyart']:.4f}", f"{floor:.4f}", f"{t['dyart'] / floor:.2f}",
                   f"{batch / t['dyart']:.0f}", peak_mib(), f"{seconds:.0f}"])
        log(f"timing {name} batch {batch} {precision}: DyART {t['dyart']:.4f}s, floor "
            f"{floor:.4f}s, {batch / t['dyart']:.0f} images/s")
        release()
    table.note(f"floor = {n_iter} · input grad + 2 · clean.  seconds: the row's wall time, "
               "compilation and warm-up included.")
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=sorted(MODES), required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--budget", type=float, default=200.0,
                        help="seconds; no timing row starts after it")
    parser.add_argument("--skip-checks", action="store_true")
    parser.add_argument("--skip-timings", action="store_true")
    args = parser.parse_args()
    cfg = MODES[args.mode]
    os.makedirs(args.out, exist_ok=True)
    log(f"start: {platform()}")
    failed = 0
    if not args.skip_checks:
        failed = run_checks(args.mode, cfg, args.out)
        if failed < 0:
            log("no GPU visible: stopping (GPU sizes on a CPU would only spend the time)")
            return 3
    if not args.skip_timings:
        failed += run_timings(args.mode, cfg, args.out, T0 + args.budget)
    log(f"done: {failed} failure(s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
