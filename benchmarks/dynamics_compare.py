"""Conflicting boundary dynamics: PGD-AT against DyART from one burn-in checkpoint.

The paper's analysis (Xu et al., ICLR 2023, §3): under PGD adversarial training a large share
of the *vulnerable* points (correct, margin < r0) see their decision boundary move towards
them at each step, while it moves away from others; DyART lowers that share.  This script
measures it on MNIST-5k with `keras_dyart.dynamics.BoundaryDynamics`:

1. clean burn-in of the small CNN (``--burn-in`` epochs), saved as ``burn_in.keras``;
2. from that checkpoint, ``--steps`` training steps of PGD-AT and of DyART with the same
   optimiser and the same batches, the callback recording the boundary speed of a fixed
   probe set (the first ``--probe`` test points) every ``--every`` steps;
3. a table of the conflict shares and the figures ``conflict_share.png`` (both curves) and
   ``speed_vs_margin.png`` (side by side), plus ``summary.json``, in ``--out``.

    KERAS_BACKEND=jax python benchmarks/dynamics_compare.py --out docs/img/dynamics
"""

import argparse
import json
import os
import time

import numpy as np


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--burn-in", type=int, default=3, help="clean epochs first")
    parser.add_argument("--steps", type=int, default=100, help="steps of each method")
    parser.add_argument("--every", type=int, default=10, help="record every N steps")
    parser.add_argument("--probe", type=int, default=256, help="probe points (test set)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--eps", type=float, default=0.3, help="PGD-AT radius (L∞)")
    parser.add_argument("--pgd-steps", type=int, default=10)
    parser.add_argument("--r0", type=float, default=0.3,
                        help="vulnerability radius of the analysis")
    parser.add_argument("--dyart-r0", type=float, default=0.6, help="DyART's own r0")
    parser.add_argument("--lam", type=float, default=1000.0, help="DyART λ")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/img/dynamics")
    parser.add_argument("--work", default="runs/dynamics_compare",
                        help="folder of the checkpoints and per-method logs")
    args = parser.parse_args(argv)

    import keras
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from keras_dyart import architectures, datasets, dynamics, methods
    from keras_dyart.dynamics import BoundaryDynamics

    backend = keras.backend.backend()
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.work, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    x_train, y_train, x_test, y_test = datasets.load("mnist5k")
    probe_x, probe_y = x_test[:args.probe], y_test[:args.probe]

    def optimizer():
        return keras.optimizers.SGD(args.lr, momentum=0.9, nesterov=True,
                                    weight_decay=5e-4, global_clipnorm=0.1)

    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    t0 = time.time()
    ckpt = os.path.join(args.work, "burn_in.keras")
    classifier = architectures.small_cnn()
    classifier.compile(optimizer=keras.optimizers.SGD(args.lr, momentum=0.9, nesterov=True),
                       loss=ce, metrics=["accuracy"])
    classifier.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.burn_in,
                   shuffle=True, verbose=0)
    classifier.save(ckpt)
    burn_acc = float(np.mean(np.argmax(classifier.predict(probe_x, verbose=0), 1) == probe_y))
    print(f"burn-in: {args.burn_in} epochs, probe accuracy {burn_acc:.3f} "
          f"({time.time() - t0:.0f} s, {backend})")

    # The same batches for both methods.
    order = np.random.RandomState(args.seed).permutation(
        np.resize(np.arange(len(x_train)), args.steps * args.batch_size))
    xs, ys = x_train[order], y_train[order]

    settings = {
        "pgd-at": dict(eps=args.eps, step_size=2.5 * args.eps / args.pgd_steps,
                       steps=args.pgd_steps, norm="linf", seed=args.seed),
        "dyart": dict(norm="linf", lam=args.lam, alpha=3.0, r0=args.dyart_r0,
                      eps_fab=0.3, beta=5.0, n_iter=20, seed=args.seed),
    }
    results = {}
    for name, kwargs in settings.items():
        t1 = time.time()
        model = methods.get(name, keras.saving.load_model(ckpt, compile=False), **kwargs)
        model.compile(optimizer=optimizer(), loss=ce, metrics=["accuracy"])
        cb = BoundaryDynamics(probe_x, probe_y, every=args.every, r0=args.r0,
                              norm="linf", beta=5.0,
                              log_dir=os.path.join(args.work, name))
        model.fit(xs, ys, batch_size=args.batch_size, epochs=1, shuffle=False, verbose=0,
                  callbacks=[cb])
        acc = float(np.mean(np.argmax(model.predict(probe_x, verbose=0), 1) == probe_y))
        shares = np.array([r["conflict_share"] for r in cb.records])
        results[name] = {
            "steps": [r["step"] for r in cb.records],
            "conflict_share": shares.tolist(),
            "mean_conflict_share": float(np.nanmean(shares)),
            "n_vulnerable": [r["n_vulnerable"] for r in cb.records],
            "speed_margin_corr": [r["speed_margin_corr"] for r in cb.records],
            "mean_speed_vulnerable": [r["mean_speed_vulnerable"] for r in cb.records],
            "probe_accuracy_after": acc,
            "seconds": round(time.time() - t1, 1),
            "points": cb.point_records,
        }
        print(f"{name}: mean conflict share {results[name]['mean_conflict_share']:.3f} "
              f"over {len(shares)} records; probe accuracy {acc:.3f} "
              f"({results[name]['seconds']:.0f} s)")

    # Figures: the two conflict-share curves, and speed against margin side by side.
    fig = dynamics.plot_conflict_share(
        {f"{n} (mean {r['mean_conflict_share']:.2f})": (r["steps"], r["conflict_share"])
         for n, r in results.items()},
        title=f"MNIST-5k, probe {args.probe}, r0 {args.r0:g}")
    fig.savefig(os.path.join(args.out, "conflict_share.png"), dpi=110,
                bbox_inches="tight")
    plt.close(fig)
    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4))
    for ax, (name, res) in zip(np.atleast_1d(axes), results.items()):
        margin = np.concatenate([p["margin"] for p in res["points"]])
        speed = np.concatenate([p["speed"] for p in res["points"]])
        dynamics.plot_speed_vs_margin((margin, speed), ax=ax, r0=args.r0,
                                      title=f"{name}: all {len(res['points'])} records")
        ok = np.isfinite(speed)
        edges = np.quantile(margin[ok], np.linspace(0, 1, 9)) if ok.any() else []
        mids, means = [], []
        for lo, hi in zip(edges[:-1], edges[1:]):
            sel = ok & (margin >= lo) & (margin <= hi)
            if sel.any():
                mids.append(0.5 * (lo + hi))
                means.append(speed[sel].mean())
        ax.plot(mids, means, "r-o", ms=4, label="mean per margin octile")
        ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "speed_vs_margin.png"), dpi=110)
    plt.close(fig)

    # Pooled over all records: the conflict share and the speed by margin band.
    bands = [(0.0, args.r0 / 3), (args.r0 / 3, 2 * args.r0 / 3), (2 * args.r0 / 3, args.r0),
             (args.r0, np.inf)]
    for name, res in results.items():
        pts = res["points"]
        margin = np.concatenate([p["margin"] for p in pts])
        speed = np.concatenate([p["speed"] for p in pts])
        usable = np.concatenate([p["usable"] for p in pts])
        vul = np.concatenate([p["vulnerable"] for p in pts])
        res["pooled_conflict_share"] = float(np.mean(speed[vul] < 0)) if vul.any() else None
        res["pooled_n_vulnerable"] = int(vul.sum())
        res["bands"] = []
        for lo, hi in bands:
            sel = usable & (margin >= lo) & (margin < hi)
            res["bands"].append({
                "margin": [lo, hi], "n": int(sel.sum()),
                "mean_speed": float(speed[sel].mean()) if sel.any() else None,
                "share_negative": float(np.mean(speed[sel] < 0)) if sel.any() else None})
        print(f"{name}: pooled conflict share {res['pooled_conflict_share']} over "
              f"{res['pooled_n_vulnerable']} vulnerable points; by margin band "
              + ", ".join(f"[{b['margin'][0]:.2g},{b['margin'][1]:.2g}): n={b['n']} "
                          f"mean s={b['mean_speed']} share<0={b['share_negative']}"
                          for b in res["bands"]))

    summary = {"backend": backend, "args": vars(args), "burn_in_probe_accuracy": burn_acc,
               "methods": {n: {k: v for k, v in r.items() if k != "points"}
                           for n, r in results.items()}}
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print("\n| method | mean conflict share | first | last | mean corr(s, R) | seconds |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        corr = np.nanmean(r["speed_margin_corr"])
        print(f"| {name} | {r['mean_conflict_share']:.3f} | {r['conflict_share'][0]:.3f} | "
              f"{r['conflict_share'][-1]:.3f} | {corr:.3f} | {r['seconds']:.0f} |")
    return summary


if __name__ == "__main__":
    main()
