"""layer-similarity (L03): the same numbers as tlprobe 0.1.0 for the same seed."""

import json

import numpy as np
import pytest
import torch

from tests.helpers import assert_fixture_values, assert_same_numbers, fixture
from tlprobe.analyses.similarity import BlockStats
from tlprobe.recipes import layer_similarity


def test_same_numbers_as_0_1_0(recipe_output):
    new = json.loads(recipe_output("layer-similarity").paths["results"].read_text())
    pairs = {
        "params": "params",
        "params/n_sentences": "facts/n_sentences",
        "params/n_features": "facts/n_features",
        "params/n_heads": "facts/model/n_heads",
        "model": "facts/model",
        "layers": "facts/layers",
        "head_maps/layers": "facts/layers",
        "target_positions": "facts/target_positions",
        "non_target_positions": "facts/non_target_positions",
        "moments/residual stream": "results/moments residual stream",
        "moments/Q|K|V": "results/moments Q|K|V",
        "moments/Q|K|V per head": "results/moments Q|K|V per head",
        "histograms/cosine": "results/cosine",
        "histograms/correlation": "results/correlation",
    }
    ignored = {
        "summary": "the report's table rows: the same numbers as results/cosine and results/correlation",
        "head_maps/maps": "the same numbers as results/per_head <method> and results/moments Q|K|V per head, "
        "one [layer, head] slice per map (compared one by one below)",
    }
    assert_same_numbers("layer-similarity", new, pairs, ignored)


def test_head_maps_of_0_1_0_are_slices_of_the_per_head_results(recipe_output):
    """Each 0.1.0 map "<population> <method> <block> <summary>" or "<population> <stat>" is a [layer, head] slice."""
    new = json.loads(recipe_output("layer-similarity").paths["results"].read_text())["results"]
    old = fixture("layer-similarity")
    assert old["head_maps"]["labels"][5][11] == "L5H11" == new["per_head cosine"]["axes"]["layer"][5] + "H11"
    populations = new["per_head cosine"]["axes"]["population"]
    for name, values in old["head_maps"]["maps"].items():
        pop = next(p for p in sorted(populations, key=len, reverse=True) if name.startswith(p + " "))
        p, rest = populations.index(pop), name[len(pop) + 1 :].split()
        if len(rest) == 3:
            method, block, summary = rest
            st = new[f"per_head {method}"]
            got = np.array(st[summary])[p, ..., st["blocks"].index(block)]
        else:
            got = np.array(new["moments Q|K|V per head"][rest[0]])[p]
        assert_fixture_values(got, values, name)  # float32 values, bit for bit on the bridge


def test_results_are_labelled_and_the_report_has_every_figure(recipe_output):
    run = recipe_output("layer-similarity")
    assert len(run.figures()) == 7
    cosine, per_head = run.results["cosine"], run.results["per_head cosine"]
    assert cosine.axes == {"population": ("target", "non-target"), "layer": tuple(f"L{i}" for i in range(6))}
    head = per_head["target"]["L5H11"]
    assert head.prob.shape == (6, 30) and torch.equal(head.frac_extreme, per_head.frac_extreme[0, 5, 11])
    assert run.results["moments residual stream"].axes["depth"][0] == "embed"
    assert run.results["moments Q|K|V per head"]["non-target"]["L2H3"].n_features == 96


@pytest.mark.parametrize("family", ["neox", "llama"])
def test_rotary_layer_0_correlation_is_undefined_and_reported(tiny_models, tmp_path, family):
    """Rotary models: layer 0's pre-rotary Q/K/V see only the token, identical in every sentence."""
    run = layer_similarity.run(model=tiny_models[family], out=tmp_path, quiet=True, progress=False)
    corr, cos, per_head = (run.results[k] for k in ("correlation", "cosine", "per_head correlation"))
    assert isinstance(corr, BlockStats) and isinstance(cos, BlockStats) and isinstance(per_head, BlockStats)
    undefined = corr.std.isnan().all(-1)
    assert undefined.tolist() == [[True, False], [False, False]]  # [population, layer]: target L0 only
    assert bool(corr.prob[0, 0].isnan().all()) and not bool(cos.std.isnan().any())
    assert bool(per_head.std[0, 0].isnan().all())
    saved = json.loads(run.paths["results"].read_text())
    assert saved["results"]["correlation"]["std"][0][0] == [None] * 6
    (finding,) = saved["facts"]["identical_across_sentences"]
    assert finding == {"population": "target", "layer": "L0", "n_sentences": 48, "max_abs_difference": 0.0}
    html = run.paths["report"].read_text()
    assert "at L0 the target vectors are identical in all 48 sentences" in html
    assert "rotary model" in html and "Position enters inside attention" in html


def test_learned_positions_give_no_undefined_items(tiny_models):
    run = layer_similarity.run(model=tiny_models["gpt2"], out=None, quiet=True, progress=False)
    for name, st in run.results.items():
        if isinstance(st, BlockStats):
            assert not bool(st.std.isnan().any()), name


# -- streaming: batch by batch into accumulators, the numbers of the in-memory computation -----

from tlprobe.access import run_batch  # noqa: E402
from tlprobe.access.hooks import fused_qkv, hook_names, resid_hook_names, resid_stack, split_heads  # noqa: E402
from tlprobe.analyses.moments import sample_moments  # noqa: E402
from tlprobe.analyses.similarity import qkv_block_similarity  # noqa: E402
from tlprobe.recipes.common import target_positions, target_sentences  # noqa: E402

SUMMARIES = ("mean", "std", "mean_abs", "frac_extreme")


def _in_memory(model, prompts, seed=0):
    """The computation before streaming: every sentence in one padded run, the vectors gathered at the
    target and at the seeded earlier token: ``[population, layer, samples, F]`` Q|K|V and residual stream."""
    layers = list(range(model.cfg.n_layers))
    batch = run_batch(model, prompts, names=hook_names(["q", "k", "v"], layers, model=model) + resid_hook_names(model))
    tpos, npos = target_positions(model, batch.tokens, batch.attention_mask, prompts, "her", seed)
    qkv = torch.stack([fused_qkv(batch.cache, layer) for layer in layers])
    resid = resid_stack(batch.cache)

    def at(acts):
        return torch.stack([pos.gather(acts.movedim(0, 2)).movedim(1, 0) for pos in (tpos, npos)])

    return at(qkv), at(resid), tpos, npos


def _assert_same_block_stats(got: BlockStats, want: BlockStats, what: str) -> None:
    for name in SUMMARIES:
        torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=1e-5, atol=1e-6, msg=what + name)
    # histogram counts: equal, except a pair within float rounding of an edge, moved to the next bin
    count = want.count.view(*[1] * (want.prob.ndim - 2), -1, 1)
    a, b = ((st.prob.double() * count).round().long() for st in (got, want))
    assert torch.equal(a.sum(-1), b.sum(-1)), what
    assert int((a.cumsum(-1) - b.cumsum(-1)).abs().max()) <= 1, what
    assert int((a - b).abs().sum()) <= 4, what


@pytest.fixture(scope="module")
def gpt2_in_memory(tiny_models):
    prompts = target_sentences(None, "a test")
    return prompts, _in_memory(tiny_models["gpt2"], prompts)


@pytest.mark.parametrize("batch_size", [1, 7, 48])
def test_streamed_statistics_equal_the_in_memory_ones(tiny_models, gpt2_in_memory, batch_size):
    """Batches that split the 48 sentences unevenly (48 x 1, 6 x 7 + 6, one batch), each padded to its own
    longest sentence: the same positions, moments and block statistics as one padded in-memory run."""
    model = tiny_models["gpt2"]
    prompts, (qkv, resid, tpos, npos) = gpt2_in_memory
    acc, got_t, got_n = layer_similarity.accumulate(model, prompts, "her", 0, batch_size=batch_size)
    assert torch.equal(got_t.pos, tpos.pos) and torch.equal(got_n.pos, npos.pos)
    heads = split_heads(qkv, model.cfg.n_heads)
    for key, x in (("moments residual stream", resid), ("moments Q|K|V", qkv), ("moments Q|K|V per head", heads)):
        got, want = acc[key].result(), sample_moments(x)
        assert got.n_samples == want.n_samples == len(prompts)
        for name in ("var", "mean", "mean_abs", "rel_var"):
            torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=1e-5, atol=1e-7, msg=key + name)
    for key, x in (("similarity Q|K|V", qkv), ("similarity Q|K|V per head", heads)):
        for method in layer_similarity.METHODS:
            got = acc[key].block_stats(method, bins=60)
            _assert_same_block_stats(got, qkv_block_similarity(x, method, bins=60), f"{key} {method} ")
    assert layer_similarity.identical_across_sentences(acc["similarity Q|K|V"], ("L0", "L1")) == []


def test_recipe_results_are_the_in_memory_ones_and_resume_from_a_checkpoint(tiny_models, gpt2_in_memory, tmp_path):
    model = tiny_models["gpt2"]
    prompts, (qkv, resid, tpos, npos) = gpt2_in_memory
    ck = tmp_path / "ls.ckpt"
    kw = {"model": model, "out": None, "quiet": True, "progress": False, "batch_size": 7, "bins": 30}
    run = layer_similarity.run(checkpoint=str(ck), checkpoint_every=2, **kw)
    assert ck.exists() and run.facts["target_positions"] == tpos.pos.tolist()
    axes = run.results["cosine"].axes
    for method in layer_similarity.METHODS:
        want = qkv_block_similarity(qkv, method, bins=30, axes=axes)
        _assert_same_block_stats(run.results[method], want, method + " ")
    want = sample_moments(resid).rel_var
    torch.testing.assert_close(run.results["moments residual stream"].rel_var, want, rtol=1e-5, atol=1e-7)
    again = layer_similarity.run(checkpoint=str(ck), **kw)  # a finished checkpoint: nothing runs again
    assert torch.equal(again.results["correlation"].prob, run.results["correlation"].prob)
    assert torch.equal(again.results["moments Q|K|V per head"].var, run.results["moments Q|K|V per head"].var)


# -- findings: every criterion on synthetic results made to hold, to fail and to be undecided ----

from tlprobe.analyses.moments import Moments  # noqa: E402
from tlprobe.analyses.similarity import BLOCKS  # noqa: E402
from tlprobe.recipes.layer_similarity import findings  # noqa: E402

CLAIMS = ("early", "converge", "last", "variance")


def _block_stats(frac: np.ndarray, axes: dict) -> BlockStats:
    """Cosine BlockStats whose every block has the fraction of extremes ``frac`` ([...])."""
    f = torch.as_tensor(np.ascontiguousarray(frac), dtype=torch.float64)[..., None].expand(*frac.shape, 6).clone()
    zeros = torch.zeros_like(f)
    return BlockStats(
        method="cosine",
        blocks=tuple(BLOCKS),
        edges=torch.linspace(-1, 1, 11, dtype=torch.float64),
        prob=torch.full((*f.shape, 10), 0.1, dtype=torch.float64),
        mean=zeros,
        std=zeros + 0.5,
        mean_abs=zeros + 0.5,
        frac_extreme=f,
        count=torch.tensor([10, 20, 20, 10, 20, 10]),
        extreme=0.9,
        axes=axes,
    )


def _l03(frac, rel_var=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6), *, heads: int = 12, noise: float = 0.01, var_noise=0.01):
    """Synthetic L03 results: per-layer fractions of extremes and relative variances, per head with noise."""
    g = np.random.default_rng(1)
    frac, rel_var = np.asarray(frac, dtype=float), np.asarray(rel_var, dtype=float)
    n = len(frac)
    layers = tuple(f"L{i}" for i in range(n))
    per_head = np.clip(frac[:, None] + noise * g.standard_normal((n, heads)), 0, 1)
    var = np.clip(rel_var[:n, None] + var_noise * g.standard_normal((n, heads)), 1e-6, 1)
    pops = ("target", "non-target")
    by_layer = {"population": pops, "layer": layers}
    by_head = {**by_layer, "head": tuple(f"H{h}" for h in range(heads))}
    stats = {"cosine": _block_stats(np.stack([per_head.mean(-1), per_head.mean(-1) / 10]), by_layer)}
    head_cosine = _block_stats(np.stack([per_head, per_head / 10]), by_head)
    rv = torch.as_tensor(np.stack([var, var]), dtype=torch.float64)
    moments = Moments(n_samples=48, n_features=96, var=rv, mean=0 * rv, mean_abs=0 * rv, rel_var=rv, axes=by_head)
    return stats, head_cosine, moments


def _verdicts(*made, **kw):
    return dict(zip(CLAIMS, (f.verdict for f in findings(*_l03(*made, **kw), seed=0)), strict=True))


FALLING = (0.6, 0.4, 0.25, 0.15, 0.1, 0.05)
REBOUND = (0.6, 0.3, 0.15, 0.09, 0.1, 0.2)  # MiniLM's shape: down through the middle, up at the end


@pytest.mark.parametrize(
    ("claim", "made", "kw", "verdict"),
    [
        ("early", (FALLING,), {}, "holds"),
        ("early", ((0.2, 0.6, 0.4, 0.3, 0.2, 0.1),), {}, "differs"),
        ("early", ((0.31, 0.3, 0.2, 0.1, 0.1, 0.1),), {"noise": 0.1}, "inconclusive"),
        ("converge", (FALLING,), {}, "holds"),
        ("converge", ((0.1, 0.1, 0.2, 0.3, 0.4, 0.5),), {}, "differs"),
        ("converge", ((0.3, 0.28, 0.26, 0.24, 0.22, 0.2),), {"noise": 0.08}, "inconclusive"),
        ("last", (FALLING,), {}, "holds"),
        ("last", (REBOUND,), {}, "differs"),
        ("last", ((0.6, 0.3, 0.15, 0.1, 0.1, 0.1),), {"noise": 0.05}, "inconclusive"),
        ("variance", (FALLING,), {}, "holds"),
        ("variance", (FALLING, (0.6, 0.5, 0.4, 0.3, 0.2, 0.1)), {}, "differs"),
        ("variance", (FALLING, (0.3, 0.32, 0.34, 0.36, 0.38, 0.4)), {"var_noise": 0.08}, "inconclusive"),
    ],
)
def test_l03_criteria(claim, made, kw, verdict):
    assert _verdicts(*made, **kw)[claim] == verdict


def test_l03_too_few_layers_or_heads_is_inconclusive():
    for made, kw in (((0.6, 0.1),), {}), ((FALLING,), {"heads": 2}):
        found = findings(*_l03(*made, **kw), seed=0)
        assert [f.verdict for f in found] == ["inconclusive"] * 4 and "need 3 layers and 3 heads" in found[0].why


def test_l03_why_describes_the_curve():
    early, converge, last, variance = findings(*_l03(REBOUND), seed=0)
    assert "rises again" in converge.why and "L5" in last.why and "not a monotone convergence" in last.why
    assert early.numbers["next_highest"] == "L1" and len(early.numbers["by_layer"]) == 6
    assert variance.numbers["rho"] > 0.9 and variance.lesson == "L03" and "residual" not in variance.why
    stats, head_cosine, moments = _l03(REBOUND)
    rv = torch.tensor([[0.03, 0.1, 0.3], [0.9, 0.7, 0.9]], dtype=torch.float64)  # [population, depth]
    axes = {"population": ("target", "non-target"), "depth": ("embed", "L0", "L1")}
    stream = Moments(n_samples=48, n_features=8, var=rv, mean=0 * rv, mean_abs=0 * rv, rel_var=rv, axes=axes)
    with_stream = findings(stats, head_cosine, moments, residual=stream, seed=0)[3]
    assert with_stream.numbers["residual_rel_var_first_last"] == [0.03, 0.3]
    assert "the residual stream's goes" in with_stream.why


def test_recipe_run_reports_every_claim(recipe_output):
    run = recipe_output("layer-similarity")
    saved = json.loads(run.paths["results"].read_text())["findings"]
    assert len(saved) == len(CLAIMS) and all(f["lesson"] == "L03" and f["criterion"] and f["why"] for f in saved)
    res = run.results
    residual = res["moments residual stream"]
    again = findings(
        {"cosine": res["cosine"]}, res["per_head cosine"], res["moments Q|K|V per head"], residual=residual, seed=0
    )
    assert [f.to_dict() for f in again] == saved  # a pure function of the saved results
    html = run.paths["report"].read_text()
    assert "What the lesson reported on GPT-2 XL" in html and "The lesson (GPT-2 XL" not in html
