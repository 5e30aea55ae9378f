"""mi-vs-covariance and pairwise-mi: every bad option is refused before any work, naming its flag;
sizes that cannot fit in memory are refused up front with the estimate (they were killed by the
kernel at 23 GB after 1.5-2 minutes)."""

from __future__ import annotations

import pytest

from tlprobe.errors import TlprobeError
from tlprobe.recipes import mi_vs_covariance, pairwise_mi

#: No model is ever loaded by these tests: a refusal after setup() would fail to load this one.
NO_MODEL = "no-such-model-is-loaded"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"bins": 100_000_000}, r"the dependence measures of .*--bins 100000000.* needs ~.* GiB; .*lower --bins"),
        ({"samples": 1_000_000_000}, r"simulating 21 pairs of --samples 1000000000 needs ~.* GiB; .*lower --samples"),
        ({"shuffles": 1_000_000_000}, r"--shuffles 1000000000.* needs ~.* GiB; .*lower --samples or --shuffles"),
        ({"noise": float("nan")}, r"--noise must be a finite number.*got nan"),
        ({"noise": float("inf")}, r"--noise must be a finite number.*got inf"),
        ({"noise": -0.5}, r"--noise must be a finite number >= 0, got -0.5"),
        ({"shuffles": 0}, r"--shuffles must be >= 1, got 0"),
        ({"steps": 2}, r"--steps must be >= 3 to show a U, got 2"),
        ({"samples": 5}, r"too few samples for the simulation: got 5, need at least 20; use --samples 20"),
        ({"samples": 2.5}, r"--samples must be an integer, got 2.5"),
        ({"bins": 1}, r"--bins must be >= 2, got 1"),
        ({"bins": "auto"}, r"unknown --bins rule 'auto'"),
    ],
)
def test_mi_vs_covariance_refuses_bad_options(overrides, message):
    with pytest.raises(TlprobeError, match=message) as err:
        mi_vs_covariance.run(out=None, quiet=True, **overrides)
    assert "\n" not in str(err.value)


def test_mi_vs_covariance_check_options_names_the_flag():
    options = mi_vs_covariance.Options()
    object.__setattr__(options, "noise", float("nan"))  # past the options' own finiteness check
    with pytest.raises(TlprobeError, match=r"^--noise must be a finite number >= 0, got nan$"):
        mi_vs_covariance.check_options(options)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"bins": 100_000_000}, r"one joint histogram of --bins 100000000 needs ~.* GiB; .*lower --bins"),
        ({"bins": 1_000_000}, r"one joint histogram of --bins 1000000 needs ~.* GiB; .*lower --bins"),
        ({"hist_bins": 10**12}, r"the histograms of --hist-bins 1000000000000 needs ~.* GiB; .*lower --hist-bins"),
        ({"shuffles": 0}, r"--shuffles must be >= 1, got 0"),
        ({"hist_bins": 0}, r"--hist-bins must be >= 1, got 0"),
        ({"bins": 1}, r"--bins must be >= 2, got 1"),
        ({"bins": "auto"}, r"unknown --bins rule 'auto'"),
    ],
)
def test_pairwise_mi_refuses_bad_options_before_the_model_loads(overrides, message):
    with pytest.raises(TlprobeError, match=message):
        pairwise_mi.run(out=None, quiet=True, model=NO_MODEL, **overrides)


def test_pairwise_mi_checks_the_sizes_of_the_model():
    # 7 layers of MiniLM (384 dimensions) over ~115 tokens: fine at 10 bins, refused at 200000.
    pairwise_mi.check_sizes(pairwise_mi.Options(), 7, 115, 384, bins=10)
    with pytest.raises(TlprobeError, match=r"pairwise MI of 7 layers x 384 dimensions .* GiB; .*lower --bins"):
        pairwise_mi.check_sizes(pairwise_mi.Options(bins=200_000), 7, 115, 384, bins=200_000)
    with pytest.raises(
        TlprobeError, match=r"histograms of 7 layers with --hist-bins 10000000000 .* GiB.*lower --hist-bins"
    ):
        pairwise_mi.check_sizes(pairwise_mi.Options(hist_bins=10**10), 7, 115, 384, bins=10)
