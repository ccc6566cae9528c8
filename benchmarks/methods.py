"""Which method should a user pick?  A tuned comparison of the six training methods on
MNIST-5k, judged by AutoAttack on test digits never used to choose a setting.

    KERAS_BACKEND=tensorflow python benchmarks/methods.py --all      # the study (hours)
    KERAS_BACKEND=tensorflow python benchmarks/methods.py --quick    # a smoke run (minutes)

The study has seven phases; each run is a `keras-dyart train` run (the CLI's recipe: clean
burn-in, then the method with SGD, weight decay, clipping and the weight average) in its
own run directory, and each finished run leaves one JSON record.  A phase skips the runs
whose record exists and resumes an interrupted one (``--resume``), so the study can be
stopped at any time and continued by the same command.

1. ``tune``: for each method the same number of settings (`GRIDS`: at most 8 per method),
   seed 0, trained on the first 3,000 of the 4,000 training digits (``--holdout 1000``);
   each averaged model is attacked on the 1,000 held-out training digits (APGD-CE then
   APGD-T with its 3 likeliest target classes, L∞ 0.3: a third of AutoAttack's 9, to keep
   tuning affordable).  The chosen setting of a method is the one with the highest
   validation robust accuracy (ties: clean accuracy).  The test digits are not touched.
2. ``ablation``: DyART's chosen setting with one knob changed at a time (`ABLATIONS`: the
   margin cut-off r0 against the threat radius, α and λ at the chosen rate, a shorter
   search), on the same validation split and attack, to find out what moves DyART's
   robust accuracy; the report sets each against the chosen setting.  A variant is a
   candidate for a new default only where it beats the chosen setting here.
3. ``final``: each method's chosen setting, seeds 0, 1, 2, on all 4,000 training digits,
   the same number of epochs; standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square) on the
   1,000 test digits at L∞ 0.1, 0.2 and 0.3.
4. ``warm-start``: DyART's chosen setting with ``--warm-start 5`` and with
   ``--warm-start 3`` (warm-started boundary searches, `DyARTModel(warm_start=k)`), the
   same seeds, epochs and AutoAttack as ``final``, whose DyART runs are the cold default
   they are compared with (issue 19: epoch time against robust accuracy).
5. ``timing``: each method's epoch time at its chosen setting (and DyART's with warm
   starts), measured side by side in one process on an otherwise idle machine: every
   method in turn trains a few epochs on the 4,000 digits, in two rounds, the first
   (compiling) epoch of each left out; ``<results>/timing.json``.  The final runs' own
   epoch times are kept too, but a long study shares the machine now and then, and a
   comparison at equal cost needs times taken under the same conditions.
6. ``equal-time``: the same at DyART's training time: each other method trains for the
   epochs that its timed epoch fits into DyART's (timed epoch × the study's epochs), and
   so does DyART with warm-started searches (``equal_time_warm``: the warm starts that
   kept the cold search's robustness at equal epochs, so that its saved time goes into
   more epochs); AutoAttack at L∞ 0.3 only (the headline radius; 0.1, where most points
   survive to Square, costs the most).
7. ``report``: the tables (mean ± standard deviation over seeds), the verdict computed from
   paired per-seed differences, and two plots: ``--report`` (benchmarks/results/methods.md)
   and ``--images`` (docs/img/methods_aa_vs_clean.png, methods_aa_vs_time.png), from the
   JSON records in ``--results`` (benchmarks/results/methods/<phase>/<run>.json).

A run outlives its run directory (under ``--runs``, which a fresh checkout lacks): when its
training ends, its averaged model is copied to ``<results>/models/<phase>/<run>.keras`` and
its epoch times and training logs (history.csv: losses, DyART's boundary fraction and mean
margin) to ``<results>/points/<phase>/<run>.train.json``; the attack then runs 100
points at a time (one `keras_dyart.evaluation.evaluate` call per chunk, the run's seed),
each finished chunk's per-point report appended to ``<results>/points/<phase>/<run>.json``,
so an attack that is stopped resumes at its next chunk, in another checkout too.  These
files are committed with the records: the saved models are the ones an independent attack
can check, and the per-point reports say which attack broke each point.

Times are each epoch's wall time from history.csv (`keras_dyart.recipe.EpochSeconds`);
seconds per epoch is their median, which a busy moment of a shared machine moves less
than the sum.  ``--quick`` runs every phase with a few points, one epoch and tiny attacks
with two of the methods (PGD-AT and DyART) (a test of the pipeline, not a result) into
``runs/methods-quick`` unless told otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

METHODS = ("clean", "pgd-at", "trades", "mart", "mma", "dyart")

#: The settings tried per method (CLI options over `keras-dyart train`'s defaults: lr 0.05,
#: clipnorm 1.0, constant rate, 8 method epochs after 3 clean ones), at most 8 for each
#: method, in the order they were run.  The grids grew on the validation split only: the
#: first grids (6 settings, rates 0.05 to 0.01) found DyART, PGD-AT and TRADES best at the
#: largest rate, so each got its best setting at 0.1, then at 0.2 when 0.1 won again; MART,
#: tuned next and started at 0.1 and 0.05, collapsed there (clean accuracy near chance at
#: β 3), so its last settings step down to 0.02 and 0.01.  MMA, started at 0.1 and 0.05 too,
#: was best at 0.1 for every d_max, so its seventh setting is the best d_max at 0.2.
GRIDS = {
    # robust accuracy of a clean model is 0 whatever its setting: nothing to choose
    "clean": [{}],
    "pgd-at": ([{"lr": lr, "clipnorm": c} for lr in (0.05, 0.02, 0.01) for c in (1.0, 0.1)]
               + [{"lr": 0.1, "clipnorm": 1.0}, {"lr": 0.2, "clipnorm": 1.0}]),
    "trades": ([{"kl_beta": b, "lr": lr} for b in (1.0, 3.0, 6.0) for lr in (0.05, 0.02)]
               + [{"kl_beta": 1.0, "lr": 0.1}, {"kl_beta": 1.0, "lr": 0.2}]),
    "mart": ([{"kl_beta": b, "lr": lr} for b in (1.0, 3.0) for lr in (0.1, 0.05)]
             + [{"kl_beta": 1.0, "lr": 0.02}, {"kl_beta": 1.0, "lr": 0.01},
                {"kl_beta": 3.0, "lr": 0.02}, {"kl_beta": 6.0, "lr": 0.02}]),
    "mma": ([{"d_max": d, "lr": lr} for d in (0.3, 0.4, 0.5) for lr in (0.1, 0.05)]
            + [{"d_max": 0.4, "lr": 0.2}]),
    # α 0.3: the paper's CIFAR α (3 per unit of 8/255-sized margins) scaled to MNIST's 0.3;
    # α is given in every setting (train's default was 3 when the study ran, 0.3 since)
    "dyart": [{"alpha": 3.0}, {"alpha": 3.0, "lam": 300.0}, {"alpha": 3.0, "lam": 3000.0},
              {"alpha": 1.0}, {"alpha": 0.3}, {"alpha": 3.0, "lr": 0.02},
              {"alpha": 0.3, "lr": 0.1}, {"alpha": 0.3, "lr": 0.2}],
}

#: DyART's chosen setting with one change each (the ``ablation`` phase).  r0: the chosen r0
#: 0.6 pushes margins up to twice the threat radius 0.3; 0.35 and 0.45 spend the robust
#: term on the points AutoAttack at 0.3 can still break, 1.0 on more.  α and λ: the
#: tuning grid tried them only at the default rate 0.05, the chosen setting is at 0.1.
#: n_iter 10: half the search (the cost that sets DyART's epoch time).
ABLATIONS = [{"r0": 0.35}, {"r0": 0.45}, {"r0": 1.0}, {"alpha": 1.0}, {"alpha": 3.0},
             {"lam": 300.0}, {"lam": 3000.0}, {"n_iter": 10}]

FULL = {
    "limit": 4000, "holdout": 1000, "epochs": 8, "burn_in": 3, "batch_size": 128,
    "seeds": (0, 1, 2), "test_n": 1000, "eps": (0.1, 0.2, 0.3), "equal_time_eps": (0.3,),
    "val_eps": 0.3,
    "val_attack": "apgd-ce,apgd-t", "val_options": {"apgd-t": {"n_target_classes": 3}},
    "val_text": "APGD-CE then APGD-T with 3 target classes",
    "attack_options": None, "common": {},
    "grids": GRIDS, "ablations": ABLATIONS, "max_epochs": 200, "methods": METHODS,
    "warm_starts": (5, 3), "equal_time_warm": (5,), "timing_epochs": 3, "timing_rounds": 2,
    "attack_chunk": 100,
}

QUICK = {
    "limit": 320, "holdout": 64, "epochs": 1, "burn_in": 1, "batch_size": 64,
    "seeds": (0, 1), "test_n": 40, "eps": (0.1, 0.2, 0.3), "equal_time_eps": (0.3,),
    "val_eps": 0.3,
    "val_attack": "apgd-ce,apgd-t", "val_text": "APGD-CE then APGD-T, 5 iterations",
    "val_options": {"apgd-ce": {"n_iter": 5},
                    "apgd-t": {"n_iter": 5, "n_target_classes": 2}},
    "attack_options": {"apgd-ce": {"n_iter": 5}, "apgd-t": {"n_iter": 5,
                                                            "n_target_classes": 2},
                       "fab-t": {"n_iter": 5, "n_target_classes": 2},
                       "square": {"n_queries": 20}},
    "common": {"n_iter": 3, "train_steps": 2, "pgd_steps": 2},
    "grids": {"pgd-at": GRIDS["pgd-at"][:1], "dyart": GRIDS["dyart"][3:5]},
    "ablations": [{"r0": 1.0}], "max_epochs": 3, "methods": ("pgd-at", "dyart"),
    "warm_starts": (1,), "equal_time_warm": (1,), "timing_epochs": 2, "timing_rounds": 1,
    "attack_chunk": 25,
}


def tag(setting: dict) -> str:
    """A run-name fragment for a setting: ``lr0.02-clipnorm0.1`` (``default`` for {})."""
    return "-".join(f"{k.replace('_', '')}{v:g}" for k, v in sorted(setting.items())) \
        or "default"


def train_args(method: str, setting: dict, seed: int, epochs: int, plan: dict,
               holdout: bool, out: str) -> list[str]:
    """The `keras-dyart train` arguments of one run."""
    args = ["train", "--method", method, "--seed", str(seed), "--epochs", str(epochs),
            "--burn-in", str(plan["burn_in"]), "--batch-size", str(plan["batch_size"]),
            "--limit", str(plan["limit"]), "--out", out, "--verbose", "0"]
    if holdout:
        # train's own PGD check on 100 held-out digits; the study attacks all of them
        args += ["--holdout", str(plan["holdout"]), "--eval-n", str(min(100, plan["holdout"])),
                 "--eps", str(plan["val_eps"])]
    else:
        # train's own PGD check on 100 test digits; the study runs AutoAttack on all
        args += ["--eval-n", str(min(100, plan["test_n"]))] + sum(
            (["--eps", str(e)] for e in plan["eps"]), [])
    for key, value in {**plan["common"], **setting}.items():
        args += ["--" + key.replace("_", "-"), str(value)]
    return args


def run_train(args: list[str], out: str) -> None:
    """Run `keras-dyart train` in this process: resumes an interrupted run, replaces a
    half-written one."""
    import keras
    from typer.main import get_command

    from keras_dyart_apps.main import app

    if os.path.exists(os.path.join(out, "config.json")):
        args = args + (["--resume"] if os.path.isdir(os.path.join(out, "backup"))
                       else ["--overwrite"])
    keras.backend.clear_session()
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "train.log"), "a") as log, \
            contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        get_command(app).main(args, prog_name="keras-dyart", standalone_mode=False)


def history_rows(out: str) -> list[dict]:
    """A run's history.csv, one dict per epoch (burn-in and method epochs), its numbers as
    floats and its empty cells left out."""
    import csv

    def value(text):
        try:
            return float(text)
        except ValueError:
            return text

    with open(os.path.join(out, "history.csv")) as f:
        return [{k: value(v) for k, v in r.items() if v not in (None, "")}
                for r in csv.DictReader(f)]


def epoch_seconds(out: str) -> list[float]:
    """The method epochs' wall times from a run's history.csv."""
    return [r["epoch_seconds"] for r in history_rows(out) if "epoch_seconds" in r]


def attack_run(model_path: str, out: str, x, y, attack: str, eps, seed: int, options,
               chunk: int, points_path: str, log=print) -> dict:
    """Attack a saved model ``chunk`` points at a time, resumable: each finished chunk's
    per-point report is appended to ``points_path`` (JSON), and a later call attacks only
    the points after the last finished chunk.  Writes the merged report as
    eval_<name>.json in ``out`` and returns its summary.

    Each chunk is one `keras_dyart.evaluation.evaluate` call with the run's seed, so the
    outcome is that of the attack run on each chunk of points in turn (an attack's outcome
    on a point does not depend on the other points of its batch beyond the random draws).
    """
    import keras
    import numpy as np

    from keras_dyart import evaluation, io

    done = json.load(open(points_path)) if os.path.exists(points_path) else {"chunks": []}
    # the finished chunks must be of this very attack, or the merged numbers would mix two
    this = {"attack": attack, "n": len(x), "eps": [float(e) for e in eps], "seed": seed}
    other = {k: done[k] for k in this if k in done and done[k] != this[k]}
    if other:
        raise SystemExit(f"{points_path} holds the chunks of another attack ({other}, "
                         f"here {this}): remove it to attack again")
    done.update(this, chunk=chunk)
    model = None
    start = sum(c["n"] for c in done["chunks"])
    while start < len(x):
        if model is None:
            keras.backend.clear_session()
            model = keras.saving.load_model(model_path, compile=False)
        stop = min(len(x), start + chunk)
        begin = time.perf_counter()
        report = evaluation.evaluate(model, x[start:stop], y[start:stop], attack, list(eps),
                                     seed=seed, options=options)
        part = report.to_dict(per_point=True)
        part["start"], part["seconds_total"] = start, time.perf_counter() - begin
        done["chunks"].append(part)
        io.write_json(points_path, done, compact=True)   # 1,000 rows a run, committed
        log(f"  points {start}-{stop - 1} of {len(x)}: robust "
            + ", ".join(f"{e:g} {report.robust_accuracy[e]:.3f}" for e in eps)
            + f" ({part['seconds_total']:.0f} s)")
        start = stop
    merged = merge_chunks(done["chunks"])
    name = "autoattack" if attack == "autoattack" else attack.replace(",", "+")
    io.write_json(os.path.join(out, f"eval_{name}.json"), merged)
    keys = [evaluation.eps_key(e) for e in eps]
    robust = np.array([[r[f"robust@{k}"] for k in keys] for r in merged["points"]], bool)
    return {
        "attack": attack, "n": merged["n"], "clean": merged["clean_accuracy"],
        "robust": {f"{e:g}": merged["robust_accuracy"][k] for e, k in zip(eps, keys)},
        # per point, for paired comparisons: bit i of the hex string is point i
        "robust_points": {f"{e:g}": _bits(robust[:, i]) for i, e in enumerate(eps)},
        "accuracy_after": merged["accuracy_after"],
        "attack_seconds": round(sum(c["seconds_total"] for c in done["chunks"]), 1),
        "attack_chunks": len(done["chunks"]),
    }


def merge_chunks(chunks: list[dict]) -> dict:
    """One report dict (`RobustnessReport.to_dict`) from the reports of consecutive
    chunks of points: accuracies weighted by chunk size, seconds summed, points in order
    with their index in the whole set."""
    n = sum(c["n"] for c in chunks)

    def mean(get):
        return sum(get(c) * c["n"] for c in chunks) / n

    first = chunks[0]
    eps = list(first["robust_accuracy"])
    points = [{**r, "index": c["start"] + r["index"]} for c in chunks for r in c["points"]]
    return {
        **{k: first[k] for k in ("attack", "attacks", "norm", "epsilons", "backend")},
        "n": n, "chunks": [[c["start"], c["n"]] for c in chunks],
        "clean_accuracy": mean(lambda c: c["clean_accuracy"]),
        "robust_accuracy": {e: mean(lambda c, e=e: c["robust_accuracy"][e]) for e in eps},
        "accuracy_after": {a: {e: mean(lambda c, a=a, e=e: c["accuracy_after"][a][e])
                               for e in eps} for a in first["accuracy_after"]},
        "seconds": {a: sum(c["seconds"][a] for c in chunks) for a in first["seconds"]},
        "points": points,
    }


def _bits(flags) -> str:
    import numpy as np

    return np.packbits(np.asarray(flags, bool), bitorder="little").tobytes().hex()


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE,
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class Study:
    """The phases over one plan (`FULL` or `QUICK`), run directories and records."""

    def __init__(self, plan: dict, runs: str, results: str, log=print):
        self.plan, self.runs, self.results, self.log = plan, runs, results, log
        self._data = None

    def data(self):
        """(x_val, y_val, x_test, y_test): the held-out training digits and the test
        digits of the plan."""
        if self._data is None:
            from keras_dyart import datasets

            x, y, x_test, y_test = datasets.load("mnist5k")
            p = self.plan
            x, y = x[:p["limit"]], y[:p["limit"]]
            self._data = (x[-p["holdout"]:], y[-p["holdout"]:], x_test[:p["test_n"]],
                          y_test[:p["test_n"]])
        return self._data

    def record_path(self, phase: str, name: str) -> str:
        return os.path.join(self.results, phase, name + ".json")

    def train_info_path(self, phase: str, name: str) -> str:
        """A run's epoch times and training logs, kept beside its attack's points."""
        return os.path.join(self.results, "points", phase, name + ".train.json")

    def records(self, phase: str) -> list[dict]:
        folder = os.path.join(self.results, phase)
        if not os.path.isdir(folder):
            return []
        return [json.load(open(os.path.join(folder, f))) for f in sorted(os.listdir(folder))
                if f.endswith(".json")]

    def run(self, phase: str, method: str, setting: dict, seed: int, epochs: int) -> dict:
        """One run of a phase: train (or resume), attack, write and return its record."""
        name = f"{method}-{tag(setting)}-e{epochs}-s{seed}"
        path = self.record_path(phase, name)
        if os.path.exists(path):
            return json.load(open(path))
        out = os.path.join(self.runs, phase, name)
        validation = phase in ("tune", "ablation")
        # What outlives the run directory (which a new checkout lacks): the trained model
        # and its epoch times (models/), and the attack's finished chunks (points/).
        saved = os.path.join(self.results, "models", phase, name + ".keras")
        trained = self.train_info_path(phase, name)
        points = os.path.join(self.results, "points", phase, name + ".json")
        if not (os.path.exists(saved) and os.path.exists(trained)):
            if not os.path.exists(os.path.join(out, "metrics.json")):
                self.log(f"[{phase}] training {name}")
                run_train(train_args(method, setting, seed, epochs, self.plan, validation,
                                     out), out)
            os.makedirs(os.path.dirname(saved), exist_ok=True)
            shutil.copyfile(os.path.join(out, "averaged.keras"), saved)
            from keras_dyart import io

            io.write_json(trained, {"epoch_seconds": epoch_seconds(out), "commit": commit(),
                                    "run_dir": out, "history": history_rows(out)})
        train_info = json.load(open(trained))
        os.makedirs(out, exist_ok=True)
        x_val, y_val, x_test, y_test = self.data()
        p = self.plan
        self.log(f"[{phase}] attacking {name}")
        if validation:
            result = attack_run(saved, out, x_val, y_val, p["val_attack"], (p["val_eps"],),
                                seed, p["val_options"], p["attack_chunk"], points, self.log)
        else:
            eps = p["equal_time_eps"] if phase == "equal-time" else p["eps"]
            result = attack_run(saved, out, x_test, y_test, "autoattack", eps, seed,
                                p["attack_options"], p["attack_chunk"], points, self.log)
        seconds = train_info["epoch_seconds"]
        record = {
            "phase": phase, "name": name, "method": method, "setting": setting,
            "seed": seed, "epochs": epochs, "burn_in": p["burn_in"],
            "train_points": p["limit"] - (p["holdout"] if validation else 0),
            "evaluated_on": "held-out training digits" if validation else "test digits",
            "epoch_seconds": [round(s, 2) for s in seconds],
            "seconds_per_epoch": round(statistics.median(seconds), 2),
            "train_seconds": round(statistics.median(seconds) * epochs, 1),
            **result, "run_dir": out, "model": os.path.relpath(saved, self.results),
            "commit": train_info["commit"], "attack_commit": commit(),
            "backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
        }
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(record, f, indent=1)
        self.log(f"[{phase}] {name}: clean {record['clean']:.3f}, robust "
                 + ", ".join(f"{e} {a:.3f}" for e, a in record["robust"].items())
                 + f"; {record['seconds_per_epoch']} s/epoch, attack "
                 f"{record['attack_seconds']} s")
        return record

    # -- phases -------------------------------------------------------------------------

    def tune(self) -> dict:
        """Every setting of every method on the validation split; returns `chosen`."""
        # DyART first: its choice is also `keras-dyart train`'s default
        for method in sorted(self.plan["methods"], key=lambda m: m != "dyart"):
            for setting in self.plan["grids"][method]:
                self.run("tune", method, setting, 0, self.plan["epochs"])
        chosen = self.chosen()
        with open(os.path.join(self.results, "chosen.json"), "w") as f:
            json.dump(chosen, f, indent=1)
        return chosen

    def chosen(self, strict: bool = True) -> dict:
        """Each method's setting with the highest validation robust accuracy (ties: clean
        accuracy), from the ``tune`` records; ``strict=False``: of the methods tuned so
        far."""
        best = {}
        eps = f"{self.plan['val_eps']:g}"
        for r in self.records("tune"):
            if r["setting"] not in self.plan["grids"][r["method"]]:
                continue
            key = (r["robust"][eps], r["clean"])
            if r["method"] not in best or key > best[r["method"]][0]:
                best[r["method"]] = (key, r["setting"])
        missing = [m for m in self.plan["methods"] if m not in best]
        if missing and not strict:
            return {m: best[m][1] for m in self.plan["methods"] if m in best}
        if missing:
            raise SystemExit(f"the tune phase has not run for {missing}: run --phase tune")
        return {m: best[m][1] for m in self.plan["methods"]}

    def ablation_settings(self) -> list[dict]:
        """DyART's chosen setting with each of the plan's `ABLATIONS` applied."""
        chosen = self.chosen()["dyart"]
        return [{**chosen, **change} for change in self.plan["ablations"]]

    def ablation(self) -> None:
        for setting in self.ablation_settings():
            self.run("ablation", "dyart", setting, 0, self.plan["epochs"])

    def chosen_dyart_record(self) -> dict | None:
        """The tuning record of DyART's chosen setting (None before DyART was tuned)."""
        chosen = self.chosen(strict=False).get("dyart")
        return next((r for r in self.records("tune")
                     if r["method"] == "dyart" and r["setting"] == chosen), None)

    def ablated(self) -> dict | None:
        """DyART's best ablation setting where it beats the chosen setting on the
        validation split (robust accuracy, ties: clean accuracy); None before every
        ablation has run or where none beats it."""
        records = self.records("ablation")
        if len(records) < len(self.plan["ablations"]):
            return None
        eps = f"{self.plan['val_eps']:g}"
        base = self.chosen_dyart_record()
        if base is None:
            return None
        best = max(records, key=lambda r: (r["robust"][eps], r["clean"]))
        better = (best["robust"][eps], best["clean"]) > (base["robust"][eps], base["clean"])
        return best["setting"] if better else None

    def final(self) -> None:
        """Each method's chosen setting over the seeds, and DyART's best ablation where it
        beat the chosen setting on the validation split (a second DyART row, its extra
        tuning stated in the report)."""
        chosen, ablated = self.chosen(), self.ablated()
        for seed in self.plan["seeds"]:
            for method in self.plan["methods"]:
                self.run("final", method, chosen[method], seed, self.plan["epochs"])
            if ablated is not None:
                self.run("final", "dyart", ablated, seed, self.plan["epochs"])

    def warm_setting(self, k: int) -> dict:
        """DyART's chosen setting with searches warm-started for ``k`` iterations."""
        return {**self.chosen()["dyart"], "warm_start": k}

    @staticmethod
    def warm_label(k: int) -> str:
        """The name of DyART's runs (and timed epoch) with ``warm_start=k``."""
        return f"dyart, warm_start={k}"

    def warm_start(self) -> None:
        for k in self.plan["warm_starts"]:
            for seed in self.plan["seeds"]:
                self.run("warm-start", "dyart", self.warm_setting(k), seed,
                         self.plan["epochs"])

    def timing_path(self) -> str:
        return os.path.join(self.results, "timing.json")

    def timed(self) -> dict:
        """The ``timing`` phase's record ({} before it ran)."""
        path = self.timing_path()
        return json.load(open(path)) if os.path.exists(path) else {}

    def ablated_label(self, ablated: dict) -> str:
        """The report's name of DyART's runs at the ablation setting ``ablated``."""
        chosen = self.chosen()["dyart"]
        change = {k: v for k, v in ablated.items() if chosen.get(k) != v}
        return "dyart, " + ", ".join(f"{k}={v:g}" for k, v in sorted(change.items()))

    def labeller(self):
        """``(label, ablated_name)``: ``label(record)`` names a final or equal-time
        record's group, its method, or `ablated_label` for DyART's runs at its best
        ablation setting; ``ablated_name`` is that name (None without such a setting).
        The records that decide the setting are read once, here."""
        ablated = self.ablated()
        name = None if ablated is None else self.ablated_label(ablated)

        def label(record: dict) -> str:
            if name is not None and record["method"] == "dyart" \
                    and record["setting"] == ablated:
                return name
            if record["method"] == "dyart" and record["setting"].get("warm_start"):
                return self.warm_label(record["setting"]["warm_start"])
            return record["method"]

        return label, name

    def timing(self) -> dict:
        """Each method's epoch time at its chosen setting, and DyART's with warm starts,
        side by side: ``timing_rounds`` rounds of every entry in turn, each a
        ``timing_epochs``-epoch `keras-dyart train` run (no burn-in; a step costs the same
        whatever the weights) whose first, compiling, epoch is left out.  Kept in
        ``timing.json``; a later call reuses it."""
        done = self.timed()
        if done:
            return done
        chosen, ablated, p = self.chosen(), self.ablated(), self.plan
        entries = {m: (m, chosen[m]) for m in p["methods"]}
        for k in p["warm_starts"]:
            entries[self.warm_label(k)] = ("dyart", self.warm_setting(k))
        if ablated is not None:
            entries[self.ablated_label(ablated)] = ("dyart", ablated)
        seconds = {name: [] for name in entries}
        for round_ in range(p["timing_rounds"]):
            for name, (method, setting) in entries.items():
                out = os.path.join(self.runs, "timing", f"{method}-{tag(setting)}-r{round_}")
                shutil.rmtree(out, ignore_errors=True)
                self.log(f"[timing] round {round_ + 1}: {name}")
                run_train(train_args(method, setting, 0, p["timing_epochs"],
                                     {**p, "burn_in": 0}, False, out), out)
                seconds[name] += epoch_seconds(out)[1:]
        record = {"seconds": {k: [round(t, 2) for t in v] for k, v in seconds.items()},
                  "seconds_per_epoch": {k: round(statistics.median(v), 2)
                                        for k, v in seconds.items()},
                  "settings": {k: v[1] for k, v in entries.items()},
                  "epochs": p["timing_epochs"], "rounds": p["timing_rounds"],
                  "train_points": p["limit"], "commit": commit(),
                  "backend": os.environ.get("KERAS_BACKEND", "tensorflow")}
        os.makedirs(self.results, exist_ok=True)
        with open(self.timing_path(), "w") as f:
            json.dump(record, f, indent=1)
        self.log("[timing] s/epoch: " + json.dumps(record["seconds_per_epoch"]))
        return record

    def equal_time_epochs(self) -> dict:
        """Epochs per method whose timed epochs fit DyART's timed training time ({} before
        the ``timing`` phase)."""
        per_epoch = self.timed().get("seconds_per_epoch", {})
        if "dyart" not in per_epoch:
            return {}
        budget = per_epoch["dyart"] * self.plan["epochs"]
        fit = {m: int(min(self.plan["max_epochs"], max(1, round(budget / t))))
               for m, t in per_epoch.items()}
        epochs = {m: fit[m] for m in METHODS if m in fit}
        epochs["dyart"] = self.plan["epochs"]
        for k in self.plan.get("equal_time_warm", ()):
            if self.warm_label(k) in fit:
                epochs[self.warm_label(k)] = fit[self.warm_label(k)]
        return epochs

    def equal_time(self) -> None:
        chosen, epochs = self.chosen(), self.equal_time_epochs()
        missing = [m for m in self.plan["methods"] if m not in epochs]
        if missing:
            raise SystemExit(f"the timing phase has not run for {missing}: run --phase "
                             "timing")
        for seed in self.plan["seeds"]:
            for method in self.plan["methods"]:
                if epochs[method] != self.plan["epochs"]:
                    self.run("equal-time", method, chosen[method], seed, epochs[method])
        # warm-started DyART with its saved time spent on more epochs (at the study's own
        # epochs it is the warm-start phase's run)
        for k in self.plan.get("equal_time_warm", ()):
            n = epochs.get(self.warm_label(k))
            for seed in self.plan["seeds"]:
                if n is not None and n != self.plan["epochs"]:
                    self.run("equal-time", "dyart", self.warm_setting(k), seed, n)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="the study: every phase")
    which.add_argument("--quick", action="store_true",
                       help="every phase on a tiny budget (a pipeline check, not a result)")
    parser.add_argument("--phase", action="append",
                        choices=("tune", "ablation", "final", "warm-start", "timing",
                                 "equal-time", "report"),
                        help="run only these phases (repeat); default: all seven")
    parser.add_argument("--runs", help="run directories (default runs/methods, "
                                       "runs/methods-quick with --quick)")
    parser.add_argument("--results", help="records and methods.md (default "
                                          "benchmarks/results/methods, or the runs folder "
                                          "with --quick)")
    parser.add_argument("--images", help="the plots (default docs/img, or the results "
                                         "folder with --quick)")
    parser.add_argument("--report", help="the Markdown report (default "
                                         "benchmarks/results/methods.md, or methods.md in "
                                         "the results folder with --quick)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    root = os.path.dirname(HERE)
    runs = args.runs or os.path.join(root, "runs", "methods-quick" if args.quick
                                     else "methods")
    results = args.results or (os.path.join(runs, "results") if args.quick
                               else os.path.join(HERE, "results", "methods"))
    images = args.images or (results if args.quick else os.path.join(root, "docs", "img"))
    report = args.report or (os.path.join(results, "methods.md") if args.quick
                             else os.path.join(HERE, "results", "methods.md"))
    phases = args.phase or ["tune", "ablation", "final", "warm-start", "timing",
                            "equal-time", "report"]

    def log(line):
        print(time.strftime("%H:%M:%S ") + line, flush=True)

    study = Study(plan, runs, results, log)
    if "tune" in phases:
        log("chosen settings: " + json.dumps(study.tune()))
    if "ablation" in phases:
        study.ablation()
    if "final" in phases:
        study.final()
    if "warm-start" in phases:
        study.warm_start()
    if "timing" in phases:
        study.timing()
    if "equal-time" in phases:
        log("equal-time epochs: " + json.dumps(study.equal_time_epochs()))
        study.equal_time()
    if "report" in phases:
        from methods_report import write_report

        command = "python benchmarks/methods.py " + ("--quick" if args.quick else "--all")
        for path in write_report(study, report, images, command):
            log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
