"""Every recipe that runs a model takes a loaded model as well as a name (issue 14, item 4).

``run(model=<loaded model>, out=None)`` gives the RecipeResult of the name-based run (only the
recorded ``model`` differs: the loaded model's name), writes nothing, and leaves the model as it
was: the same hooks, the same weights bit for bit, the same train/eval mode. The model is a
``TransformerBridge`` on TransformerLens 3.x/4.x and a ``HookedEncoder`` / ``HookedTransformer``
on 2.x/3.x (``tlprobe.access.worlds`` says which); the same tests run in every world.
"""

from __future__ import annotations

import pathlib

import pytest
import torch

from tests.helpers import requires_hooked, run_recipe_fast
from tlprobe import recipes
from tlprobe.access import load_model, model_info, model_kind, resid_labels
from tlprobe.access.run import forward_cache, model_logits, tokenize_prompts
from tlprobe.access.worlds import has_bridge, has_hooked
from tlprobe.errors import TlprobeError
from tlprobe.recipes.common import ModelOptions, RecipeResult
from tlprobe.testing import tiny_model

#: Every recipe whose options name a model: a new recipe is covered without editing this file.
MODEL_RECIPES = sorted(name for name in recipes.RECIPES if issubclass(recipes.get(name).Options, ModelOptions))
#: The decoder worlds the installed TransformerLens has (a bridge from 3.0, HookedTransformer before 4.0).
KINDS = [kind for kind, ok in (("bridge", has_bridge()), ("hooked", has_hooked())) if ok]
HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _warm_up(model) -> None:
    """A plain forward pass and one with every hook cached, as a user's model has run before.

    A TL 4 bridge wires hooks of its own onto the wrapped Hugging Face modules the first time it
    runs, and keeps them: at the first forward pass (``BlockBridge._maybe_wire_capture_hooks``:
    on 24 of MiniLM's modules; 4 hooks on the tiny GPT-2) and at the first ``run_with_cache``
    (6 more on the tiny GPT-2), measured on TL 4.3. After these two passes, further runs add none.
    """
    tokens, mask = tokenize_prompts(model, ["She gave her the book."])
    model_logits(model, tokens, mask)
    with torch.no_grad():
        forward_cache(model, tokens, mask, names=None)


def _state(model) -> dict:
    """Everything a recipe must leave as it was, except the weights (see :func:`_weights`).

    Hooks are compared by their handle ids (unique for the process), so a hook removed and
    another added counts as a change. TransformerLens' own hook points are read through
    ``model.hook_dict`` (``fwd_hooks``/``bwd_hooks``: hooks added with ``add_hook``; ``ctx``:
    what a hook left behind); every module's torch hook dicts are read too. A TL 4.3 bridge
    keeps 24 ``add_hook`` hooks of its own at rest (the ``hook_mlp_in`` aliases), so the test is
    "the hooks it had before", not "no hooks".
    """
    return {
        "torch hooks": {name: tuple(tuple(getattr(m, d)) for d in HOOK_DICTS) for name, m in model.named_modules()},
        "TL hooks": {
            name: (tuple(id(h) for h in hp.fwd_hooks), tuple(id(h) for h in hp.bwd_hooks), dict(hp.ctx))
            for name, hp in model.hook_dict.items()
        },
        "training": {name: m.training for name, m in model.named_modules()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "padding_side": model.tokenizer.padding_side,
    }


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model, state: dict, weights: dict[str, torch.Tensor]) -> None:
    after = _state(model)
    for key in state:
        if key == "TL hooks":
            # the dict holds hook points by name only; an unchanged hook point keeps its handles
            changed = [n for n in state[key] if state[key][n] != after[key].get(n)]
            assert not changed and state[key].keys() == after[key].keys(), f"{key} changed at {changed[:5]}"
        else:
            assert after[key] == state[key], f"the model's {key} changed"
    now = model.state_dict()
    assert now.keys() == weights.keys()
    for k, w in weights.items():
        v = now[k].detach()
        assert (v.dtype, v.device, v.shape) == (w.dtype, w.device, w.shape), k
        assert torch.equal(v.flatten().view(torch.uint8), w.flatten().view(torch.uint8)), f"weight {k} changed"


def test_model_recipes_are_found():
    assert {"layer-similarity", "logit-lens", "pairwise-mi", "punctuation-clusters", "qkv-similarity"} <= set(
        MODEL_RECIPES
    )
    assert "mi-vs-covariance" not in MODEL_RECIPES  # simulated data, no model


def test_the_bundled_model_is_this_worlds_class(minilm):
    assert model_kind(minilm) == ("bridge" if has_bridge() else "hooked-encoder")


@pytest.mark.parametrize("name", MODEL_RECIPES)
def test_a_loaded_model_gives_the_named_runs_result_and_writes_nothing(
    name, minilm, recipe_output, tmp_path, monkeypatch
):
    want = recipe_output(name)  # run by name, with its own freshly loaded model
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    _warm_up(minilm)
    state, weights = _state(minilm), _weights(minilm)

    got = run_recipe_fast(recipes.get(name), None, model=minilm)

    assert isinstance(got, RecipeResult) and got.recipe == name
    assert got.results.keys() == want.results.keys()
    for key in want.results:
        assert got.results[key] == want.results[key], key
    assert got.facts == want.facts
    assert want.params["model"] == "minilm" and got.params["model"] == model_info(minilm).name
    assert {k: v for k, v in got.params.items() if k != "model"} == {
        k: v for k, v in want.params.items() if k != "model"
    }
    assert got.paths == {} and list(cwd.iterdir()) == []
    _assert_unchanged(minilm, state, weights)


@pytest.fixture(scope="module")
def hooked_minilm():
    """The bundled MiniLM as a ``HookedEncoder`` (TransformerLens' own BERT code, TL 2.x/3.x)."""
    return load_model("minilm", kind="hooked", device="cpu")


@requires_hooked
@pytest.mark.parametrize("name", MODEL_RECIPES)
def test_a_loaded_hooked_encoder_runs_every_model_recipe(name, hooked_minilm, recipe_output, tmp_path, monkeypatch):
    """On TL 2.x the test above already runs a HookedEncoder (the name loads one); on TL 3.x the name
    loads a bridge, so the HookedEncoder is run here. Its numbers equal the bridge's only to float32
    rounding (tests/access/test_worlds.py), so the results are compared by structure, not by value."""
    want = recipe_output(name)
    monkeypatch.chdir(tmp_path)
    _warm_up(hooked_minilm)
    state, weights = _state(hooked_minilm), _weights(hooked_minilm)

    got = run_recipe_fast(recipes.get(name), None, model=hooked_minilm)

    assert isinstance(got, RecipeResult) and got.paths == {} and list(tmp_path.iterdir()) == []
    assert got.facts["model"]["kind"] == "hooked-encoder" and got.params["model"] == model_info(hooked_minilm).name
    assert got.results.keys() == want.results.keys()
    for key, result in want.results.items():
        assert type(got.results[key]) is type(result) and got.results[key].axes == result.axes, key
    _assert_unchanged(hooked_minilm, state, weights)


@pytest.mark.parametrize("kind", KINDS)
def test_logit_lens_on_a_loaded_decoder(kind, tmp_path, monkeypatch):
    model = tiny_model("gpt2", kind=kind)
    monkeypatch.chdir(tmp_path)
    _warm_up(model)
    state, weights = _state(model), _weights(model)
    n_layers = model.cfg.n_layers

    run = run_recipe_fast(recipes.get("logit-lens"), None, model=model, targets=" her")

    assert isinstance(run, RecipeResult) and run.paths == {} and list(tmp_path.iterdir()) == []
    assert run.facts["lens"] == "logit" and run.params["model"] == model_info(model).name
    lens = run.results["lens"]
    n_tokens = len(run.facts["token_ids"])
    assert lens.axes["depth"] == tuple(resid_labels(n_layers, style="block"))  # embed, block 0, block 1
    assert tuple(lens.top_ids.shape) == (n_layers + 1, 1, n_tokens, 10)
    assert tuple(lens.target_probs.shape) == (n_layers + 1, 1, n_tokens, 1) and lens.target_names == (" her",)
    assert bool(((lens.target_probs >= 0) & (lens.target_probs <= 1)).all())
    torch.testing.assert_close(lens.top_probs.sum(-1) <= 1 + 1e-5, torch.ones_like(lens.entropy, dtype=torch.bool))
    assert float(lens.kl_to_final[-1].abs().max()) < 1e-5  # the last depth is the model's own output
    assert lens.final_max_abs_error < 1e-4
    _assert_unchanged(model, state, weights)


@pytest.mark.parametrize("kind", KINDS)
def test_pairwise_mi_on_a_loaded_decoder(kind, tmp_path, monkeypatch):
    model = tiny_model("gpt2", kind=kind)
    text = tmp_path / "paragraph.txt"  # the bundled paragraph is longer than the tiny model's context
    text.write_text("Tea is a drink made by steeping the cured leaves of Camellia sinensis, an evergreen shrub. " * 2)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    _warm_up(model)
    state, weights = _state(model), _weights(model)
    depth = model.cfg.n_layers + 1

    run = run_recipe_fast(recipes.get("pairwise-mi"), None, model=model, text=str(text))

    assert isinstance(run, RecipeResult) and run.paths == {} and list(cwd.iterdir()) == []
    assert (run.facts["depth"], run.facts["d_model"]) == (depth, model.cfg.d_model)
    layers = tuple(resid_labels(model.cfg.n_layers, style="block"))
    for key in ("raw", "corrected", "miller_madow", "gcmi", "token_mi"):
        hist = run.results[key]
        assert hist.axes == {"layer": layers}, key
        assert tuple(hist.prob.shape) == (depth, run.params["hist_bins"]), key
        torch.testing.assert_close(hist.prob.sum(-1).double(), torch.ones(depth, dtype=torch.float64))
    d = model.cfg.d_model
    assert run.results["raw"].n_pairs == d * (d - 1) // 2
    assert bool((run.results["raw"].mean > 0).all())  # a plug-in MI estimate is positive
    _assert_unchanged(model, state, weights)


@pytest.mark.parametrize("name", MODEL_RECIPES)
@pytest.mark.parametrize(
    "bad,type_name",
    [(object(), "object"), (42, "int"), (torch.nn.Linear(2, 2), "Linear")],
    ids=["object", "int", "Linear"],
)
def test_a_bad_model_object_is_refused_in_one_line(name, bad, type_name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TlprobeError) as exc:
        run_recipe_fast(recipes.get(name), None, model=bad)
    message = str(exc.value)
    assert "\n" not in message
    assert f"got {type_name}" in message and "TransformerLens model" in message  # the problem
    assert "tlprobe.load_model(name)" in message  # the fix
    assert list(pathlib.Path(tmp_path).iterdir()) == []


def test_a_device_option_must_name_the_loaded_models_device(minilm, tmp_path, monkeypatch):
    from tlprobe.recipes.common import _check_loaded_device

    monkeypatch.chdir(tmp_path)
    same = run_recipe_fast(recipes.get("qkv-similarity"), None, model=minilm, device="cpu")
    assert same.paths == {}
    elsewhere = torch.nn.Linear(2, 2, device="meta")  # a model that is not on the cpu
    with pytest.raises(TlprobeError, match=r"loaded model is on meta.*does not move your model") as exc:
        _check_loaded_device(elsewhere, "cpu")
    assert "\n" not in str(exc.value)
