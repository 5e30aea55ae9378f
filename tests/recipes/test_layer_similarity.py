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
