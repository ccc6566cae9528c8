"""Compare evaluation reports of the same model and points, e.g. one per backend.

    python benchmarks/compare_reports.py RUN/eval_tensorflow/eval_autoattack.json \
        RUN/eval_jax/eval_autoattack.json RUN/eval_torch/eval_autoattack.json \
        [--out benchmarks/results/autoattack_backends.md]

Reads the ``eval_<attack>.json`` files that `keras-dyart evaluate` writes and prints a
Markdown table: accuracy after each attack of the sequence per radius and report, the
seconds of each component, and, against the first report, the number of points whose
outcome (robust or not, per radius) differs.  Writes the table to ``--out`` if given.
"""

import argparse
import json
import os


def _load(path):
    with open(path) as f:
        report = json.load(f)
    report["_path"] = path
    return report


def _outcomes(report):
    keys = [f"robust@{e:g}" for e in report["epsilons"]]
    return {p["index"]: tuple(bool(p[k]) for k in keys) for p in report["points"]}


def compare(reports):
    """The Markdown table (a string) comparing ``reports`` (dicts read from the JSON files)."""
    first = reports[0]
    for r in reports[1:]:
        if (r["n"], r["epsilons"], r["attacks"], r["norm"]) != \
                (first["n"], first["epsilons"], first["attacks"], first["norm"]):
            raise ValueError(f"{r['_path']} was not run with the same points, radii, norm "
                             f"and attacks as {first['_path']}.")
    eps = [f"{e:g}" for e in first["epsilons"]]
    names = [r["backend"] for r in reports]
    lines = [f"{first['attack']} ({first['norm']}), {first['n']} points; accuracy (%) after "
             "each attack (each runs on the points still robust), per radius and backend.", "",
             "| attack | " + " | ".join(f"{n} eps {e}" for e in eps for n in names) + " |",
             "|---|" + "---|" * (len(eps) * len(names))]
    lines.append("| clean | " + " | ".join(f"{100 * r['clean_accuracy']:.1f}"
                                           for _ in eps for r in reports) + " |")
    for attack in first["attacks"]:
        lines.append(f"| {attack} | " + " | ".join(
            f"{100 * r['accuracy_after'][attack][e]:.1f}" for e in eps for r in reports) + " |")
    lines += ["", "| backend | " + " | ".join(f"{a} (s)" for a in first["attacks"])
              + " | total (s) | points whose outcome differs from " + names[0] + " |",
              "|---|" + "---|" * (len(first["attacks"]) + 2)]
    base = _outcomes(first)
    for r in reports:
        mine = _outcomes(r)
        differ = sum(mine.get(i) != o for i, o in base.items())
        seconds = [r["seconds"][a] for a in first["attacks"]]
        lines.append(f"| {r['backend']} | " + " | ".join(f"{s:.0f}" for s in seconds)
                     + f" | {sum(seconds):.0f} | {differ} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", help="eval_<attack>.json files")
    parser.add_argument("--out", default=None, help="also write the table here")
    args = parser.parse_args()
    for path in args.reports:
        if not os.path.isfile(path):
            parser.error(f"report {path!r} does not exist")
    text = compare([_load(p) for p in args.reports])
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
