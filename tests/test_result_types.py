"""Every result type tlprobe defines round-trips: ``load(save(r)) == r``, on results the recipes made."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import tlprobe
from tlprobe import recipes
from tlprobe.analyses import logit_lens, mi_null, punctuation_dependence, sample_occurrences
from tlprobe.errors import TlprobeError
from tlprobe.result import _TYPES, Result


def _walk(value):
    """Every Result inside ``value`` (fields, dicts, lists, tuples), ``value`` included."""
    if isinstance(value, Result):
        yield value
        for f in dataclasses.fields(value):
            if f.metadata.get("save", True):
                yield from _walk(getattr(value, f.name))
    elif isinstance(value, dict):
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _walk(v)


def _not_made_by_the_default_recipes(tiny_models) -> list[Result]:
    """Results the recipes do not keep on MiniLM: the decoder logit lens, MI with its null, the
    per-window dependence of punctuation (the recipe keeps only its clusters)."""
    g = torch.Generator().manual_seed(0)
    model = tiny_models["gpt2"]
    _, cache = model.run_with_cache(" She gave her the book")
    lens = logit_lens(cache, [" her"], top_k=3)
    text = torch.tensor([0, 0, 1, 0, 2, 0, 1, 0, 2, 0])
    occ = sample_occurrences(text, 2, before=1, after=1, min_count=1)
    windows = torch.randint(0, 9, (4, 3), generator=g)
    dep = punctuation_dependence(torch.randn(1, 4, 3, 16, generator=g), windows, text, occ, before=1, depth=[2])
    null = mi_null(torch.randn(2, 40, 5, generator=g), n_shuffles=2, seed=0, axes={"layer": ("L0", "L1")})
    return [lens, lens.top(2), dep, null]


@pytest.fixture(scope="module")
def made(recipe_output, tiny_models):
    """One instance of each result type: from the recipes' results (on MiniLM), plus a few built here."""
    found: dict[type, Result] = {}
    for value in [*(recipe_output(name) for name in recipes.RECIPES), *_not_made_by_the_default_recipes(tiny_models)]:
        for r in _walk(value):
            found.setdefault(type(r), r)
    return found


def test_every_result_type_is_covered(made):
    defined = {t for t in _TYPES.values() if t.__module__.startswith("tlprobe.")}
    missing = sorted(t.__name__ for t in defined - set(made))
    assert not missing, f"result types not round-tripped here (build one in this module): {missing}"


def test_every_result_type_round_trips_exactly(made, tmp_path):
    assert len(made) >= 10
    for kind, r in made.items():
        back = tlprobe.load(r.save(tmp_path / f"{kind.__name__}.json"))
        assert type(back) is kind and back == r, kind.__name__
        assert back.to_dict() == r.to_dict(), kind.__name__


def test_every_result_type_has_rows_and_a_notebook_summary(made):
    import tlprobe.figures  # noqa: F401  (registers the main figures)
    from tlprobe.result import _FIGURES

    for kind, r in made.items():
        rows = r.rows()
        assert isinstance(rows, list) and rows and all(isinstance(row, dict) for row in rows), kind.__name__
        assert all(isinstance(k, str) for row in rows for k in row), kind.__name__
        page = r._repr_html_()
        assert "<div class='tlprobe-report tlprobe-inline'>" in page, kind.__name__
        if kind.__name__ == "RecipeResult":  # titled by its recipe (tests/report/test_notebook_display.py)
            assert f"<b>{r.recipe}</b>" in page
            continue
        assert f"<b>{kind.__name__}</b>" in page
        # the main figure is drawn inline when the type has one (registered by tlprobe.figures)
        has_figure = any(k in _FIGURES for k in kind.__mro__)
        drawn = page.count('class="tlprobe-figure"')
        assert drawn == 1 or (not drawn and (not has_figure or "no figure here: " in page)), kind.__name__


def test_main_figures_draw_from_the_result_alone(made):
    import plotly.graph_objects as go

    from tlprobe.result import _FIGURES

    drawn = [kind for kind in made if kind in _FIGURES]
    assert len(drawn) >= 5
    for kind in drawn:
        r = made[kind]
        while True:  # a figure draws the result, or says which selection it needs
            try:
                fig = r.figure()
                break
            except TlprobeError as exc:
                assert "select" in str(exc) or "one leading axis" in str(exc), (kind.__name__, str(exc))
                r = r[0]
        assert isinstance(fig, go.Figure), kind.__name__
