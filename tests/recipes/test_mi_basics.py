"""mi-basics (L08): the recipe on a small grid, its report, and each finding's three verdicts on planted sweeps."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

import tlprobe
from tlprobe.analyses.simulation import ESTIMATORS, EstimatorSweep, estimator_sweep, gaussian_mi, plugin_bias
from tlprobe.cli import main
from tlprobe.errors import TlprobeError
from tlprobe.recipes import mi_basics

SMALL = {"rho": (0.0, 0.9), "bins": (4, 8), "samples": (100, 1000, 3000), "seeds": 4, "shuffles": 5}
CLAIMS = ("plug-in MI overestimates", "Miller-Madow removes", "shuffle correction", "grows with bins^2/n", "recover")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mi-basics")
    return mi_basics.run(**SMALL, out=str(out), progress=False, quiet=True)


def test_results_shapes_facts_and_report(run):
    s = run.results["sweep"]
    assert isinstance(s, EstimatorSweep) and s.estimates.shape == (4, 2, 2, 3, 4)
    assert s.axes["estimator"] == ESTIMATORS and s.samples == (100, 1000, 3000) and s.n_shuffles == 5
    ent = run.facts["entropy"]
    assert (ent["rho"], ent["n"], ent["bins"]) == (0.9, 3000, 8)
    assert ent["mi"] == pytest.approx(ent["plugin"], abs=1e-12)  # H(X) + H(Y) - H(X,Y) = the plug-in MI
    assert run.facts["plugin_worst"] == pytest.approx(float(s.estimates[0, 0, 1, 0].mean()))
    assert len(run.findings) == 5 and all(c in f.claim for c, f in zip(CLAIMS, run.findings))
    assert all(f.lesson == "L08" and f.verdict in ("holds", "differs", "inconclusive") for f in run.findings)
    html = run.paths["report"].read_text(encoding="utf-8")
    assert "H(X,Y)" in html and "Plug-in bias at independence" in html and "MI estimators vs the Gaussian truth" in html
    data = json.loads(run.paths["results"].read_text())
    assert data["params"]["bins"] == [4, 8] and data["params"]["seeds"] == 4
    back = tlprobe.load(run.paths["results"])
    assert back.results["sweep"] == s


def test_run_findings_on_the_small_grid(run):
    v = [f.verdict for f in run.findings]
    assert v[0] == "holds" and v[1] == "holds" and v[3] == "holds", [f.why for f in run.findings]
    assert run.findings[0].numbers["cells"] == 4  # 4 bins at n >= 160, 8 bins at n >= 640
    assert run.findings[3].numbers["cells"] == 6 and run.findings[4].numbers["bins"] == 8  # 3000 >= 10 x 64


def test_bad_options_are_refused_before_work():
    for overrides, message in [
        ({"rho": (0.0, 1.0)}, "--rho values must lie strictly between -1 and 1"),
        ({"rho": ()}, "--rho needs at least one value"),
        ({"bins": (1, 4)}, "--bins must be >= 2"),
        ({"samples": (5,)}, "too few samples for an MI estimate: got 5, need at least 10"),
        ({"seeds": 1}, "--seeds must be >= 2"),
        ({"shuffles": 0}, "--shuffles must be >= 1"),
        ({"samples": (10**11,)}, "needs ~.* GiB; .*lower --samples"),
    ]:
        with pytest.raises(TlprobeError, match=message):
            mi_basics.run(out=None, quiet=True, **overrides)


def test_command_line_lists(tmp_path, capsys):
    args = ["run", "mi-basics", "--rho", "0", "0.5", "--bins", "4", "--samples", "100", "200", "--seeds", "2"]
    assert main([*args, "--shuffles", "2", "--out", str(tmp_path), "--no-progress"]) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["params"]["rho"] == [0.0, 0.5] and data["params"]["samples"] == [100, 200]
    capsys.readouterr()


# -- findings on planted sweeps: each built to hold, to differ and to be undecided ------------


def planted(rho=(0.0, 0.9), bins=(4, 8), samples=(300, 1000, 3000), *, plug=1.0, mm=0.1, sh=0.0, gc=0.0, seeds=3):
    """A sweep whose means over seeds are truth + share x (bins-1)^2/(2n) per estimator (gcmi: truth + gc)."""
    truth = gaussian_mi(torch.tensor(rho, dtype=torch.float64))
    theory = plugin_bias(torch.tensor(bins)[:, None], torch.tensor(samples)[None])
    base = truth[:, None, None] + torch.zeros(len(rho), len(bins), len(samples), dtype=torch.float64)
    means = torch.stack([base + plug * theory, base + mm * theory, base + sh * theory, base + gc])
    est = means[..., None].expand(*means.shape, seeds).clone()
    est[..., 0] += 1e-6  # the seeds differ a little (the percentile interval is not degenerate)
    est[..., 1] -= 1e-6
    return EstimatorSweep(
        estimates=est,
        truth=truth,
        plugin_bias=theory,
        rho=tuple(rho),
        bins=tuple(bins),
        samples=tuple(samples),
        n_seeds=seeds,
        n_shuffles=5,
        seed=0,
        axes={
            "estimator": ESTIMATORS,
            "rho": [str(r) for r in rho],
            "bins": [str(b) for b in bins],
            "samples": [str(n) for n in samples],
        },
    )


def verdicts(s):
    fs = mi_basics.findings(s)
    assert len(fs) == 5 and all(f.why and f.criterion and f.lesson == "L08" for f in fs)
    return [f.verdict for f in fs], fs


def test_the_lessons_world_holds():
    v, fs = verdicts(planted())
    assert v == ["holds"] * 5
    assert fs[0].numbers["ratio_min"] == pytest.approx(1.0, abs=1e-3) and fs[3].numbers["spearman"] == 1.0


def test_bias_band_differs():
    v, fs = verdicts(planted(plug=2.0))
    assert v[0] == "differs" and "outside the band beyond the seeds' noise" in fs[0].why
    assert verdicts(planted(plug=0.5))[0][0] == "differs"


def test_bias_band_is_inconclusive_when_the_seeds_are_too_noisy_to_tell():
    s = planted(plug=2.0)
    est = s.estimates.clone()
    est[0, ..., 0] += 0.05  # the same mean, a spread over seeds larger than the bias itself
    est[0, ..., 1] -= 0.05
    v, fs = verdicts(dataclasses.replace(s, estimates=est))
    assert v[0] == "inconclusive" and "within the seeds' noise" in fs[0].why


def test_miller_madow_differs_when_it_leaves_most_of_the_bias():
    v, fs = verdicts(planted(mm=0.8))
    assert v[1] == "differs" and "too much left" in fs[1].why


def test_shuffle_differs_when_a_bias_remains():
    v, fs = verdicts(planted(sh=0.5))
    assert v[2] == "differs" and "a bias remains" in fs[2].why
    # within noise: a bias of 0.5 x theory inside the 95% interval of widely spread seeds holds
    s = planted(sh=0.5)
    noisy = s.estimates.clone()
    noisy[2, ..., 0] += 1.0  # the same mean, sd ~1 over the 3 seeds
    noisy[2, ..., 1] -= 1.0
    assert verdicts(dataclasses.replace(s, estimates=noisy))[0][2] == "holds"


def test_rank_differs_when_the_bias_falls_with_bins2_over_n():
    s = planted()
    est = s.estimates.clone()
    est[0, 0] = (0.01 / s.plugin_bias)[..., None].expand_as(est[0, 0])  # bias ~ n / bins^2
    v, fs = verdicts(dataclasses.replace(s, estimates=est))
    assert v[3] == "differs" and fs[3].numbers["spearman"] == -1.0


def test_recovery_differs_for_gcmi_or_the_binned_estimators():
    assert verdicts(planted(gc=0.05))[0][4] == "differs"
    s = planted()
    est = s.estimates.clone()
    est[1, 1, 1, -1] -= 0.3  # Miller-Madow at rho = 0.9, 8 bins, n = 3000: 0.3 nats below the truth
    v, fs = verdicts(dataclasses.replace(s, estimates=est))
    assert v[4] == "differs" and fs[4].numbers["bins"] == 8 and fs[4].numbers["mm_max_error"] > 0.29


def test_inconclusive_without_independence_or_without_the_regime():
    v, fs = verdicts(planted(rho=(0.5, 0.9)))
    assert v[:4] == ["inconclusive"] * 4 and "add --rho 0" in fs[0].why and v[4] == "holds"
    v, fs = verdicts(planted(samples=(20, 50, 100, 150)))  # 4 bins need n >= 160
    assert v[:3] == ["inconclusive"] * 3 and v[4] == "inconclusive" and "asymptotic regime" in fs[0].why
    assert v[3] == "holds"
    v, _ = verdicts(planted(bins=(4,), samples=(300, 1000)))  # two cells: no rank correlation
    assert v[3] == "inconclusive"


def test_findings_on_a_real_sweep_never_differ_where_the_theory_applies():
    s = estimator_sweep([0.0, 0.6], bins=[8], samples=[1000, 3000], seeds=10, n_shuffles=3)
    v, fs = verdicts(s)
    assert (
        v == ["holds"] * 3 + ["inconclusive", "holds"]
        and "need 4" in fs[3].why
        and np.isfinite(s.estimates.numpy()).all()
    ), [f.why for f in fs]
