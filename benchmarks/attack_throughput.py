"""AutoAttack (standard) on a saved model: robust accuracy, seconds and points per second of
each component, on the current backend; on PyTorch also torchattacks' attacks on the same
points (an independent implementation) with their accuracy and time, per component.
torchattacks' gradient attacks run the reference AutoAttack's 100 iterations
(``--reference-steps``; torchattacks' own ``AutoAttack`` uses 10).

    KERAS_BACKEND=jax python benchmarks/attack_throughput.py runs/mnist/averaged.keras \
        --n 1000 --eps 0.1 --eps 0.2 --eps 0.3

Prints a Markdown table and writes it to ``benchmarks/results/attack_throughput_<backend>.md``
(``--out`` to change).  Run one backend at a time on an otherwise idle machine.
``--reference-only`` (torch) runs and prints only torchattacks, to time it beside a
``keras-dyart evaluate`` run of ours on the same points.

``--backends tensorflow jax torch`` runs the same command once per backend, one after the
other (each in its own process), with torchattacks in the PyTorch run, and prints one table:
each backend's robust accuracy, seconds per component and in all, its time against
torchattacks', and how many points' outcomes (robust or not, at some radius) differ from the
first backend's, torchattacks' included, with at each radius how many points each of the two
broke that the other did not (``benchmarks/results/attack_throughput_backends.md`` unless
``--out``).
With ``--chunk K`` the points go in chunks of K, every backend (and torchattacks) running
each chunk in turn before the next chunk starts, so that a drift in the machine's speed
moves all of them alike; the table adds up the chunks and gives the spread of the per-chunk
time ratios.  With ``--state DIR`` each finished (chunk, backend) run is kept there and a
later call with the same arguments skips it: a long comparison (1,000 points at three
radii takes hours on two cores) can be stopped and resumed.  Each chunk is a process of its
own, so each pays its start-up and compilation.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import keras
import numpy as np

import keras_dyart  # noqa: F401  (registers the method models for loading)
from keras_dyart import datasets
from keras_dyart.attacks.autoattack import NAMES
from keras_dyart.attacks.reference import torchattacks_autoattack
from keras_dyart.evaluation import evaluate

# Our components and the torchattacks classes that run them.
_THEIRS = {"apgd-ce": "APGD", "apgd-t": "APGDT", "fab-t": "FAB", "square": "Square"}


def _points(n: int) -> str:
    return f"{n} point" + ("" if n == 1 else "s")


def _reference(model, x, y, epsilons, steps):
    """torchattacks' AutoAttack per radius: (robust accuracies, seconds, seconds per
    component over all radii, per-point outcomes ``(N, radii)``: 1 where the model still
    classifies torchattacks' example right).  The outcomes are read outside the timing."""
    accs, seconds, parts, robust = [], [], {}, []
    for e in epsilons:
        acc, x_adv, s = torchattacks_autoattack(model, x, y, e, steps=steps, timings=parts)
        accs.append(acc)
        seconds.append(s)
        logits = model.predict(x_adv, batch_size=500, verbose=0)
        robust.append(np.argmax(logits, axis=-1) == np.asarray(y))
    return accs, seconds, parts, np.stack(robust, axis=1)


def _settings(args, epsilons) -> dict:
    """What a kept chunk must have been run with to be reused by a resumed comparison."""
    return {"model": os.path.abspath(args.model), "dataset": args.dataset,
            "epsilons": list(epsilons), "batch_size": args.batch_size,
            "reference_steps": None if args.no_reference else args.reference_steps}


def _merge(chunks: list) -> dict:
    """One backend's record over consecutive chunks of points: times and components
    added up, accuracies weighted by the chunks' sizes, per-point outcomes in order; for
    torchattacks (in the PyTorch records) the same, its per-point outcomes None for the
    points of chunks kept before they were recorded."""
    n = sum(r["n"] for r in chunks)

    def weighted(records, key):     # a mean (scalar or per radius) weighted by chunk size
        sizes = np.asarray([r["n"] for r in records], float)
        values = np.asarray([r[key] for r in records], float)
        return (np.tensordot(sizes, values, 1) / n).tolist()

    def total(parts):
        out = {}
        for p in parts:
            for k, v in p.items():
                out[k] = out.get(k, 0.0) + v
        return out

    merged = {"backend": chunks[0]["backend"], "n": n,
              "seconds": sum(r["seconds"] for r in chunks),
              "clean": weighted(chunks, "clean"), "robust": weighted(chunks, "robust"),
              "components": total(r["components"] for r in chunks),
              "robust_points": [p for r in chunks for p in r["robust_points"]],
              "chunk_seconds": [r["seconds"] for r in chunks]}
    if all("reference" in r for r in chunks):
        refs = [dict(r["reference"], n=r["n"]) for r in chunks]
        merged["reference"] = {
            "robust": weighted(refs, "robust"),
            "seconds": sum(r["seconds"] for r in refs),
            "components": total(r["components"] for r in refs),
            "steps": refs[0]["steps"], "chunk_seconds": [r["seconds"] for r in refs],
            "robust_points": [p for r in refs
                              for p in r.get("robust_points", [None] * r["n"])]}
    return merged


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help=".keras file of a logits model (or a method model)")
    parser.add_argument("--n", type=int, default=1000, help="test points (the first N)")
    parser.add_argument("--eps", action="append", type=float, help="radius; repeatable")
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--no-reference", action="store_true",
                        help="skip torchattacks on the torch backend")
    parser.add_argument("--reference-only", action="store_true",
                        help="run only torchattacks (torch backend), e.g. beside a "
                             "`keras-dyart evaluate` run of ours on the same points")
    parser.add_argument("--reference-steps", type=int, default=100,
                        help="iterations of torchattacks' APGD-CE, APGD-T and FAB-T (100 as "
                             "in the reference AutoAttack; 10 is torchattacks' AutoAttack)")
    parser.add_argument("--backends", nargs="+", choices=["tensorflow", "jax", "torch"],
                        help="run once per backend, one after the other, and compare")
    parser.add_argument("--chunk", type=int, default=None,
                        help="with --backends: points per chunk, every backend running each "
                             "chunk in turn (default: all N at once)")
    parser.add_argument("--state", default=None,
                        help="with --backends: keep each finished (chunk, backend) run here "
                             "and skip it when called again (resume)")
    parser.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)  # a chunk
    parser.add_argument("--json", default=None, help=argparse.SUPPRESS)  # for --backends
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    epsilons = args.eps or [0.1, 0.2, 0.3]
    backend = keras.backend.backend()
    if args.backends:
        if args.reference_only:
            parser.error("--backends and --reference-only do not go together")
        if args.chunk is not None and args.chunk < 1:
            parser.error(f"--chunk must be a positive number of points; got {args.chunk}")
        return compare_backends(args, epsilons)
    if args.chunk is not None or args.state is not None:
        parser.error("--chunk and --state go with --backends")

    _, _, x, y = datasets.load(args.dataset)
    if not 0 <= args.start < len(x):
        parser.error(f"--start must be in [0, {len(x)}); got {args.start}")
    x, y = x[args.start:args.start + args.n], y[args.start:args.start + args.n]
    args.n = len(x)
    model = keras.saving.load_model(args.model, compile=False)
    model = getattr(model, "classifier", model)

    if args.reference_only:
        if backend != "torch":
            parser.error("--reference-only needs KERAS_BACKEND=torch (torchattacks)")
        print(f"torchattacks 3.5.1 AutoAttack standard (L∞, {args.reference_steps} "
              f"iterations) on {args.n} {args.dataset} test points, model "
              f"{os.path.basename(args.model)}:")
        accs, seconds, parts, _ = _reference(model, x, y, epsilons, args.reference_steps)
        for e, acc, s in zip(epsilons, accs, seconds):
            print(f"  eps {e:g}: robust accuracy {100 * acc:.1f} % in {s:.0f} s")
        print(f"  total {sum(seconds):.0f} s; per component: "
              + ", ".join(f"{k} {v:.0f} s" for k, v in parts.items()))
        return

    t0 = time.perf_counter()
    report = evaluate(model, x, y, "autoattack", epsilons, batch_size=args.batch_size)
    total = time.perf_counter() - t0

    lines = [f"AutoAttack standard (L∞) on {args.n} {args.dataset} test points, "
             f"{backend} backend, model {os.path.basename(args.model)}; clean accuracy "
             f"{100 * report.clean_accuracy:.1f} %.", "",
             "| implementation | " + " | ".join(f"robust acc. eps {e:g}" for e in epsilons)
             + " | seconds |",
             "|---|" + "---|" * (len(epsilons) + 1),
             "| keras-dyart | " + " | ".join(f"{100 * report.robust_accuracy[e]:.1f} %"
                                            for e in epsilons) + f" | {total:.0f} |"]
    parts = {}
    if backend == "torch" and not args.no_reference:
        accs, seconds, parts, their_points = _reference(model, x, y, epsilons,
                                                        args.reference_steps)
        lines.append(f"| torchattacks 3.5.1, {args.reference_steps} iterations | "
                     + " | ".join(f"{100 * a:.1f} %" for a in accs)
                     + f" | {sum(seconds):.0f} |")
    lines += ["", "Per component (keras-dyart; each runs only on the points still robust, "
              "over all radii; FAB-T once for every radius):", "",
              "| component | seconds | points attacked | points per second |"
              + (" torchattacks (s) | ours / torchattacks |" if parts else ""),
              "|---|---|---|---|" + ("---|---|" if parts else "")]
    attacked = {}
    remaining = {e: int(round(report.clean_accuracy * args.n)) for e in epsilons}
    for name in report.attacks:
        if name == "fab-t":
            attacked[name] = max(remaining.values())
        else:
            attacked[name] = sum(remaining.values())
        remaining = {e: int(round(report.accuracy_after[name][e] * args.n)) for e in epsilons}
    for name in report.attacks:
        s = report.seconds[name]
        n = attacked[name]
        row = (f"| {NAMES.get(name, name)} | {s:.1f} | {n} | "
               f"{(n / s if s > 0 else float('nan')):.0f} |")
        if parts:
            theirs = parts.get(_THEIRS.get(name), 0.0)
            row += f" {theirs:.1f} | {(s / theirs if theirs > 0 else float('nan')):.2f} |"
        lines.append(row)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.json:
        robust = np.asarray(report.robust).reshape(len(y), -1).astype(bool)
        record = {"backend": backend, "n": len(y), **_settings(args, epsilons),
                  "seconds": total, "clean": report.clean_accuracy,
                  "robust": [report.robust_accuracy[e] for e in epsilons],
                  "components": {NAMES.get(k, k): report.seconds[k] for k in report.attacks},
                  "robust_points": robust.astype(int).tolist()}
        if parts:
            record["reference"] = {"robust": accs, "seconds": sum(seconds),
                                   "components": {k: parts.get(v, 0.0)
                                                  for k, v in _THEIRS.items()},
                                   "steps": args.reference_steps,
                                   "robust_points": their_points.astype(int).tolist()}
        with open(args.json, "w") as f:
            json.dump(record, f)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"attack_throughput_{backend}.md")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write(text)


def compare_backends(args, epsilons):
    """One process per backend and chunk of points (the same command without
    ``--backends``), then one table over the chunks every backend finished."""
    here = os.path.abspath(__file__)
    chunk = args.chunk or args.n
    starts = list(range(0, args.n, chunk))
    with tempfile.TemporaryDirectory() as tmp:
        state = args.state or tmp
        os.makedirs(state, exist_ok=True)
        runs = {}
        for c, start in enumerate(starts):
            size = min(chunk, args.n - start)
            for b in args.backends:
                path = os.path.join(state, f"points{start}-{start + size}_{b}.json")
                if not os.path.exists(path):
                    command = [sys.executable, here, args.model, "--n", str(size),
                               "--start", str(start), "--dataset", args.dataset,
                               "--batch-size", str(args.batch_size),
                               "--reference-steps", str(args.reference_steps),
                               "--json", path + ".part",
                               "--out", os.path.join(tmp, f"{b}.md")]
                    command += [a for e in epsilons for a in ("--eps", str(e))]
                    if args.no_reference:
                        command.append("--no-reference")
                    print(f"-- {b}, points {start}-{start + size} "
                          f"(chunk {c + 1} of {len(starts)})", flush=True)
                    env = dict(os.environ, KERAS_BACKEND=b)
                    done = subprocess.run(command, env=env)
                    if done.returncode != 0:
                        sys.exit(f"the {b} run failed (exit {done.returncode})")
                    os.replace(path + ".part", path)
                with open(path) as f:
                    record = json.load(f)
                for key, value in _settings(args, epsilons).items():
                    if record.get(key) != value:
                        sys.exit(f"{path} was run with {key} {record.get(key)!r}, not "
                                 f"{value!r}: use another --state")
                runs[(c, b)] = record
    records = [_merge([runs[(c, b)] for c in range(len(starts))]) for b in args.backends]
    names = [NAMES.get(k, k) for k in _THEIRS]
    reference = next((r["reference"] for r in records if "reference" in r), None)
    first = records[0]
    base = np.asarray(first["robust_points"], bool)
    order = ("one backend after another" if len(starts) == 1 else
             f"in {len(starts)} chunks of {chunk} points, every backend running each chunk "
             f"in turn; vs torchattacks: the whole run's ratio (the per-chunk ratios' range)")
    lines = [f"AutoAttack standard (L∞) on {args.n} {args.dataset} test points, model "
             f"{os.path.basename(args.model)}, {order} "
             f"(clean accuracy {100 * first['clean']:.1f} %).", "",
             "| implementation | " + " | ".join(f"eps {e:g}" for e in epsilons) + " | "
             + " | ".join(f"{n} (s)" for n in names) + " | seconds | vs torchattacks | "
             f"points whose outcome differs from {first['backend']} |",
             "|---|" + "---|" * (len(epsilons) + len(names) + 3)]

    def row(label, robust, components, seconds, differ, chunk_seconds=()):
        ratio = (f"{seconds / reference['seconds']:.2f}×" if reference
                 and reference["seconds"] > 0 else "–")
        if ratio != "–" and len(chunk_seconds) > 1:
            per_chunk = [a / b for a, b in zip(chunk_seconds, reference["chunk_seconds"])
                         if b > 0]
            ratio += f" ({min(per_chunk):.2f}–{max(per_chunk):.2f})"
        return (f"| {label} | " + " | ".join(f"{100 * a:.1f} %" for a in robust) + " | "
                + " | ".join(f"{components.get(n, 0.0):.1f}" for n in components) + " | "
                + f"{seconds:.0f} | {ratio} | {differ} |")

    versus = []
    if reference:
        theirs = {NAMES.get(k, k): v for k, v in reference["components"].items()}
        recorded = np.asarray([p is not None for p in reference["robust_points"]])
        differ = "–"
        if recorded.any():
            ref = np.asarray([p for p in reference["robust_points"] if p is not None], bool)
            ours = base[recorded]
            differ = str(int(np.any(ref != ours, axis=1).sum()))
            if not recorded.all():
                differ += f" (of the {int(recorded.sum())} points recorded)"
            versus = ["", "Against torchattacks, point by point"
                      + ("" if recorded.all() else f" (the {int(recorded.sum())} points "
                         "whose outcomes it recorded)") + ": "
                      + "; ".join(f"eps {e:g}: {_points(int((~ours[:, i] & ref[:, i]).sum()))} "
                                  f"broken by keras-dyart ({first['backend']}) only, "
                                  f"{int((ours[:, i] & ~ref[:, i]).sum())} by torchattacks only"
                                  for i, e in enumerate(epsilons)) + "."]
        lines.append(row(f"torchattacks 3.5.1, {reference['steps']} iterations (torch)",
                         reference["robust"], theirs, reference["seconds"], differ))
    for r in records:
        points = np.asarray(r["robust_points"], bool)
        differ = int(np.any(points != base, axis=1).sum())
        lines.append(row(f"keras-dyart, {r['backend']}", r["robust"],
                         {n: r["components"].get(n, 0.0) for n in names}, r["seconds"],
                         differ, r["chunk_seconds"]))
    text = "\n".join(lines + versus) + "\n"
    print(text)
    out = args.out or os.path.join(os.path.dirname(here), "results",
                                   "attack_throughput_backends.md")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
