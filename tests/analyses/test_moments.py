"""Across-sample moments: equal to numpy, labelled, selectable, round-tripping."""

import numpy as np
import pytest
import torch

from tlprobe import load
from tlprobe.analyses.moments import Moments, sample_moments
from tlprobe.errors import TlprobeError


def _data(lead=(2, 3), samples=11, features=15, seed=6):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, samples, features, generator=g, dtype=torch.float64)
    return x + 1.5 * torch.randn(*lead, 1, features, generator=g, dtype=torch.float64)


def test_sample_moments_equal_numpy():
    x = _data()
    m = sample_moments(x)
    xs = x.numpy()
    var, mean = xs.var(axis=-2), xs.mean(axis=-2)
    np.testing.assert_allclose(m.var.numpy(), var.mean(-1), rtol=1e-12)
    np.testing.assert_allclose(m.mean.numpy(), mean.mean(-1), rtol=1e-12)
    np.testing.assert_allclose(m.mean_abs.numpy(), np.abs(mean).mean(-1), rtol=1e-12)
    np.testing.assert_allclose(m.rel_var.numpy(), var.sum(-1) / (xs**2).mean(-2).sum(-1), rtol=1e-12)
    assert (m.n_samples, m.n_features) == (11, 15)


def test_labels_selection_rows_and_round_trip(tmp_path):
    axes = {"population": ("target", "non-target"), "layer": ("L0", "L1", "L2")}
    m = sample_moments(_data(), axes=axes)
    one = m["non-target"]
    assert isinstance(one, Moments) and one.var.shape == (3,) and torch.equal(one.var, m.var[1])
    assert float(m["target", "L2"].rel_var) == float(m.rel_var[0, 2])
    rows = m.rows()
    assert len(rows) == 6 and rows[4] == {
        "population": "non-target",
        "layer": "L1",
        **{k: float(getattr(m, k)[1, 1]) for k in Moments.STATS},
    }
    assert load(m.save(tmp_path / "m.json")) == m


def test_constant_token_has_zero_variance():
    x = torch.randn(1, 6, dtype=torch.float64).expand(10, 6)
    m = sample_moments(x)
    assert float(m.var) == 0 and float(m.rel_var) == 0


def test_bad_input_raises():
    with pytest.raises(TlprobeError, match="too few samples"):
        sample_moments(torch.randn(1, 4))
    with pytest.raises(TlprobeError, match="all-zero"):
        sample_moments(torch.zeros(3, 4))
    with pytest.raises(TlprobeError, match="one label per leading index"):
        sample_moments(_data(), axes={"population": ("target",)})
