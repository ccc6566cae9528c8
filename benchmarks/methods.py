"""Robust-training methods side by side on MNIST-5k: same burn-in, same budget, same attack.

    KERAS_BACKEND=tensorflow python benchmarks/methods.py [--epochs 10] [--burn-in 2]
        [--limit 4000] [--eval-limit 1000] [--methods clean,pgd-at,trades,mart,mma,dyart]
        [--attack autoattack]

Every method starts from the same clean burn-in checkpoint of `small_cnn` (``--burn-in``
epochs of plain SGD), then trains ``--epochs`` epochs on the first ``--limit`` training
digits with the recipe (`keras_dyart.recipe.build_optimizer`: SGD Nesterov, cosine decay
with warm-up, weight decay off biases, global gradient-norm clipping, EMA of the weights).
The *averaged* model is evaluated on the first ``--eval-limit`` test digits: clean
accuracy and robust accuracy at L∞ eps 0.1, 0.2 and 0.3.

Attack: ``--attack autoattack`` (default): standard AutoAttack through
`keras_dyart.evaluation.evaluate` (APGD-CE, APGD-T, FAB-T, Square; slow on a CPU); any
comma-separated list of its attacks (e.g. ``apgd-ce,apgd-t``) runs that sequence
worst-case; ``pgd-ce-cw``: a point counts as robust only if it survives both PGD with
cross-entropy and PGD with the CW margin loss (``--attack-steps`` steps of eps/10 from a
random start each, `keras_dyart.recipe.robust_accuracy`).

Seconds per epoch are the method epochs' wall time (compilation included) divided by the
epoch count, on this machine and backend.  Writes ``benchmarks/results/methods.md``.
"""

import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import keras  # noqa: E402

from keras_dyart import architectures, datasets, methods, recipe  # noqa: E402

EPSILONS = (0.1, 0.2, 0.3)


def method_kwargs(name, eps, steps):
    """The methods' MNIST settings (training radius ``eps``, ``steps`` attack steps)."""
    attack = {"eps": eps, "step_size": 2.5 * eps / steps, "steps": steps}
    return {
        "clean": {},
        "pgd-at": attack,
        "trades": {"beta": 6.0, **attack},
        "mart": {"beta": 6.0, **attack},
        "mma": {"d_max": 0.4, "n_iter": 20},
        # DyART's CIFAR radii scaled to MNIST's eps (0.3 vs 8/255): r0 and eps_fab ×~9.5,
        # alpha ÷9.5; lam is the GroupNorm-free value of the recipe's family.
        "dyart": {"r0": 0.6, "alpha": 0.3, "lam": 400.0, "eps_fab": eps},
    }[name]


def robust_table(model, x, y, attack, steps, seed):
    """Clean accuracy and robust accuracy at each of `EPSILONS`."""
    if attack != "pgd-ce-cw":
        from keras_dyart import evaluation

        report = evaluation.evaluate(model, x, y, attack, list(EPSILONS), seed=seed)
        robust = {float(e): a for e, a in report.robust_accuracy.items()}
        return float(report.clean_accuracy), [float(robust[e]) for e in EPSILONS]
    clean = None
    robust = []
    for eps in EPSILONS:
        ok = None
        for loss in ("ce", "cw"):
            correct, survived = recipe.robust_accuracy(model, x, y, eps, steps=steps,
                                                       loss=loss, seed=seed)
            clean = correct
            ok = survived if ok is None else ok & survived
        robust.append(float(ok.mean()))
    return float(clean.mean()), robust


def attack_name(attack, steps):
    if attack == "pgd-ce-cw":
        return f"PGD-{steps} with CE and with CW loss (robust = survives both)"
    from keras_dyart.attacks.autoattack import NAMES, resolve

    names = resolve(attack)
    if attack.strip().lower() in ("autoattack", "aa", "standard"):
        return "AutoAttack (standard: " + ", ".join(NAMES[n] for n in names) + ")"
    return "the worst case of " + ", ".join(NAMES[n] for n in names)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default="clean,pgd-at,trades,mart,mma,dyart")
    parser.add_argument("--epochs", type=int, default=10, help="method epochs")
    parser.add_argument("--burn-in", type=int, default=2, help="clean burn-in epochs")
    parser.add_argument("--limit", type=int, default=4000, help="training digits used")
    parser.add_argument("--eval-limit", type=int, default=1000, help="test digits attacked")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--eps", type=float, default=0.3, help="training radius (L∞)")
    parser.add_argument("--train-steps", type=int, default=10, help="inner attack steps")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--clipnorm", type=float, default=0.1)
    parser.add_argument("--attack", default="autoattack",
                        help="'autoattack' (standard), a comma-separated list of attacks of "
                             "keras_dyart.evaluation.evaluate (e.g. apgd-ce,apgd-t), or "
                             "'pgd-ce-cw' (the recipe's own PGD, CE and CW)")
    parser.add_argument("--attack-steps", type=int, default=40,
                        help="PGD steps of --attack pgd-ce-cw")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                      "methods.md"))
    args = parser.parse_args(argv)
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    for name in names:
        if name not in methods.METHODS:
            parser.error(f"--methods: unknown method {name!r}; choose from "
                         f"{sorted(methods.METHODS)}")

    x_train, y_train, x_test, y_test = datasets.load("mnist5k")
    x_train, y_train = x_train[:args.limit], y_train[:args.limit]
    x_test, y_test = x_test[:args.eval_limit], y_test[:args.eval_limit]
    backend = keras.backend.backend()

    # One clean burn-in checkpoint for every method.
    keras.utils.set_random_seed(args.seed)
    burn = methods.CleanModel(architectures.small_cnn())
    burn.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
                 metrics=["accuracy"])
    burn.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.burn_in, verbose=0)
    start_weights = burn.classifier.get_weights()
    print(f"burn-in: {args.burn_in} epochs, test accuracy "
          f"{burn.evaluate(x_test, y_test, verbose=0)[1]:.3f}", flush=True)

    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
    rows = []
    for name in names:
        keras.utils.set_random_seed(args.seed)
        classifier = architectures.small_cnn()
        classifier.set_weights(start_weights)
        model = methods.get(name, classifier, **method_kwargs(name, args.eps,
                                                              args.train_steps))
        model.compile(optimizer=recipe.build_optimizer(
            args.epochs * steps_per_epoch, learning_rate=args.lr,
            global_clipnorm=args.clipnorm or None), metrics=["accuracy"])
        batches = recipe.ArrayBatches(x_train, y_train, args.batch_size, seed=args.seed)
        begin = time.perf_counter()
        model.fit(batches, epochs=args.epochs, steps_per_epoch=batches.steps_per_epoch,
                  shuffle=False, callbacks=[recipe.SyncEpoch(batches)], verbose=0)
        per_epoch = (time.perf_counter() - begin) / args.epochs
        averaged = recipe.averaged_model(model)
        clean, robust = robust_table(averaged, x_test, y_test, args.attack,
                                     args.attack_steps, args.seed)
        rows.append((name, clean, robust, per_epoch))
        print(f"{name:7s} clean {clean:.3f}  robust " + " ".join(f"{r:.3f}" for r in robust)
              + f"  {per_epoch:.1f} s/epoch", flush=True)

    attack = attack_name(args.attack, args.attack_steps)
    command = ("KERAS_BACKEND=" + backend + " python benchmarks/methods.py "
               + " ".join(a for a in (argv if argv is not None else sys.argv[1:])))
    lines = [
        "# Methods on MNIST-5k",
        "",
        f"`{command.strip()}`",
        "",
        f"Backend {backend}, {os.cpu_count()} CPU cores.  small_cnn, {len(x_train)} training "
        f"digits, clean burn-in {args.burn_in} epochs, then {args.epochs} epochs per method "
        f"(batch {args.batch_size}, recipe optimizer: lr {args.lr}, global clipnorm "
        f"{args.clipnorm}, EMA τ 0.995).  Training radius L∞ {args.eps}, inner attack "
        f"{args.train_steps} steps.  The averaged (EMA) model is evaluated on "
        f"{len(x_test)} test digits with {attack}.",
        "",
        "| method | clean | robust ε=0.1 | robust ε=0.2 | robust ε=0.3 | s/epoch |",
        "|---|---|---|---|---|---|",
    ]
    for name, clean, robust, per_epoch in rows:
        lines.append(f"| {name} | {clean:.3f} | " + " | ".join(f"{r:.3f}" for r in robust)
                     + f" | {per_epoch:.1f} |")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines[-len(rows) - 2:]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
