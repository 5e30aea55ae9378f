"""The rsa recipe (L04-L05): its numbers equal rsatoolbox on Hugging Face's own hidden states, its
findings follow their fixed criteria, its stimuli file is checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import run_recipe_fast
from tlprobe.access.models import minilm_dir
from tlprobe.analyses.geometry import category_selectivity, rsa_test
from tlprobe.errors import TlprobeError
from tlprobe.recipes import rsa


@pytest.fixture(scope="module")
def hf_word_means(recipe_output):
    """Each word's mean hidden state per depth, from Hugging Face's BERT (not TransformerLens)."""
    from transformers import AutoModel, AutoTokenizer  # the independent reference implementation

    run = recipe_output("rsa")
    stim = rsa.read_categories(None)
    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    hf = AutoModel.from_pretrained(str(minilm_dir())).eval()
    rows = []
    with torch.no_grad():
        for sentence, pos in zip(stim.sentences, run.facts["positions"]):
            enc = tok(sentence, return_tensors="pt")
            hs = torch.stack(hf(**enc, output_hidden_states=True).hidden_states)  # [depth, 1, pos, d]
            rows.append(hs[:, 0, pos].double())
    occ = torch.stack(rows, dim=1)  # [depth, sentences, d]
    words = torch.tensor(stim.word_of)
    means = torch.stack([occ[:, words == w].mean(1) for w in range(len(stim.words))], dim=1)
    return run, stim, means


def test_word_positions_are_the_words(recipe_output):
    from transformers import AutoTokenizer

    run = recipe_output("rsa")
    stim = rsa.read_categories(None)
    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    for sentence, w, pos in zip(stim.sentences, stim.word_of, run.facts["positions"]):
        ids = tok(sentence)["input_ids"]
        assert tok.convert_ids_to_tokens(ids[pos]) == stim.words[w], sentence


def test_residual_rsa_equals_rsatoolbox_on_hf_hidden_states(hf_word_means):
    from rsatoolbox.data import Dataset
    from rsatoolbox.rdm import RDMs, calc_rdm, compare

    run, stim, means = hf_word_means
    cats = np.array(stim.categories)
    model = (cats[:, None] != cats[None, :]).astype(float)
    iu = np.triu_indices(len(cats), 1)
    got = run.results["category resid"].observed.numpy()
    for d in range(means.shape[0]):
        data = calc_rdm(Dataset(means[d].numpy()), method="correlation")
        cat = RDMs(model[iu][None, :], dissimilarity_measure="category")
        want = float(compare(data, cat, method="spearman")[0, 0])
        assert got[d] == pytest.approx(want, abs=2e-4), d  # float32 forward passes, two libraries


def test_selectivity_equals_scipy_anova_on_hf_hidden_states(hf_word_means):
    from scipy import stats

    run, stim, means = hf_word_means
    sel = run.results["selectivity resid"]
    cats = np.array(stim.categories)
    d = 2
    groups = [means[d].numpy()[cats == c] for c in dict.fromkeys(stim.categories)]
    f, p = stats.f_oneway(*groups, axis=0)
    ok = np.isfinite(f)
    np.testing.assert_allclose(sel.f[d].numpy()[ok], f[ok], rtol=2e-3)
    selective = stats.false_discovery_control(p[ok]) < rsa.ALPHA
    # features at the threshold may flip with float32 rounding: compare the counts
    assert abs(int(sel.selective[d].numpy()[ok].sum()) - int(selective.sum())) <= 2


def test_per_head_maps_are_labelled_and_focus_head_slices(recipe_output, minilm):
    run = recipe_output("rsa")
    t = run.results["heads category Q"]
    assert list(t.axes) == ["layer", "head"] and t.head("L1H2").observed.shape == ()
    focus = run.results["focus RDMs"]
    layer = run.facts["layer"]
    assert focus.axes["rdm"] == (f"Q L{layer}", f"K L{layer}", "category model")
    one = run_recipe_fast(rsa, None, model=minilm, head=2, permutations=20, selectivity_permutations=5)
    assert one.results["focus RDMs"].axes["rdm"][0] == f"Q L{layer}H2"
    head_rdm = one.results["focus RDMs"].dissimilarities[0]  # the head's own RDM gives its map entry
    again = rsa_test(head_rdm, one.results["focus RDMs"].dissimilarities[2], n_permutations=20, seed=0)
    assert float(again.observed) == pytest.approx(float(one.results["heads category Q"].observed[layer, 2]), abs=1e-12)


def _tests(values, null_sd=0.01, n=200, seed=0):
    """An RSATest over depth (or [half, depth]) with given observed values and a Gaussian null of the given sd."""
    from tlprobe.analyses.geometry import RSATest

    g = torch.Generator().manual_seed(seed)
    obs = torch.tensor(values, dtype=torch.float64)
    null = null_sd * torch.randn(*obs.shape, n, generator=g, dtype=torch.float64)
    p = (1 + (null >= obs[..., None]).sum(-1)) / (1 + n)
    axes = {"depth": tuple(f"L{i}" for i in range(obs.shape[-1]))}
    if obs.ndim == 2:
        axes = {"half": ("even", "odd"), **axes}
    return RSATest(obs, null, p.double(), method="spearman", n_permutations=n, seed=seed, axes=axes)


@pytest.mark.parametrize(
    "values,halves,verdict",
    [
        ([0.1, 0.3, 0.5, 0.3, 0.1], [[0.1, 0.5, 0.4, 0.3, 0.1], [0.1, 0.3, 0.5, 0.3, 0.2]], "holds"),
        ([0.1, 0.2, 0.3, 0.4, 0.5], [[0.1, 0.2, 0.3, 0.4, 0.5]] * 2, "differs"),
        ([0.3, 0.31, 0.3], [[0.3, 0.31, 0.3]] * 2, "inconclusive"),  # within 2 null sds of an end
        ([0.1, 0.3, 0.5, 0.3, 0.1], [[0.1, 0.3, 0.5, 0.3, 0.1], [0.6, 0.3, 0.5, 0.3, 0.1]], "inconclusive"),
    ],
)
def test_the_peak_criterion(values, halves, verdict):
    assert rsa._peak("peaks in the middle", _tests(values), _tests(halves)).verdict == verdict


def test_findings_on_planted_structure():
    """Q and K share a geometry the category model does not have: finding 1 holds; both group by category."""
    g = torch.Generator().manual_seed(0)
    n_layers, n_heads, words = 3, 4, 16
    cats = [f"c{i // 4}" for i in range(words)]
    base = torch.randn(words, 20, generator=g, dtype=torch.float64)
    shared = base + 2.0 * torch.tensor([int(c[1:]) for c in cats], dtype=torch.float64)[:, None] * torch.randn(
        1, 20, generator=g, dtype=torch.float64
    )

    def noisy(scale):
        return shared + scale * torch.randn(n_layers, n_heads, words, 20, generator=g, dtype=torch.float64)

    from tlprobe.analyses.geometry import category_rdm, rdm

    q, k = rdm(noisy(0.3)), rdm(noisy(0.3))
    model = category_rdm(cats)
    per_head = {
        "heads category Q": rsa_test(q, model, n_permutations=50),
        "heads category K": rsa_test(k, model, n_permutations=50),
        "heads Q vs K": rsa_test(q, k, n_permutations=50),
    }
    whole = {
        "category Q": rsa_test(q.mean(1), model, n_permutations=200),
        "category K": rsa_test(k.mean(1), model, n_permutations=200),
        "Q vs K": rsa_test(q.mean(1), k.mean(1), n_permutations=200),
        "category resid": _tests([0.1, 0.5, 0.1]),
        "category resid halves": _tests([[0.1, 0.5, 0.1], [0.1, 0.4, 0.2]]),
    }
    x = noisy(0.3)[:, 0]
    depth = {"depth": ("L0", "L1", "L2")}
    sel = {
        "selectivity resid": category_selectivity(x, cats, n_permutations=50, axes=depth),
        "selectivity resid halves": category_selectivity(noisy(0.3)[:, :2].movedim(1, 0), cats, n_permutations=50),
    }
    found = rsa.findings(whole, per_head, sel, layer=1)
    assert [f.verdict for f in found[:3]] == ["holds", "holds", "holds"], [f.why for f in found]
    assert all(f.lesson in ("L04", "L05") for f in found)


def test_bad_stimuli_files_are_refused(tmp_path):
    one = tmp_path / "one.toml"
    one.write_text('[animals]\ndog = ["The dog ran.", "A dog."]\ncat = ["A cat sat.", "The cat."]\n')
    with pytest.raises(TlprobeError, match="1 category; RSA against a category model needs 2"):
        rsa.read_categories(one)
    twice = tmp_path / "twice.toml"
    twice.write_text(
        '[a]\ndog = ["The dog.", "A dog."]\ncat = ["A cat.", "Cat."]\n[b]\nred = ["Red.", "Red!"]\ndog = ["A dog."]\n'
    )
    with pytest.raises(TlprobeError, match="listed twice"):
        rsa.read_categories(twice)
    bad = tmp_path / "bad.toml"
    bad.write_text("[a\n")
    with pytest.raises(TlprobeError, match="is not a TOML file"):
        rsa.read_categories(bad)
    with pytest.raises(TlprobeError, match="file not found"):
        rsa.read_categories(tmp_path / "missing.toml")
    single = tmp_path / "single.toml"
    single.write_text(
        '[a]\ndog = ["The dog."]\ncat = ["A cat.", "Cat."]\n[b]\nred = ["Red.", "Red!"]\nblue = ["Blue.", "B."]\n'
    )
    with pytest.raises(TlprobeError, match="a.dog must be a list of at least 2 sentences"):
        rsa.read_categories(single)


def test_a_word_missing_from_its_sentence_is_named(tmp_path, minilm):
    f = tmp_path / "s.toml"
    f.write_text(
        '[a]\ndog = ["The dog ran.", "A dog."]\ncat = ["A horse sat.", "A cat."]\n'
        '[b]\nred = ["Red it is.", "So red."]\nblue = ["Blue.", "Blue sky."]\n'
    )
    with pytest.raises(TlprobeError, match="'cat' not found"):
        run_recipe_fast(rsa, None, model=minilm, categories=str(f))


def test_bundled_stimuli():
    stim = rsa.read_categories(None)
    assert len(stim.words) == 48 and len(set(stim.categories)) == 8 and stim.repetitions() == 4
    assert len(set(stim.sentences)) == len(stim.sentences) == 192
