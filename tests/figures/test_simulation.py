"""Figures of the L08 simulation: estimators vs n per bins panel, the plug-in bias vs its theory."""
# pyright: reportAttributeAccessIssue=false, reportOptionalSubscript=false, reportArgumentType=false
# (plotly builds figure attributes at run time: fig.data[0].x, fig.layout.xaxis are unknown to a type checker)

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tlprobe.analyses.simulation import ESTIMATORS, estimator_sweep
from tlprobe.errors import TlprobeError
from tlprobe.figures.simulation import estimator_sweep_figure, plugin_bias_figure


@pytest.fixture(scope="module")
def sweep():
    return estimator_sweep([0.0, -0.8, 0.5], bins=[4, 8], samples=[100, 300, 1000], seeds=4, n_shuffles=2)


def test_estimator_figure_has_a_band_and_a_line_per_estimator_and_the_truth(sweep):
    fig = estimator_sweep_figure(sweep)  # default: the largest |rho| (-0.8)
    assert len(fig.data) == 2 * (2 * len(ESTIMATORS) + 1)
    assert [a.text for a in fig.layout.annotations] == ["4 bins", "8 bins"]
    assert "rho = -0.8" in fig.layout.title.text and f"truth {float(sweep.truth[1]):.3f}" in fig.layout.title.text
    assert fig.layout.xaxis.type == "log" and fig.layout.xaxis2.type == "log"
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    assert [t.name for t in lines[:4]] == list(ESTIMATORS)
    mean = sweep.estimates.mean(-1)
    np.testing.assert_allclose(lines[5].y, mean[1, 1, 1].numpy())  # Miller-Madow, 8 bins panel
    band = fig.data[2]  # Miller-Madow's band in the first panel: high then low reversed
    low, high = sweep.interval()
    np.testing.assert_allclose(band.y, np.r_[high[1, 1, 0].numpy(), low[1, 1, 0].numpy()[::-1]])
    assert list(band.x) == [100, 300, 1000, 1000, 300, 100] and band.fill == "toself"
    truth = [t for t in fig.data if t.name == "truth"]
    assert len(truth) == 2 and truth[0].line.dash == "dash" and truth[0].y == (float(sweep.truth[1]),) * 2
    assert sum(bool(t.showlegend) for t in fig.data) == len(ESTIMATORS) + 1  # legend once
    other = estimator_sweep_figure(sweep, rho_index=0)
    assert "rho = 0" in other.layout.title.text
    with pytest.raises(TlprobeError, match="rho index"):
        estimator_sweep_figure(sweep, rho_index=5)


def test_bias_figure_shows_the_smallest_rho_against_the_theory(sweep):
    fig = plugin_bias_figure(sweep)
    assert len(fig.data) == 4 and "rho = 0" in fig.layout.title.text
    np.testing.assert_allclose(fig.data[0].y, (sweep.estimates[0, 0, 0].mean(-1) - sweep.truth[0]).numpy())
    np.testing.assert_allclose(fig.data[3].y, sweep.plugin_bias[1].numpy())
    assert fig.data[3].line.dash == "dash" and fig.data[2].name == "8 bins: plug-in"
    assert fig.layout.yaxis.type == "log" and fig.layout.xaxis.type == "log"
    neg = dataclasses.replace(sweep, estimates=sweep.estimates - 1.0)  # a negative bias: linear y axis
    assert plugin_bias_figure(neg).layout.yaxis.type == "linear"


def test_main_figure_is_registered(sweep):
    assert len(sweep.figure().data) == len(estimator_sweep_figure(sweep).data)
    assert isinstance(sweep.figure().data[1].y, tuple) and torch.is_tensor(sweep.estimates)
