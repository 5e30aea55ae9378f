"""The dimensionality recipe (L06-L07): its spectra equal numpy on Hugging Face's own hidden states,
its streamed halves merge to the whole, its findings follow their fixed criteria."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import run_recipe_fast
from tlprobe.access.corpus import text_windows
from tlprobe.access.models import minilm_dir
from tlprobe.analyses.dimensionality import spectrum
from tlprobe.recipes import dimensionality as dim
from tlprobe.recipes.common import data_path, read_lines


def _windows(model):
    """The recipe's windows of the bundled text, one at a time: ``(tokens [1, pos], text token slice)``."""
    text = " ".join(read_lines(data_path("dimensionality_text.txt")))
    windows = text_windows(model, text)
    a = len(windows.prefix)
    for ids in windows.ids:
        yield torch.tensor([[*windows.prefix, *ids.tolist(), *windows.suffix]]), slice(a, a + len(ids))


@pytest.fixture(scope="module")
def hf_states(minilm):
    """Every token's hidden states per depth, from Hugging Face's BERT on the recipe's windows."""
    from transformers import AutoModel  # the independent reference implementation

    hf = AutoModel.from_pretrained(str(minilm_dir())).eval()
    with torch.no_grad():
        rows = [torch.stack(hf(t, output_hidden_states=True).hidden_states)[:, 0, span] for t, span in _windows(minilm)]
    return torch.cat(rows, dim=1).double().numpy()  # [depth, tokens, d]


def test_spectra_equal_numpy_on_hf_hidden_states(recipe_output, hf_states):
    run = recipe_output("dimensionality")
    s = run.results["resid"]
    assert s.n_samples == hf_states.shape[1] == run.facts["n_tokens"]
    for d in range(hf_states.shape[0]):
        lam = np.linalg.eigvalsh(np.cov(hf_states[d].T))[::-1].clip(min=0)
        pr = lam.sum() ** 2 / (lam**2).sum()
        assert float(s.participation_ratio[d]) == pytest.approx(pr, rel=1e-3), d
        cum = np.cumsum(lam) / lam.sum()
        want = [int(np.searchsorted(cum, t - 1e-12)) + 1 for t in s.thresholds]
        got = s.n_components[d].tolist()
        assert all(abs(a - b) <= 1 for a, b in zip(got, want)), (d, got, want)  # float32 rounding at a threshold


def test_halves_cover_the_text_and_the_null_keeps_the_variances(recipe_output, hf_states):
    run = recipe_output("dimensionality")
    even, odd = run.results["resid even batches"], run.results["resid odd batches"]
    assert even.n_samples + odd.n_samples == run.results["resid"].n_samples
    null = run.results["null"]
    assert run.facts["null"] == "permutation" and null.null == "permutation"
    trace = np.cov(hf_states[1].T).trace()
    assert float(null.eigenvalues[1].sum()) == pytest.approx(trace, rel=1e-3)  # a permutation keeps each variance


def test_diagonal_null_is_the_sorted_variances(minilm, hf_states):
    run = run_recipe_fast(dim, None, model=minilm, null="diagonal", heads=False)
    assert run.facts["null"] == "diagonal" and "heads" not in run.results
    var = np.sort(hf_states.var(axis=1, ddof=1), axis=-1)[:, ::-1]
    np.testing.assert_allclose(run.results["null"].eigenvalues.numpy(), var, rtol=1e-3, atol=1e-6)
    assert run.results["resid"] == run_recipe_fast(dim, None, model=minilm, heads=False).results["resid"]


def test_per_head_spectra_equal_the_cached_heads(recipe_output, minilm):
    from tlprobe.access.hooks import get_activation
    from tlprobe.access.run import forward_cache

    run = recipe_output("dimensionality")
    z = []
    with torch.no_grad():
        for t, span in _windows(minilm):
            cache = forward_cache(minilm, t, torch.ones_like(t), names=["blocks.2.attn.hook_z"])
            z.append(get_activation(cache, "z", 2)[0, span].double())
    x = torch.cat(z).numpy()  # [tokens, head, d_head]
    heads = run.results["heads"]["z"]
    assert list(run.results["heads"].axes) == ["vector", "layer", "head"] and list(heads.axes) == ["layer", "head"]
    for h in (0, 5):
        lam = np.linalg.eigvalsh(np.cov(x[:, h].T)).clip(min=0)
        want = lam.sum() ** 2 / (lam**2).sum()
        assert float(heads.head(f"L2H{h}").participation_ratio) == pytest.approx(want, rel=1e-3)
        null = run.results["heads null"]["z"].head(f"L2H{h}")  # the variances alone, sorted
        np.testing.assert_allclose(null.eigenvalues.numpy(), np.sort(x[:, h].var(0, ddof=1))[::-1], rtol=1e-3)
    assert run.findings[3].verdict in ("holds", "differs") and run.findings[3].numbers["vectors"] == list("qkvz")


def test_the_per_head_criterion():
    lam = torch.tensor([[[[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]]]], dtype=torch.float64)  # [vector, layer, head, d_head]
    axes = {"vector": ("q",), "layer": ("L0",), "head": ("H0", "H1")}
    heads = {"heads": spectrum(lam, n_samples=100, axes=axes)}
    resid = {k: _spectra([2, 5, 3]) for k in ("resid", "resid even batches", "resid odd batches")}
    spectra = {**resid, "null": _spectra([8, 8, 8])}
    iso = torch.ones(1, 1, 2, 3, dtype=torch.float64)
    heads["heads null"] = spectrum(iso, n_samples=100, null="diagonal", axes=axes)
    assert dim.findings(spectra, d_model=8, heads=heads)[3].verdict == "differs"  # H1 is isotropic: ratio 1
    heads["heads"] = spectrum(lam[..., :1, :].expand(1, 1, 2, 3), n_samples=100, axes=axes)
    assert dim.findings(spectra, d_model=8, heads=heads)[3].verdict == "holds"
    assert len(dim.findings(spectra, d_model=8)) == 3  # --no-heads: no per-head claim


def _spectra(prs, n_samples=5000, d=8):
    """Spectra over depth whose participation ratios are ``prs`` (two-level eigenvalue spectra)."""
    out = []
    for pr in prs:
        # k equal eigenvalues give PR = k exactly
        k = int(pr)
        out.append([1.0] * k + [0.0] * (d - k))
    lam = torch.tensor(out, dtype=torch.float64)
    labels = {"depth": tuple(f"L{i}" for i in range(len(prs)))}
    return spectrum(lam, n_samples=n_samples, axes=labels)


@pytest.mark.parametrize(
    "prs,halves,verdict",
    [([2, 5, 3], ([2, 5, 3], [2, 4, 3]), "holds"), ([2, 3, 5], ([2, 3, 5], [2, 3, 5]), "differs")],
)
def test_the_rise_and_fall_criterion(prs, halves, verdict):
    spectra = {
        "resid": _spectra(prs),
        "resid even batches": _spectra(halves[0]),
        "resid odd batches": _spectra(halves[1]),
        "null": _spectra([8, 8, 8]),
    }
    found = dim.findings(spectra, d_model=8)
    assert found[0].verdict == verdict
    assert found[2].verdict == "holds"  # every PR below the null's 8


def test_a_half_that_disagrees_is_inconclusive_and_short_texts_too():
    spectra = {
        "resid": _spectra([2, 5, 3]),
        "resid even batches": _spectra([2, 5, 3]),
        "resid odd batches": _spectra([5, 4, 3]),
        "null": _spectra([8, 8, 8]),
    }
    assert dim.findings(spectra, d_model=8)[0].verdict == "inconclusive"
    short = {k: _spectra([2, 5, 3], n_samples=10) for k in spectra}
    assert {f.verdict for f in dim.findings(short, d_model=8)} == {"inconclusive"}
