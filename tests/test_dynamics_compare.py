"""`benchmarks/dynamics_compare.py --quick`: the boundary-dynamics comparison of the robust
methods (docs/dynamics.md) in its smallest form, so that the script behind the docs' table
cannot rot.  Run once, from the TensorFlow leg (the backend of the documented run)."""

import json
import os
import subprocess
import sys

import keras
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="run once, from the TensorFlow leg")]


def _call(tmp, *extra):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "dynamics_compare.py"), "--quick",
         "--methods", "pgd-at,dyart", "--work", str(tmp / "work"), "--out", str(tmp / "out"),
         *extra], capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)


def test_quick_comparison_tables_plots_and_reuse(tmp_path):
    proc = _call(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.load(open(tmp_path / "out" / "summary.json"))
    assert list(summary["methods"]) == ["pgd-at", "dyart"]
    for name, runs in summary["methods"].items():
        assert [r["seed"] for r in runs] == [0, 1]
        for r in runs:
            assert r["steps"] == [0, 2]     # --quick: 4 steps, a record every 2
            assert all(0 <= s <= 1 for s in r["conflict_share"])
            assert 0 < r["probe_accuracy_after"] <= 1
        # the speed-by-margin table covers every pooled point once
        bins = summary["by_margin"][name]
        assert [b["low"] for b in bins] == [0, 0.1, 0.2, 0.3]
        assert sum(b["n"] for b in bins) > 0
        assert all(b["n"] == 0 or 0 <= b["share_negative"] <= 1 for b in bins)
    paired = summary["paired_vs_dyart"]["pgd-at"]
    mean = [sum(r["mean_conflict_share"] for r in summary["methods"][m]) / 2
            for m in ("dyart", "pgd-at")]
    assert paired["mean"] == pytest.approx(mean[0] - mean[1])
    for png in ("conflict_share.png", "speed_vs_margin.png"):
        assert (tmp_path / "out" / png).stat().st_size > 10_000
    table = proc.stdout[proc.stdout.index("| method |"):]
    assert "| pgd-at | " in table and "| dyart | " in table and "| [0.3, ∞) |" in table

    # a second call reuses the records: same table, nothing trained again
    records = sorted((tmp_path / "work").glob("*_s*.json"))
    stamps = [p.stat().st_mtime_ns for p in records]
    again = _call(tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout[again.stdout.index("| method |"):] == table
    assert [p.stat().st_mtime_ns for p in records] == stamps


@pytest.mark.parametrize("extra, named", [(("--methods", "clean"), "--methods"),
                                          (("--seeds", "0,x"), "--seeds"),
                                          (("--steps", "0"), "--steps")])
def test_bad_options_named(tmp_path, extra, named):
    proc = _call(tmp_path, *extra)
    assert proc.returncode == 2 and named in proc.stderr, proc.stderr[-2000:]
