"""layer-similarity (L03): the same numbers as tlprobe 0.1.0 for the same seed."""

import json

import numpy as np
import torch

from tests.helpers import assert_fixture_values, assert_same_numbers, fixture


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
