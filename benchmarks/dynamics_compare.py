"""Conflicting boundary dynamics: the robust methods with their tuned settings, over seeds.

The paper's analysis (Xu et al., ICLR 2023, §3): under PGD adversarial training a large share
of the *vulnerable* points (correct, margin < r0) see their decision boundary move towards
them at each step, while it moves away from others; DyART lowers that share.  This script
measures it on MNIST-5k with `keras_dyart.dynamics.BoundaryDynamics`, per seed:

1. a clean burn-in of the small CNN (``--burn-in`` epochs, `keras-dyart train`'s burn-in
   recipe), one checkpoint shared by every method of that seed;
2. from it, ``--steps`` training steps of each method in ``--methods`` with the setting the
   methods study chose (``--settings``, `benchmarks/methods.py`'s chosen.json; the
   `keras-dyart train` defaults where it has none) and `keras-dyart train`'s optimizer for
   that setting (`keras_dyart_apps.settings.method_optimizer`: SGD with Nesterov momentum,
   weight decay, clipping, the weight average), the same batches for every method; the
   callback records the exact boundary speed of a fixed probe set (the first ``--probe``
   test digits) every ``--every`` steps;
3. per method and seed the mean conflict share (share of vulnerable probes whose boundary
   moves towards them) and the pooled share; over seeds their mean ± std and the paired
   difference of each method against DyART (two-sided paired t-test at 95 %).

Writes ``summary.json``, ``conflict_share.png`` (mean over seeds, band = min..max) and
``speed_vs_margin.png`` (seed 0) into ``--out``, and prints the Markdown tables (per method,
and speed by margin over every record).  A method's records are kept in ``--work``, so a
second call redraws without training; ``--quick`` runs the pipeline in about a minute.

    KERAS_BACKEND=tensorflow python benchmarks/dynamics_compare.py --out docs/img/dynamics
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

CHOSEN = os.path.join(HERE, "results", "methods", "chosen.json")

#: Margin bins of the speed-by-margin table.
MARGIN_BINS = (0.0, 0.1, 0.2, 0.3, math.inf)

#: The robust methods, compared by default.
ROBUST = "pgd-at,trades,mart,mma,dyart"

#: ``--quick``: the pipeline in about a minute (two seeds, a few steps, a few probes).
QUICK = {"seeds": "0,1", "burn_in": 1, "steps": 4, "every": 2, "probe": 16}


def burn_in(seed: int, args, x_train, y_train, path: str):
    """The seed's clean burn-in checkpoint (`keras-dyart train`'s burn-in recipe)."""
    import keras

    from keras_dyart import architectures, recipe

    if os.path.exists(path):
        return
    keras.utils.set_random_seed(seed)
    classifier = architectures.small_cnn()
    classifier.compile(optimizer=recipe.DecaySGD(0.05, momentum=0.9, nesterov=True,
                                                 weight_decay=5e-4,
                                                 weight_decay_mode="coupled"),
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                       metrics=["accuracy"])
    batches = recipe.ArrayBatches(x_train, y_train, batch_size=args.batch_size, seed=seed + 1)
    classifier.fit(batches, epochs=args.burn_in, steps_per_epoch=batches.steps_per_epoch,
                   shuffle=False, verbose=0)
    classifier.save(path)


def segment(method: str, setting: dict, seed: int, ckpt: str, xs, ys, probe, args,
            log_dir: str) -> dict:
    """``args.steps`` steps of ``method`` from ``ckpt`` with the callback; its records."""
    import keras

    from keras_dyart import methods
    from keras_dyart.dynamics import BoundaryDynamics
    from keras_dyart_apps import settings as run_settings

    s = run_settings.run_settings({**setting, "method": method, "seed": seed})
    model = methods.get(method, keras.saving.load_model(ckpt, compile=False),
                        **run_settings.method_kwargs(method, s))
    model.compile(optimizer=run_settings.method_optimizer(args.steps, s),
                  metrics=["accuracy"])
    cb = BoundaryDynamics(probe[0], probe[1], every=args.every, r0=args.r0, norm="linf",
                          beta=5.0, log_dir=log_dir)
    begin = time.time()
    model.fit(xs, ys, batch_size=args.batch_size, epochs=1, shuffle=False, verbose=0,
              callbacks=[cb])
    shares = np.array([r["conflict_share"] for r in cb.records], float)
    pts = cb.point_records
    speed = np.concatenate([p["speed"] for p in pts])
    vulnerable = np.concatenate([p["vulnerable"] for p in pts])
    accuracy = float(np.mean(np.argmax(model.predict(probe[0], verbose=0), 1) == probe[1]))
    return {
        "setting": setting, "seed": seed,
        "steps": [r["step"] for r in cb.records], "conflict_share": shares.tolist(),
        "mean_conflict_share": float(np.nanmean(shares)),
        "pooled_conflict_share": (float(np.mean(speed[vulnerable] < 0))
                                  if vulnerable.any() else None),
        "pooled_n_vulnerable": int(vulnerable.sum()),
        "speed_margin_corr": [r["speed_margin_corr"] for r in cb.records],
        "probe_accuracy_after": accuracy, "seconds": round(time.time() - begin, 1),
        "margin_seed_points": np.concatenate([p["margin"] for p in pts]).tolist(),
        "speed_seed_points": speed.tolist(),
    }


def paired_t(a: list[float], b: list[float]) -> tuple[float, float, bool]:
    """Mean and std of a − b over paired seeds, and whether a two-sided paired t-test
    rejects 0 at 95 %."""
    from methods_report import t_sign

    diffs = [x - y for x, y in zip(a, b)]
    mean = statistics.mean(diffs)
    std = statistics.stdev(diffs) if len(diffs) > 1 else math.nan
    return mean, std, t_sign(mean, std, len(diffs)) != 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=ROBUST,
                        help=f"comma-separated robust methods (default {ROBUST})")
    parser.add_argument("--settings", default=CHOSEN,
                        help="JSON of each method's setting (train options); default: the "
                             "methods study's chosen.json")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--burn-in", type=int, default=3, help="clean epochs first")
    parser.add_argument("--steps", type=int, default=100, help="steps of each method")
    parser.add_argument("--every", type=int, default=10, help="record every N steps")
    parser.add_argument("--probe", type=int, default=256, help="probe points (test set)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--r0", type=float, default=0.3,
                        help="vulnerability radius of the analysis")
    parser.add_argument("--out", default="docs/img/dynamics")
    parser.add_argument("--work", default="runs/dynamics_compare",
                        help="folder of the checkpoints, per-run logs and records")
    parser.add_argument("--quick", action="store_true",
                        help="the pipeline in about a minute (other options still count): "
                             + ", ".join(
                            f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items()))
    args = parser.parse_args(argv)
    if args.quick:    # its values are defaults: options given with it still count
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    for name in ("burn_in", "steps", "every", "probe", "batch_size"):
        if getattr(args, name) < (0 if name == "burn_in" else 1):
            parser.error(f"--{name.replace('_', '-')}: must be "
                         f"{'0 or more' if name == 'burn_in' else 'at least 1'}, got "
                         f"{getattr(args, name)}")
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds: comma-separated integers, got {args.seeds!r}")
    from keras_dyart_apps.settings import METHODS

    for name in names:
        if name not in METHODS or name == "clean":
            parser.error(f"--methods: {name!r} is not a robust method of {METHODS[1:]}")
    chosen = {}
    if args.settings and os.path.exists(args.settings):
        chosen = json.load(open(args.settings))
    elif args.settings != CHOSEN:
        parser.error(f"--settings: no file {args.settings!r}")

    import keras
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from keras_dyart import datasets, dynamics

    backend = keras.backend.backend()
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.work, exist_ok=True)
    x_train, y_train, x_test, y_test = datasets.load("mnist5k")
    probe = (x_test[:args.probe], y_test[:args.probe])
    runs = {name: [] for name in names}
    for seed in seeds:
        ckpt = os.path.join(args.work, f"burn_in_s{seed}.keras")
        burn_in(seed, args, x_train, y_train, ckpt)
        order = np.random.RandomState(seed).permutation(
            np.resize(np.arange(len(x_train)), args.steps * args.batch_size))
        xs, ys = x_train[order], y_train[order]
        for name in names:
            record = os.path.join(args.work, f"{name}_s{seed}.json")
            if os.path.exists(record):
                result = json.load(open(record))
            else:
                keras.backend.clear_session()
                result = segment(name, chosen.get(name, {}), seed, ckpt, xs, ys, probe,
                                 args, os.path.join(args.work, f"{name}_s{seed}"))
                with open(record, "w") as f:
                    json.dump(result, f)
            runs[name].append(result)
            print(f"seed {seed} {name}: mean conflict share "
                  f"{result['mean_conflict_share']:.3f}, pooled "
                  f"{result['pooled_conflict_share']:.3f} "
                  f"(n={result['pooled_n_vulnerable']}), probe accuracy "
                  f"{result['probe_accuracy_after']:.3f}, {result['seconds']:.0f} s",
                  flush=True)

    # Figures: mean conflict share over seeds with its range; speed against margin, seed 0.
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, rs in runs.items():
        steps = rs[0]["steps"]
        curves = np.array([r["conflict_share"] for r in rs], float)
        mean = np.nanmean(curves, axis=0)
        line, = ax.plot(steps, mean, "-o", ms=3,
                        label=f"{name} (mean {np.nanmean(curves):.2f}, {len(rs)} seeds)")
        ax.fill_between(steps, np.nanmin(curves, 0), np.nanmax(curves, 0),
                        color=line.get_color(), alpha=0.15)
    ax.set_xlabel("training step")
    ax.set_ylabel("conflict share (vulnerable probes with s < 0)")
    ax.set_title(f"MNIST-5k, probe {args.probe}, r0 {args.r0:g}; band: min..max over seeds")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "conflict_share.png"), dpi=110)
    plt.close(fig)
    cols = min(3, len(runs))
    grid_rows = math.ceil(len(runs) / cols)
    fig, axes = plt.subplots(grid_rows, cols, figsize=(5.2 * cols, 4 * grid_rows),
                             squeeze=False)
    for ax in axes.flat[len(runs):]:
        ax.set_visible(False)
    for ax, (name, rs) in zip(axes.flat, runs.items()):
        margin, speed = (np.asarray(rs[0]["margin_seed_points"]),
                         np.asarray(rs[0]["speed_seed_points"]))
        dynamics.plot_speed_vs_margin((margin, speed), ax=ax, r0=args.r0,
                                      title=f"{name}, seed {rs[0]['seed']}: all records")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "speed_vs_margin.png"), dpi=110)
    plt.close(fig)

    summary = {"backend": backend, "args": vars(args), "settings": chosen,
               "methods": {n: [{k: v for k, v in r.items() if not k.endswith("_points")}
                               for r in rs] for n, rs in runs.items()}}
    rows = ["| method | setting | seeds | mean conflict share | pooled share | first record "
            "| last record | mean corr(s, R) | probe accuracy after | s per run |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    from methods_report import mean_std

    for name, rs in runs.items():
        def ms(get, rs=rs):
            return mean_std(get(r) for r in rs)
        setting = ", ".join(f"{k}={v:g}" for k, v in sorted(rs[0]["setting"].items()))
        rows.append(f"| {name} | {setting or 'defaults'} | {len(rs)} | "
                    f"{ms(lambda r: r['mean_conflict_share'])} | "
                    f"{ms(lambda r: r['pooled_conflict_share'])} | "
                    f"{ms(lambda r: r['conflict_share'][0])} | "
                    f"{ms(lambda r: r['conflict_share'][-1])} | "
                    f"{ms(lambda r: float(np.nanmean(r['speed_margin_corr'])))} | "
                    f"{ms(lambda r: r['probe_accuracy_after'])} | "
                    f"{statistics.mean(r['seconds'] for r in rs):.0f} |")
    rows += ["", "Speed by margin, every record of every seed pooled (n, mean s, share s < 0):",
             "", "| margin R | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]
    summary["by_margin"] = {}
    for name, rs in runs.items():
        margin = np.concatenate([r["margin_seed_points"] for r in rs])
        speed = np.concatenate([r["speed_seed_points"] for r in rs])
        pooled = dynamics.summarize(margin, speed, np.isfinite(margin) & np.isfinite(speed),
                                    r0=args.r0, bins=MARGIN_BINS)
        summary["by_margin"][name] = [
            {"low": low, "high": high, "n": n, "mean_speed": mean, "share_negative": share}
            for low, high, n, mean, share in zip(
                MARGIN_BINS[:-1], MARGIN_BINS[1:], pooled["bin_count"],
                pooled["bin_mean_speed"], pooled["bin_share_negative"])]
    for i, (low, high) in enumerate(zip(MARGIN_BINS[:-1], MARGIN_BINS[1:])):
        cells = [f"{b[i]['n']}, {b[i]['mean_speed']:+.1e}, {b[i]['share_negative']:.2f}"
                 for b in summary["by_margin"].values()]
        label = f"[{low:g}, {high:g})" if math.isfinite(high) else f"[{low:g}, ∞)"
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    if "dyart" in runs:
        summary["paired_vs_dyart"] = {}
        for name in runs:
            if name == "dyart":
                continue
            d, s, significant = paired_t([r["mean_conflict_share"] for r in runs["dyart"]],
                                         [r["mean_conflict_share"] for r in runs[name]])
            summary["paired_vs_dyart"][name] = {"mean": d, "std": s,
                                                "significant_95": significant}
            rows.append(f"\nDyART − {name}, mean conflict share: {d:+.3f} ± {s:.3f} over "
                        f"{len(seeds)} seeds (paired t-test at 95 %: "
                        f"{'significant' if significant else 'not significant'})")
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print("\n" + "\n".join(rows))
    return summary


if __name__ == "__main__":
    main()
