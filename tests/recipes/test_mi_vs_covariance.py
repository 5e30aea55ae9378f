"""mi-vs-covariance (L10): the same numbers as tlprobe 0.1.0 for the same seed."""

import json

from tests.helpers import assert_same_numbers


def test_same_numbers_as_0_1_0(recipe_output):
    new = json.loads(recipe_output("mi-vs-covariance").paths["results"].read_text())
    fields = [
        "covariance",
        "correlation",
        "mi_raw",
        "mi_miller_madow",
        "mi_null_mean",
        "mi_null_q95",
        "mi_corrected",
        "gcmi",
        "bins",
        "n_samples",
        "n_shuffles",
        "seed",
    ]
    pairs = {
        "params": "params",
        "examples": "results/examples",
        **{f"sweep/{f}": f"results/sweep/{f}" for f in fields + ["covariance_squared"]},
        "sweep/rho": "facts/rho",
        "example_data": "facts/example_data",
    }
    ignored = {
        "example_rows": "the report's table rows: the same numbers as results/examples",
        "sweep_rows": "the report's table rows: the same numbers as results/sweep and facts/gaussian_mi",
    }
    assert_same_numbers("mi-vs-covariance", new, pairs, ignored)
