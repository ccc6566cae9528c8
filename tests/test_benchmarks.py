"""The benchmark scripts in their smallest form, on every backend, so that they cannot rot
between the runs that make their tables: each must run to its table, with a row per path it
times and finite seconds.  Their numbers are not checked (timings stay out of tests);
`benchmarks/methods.py --quick` has its own test.

`step_time.py`, `attack_throughput.py --backends` and `fit_epoch.py` run all three
backends in one call, and `warm_start.py` runs under PyTorch and TensorFlow (about two
minutes each on an idle machine), all from the PyTorch leg of `make test` only: the legs
run side by side and that leg ends first."""

import math
import os
import re
import subprocess
import sys

import keras
import pytest

BACKEND = keras.backend.backend()

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    BACKEND != "torch", reason="run once, from the PyTorch leg of the suite")]

BACKENDS = ["tensorflow", "jax", "torch"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def call(script, *args, backend="torch", timeout=900):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), *args],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def run(script, *args, backend="torch", timeout=900):
    proc = call(script, *args, backend=backend, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def rows(text, first):
    """Cells of the Markdown table rows whose first cell is ``first``."""
    out = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first:
            out.append(cells)
    return out


def numbers(cell):
    return [float(v) for v in re.findall(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?", cell)]


def positive(cell):
    values = numbers(cell)
    return bool(values) and all(math.isfinite(v) and v > 0 for v in values)


def test_fit_epoch_quick_times_every_data_path():
    text = run("fit_epoch.py", "--quick", "--backends", *BACKENDS, "--warm", "1", "2")
    for backend in BACKENDS:
        found = {r[1]: r for r in rows(text, backend)}
        assert set(found) == {"arrays", "ArrayBatches", "warm 1", "warm 2"}, text
        for r in found.values():
            # seconds and ratios > 0; the spreads (max − min over median) may be 0
            assert all(positive(c) for i, c in enumerate(r[2:], 2) if i not in (4, 10)), r
            assert all(v >= 0 for i in (4, 10) for v in numbers(r[i])), r


# PyTorch (where the memory's writes once broke) and TensorFlow (the study's backend); JAX's
# warm-started step is covered by tests/test_warm_start.py on the JAX leg.
@pytest.mark.parametrize("backend", ["torch", "tensorflow"])
def test_warm_start_quick_tables(backend):
    text = run("warm_start.py", "--quick", "--iters", "3", backend=backend)
    assert "int8" in text and "float16" in text, text
    # the search table's warm rows (from each stored form) and the epoch table's two models
    for label in ("reference (cold)", "warm, float16", "warm, int8"):
        assert rows(text, label), text
    for label in ("cold (paper)", "warm_start=5"):
        found = rows(text, label)
        assert found and positive(found[0][1]) and positive(found[0][2]), text


def test_step_time_small(tmp_path):
    out = str(tmp_path / "step_time.md")
    text = run("step_time.py", "--backends", *BACKENDS, "--batch", "16", "--n-iter", "2",
               "--repeats", "1", "--resnet-batch", "0", "--out", out)
    with open(out) as f:
        table = f.read()
    assert "DyART, warm 5" in table, text + table
    for backend in BACKENDS:
        found = rows(table, backend)
        # every column timed, the warm-started DyART step included (``--warm 5``)
        assert found and all(positive(c) for c in found[0][3:]), table


def test_attack_throughput_small(tmp_path, mnist5k):
    # a linear model trained for one epoch: most test digits right, so there is work
    x, y = mnist5k[0][:1024], mnist5k[1][:1024]
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(10)])
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=1, batch_size=64, verbose=0)
    path = str(tmp_path / "linear.keras")
    model.save(path)
    out, state = str(tmp_path / "throughput.md"), str(tmp_path / "state")
    command = ["attack_throughput.py", path, "--n", "8", "--eps", "0.05", "--eps", "0.3",
               "--backends", *BACKENDS, "--chunk", "5", "--state", state, "--out", out]
    first = run(*command)
    with open(out) as f:
        table = f.read()
    # two chunks (5 and 3 points), each run by every backend in turn and kept for a resume
    assert sorted(os.listdir(state)) == sorted(
        f"points{a}-{b}_{backend}.json" for a, b in ((0, 5), (5, 8)) for backend in BACKENDS)
    assert first.index("-- torch, points 0-5") < first.index("-- tensorflow, points 5-8")
    again = run(*command)                   # resumed: nothing left to run, the same table
    assert "-- " not in again and again.strip() == table.strip()
    refused = call(*(a if a != "0.3" else "0.2" for a in command))   # other radii
    assert refused.returncode != 0 and "use another --state" in refused.stderr
    assert "in 2 chunks of 5 points" in table
    # robust accuracy may be 0 % (a linear model at 0.3); APGD-CE attacked every digit
    # the model got right, in measurable time, on every backend and in torchattacks
    for label in ["torchattacks 3.5.1, 100 iterations (torch)",
                  *(f"keras-dyart, {b}" for b in BACKENDS)]:
        found = rows(table, label)
        assert found and all(numbers(c) for c in found[0][1:3]), table
        assert positive(found[0][3]) and numbers(found[0][7]), table
        assert found[0][9].isdigit(), table      # points differing from the first backend
    # torchattacks' outcomes against ours, point by point, at both radii
    line = next(t for t in table.splitlines() if t.startswith("Against torchattacks"))
    assert all(f"eps {e}: " in line for e in ("0.05", "0.3")), table
    assert "broken by keras-dyart (tensorflow) only" in line, table
