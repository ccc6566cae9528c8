"""`benchmarks/methods.py --quick`: every phase of the methods study on a tiny budget, its
records, its choice, its report and plots, and a second call that redoes nothing.

The study is a driver of `keras-dyart train` and `keras_dyart.evaluation` (tested on every
backend elsewhere); it runs here under TensorFlow, the backend of the recorded study, as a
subprocess of the PyTorch leg of `make test`: the legs run side by side and the PyTorch leg
ends first by far, so the study's minutes there do not lengthen the suite.
"""

import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "torch",
    reason="run once, from the PyTorch leg (the study itself runs under TensorFlow)")


def _study(tmp, *extra):
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "methods.py"), "--quick",
         "--runs", str(tmp / "runs"), "--results", str(tmp / "results"),
         "--images", str(tmp / "img"), "--report", str(tmp / "methods.md"), *extra],
        capture_output=True, text=True, env=env, timeout=900)


def _records(tmp, phase):
    """A phase's records ([] where it wrote none, e.g. an equal-time phase whose timed
    epochs all fit the study's own epoch count)."""
    folder = tmp / "results" / phase
    if not folder.exists():
        return []
    return [json.load(open(folder / f)) for f in sorted(os.listdir(folder))]


def test_quick_study_runs_every_phase_and_resumes(tmp_path):
    done = _study(tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    tune = _records(tmp_path, "tune")
    assert {r["method"] for r in tune} == {"pgd-at", "dyart"}
    for r in tune:
        assert r["evaluated_on"] == "held-out training digits"
        config = json.load(open(os.path.join(r["run_dir"], "config.json")))
        assert config["holdout"] == 64 and config["limit"] == 320 and config["eval_n"] == 64
        assert r["n"] == 64 and 0 <= r["robust"]["0.3"] <= r["clean"] <= 1
    # the choice is the best validation robust accuracy (ties: clean accuracy)
    dyart = [r for r in tune if r["method"] == "dyart"]
    best = max(dyart, key=lambda r: (r["robust"]["0.3"], r["clean"]))
    final = _records(tmp_path, "final")
    assert {r["seed"] for r in final} == {0, 1}
    assert all(r["setting"] == best["setting"] for r in final if r["method"] == "dyart")
    for r in final:
        assert r["attack"] == "autoattack" and r["n"] == 40
        assert r["evaluated_on"] == "test digits"
        assert r["robust"]["0.3"] <= r["robust"]["0.1"] <= r["clean"]
        # the per-point bits are the reported accuracy
        for eps, acc in r["robust"].items():
            bits = np.unpackbits(np.frombuffer(bytes.fromhex(r["robust_points"][eps]),
                                               np.uint8), bitorder="little")[:40]
            assert bits.mean() == pytest.approx(acc)
        assert len(r["epoch_seconds"]) == r["epochs"] == 1
        # the training logs outlive the run directory: burn-in and method epochs
        trained = json.load(open(tmp_path / "results" / "points" / "final"
                                 / (r["name"] + ".train.json")))
        history = trained["history"]
        assert [h["epoch_seconds"] for h in history if "epoch_seconds" in h] == pytest.approx(
            r["epoch_seconds"], abs=0.01)
        assert all(isinstance(h["loss"], float) for h in history)
        if r["method"] == "dyart":
            assert 0 <= history[-1]["boundary_fraction"] <= 1
        report = json.load(open(os.path.join(r["run_dir"], "eval_autoattack.json")))
        assert report["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    # DyART's chosen setting with one change each, on the validation split
    ablation = _records(tmp_path, "ablation")
    assert [r["setting"] for r in ablation] == [{**best["setting"], "r0": 1.0}]
    assert ablation[0]["evaluated_on"] == "held-out training digits"
    assert ablation[0]["n"] == 64 and ablation[0]["seed"] == 0
    # DyART's chosen setting again with warm-started searches, the same seeds and attack
    warm = _records(tmp_path, "warm-start")
    assert {r["seed"] for r in warm} == {0, 1}
    for r in warm:
        assert r["setting"] == {**best["setting"], "warm_start": 1} and r["n"] == 40
        config = json.load(open(os.path.join(r["run_dir"], "config.json")))
        assert config["warm_start"] == 1
    # every method's epoch timed side by side, and the equal-time runs take their epochs
    # from those times: each method whose share of DyART's time differs has its runs
    timing = json.load(open(tmp_path / "results" / "timing.json"))
    per_epoch = timing["seconds_per_epoch"]
    assert set(per_epoch) == {"pgd-at", "dyart", "dyart, warm_start=1"}
    assert all(len(v) == 1 and v[0] > 0 for v in timing["seconds"].values())
    expected = min(3, max(1, round(per_epoch["dyart"] / per_epoch["pgd-at"])))
    warm_epochs = min(3, max(1, round(per_epoch["dyart"] / per_epoch["dyart, warm_start=1"])))
    equal = _records(tmp_path, "equal-time")
    assert sorted((r["method"], r["epochs"]) for r in equal) == sorted(
        ([] if expected == 1 else [("pgd-at", expected)] * 2)
        + ([] if warm_epochs == 1 else [("dyart", warm_epochs)] * 2))
    for r in equal:
        if r["method"] == "dyart":          # warm-started DyART spends its saved time
            assert r["setting"] == {**best["setting"], "warm_start": 1}

    text = (tmp_path / "methods.md").read_text()
    for part in ("## Equal epochs", "## Equal training time", "## Verdict", "## Tuning",
                 "| dyart |", "| pgd-at |", "DyART − pgd-at",
                 "## DyART with warm-started searches", "| dyart, warm_start=1 |",
                 "## DyART ablations", "| r0=1 |", "Epoch times measured side by side",
                 "final 4 of 4, warm start 2 of 2, equal time "):
        assert part in text, part
    if equal:   # the equal-time verdicts are written once that phase has runs of its own
        for part in ("Equal training time, DyART with `--warm-start 1`",
                     "DyART (warm_start=1) − pgd-at"):
            assert part in text, part
    # docs/study.md includes the report in two sections, with the plots between them
    marks = [text.index(f"<!-- --8<-- [{m}] -->") for m in
             ("start:results", "end:results", "start:details", "end:details")]
    assert marks == sorted(marks) and marks[0] == 0
    assert text.index("## Verdict") < marks[1] < text.index("## DyART with warm-started")
    # the ablation row gives DyART's logged boundary fraction and mean margin
    row = next(t for t in text.splitlines() if t.startswith("| r0=1 |")).split("|")[1:-1]
    assert 0 <= float(row[5]) <= 1 and float(row[6]) >= 0, row
    for name in ("methods_aa_vs_clean.png", "methods_aa_vs_time.png"):
        assert (tmp_path / "img" / name).stat().st_size > 10_000

    # A second call finds every record and trains and attacks nothing again.
    again = _study(tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "training" not in again.stdout and "] clean-" not in again.stdout
    assert (tmp_path / "methods.md").read_text() == text

    # A run outlives its run directory: the saved model and the attack's finished chunks
    # (committed with the records) let an interrupted attack resume at its next chunk in
    # a checkout without runs/, training nothing again.
    record = final[0]
    saved = tmp_path / "results" / record["model"]
    assert keras.saving.load_model(saved, compile=False).count_params() > 0
    points_path = tmp_path / "results" / "points" / "final" / (record["name"] + ".json")
    points = json.load(open(points_path))
    assert [c["n"] for c in points["chunks"]] == [25, 15]
    rows = [r for c in points["chunks"] for r in c["points"]]
    assert np.mean([r["robust@0.3"] for r in rows]) == pytest.approx(record["robust"]["0.3"])
    points["chunks"] = points["chunks"][:1]
    json.dump(points, open(points_path, "w"))
    os.remove(tmp_path / "results" / "final" / (record["name"] + ".json"))
    shutil.rmtree(record["run_dir"])
    resumed = _study(tmp_path, "--phase", "final")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "training" not in resumed.stdout
    assert "points 25-39 of 40" in resumed.stdout and "points 0-24" not in resumed.stdout
    again = json.load(open(tmp_path / "results" / "final" / (record["name"] + ".json")))
    for key in ("clean", "robust", "robust_points", "epoch_seconds", "commit"):
        assert again[key] == record[key], key

    # An ablation that beats DyART's chosen setting on the validation split (here made to,
    # by raising its recorded accuracy: the quick runs are too short to tell settings
    # apart) gets final runs over the seeds, its own row and its own verdict, apart from
    # DyART's budget-matched ones.
    path = tmp_path / "results" / "ablation" / (ablation[0]["name"] + ".json")
    won = json.load(open(path))
    won["robust"]["0.3"] += 0.5
    json.dump(won, open(path, "w"))
    done = _study(tmp_path, "--phase", "final", "--phase", "report")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    final = _records(tmp_path, "final")
    assert sorted(r["seed"] for r in final if r["setting"] == won["setting"]) == [0, 1]
    assert sorted(r["seed"] for r in final if r["method"] == "dyart"
                  and r["setting"] != won["setting"]) == [0, 1]
    text = (tmp_path / "methods.md").read_text()
    assert "final 6 of 6" in text        # the ablation's runs are planned too
    assert "| dyart, r0=1 |" in text and "DyART (r0=1) − pgd-at" in text
    assert "DyART − pgd-at" in text and "DyART − dyart" not in text
    assert "DyART (r0=1) − dyart" not in text


def test_report_names_collapsed_runs():
    """A run whose training collapsed is named under the table that averages it in."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import methods_report
    finally:
        sys.path.pop(0)

    def run(seed, clean):
        return {"seed": seed, "clean": clean, "robust": {"0.3": clean - 0.2},
                "setting": {"lr": 0.1}, "epochs": 8, "epoch_seconds": [10.0, 11.0],
                "seconds_per_epoch": 10.5, "train_seconds": 90.0}

    healthy = {"pgd-at": [run(0, 0.96), run(1, 0.95)], "dyart": [run(0, 0.97)]}
    assert not any("Collapsed" in line for line in methods_report.result_table(healthy, [0.3]))
    broken = {"pgd-at": [run(0, 0.96), run(1, 0.094)], "dyart": [run(0, 0.97)]}
    table = methods_report.result_table(broken, [0.3])
    notes = [line for line in table if line.startswith("Collapsed")]
    assert len(notes) == 1 and "pgd-at seed 1 (clean 0.094)" in notes[0]
    named = notes[0].split(":", 1)[1].split(".  ")[0]
    assert named.strip() == "pgd-at seed 1 (clean 0.094)"
    # the collapsed run stays in the mean: (0.96 + 0.094) / 2
    assert "| pgd-at | lr=0.1 | 8 | 2 | 0.527 ± " in "\n".join(table)
    # a run far below its method's best seed, though above chance, is named as failed
    # (the equal-time MART seed 0: clean 0.511 against 0.966), a collapsed one only once
    mixed = {"mart": [run(0, 0.511), run(1, 0.966), run(2, 0.95)],
             "pgd-at": [run(0, 0.96), run(1, 0.094)]}
    text = "\n".join(methods_report.result_table(mixed, [0.3]))
    assert "Failed (clean accuracy more than 0.2 below the method's best seed): mart seed 0 " \
           "(clean 0.511 against 0.966)." in text
    assert "Collapsed (clean accuracy below 0.2, chance is 0.1): pgd-at seed 1 (clean " \
           "0.094)." in text
    assert text.count("seed 1 (clean 0.094") == 1 and "mart seed 2" not in text


def test_warm_section_compares_each_warm_start_with_the_cold_runs():
    """Each warm start of the plan gets its row and its paired difference with the cold
    final runs; a warm start with no run yet is left out."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import methods_report
    finally:
        sys.path.pop(0)

    def run(seed, robust, seconds, **setting):
        return {"seed": seed, "clean": 0.95, "robust": {"0.3": robust}, "method": "dyart",
                "setting": {"lr": 0.1, **setting}, "epochs": 8, "epoch_seconds": [seconds],
                "seconds_per_epoch": seconds, "train_seconds": 8 * seconds}

    class Study:
        plan = {"eps": (0.3,), "warm_starts": (5, 3, 10)}

        @staticmethod
        def records(phase):
            assert phase == "warm-start"
            return [run(0, 0.70, 5.0, warm_start=5), run(1, 0.74, 5.0, warm_start=5),
                    run(0, 0.69, 4.0, warm_start=3)]

    cold = [run(0, 0.72, 10.0), run(1, 0.73, 10.0)]
    lines = methods_report.warm_section(Study, cold, lambda r: "dyart")
    text = "\n".join(lines)
    assert "| dyart, warm_start=5 |" in text and "| dyart, warm_start=3 |" in text
    assert "warm_start=10" not in text and "--warm-start 10" not in text
    five = next(line for line in lines if line.startswith("- `--warm-start 5`"))
    # paired by seed: (0.70 - 0.72, 0.74 - 0.73) -> mean -0.005, std 0.021
    assert "(2 seeds)" in five and "-0.005 ± 0.021" in five and "time 0.50" in five
    three = next(line for line in lines if line.startswith("- `--warm-start 3`"))
    assert "(1 seed)" in three and "-0.030," in three and "time 0.40" in three
    assert methods_report.warm_section(Study, [], lambda r: "dyart") == ["Not run yet."]
