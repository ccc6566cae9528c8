"""The same weights and batch give the same x̂, margins, weights and loss on every backend."""

import os

import numpy as np

from tests.fixtures.make_cross_backend import compute

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "cross_backend.npz")


def test_search_and_loss_match_stored_results():
    data = np.load(FIXTURE)
    weights = [data[f"w{i}"] for i in range(4)]
    got = compute(weights, data["x"], data["y"])
    np.testing.assert_array_equal(got["usable"], data["usable"])
    assert data["usable"].sum() >= 8              # the fixture exercises the search
    assert not data["usable"][:3].any()           # misclassified points are skipped
    np.testing.assert_allclose(got["x_hat"], data["x_hat"], atol=2e-5)
    np.testing.assert_allclose(got["margin"], data["margin"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got["weights"], data["weights"], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(got["loss"], data["loss"], rtol=1e-5)
