"""`evaluate` and `margins_report` on linear models with closed-form margins."""

import csv
import json
import os

import keras
import numpy as np
import pytest

from keras_dyart import DyARTModel
from keras_dyart.evaluation import MarginsReport, RobustnessReport, evaluate, margins_report
from tests.test_attacks import FAST, assert_in_ball, image_linear, predicted, ten_class_problem


@pytest.fixture(scope="module")
def linear_problem():
    weights, x, y, margin, eps1, eps2 = ten_class_problem(30, seed=11)
    # Two clean errors, so clean accuracy and "clean" outcomes are exercised.
    y = y.copy()
    y[:2] = (y[:2] + 1) % 10
    margin = margin.copy()
    margin[:2] = 0.0
    return weights, x, y, margin, [eps1, eps2]


def test_evaluate_autoattack_matches_closed_form(linear_problem, tmp_path):
    weights, x, y, margin, epsilons = linear_problem
    model = image_linear(weights, (4, 4, 1))
    report = evaluate(model, x, y, "autoattack", epsilons, options=FAST)
    assert isinstance(report, RobustnessReport)
    assert report.attacks == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert report.clean_accuracy == pytest.approx(np.mean(margin > 0))
    for j, e in enumerate(report.epsilons):
        expected = margin >= e
        np.testing.assert_array_equal(report.robust[:, j], expected)
        assert report.robust_accuracy[e] == pytest.approx(np.mean(expected))
        assert_in_ball(report.adversarials[e], x, e, "linf")
        np.testing.assert_array_equal(predicted(model, report.adversarials[e]) != y,
                                      ~expected)
        broken = np.array([b[j] for b in report.broken_by])
        assert set(broken[:2]) == {"clean"}
        assert set(broken[expected]) == {""}
        assert all(b in report.attacks for b in broken[~expected & (margin > 0)])
    # Accuracy after each attack never increases along the sequence; the last one is the
    # reported worst case.
    for e in report.epsilons:
        after = [report.accuracy_after[a][e] for a in report.attacks]
        assert after == sorted(after, reverse=True)
        assert after[-1] == report.robust_accuracy[e]
    # Table, JSON and CSV.
    text = report.table()
    for name in ("clean", "APGD-CE", "APGD-T", "FAB-T", "Square", "AutoAttack"):
        assert name in text
    data = json.load(open(report.to_json(tmp_path / "eval.json")))
    assert data["clean_accuracy"] == report.clean_accuracy
    assert len(data["points"]) == len(x)
    assert set(data["robust_accuracy"]) == {f"{e:.6g}" for e in report.epsilons}
    rows = list(csv.DictReader(open(report.to_csv(tmp_path / "eval.csv"))))
    assert len(rows) == len(x)
    j = 1
    key = f"robust@{report.epsilons[j]:.6g}"
    assert [r[key] == "True" for r in rows] == list(report.robust[:, j])


def test_evaluate_fab_t_reports_distances(linear_problem):
    weights, x, y, margin, epsilons = linear_problem
    model = image_linear(weights, (4, 4, 1))
    report = evaluate(model, x, y, "fab-t", epsilons, options={"fab-t": {"n_iter": 5}})
    assert report.attacks == ["fab-t"]
    correct = margin > 0
    assert np.all(np.isnan(report.distance[~correct]))     # not attacked: already wrong
    np.testing.assert_allclose(report.distance[correct], margin[correct], rtol=1e-3)
    for j, e in enumerate(report.epsilons):
        np.testing.assert_array_equal(report.robust[:, j], margin >= e)


def test_evaluate_a_loaded_keras_file_and_a_dyart_model(linear_problem, tmp_path):
    weights, x, y, margin, epsilons = linear_problem
    model = image_linear(weights, (4, 4, 1))
    path = str(tmp_path / "linear.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    wrapped = DyARTModel(image_linear(weights, (4, 4, 1)))
    for m in (loaded, wrapped):
        report = evaluate(m, x, y, ["apgd-t"], epsilons, options=FAST)
        for j, e in enumerate(report.epsilons):
            np.testing.assert_array_equal(report.robust[:, j], margin >= e)


def test_margins_report_csv_png_and_shares(linear_problem, tmp_path):
    weights, x, y, margin, epsilons = linear_problem
    model = image_linear(weights, (4, 4, 1))
    rep = margins_report(model, x, y, epsilons=epsilons, n_iter=5)
    assert isinstance(rep, MarginsReport)
    np.testing.assert_allclose(rep.distance, margin, rtol=1e-3)
    for e in epsilons:
        assert rep.share_below(e) == pytest.approx(np.mean(margin <= e))
    rows = list(csv.reader(open(rep.to_csv(tmp_path / "m.csv"))))
    assert rows[0] == ["index", "label", "distance"] and len(rows) == len(x) + 1
    np.testing.assert_allclose([float(r[2]) for r in rows[1:]], rep.distance)
    png = rep.plot(tmp_path / "m.png")
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(png) > 1000
    assert "share with distance" in rep.table()


def test_evaluate_bad_arguments(linear_problem):
    weights, x, y, margin, epsilons = linear_problem
    model = image_linear(weights, (4, 4, 1))
    with pytest.raises(ValueError, match="`epsilons`"):
        evaluate(model, x, y, "apgd-ce", [])
    with pytest.raises(ValueError, match="`epsilons`"):
        evaluate(model, x, y, "apgd-ce", ["8/0"])
    with pytest.raises(ValueError, match="`attack`"):
        evaluate(model, x, y, "cw-l2", [0.1])
    with pytest.raises(ValueError, match="`y`"):
        evaluate(model, x, np.full(len(x), 12), "apgd-ce", [0.1])
    with pytest.raises(ValueError, match="`options`"):
        evaluate(model, x, y, "apgd-ce", [0.1], options={"apgd": {}})
