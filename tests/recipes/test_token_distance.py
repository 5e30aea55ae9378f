"""token-distance (L11-L12): the recipe's MI and attention against Hugging Face BERT on the same
paragraph, its distance binning against numpy loops, and each finding's three verdicts on planted results."""

import numpy as np
import pytest
import torch

from tlprobe.access.models import minilm_dir
from tlprobe.analyses.mi import token_mi
from tlprobe.analyses.token_pairs import AttentionTracking, DistanceProfile, attention_tracking, distance_profile
from tlprobe.errors import TlprobeError
from tlprobe.recipes import token_distance as td
from tlprobe.recipes.common import data_path, read_lines


@pytest.fixture(scope="module")
def run(recipe_output):
    return recipe_output("token-distance")


@pytest.fixture(scope="module")
def hf_outputs():
    from transformers import AutoModel, AutoTokenizer  # the independent reference implementation

    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    hf = AutoModel.from_pretrained(str(minilm_dir()), attn_implementation="eager").eval()
    paragraph = " ".join(read_lines(data_path("coffee_paragraph.txt")))
    enc = tok(paragraph, return_tensors="pt")
    with torch.no_grad():
        out = hf(**enc, output_hidden_states=True, output_attentions=True)
    return (
        enc,
        torch.stack(out.hidden_states)[:, 0],
        torch.stack(out.attentions)[:, 0],
    )  # [depth, pos, d], [layer, head, q, k]


def test_results_shapes_findings_and_report(run):
    prof, tr = run.results["distance_profile"], run.results["attention_tracking"]
    assert isinstance(prof, DistanceProfile) and isinstance(tr, AttentionTracking)
    facts = run.facts
    assert prof.mean.shape[0] == 7 and prof.axes["depth"][0] == "embed" and prof.n_tokens == facts["n_tokens"]
    assert tr.rho_mi.shape == (6, 12) and tr.axes["layer"][0] == "L0" and tr.axes["head"][-1] == "H11"
    assert facts["occurrences"] == 5 and "[CLS]" not in facts["tokens"] and "[SEP]" not in facts["tokens"]
    assert tr.n_pairs == facts["occurrences"] * (facts["n_tokens"] - 1)  # an encoder: every other content token
    assert [f.lesson for f in run.findings] == ["L11-L12"] * 4
    assert all(f.verdict in ("holds", "differs", "inconclusive") for f in run.findings)
    html = run.paths["report"].read_text(encoding="utf-8")
    assert "Attention from &#x27;coffee&#x27;" in html or "Attention from 'coffee'" in html
    assert "time: token MI and its shuffle null" in html and facts["best_head"] in html


def test_token_mi_per_depth_equals_hugging_face_and_binning_equals_numpy(run, hf_outputs):
    enc, hidden, _ = hf_outputs
    content = torch.arange(1, enc["input_ids"].shape[1] - 1)  # [CLS] ... [SEP]
    assert len(content) == run.facts["n_tokens"]
    mi = token_mi(hidden[:, content], bins=run.params["bins"]).double().numpy()  # [depth, T, T]
    prof = run.results["distance_profile"]
    e = prof.edges.tolist()
    T = mi.shape[-1]
    i, j = np.triu_indices(T, 1)
    d = j - i
    for b in range(len(e) - 1):  # the bins, directly in numpy
        inside = (d >= e[b]) & (d < e[b + 1])
        assert int(prof.count[b]) == int(inside.sum())
        # float32 hidden states of two implementations can move a value across a bin edge: a few 1e-4 nats
        np.testing.assert_allclose(prof.mean[:, b].numpy(), mi[:, i[inside], j[inside]].mean(-1), atol=2e-3)


def test_attention_equals_hugging_face_at_the_target_rows(run, hf_outputs):
    enc, _, attentions = hf_outputs
    ids = enc["input_ids"][0]
    content = list(range(1, len(ids) - 1))
    q, k, _ = td.key_pairs(run.facts["target_positions"], content, run.facts["tokens"], causal=False)
    tr = run.results["attention_tracking"]
    want = attentions[:, :, torch.tensor(q), torch.tensor(k)]
    np.testing.assert_allclose(tr.attention.numpy(), want.numpy(), atol=1e-5)
    np.testing.assert_allclose(tr.distance.numpy(), np.abs(np.array(q) - np.array(k)))


def test_key_pairs_causal_and_encoder():
    q, k, labels = td.key_pairs([1, 3], [1, 2, 3], ["a", "b", "c"], causal=False)
    assert (q, k) == ([1, 1, 3, 3], [2, 3, 1, 2]) and labels[0] == "a@1 -> b@2"
    assert td.key_pairs([1, 3], [1, 2, 3], ["a", "b", "c"], causal=True)[:2] == ([3, 3], [1, 2])


def test_bad_options_are_refused_before_the_model_loads():
    with pytest.raises(TlprobeError, match="--bins must be >= 2"):
        td.run(bins=1, quiet=True)
    with pytest.raises(TlprobeError, match="--permutations"):
        td.run(permutations=0, quiet=True)


# -- findings on planted results -----------------------------------------------------------


def _profile(decay: float, *, shuffles: int = 4, tokens: int = 40):
    i = torch.arange(float(tokens))
    mi = 0.5 + decay / (1.0 + (i[:, None] - i[None, :]).abs())
    null = 0.5 + 0.001 * torch.rand(shuffles, 2, tokens, tokens, generator=torch.Generator().manual_seed(0))
    return distance_profile(mi.expand(2, tokens, tokens), null=null, axes={"depth": ("embed", "L0")})


def test_decay_finding_three_verdicts():
    assert td.findings(_profile(1.0), _tracking())[0].verdict == "holds"
    assert td.findings(_profile(0.0), _tracking())[0].verdict == "differs"
    assert td.findings(_profile(1.0, shuffles=1), _tracking())[0].verdict == "inconclusive"
    assert td.findings(_profile(1.0, tokens=20), _tracking())[0].verdict == "inconclusive"  # 19 nearest pairs


def _tracking(rho=None, q=None, partial=None, pairs: int = 100):
    """A planted [3 layers, 4 heads] tracking result (only the fields the findings read matter)."""
    shape = (3, 4)
    rho = torch.zeros(shape) if rho is None else torch.as_tensor(rho, dtype=torch.float32)
    q = torch.ones(shape) if q is None else torch.as_tensor(q, dtype=torch.float32)
    partial = torch.zeros(shape) if partial is None else torch.as_tensor(partial, dtype=torch.float32)
    z = torch.zeros(shape)
    return AttentionTracking(
        rho_mi=rho,
        rho_distance=z,
        rho_mi_distance=z,
        partial=partial,
        p_value=q,
        q_value=q,
        null_q95=z,
        attention=torch.zeros(*shape, pairs),
        mi=torch.zeros(*shape, pairs),
        distance=torch.arange(float(pairs)),
        n_permutations=10,
        seed=0,
        axes={"layer": ("L0", "L1", "L2"), "head": ("H0", "H1", "H2", "H3")},
    )


def test_tracking_findings_three_verdicts_each():
    p = _profile(1.0)
    layer1 = torch.zeros(3, 4)
    layer1[1] = 1.0  # four tracking heads, all in L1
    spread = torch.eye(3, 4)  # three tracking heads, one per layer
    small = torch.full((3, 4), 0.01)
    strong = td.findings(p, _tracking(rho=0.5 * layer1, q=1 - 0.999 * layer1, partial=0.3 * layer1))
    assert [f.verdict for f in strong[1:]] == ["holds", "holds", "holds"]
    assert strong[1].numbers["tracking_heads"] == ["L1H0", "L1H1", "L1H2", "L1H3"]
    assert strong[3].numbers["peak_layer"] == "L1"
    by_distance = td.findings(p, _tracking(rho=0.5 * spread, q=1 - 0.999 * spread, partial=small))
    assert [f.verdict for f in by_distance[1:]] == ["holds", "differs", "differs"]
    negative = td.findings(p, _tracking(rho=-0.5 * layer1, q=1 - 0.999 * layer1))  # significant but rho < 0
    assert [f.verdict for f in negative[1:]] == ["differs", "inconclusive", "inconclusive"]
    few = td.findings(p, _tracking(rho=0.5 * layer1, q=1 - 0.999 * layer1, pairs=10))
    assert [f.verdict for f in few[1:]] == ["inconclusive"] * 3
    two = torch.zeros(3, 4)
    two[0, :2] = 1.0
    assert td.findings(p, _tracking(rho=two, q=1 - 0.999 * two, partial=two))[3].verdict == "inconclusive"


def test_findings_on_a_real_tracking_result_agree_with_its_q_values():
    g = torch.Generator().manual_seed(0)
    mi = torch.rand(2, 60, generator=g)
    att = torch.stack([mi, torch.rand(2, 60, generator=g)], 1)
    t = attention_tracking(
        att, mi, torch.arange(60.0), n_permutations=199, axes={"layer": ("L0", "L1"), "head": ("H0", "H1")}
    )
    f = td.findings(_profile(1.0), t)[1]
    assert f.verdict == "holds" and f.numbers["tracking_heads"] == ["L0H0", "L1H0"]
