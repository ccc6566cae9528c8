"""The command line off the demo path: bad options fail before any work with a one-line
error naming the option (no traceback, no directory made), finished runs are not
overwritten silently, and `--help` reads well at 80 columns."""

import json
import os
import re

import keras
import pytest
from typer.testing import CliRunner

from keras_dyart_apps.main import app
from keras_dyart_apps.run_dir import clear_run

runner = CliRunner()


def _fails_cleanly(result, word):
    """Non-zero exit through click (no traceback) with an error line naming ``word``."""
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and word in errors[0], result.output


def _tiny_model(path):
    keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                      keras.layers.Dense(10)]).save(path)


# -- train ------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, word", [
    (["--model", "resnet99"], "--model"),
    (["--dataset", "imagenet"], "--dataset"),
    (["--dataset", "svhn"], "--data-path"),
    (["--data-path", "no-such-folder"], "--data-path"),
    (["--lr", "0"], "--lr"),
    (["--verbose", "3"], "--verbose"),
    (["--overwrite", "--resume"], "--overwrite"),
    (["--warm-start", "-1"], "--warm-start"),
    (["--warm-start", "3", "--random-start"], "--warm-start"),
    (["--warm-start", "3", "--distribute"], "--warm-start"),
    (["--cache-dtype", "bfloat16"], "--cache-dtype"),
    (["--preset", "cifar10-wrn28-10", "--warm-start", "3"], "--warm-start"),
    (["--eps", "8"], "--eps"),                       # pixel levels for 8/255
    (["--method", "pgd-at", "--train-eps", "8"], "--train-eps"),
])
def test_train_bad_option_makes_no_directory(tmp_path, args, word):
    out = tmp_path / "run"
    _fails_cleanly(runner.invoke(app, ["train", "--out", str(out), *args]), word)
    assert not out.exists()


def test_train_out_is_a_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("keep me")
    _fails_cleanly(runner.invoke(app, ["train", "--out", str(path)]), "--out")
    assert path.read_text() == "keep me"


def test_train_refuses_a_finished_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text('{"clean_accuracy": 0.9}')
    (out / "config.json").write_text("{}")
    result = runner.invoke(app, ["train", "--out", str(out)])
    _fails_cleanly(result, "--out")
    assert "--overwrite" in result.output
    assert sorted(os.listdir(out)) == ["config.json", "metrics.json"]
    assert (out / "config.json").read_text() == "{}"


def test_train_interrupted_run_needs_resume_or_overwrite(tmp_path):
    out = tmp_path / "run"
    (out / "backup").mkdir(parents=True)
    result = runner.invoke(app, ["train", "--out", str(out)])
    _fails_cleanly(result, "--out")
    assert "--resume" in result.output and "--overwrite" in result.output


def test_clear_run_removes_only_run_files(tmp_path):
    for name in ("config.json", "burn_in.keras", "model.keras", "metrics.json",
                 "eval_pgd.json", "notes.txt"):
        (tmp_path / name).write_text("x")
    (tmp_path / "backup").mkdir()
    (tmp_path / "dynamics").mkdir()
    clear_run(str(tmp_path))
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_train_overwrite_replaces_a_finished_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    for name in ("burn_in.keras", "model.keras", "metrics.json", "eval_apgd-ce.json"):
        (out / name).write_text("stale")
    result = runner.invoke(app, [
        "train", "--out", str(out), "--overwrite", "--method", "clean", "--burn-in", "0",
        "--epochs", "1", "--limit", "64", "--batch-size", "32", "--eval-n", "16",
        "--pgd-steps", "1", "--eps", "0.1", "--verbose", "0"])
    assert result.exit_code == 0, result.output
    # The stale burn-in and evaluation are gone (a run with --burn-in 0 has none).
    assert not (out / "burn_in.keras").exists() and not (out / "eval_apgd-ce.json").exists()
    assert json.loads((out / "metrics.json").read_text())["clean_accuracy"] >= 0.0
    assert json.loads((out / "config.json").read_text())["method"] == "clean"


# -- evaluate ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case, word", [
    ("missing", "TARGET"), ("empty-dir", "TARGET"), ("corrupt", "TARGET"),
    ("bad-config", "TARGET"), ("out-file", "--out"), ("dataset", "--dataset"),
    ("svhn", "--data-path"), ("unreadable", "--dataset"),
    ("eps-in-levels", "--eps"), ("eps-beyond-bounds", "--eps"),
])
def test_evaluate_edges(tmp_path, case, word):
    run = tmp_path / "run"
    run.mkdir()
    _tiny_model(run / "model.keras")
    args = [str(run), "--n", "8", "--attack", "pgd"]
    if case == "missing":
        args[0] = str(tmp_path / "nothing")
    elif case == "empty-dir":
        args[0] = str(tmp_path)
        (run / "model.keras").unlink()
    elif case == "corrupt":
        (run / "model.keras").write_text("not a zip")
    elif case == "bad-config":
        (run / "config.json").write_text("{oops")
    elif case == "out-file":
        (tmp_path / "file").write_text("x")
        args += ["--out", str(tmp_path / "file")]
    elif case == "dataset":
        args += ["--dataset", "imagenet"]
    elif case == "svhn":
        args += ["--dataset", "svhn"]
    elif case == "unreadable":     # a data set that fails to load (as offline downloads do)
        (tmp_path / "bad.npz").write_text("not an npz")
        args += ["--dataset", "npz", "--data-path", str(tmp_path / "bad.npz")]
    elif case == "eps-in-levels":      # 8 for 8/255: wider than the model's [0, 1]
        args += ["--eps", "8"]
    elif case == "eps-beyond-bounds":
        args += ["--bounds", "0,2", "--eps", "3"]
    before = sorted(os.listdir(run))
    _fails_cleanly(runner.invoke(app, ["evaluate", *args]), word)
    assert sorted(os.listdir(run)) == before


# -- dynamics ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case, word", [
    ("text-file", "RUN_DIR"), ("no-checkpoint", "RUN_DIR"), ("corrupt", "RUN_DIR"),
    ("bad-config", "RUN_DIR"), ("averaged", "--averaged"), ("out-file", "--out"),
    ("eps-on-dyart", "--eps"), ("method-needs-steps", "--steps"),
    ("dataset", "--dataset"), ("eps-in-levels", "--eps"),
])
def test_dynamics_edges(tmp_path, case, word):
    run = tmp_path / "run"
    run.mkdir()
    _tiny_model(run / "model.keras")
    (run / "config.json").write_text(json.dumps({"method": "dyart", "dataset": "mnist5k"}))
    args = [str(run), "--probe", "4"]
    if case == "text-file":
        (tmp_path / "notes.txt").write_text("x")
        args[0] = str(tmp_path / "notes.txt")
    elif case == "no-checkpoint":
        (run / "model.keras").unlink()
    elif case == "corrupt":
        (run / "model.keras").write_text("not a zip")
    elif case == "bad-config":
        (run / "config.json").write_text("[1, 2")
    elif case == "averaged":
        args.append("--averaged")
    elif case == "out-file":
        (tmp_path / "file").write_text("x")
        args += ["--out", str(tmp_path / "file")]
    elif case == "eps-on-dyart":
        args += ["--eps", "0.1"]
    elif case == "method-needs-steps":
        _tiny_model(run / "burn_in.keras")
        args += ["--method", "trades"]
    elif case == "dataset":
        args += ["--dataset", "imagenet"]
    elif case == "eps-in-levels":      # 8 for 8/255, on a method that takes --eps
        (run / "config.json").write_text(json.dumps({"method": "pgd-at",
                                                     "dataset": "mnist5k"}))
        args += ["--eps", "8"]
    _fails_cleanly(runner.invoke(app, ["dynamics", *args]), word)
    assert not (run / "dynamics").exists()


# -- help -------------------------------------------------------------------------------------


@pytest.mark.parametrize("command, budget", [
    ([], 20), (["train"], 70), (["evaluate"], 35), (["dynamics"], 35),
])
def test_help_reads_well_at_80_columns(command, budget):
    result = runner.invoke(app, [*command, "--help"], terminal_width=80,
                           env={"COLUMNS": "80"})
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert len(lines) <= budget, result.output
    assert max(map(len, lines)) <= 80
    # No type tags such as <bool>, <str>, <int>, <list[str]> on options.
    assert not re.search(r"<(bool|str|int|float|list\[\w+\])>", result.output), result.output
    # The description's paragraphs are wrapped to the width, not broken mid-line:
    # every line but a paragraph's last is nearly full.
    description = result.output.split("Options:")[0].split("\n\n")[1:]
    for paragraph in description:
        body = paragraph.splitlines()
        assert all(len(line) > 60 for line in body[:-1]), paragraph
