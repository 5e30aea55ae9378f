"""qkv-similarity (L02): the same numbers as tlprobe 0.1.0 for the same seed, and the per-head
summary equals the single-head drill-down."""

import json

import numpy as np

from tests.helpers import assert_same_numbers, fixture, run_recipe_fast
from tlprobe import recipes
from tlprobe.recipes.common import data_path, read_lines


def test_same_numbers_as_0_1_0(recipe_output):
    new = json.loads(recipe_output("qkv-similarity").paths["results"].read_text())
    pairs = {
        "params": "params",
        **{f"params/{k}": f"facts/{k}" for k in ("layer", "n_sentences", "n_features")},
        "model": "facts/model",
        "target_positions": "facts/target_positions",
        "non_target_positions": "facts/non_target_positions",
        "histograms/cosine": "results/cosine",
        "histograms/correlation": "results/correlation",
        "per_head/cosine": "results/per_head cosine",
        "per_head/correlation": "results/per_head correlation",
    }
    ignored = {"summary": "the report's table rows: the same numbers as results/cosine and results/correlation"}
    assert_same_numbers("qkv-similarity", new, pairs, ignored)
    heads = new["results"]["per_head cosine"]["axes"]["head"]
    assert heads == [f"L{new['facts']['layer']}H{h}" for h in range(12)]
    assert new["results"]["cosine"]["axes"]["population"] == fixture("qkv-similarity")["populations"]


def test_per_head_summary_matches_head_drill_down(recipe_output, tmp_path):
    full = recipe_output("qkv-similarity").results
    sentences = tmp_path / "sentences.txt"
    sentences.write_text("\n".join(read_lines(data_path("her_sentences.txt"))[:14]) + "\n", encoding="utf-8")
    mod = recipes.get("qkv-similarity")
    few = run_recipe_fast(mod, None, sentences=str(sentences)).results
    one = run_recipe_fast(mod, None, sentences=str(sentences), head=5).results
    assert "per_head cosine" not in one
    for method in ("cosine", "correlation"):
        per_head = few[f"per_head {method}"]
        target = one[method]["target"]
        np.testing.assert_allclose(per_head["L3H5"].frac_extreme, target.frac_extreme, atol=1e-6)
        np.testing.assert_allclose(per_head["L3H5"].mean, target.mean, atol=1e-5)
    assert full["cosine"].axes["population"][0] == "target" and "per_head cosine" in full


# -- findings: every criterion on synthetic results made to hold, to fail and to be undecided ----

import pytest  # noqa: E402
import torch  # noqa: E402

from tlprobe.analyses.similarity import BLOCKS, BlockStats  # noqa: E402
from tlprobe.recipes.qkv_similarity import POPULATIONS, findings  # noqa: E402

BINS = 20
CLAIMS = ("extremes", "qk", "shuffled", "blocks", "permuted")


def _stats(method, frac, std, qk_pos, qk_neg, spread, axes) -> BlockStats:
    """BlockStats with these per-item values ([n]) broadcast over the blocks; std grows linearly over
    the six blocks so that largest/smallest = ``spread``; QK's edge bins hold ``qk_pos``/``qk_neg``."""
    frac, std, qk_pos, qk_neg, spread = (
        torch.as_tensor(v, dtype=torch.float64) for v in (frac, std, qk_pos, qk_neg, spread)
    )
    n = frac.shape[0]
    ramp = torch.linspace(0, 1, 6, dtype=torch.float64)
    std6 = std[:, None] * (1 + (spread[:, None] - 1) * ramp)
    prob = torch.full((n, 6, BINS), 0.0, dtype=torch.float64)
    prob[:, :, 0], prob[:, :, -1] = frac[:, None] / 2, frac[:, None] / 2
    prob[:, 1, 0], prob[:, 1, -1] = qk_neg, qk_pos
    prob[:, :, 1:-1] = ((1 - prob[:, :, 0] - prob[:, :, -1]) / (BINS - 2))[..., None]
    zeros = torch.zeros(n, 6, dtype=torch.float64)
    return BlockStats(
        method=method,
        blocks=tuple(BLOCKS),
        edges=torch.linspace(-1, 1, BINS + 1, dtype=torch.float64),
        prob=prob,
        mean=zeros,
        std=std6,
        mean_abs=zeros,
        frac_extreme=frac[:, None].expand(n, 6).clone(),
        count=torch.tensor([10, 20, 20, 10, 20, 10]),
        extreme=0.9,
        axes=axes,
    )


def _l02(heads: int = 12, **kw):
    """Synthetic L02 results: per-head targets (arrays over heads or scalars) and the four populations."""
    g = np.random.default_rng(0)
    wobble = 1 + 0.02 * g.standard_normal(heads)  # replicates are never exactly equal
    v = {
        "cos": 0.10,
        "corr": 0.001,
        "qk_pos": 0.06,
        "qk_neg": 0.06,
        "corr_std": 0.27,
        "shuffled_std": 0.146,
        "spread": 1.05,
        "perm": 0.09,
        **kw,
    }
    h = {
        k: np.broadcast_to(np.asarray(v[k], dtype=float), (heads,)) * wobble
        for k in ("cos", "corr", "qk_pos", "qk_neg", "corr_std")
    }
    h["spread"] = np.broadcast_to(np.asarray(v["spread"], dtype=float), (heads,)).copy()
    one = np.ones(heads)
    per_head = {
        "cosine": _stats(
            "cosine",
            h["cos"],
            0.6 * one,
            h["qk_pos"],
            h["qk_neg"],
            one,
            {"head": tuple(f"L3H{i}" for i in range(heads))},
        ),
        "correlation": _stats(
            "correlation",
            h["corr"],
            h["corr_std"],
            0 * one,
            0 * one,
            h["spread"],
            {"head": tuple(f"L3H{i}" for i in range(heads))},
        ),
    }
    m = {k: float(np.mean(x)) for k, x in h.items()}
    pops = {"population": POPULATIONS}
    stats = {
        "cosine": _stats(
            "cosine",
            [m["cos"], 0.004, 0.0, v["perm"]],
            [0.6] * 4,
            [m["qk_pos"], 0, 0, 0],
            [m["qk_neg"], 0, 0, 0],
            [1.0] * 4,
            pops,
        ),
        "correlation": _stats(
            "correlation",
            [m["corr"], 0, 0, 0],
            [m["corr_std"], 0.27, v["shuffled_std"], v["shuffled_std"]],
            [0] * 4,
            [0] * 4,
            [m["spread"], 1, 1, 1],
            pops,
        ),
    }
    return stats, per_head


def _verdicts(stats, per_head):
    return dict(zip(CLAIMS, (f.verdict for f in findings(stats, per_head, seed=0)), strict=True))


@pytest.mark.parametrize(
    ("claim", "made", "verdict"),
    [
        ("extremes", {"cos": 0.10, "corr": 0.001}, "holds"),
        ("extremes", {"cos": 0.10, "corr": 0.08}, "differs"),
        ("extremes", {"cos": 0.10, "corr": np.tile([0.02, 0.08], 6)}, "inconclusive"),
        ("qk", {"qk_pos": 0.3, "qk_neg": 0.05}, "holds"),
        ("qk", {"qk_pos": 0.06, "qk_neg": 0.06}, "differs"),
        ("qk", {"qk_pos": np.tile([0.09, 0.03], 6), "qk_neg": np.tile([0.01, 0.07], 6)}, "inconclusive"),
        ("qk", {"qk_pos": 0.0, "qk_neg": 0.0}, "inconclusive"),
        ("shuffled", {"corr_std": 0.15}, "holds"),
        ("shuffled", {"corr_std": 0.27}, "differs"),
        ("shuffled", {"corr_std": np.tile([0.12, 0.25], 6)}, "inconclusive"),
        ("blocks", {"spread": 1.05}, "holds"),
        ("blocks", {"spread": 2.0}, "differs"),
        ("blocks", {"spread": np.tile([1.0, 1.5], 6)}, "inconclusive"),
        ("permuted", {"perm": 0.09}, "holds"),
        ("permuted", {"perm": 0.01}, "differs"),
        ("permuted", {"perm": 0.01, "cos": 0.0}, "inconclusive"),
    ],
)
def test_l02_criteria(claim, made, verdict):
    assert _verdicts(*_l02(**made))[claim] == verdict


def test_l02_without_per_head_replicates_is_inconclusive_but_says_why():
    stats, _ = _l02()
    found = findings(stats, None)
    assert [f.verdict for f in found[:4]] == ["inconclusive"] * 4 and "--head" in found[0].why
    few = findings(*_l02(heads=2))
    assert few[0].verdict == "inconclusive" and "only 2" in few[0].why


def test_l02_numbers_and_why_come_from_the_data():
    (extremes, qk, shuffled, _blocks, _perm) = findings(*_l02(corr_std=0.27), seed=0)
    assert shuffled.numbers["shuffled_std"] == 0.146 and shuffled.numbers["ratio"] == pytest.approx(1.9, abs=0.03)
    assert "1.9 x as wide" in shuffled.why
    assert qk.numbers["positive_share"] == pytest.approx(0.5, abs=0.02) and "symmetric" in qk.why
    assert "10% of the pairs under cosine" in extremes.why and extremes.lesson == "L02"
    assert findings(*_l02(), seed=0)[0].to_dict() == findings(*_l02(), seed=0)[0].to_dict()  # seeded


def test_recipe_run_reports_every_claim(recipe_output):
    run = recipe_output("qkv-similarity")
    saved = json.loads(run.paths["results"].read_text())["findings"]
    assert [f["claim"] for f in saved] == [f.claim for f in run.findings] and len(saved) == len(CLAIMS)
    assert all(f["lesson"] == "L02" and f["verdict"] in ("holds", "differs", "inconclusive") for f in saved)
    assert all(f["criterion"] and f["why"] and f["numbers"] for f in saved)
    res = run.results
    again = findings(
        {m: res[m] for m in ("cosine", "correlation")},
        {m: res[f"per_head {m}"] for m in ("cosine", "correlation")},
        seed=0,
    )
    assert [f.to_dict() for f in again] == saved  # a pure function of the saved results
    html = run.paths["report"].read_text()
    assert "What the lesson reported on GPT-2 small" in html and "The lesson (GPT-2 small, layer 6) found" not in html
