"""L13 punctuation clusters: token classes, windows, covariance/MI, clusters, Simpson's paradox."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr

from tlprobe.access.text import cut_windows, run_windows, stdlib_corpus, tokenize_text, window_starts
from tlprobe.analyses.punctuation import (
    char_classes,
    cluster_panels,
    cluster_points,
    pearson_r,
    punctuation_dependence,
    sample_occurrences,
    simpson_check,
    token_classes,
    window_dependence,
)
from tlprobe.errors import TlprobeError
from tlprobe.testing import tiny_model, tiny_tokenizer

# (sentence, the marks that count, in order, as (character, class))
SENTENCES = [
    ("Pi is 3.14 and e is 2.718.", [(".", 2)]),
    ("Version 1.2.3 was released. Then 2.0.1 came.", [(".", 2), (".", 2)]),
    ("Wait... what? Really!", [("?", 2), ("!", 2)]),
    ("It trails off...", []),
    ("Mr. Smith met Dr. Jones, e.g. at noon. J. R. R. Tolkien wrote it.", [(",", 1), (".", 2), (".", 2)]),
    ('He said "stop." Then she left, "quietly," he said.', [(".", 2), (",", 1), (",", 1), (".", 2)]),
    ("Numbers: 1,000 and 10:30; done (see os.path).", [(":", 1), (";", 1), (".", 2)]),
    ("It costs approx. three euros, i.e. little. Done?!", [(",", 1), (".", 2), ("!", 2)]),
    ("The U.S. economy grew. See http://example.org/a.b for more.", [(".", 2), (".", 2)]),
]


def _marks(text: str) -> list[tuple[str, int]]:
    cc = char_classes(text)
    return [(text[i], int(cc[i])) for i in np.flatnonzero(cc).tolist()]


@pytest.mark.parametrize("text, expected", SENTENCES)
def test_char_classes_hand_written(text, expected):
    assert _marks(text) == expected


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_token_classes_match_characters_for_both_tokenizers(kind):
    tok = tiny_tokenizer(kind)
    text = "\n".join(s for s, _ in SENTENCES)
    tt = tokenize_text(tok, text)
    cls = token_classes(tt.text, tt.offsets)
    cc = char_classes(text)
    # Each class-c token holds exactly the marks of class c, and every mark is in one such token.
    for c in (1, 2):
        spans = [tt.offsets[i].tolist() for i in (cls == c).nonzero().flatten().tolist()]
        assert sum(int((cc[a:b] == c).sum()) for a, b in spans) == int((cc == c).sum())
        assert all((cc[a:b] == c).any() for a, b in spans)
    assert int((cls == 2).sum()) == int((cc == 2).sum())
    assert int((cls == 1).sum()) == int((cc == 1).sum())


def test_token_classes_label_a_split_multibyte_mark_once():
    tok = tiny_tokenizer("bpe")  # byte-level: an unseen CJK full stop is three byte tokens
    text = "It rains\u3002 Then it stops\u3002"
    tt = tokenize_text(tok, text)
    cls = token_classes(text, tt.offsets, terminal=".?!\u3002")
    assert int((cls == 2).sum()) == 2
    full_stop_tokens = [i for i in range(len(tt)) if tt.span(i) == "\u3002"]
    assert len(full_stop_tokens) > 2  # really split over byte tokens
    assert cls[full_stop_tokens].tolist().count(2) == 2


def test_bad_class_definitions_are_refused():
    with pytest.raises(TlprobeError, match="both internal and terminal"):
        char_classes("a, b.", internal=",.", terminal=".")
    with pytest.raises(TlprobeError, match="letters"):
        char_classes("a, b.", internal="a,")


def test_window_cutting_at_the_edges():
    ids = torch.arange(100, 130)  # 30 tokens
    pos = torch.tensor([0, 2, 3, 10, 26, 27, 29])
    kept, starts = window_starts(30, pos, before=3, after=2)
    assert kept.tolist() == [3, 10, 26, 27]
    assert starts.tolist() == [0, 7, 23, 24]
    win = cut_windows(ids, kept, before=3, after=2)
    assert win.shape == (4, 6)
    for row, c in zip(win.tolist(), kept.tolist()):
        assert row == ids[c - 3 : c + 3].tolist() and row[3] == ids[c]
    with pytest.raises(TlprobeError, match="too close to an edge"):
        cut_windows(ids, torch.tensor([28]), before=3, after=2)
    with pytest.raises(TlprobeError, match="non-negative"):
        window_starts(30, pos, before=-1, after=2)


def test_sampling_skips_edges_is_seeded_and_warns_when_short():
    cls = torch.zeros(200, dtype=torch.long)
    cls[[0, 1, 5, 51, 61, 71, 81, 91, 101, 195, 199]] = 1  # 0, 1, 5 and 195, 199 lack room
    cls[torch.arange(30, 190, 4)] = 2  # 40 terminal marks, all with room
    occ = sample_occurrences(cls, 5, before=10, after=8, seed=3, min_count=3)
    assert occ.available == {1: 6, 2: 40}
    assert ((occ.pos >= 10) & (occ.pos < 192)).all()
    assert (cls[occ.pos] == occ.cls).all()
    again = sample_occurrences(cls, 5, before=10, after=8, seed=3, min_count=3)
    assert torch.equal(occ.pos, again.pos)
    other = sample_occurrences(cls, 5, before=10, after=8, seed=4, min_count=3)
    assert not torch.equal(occ.pos[occ.cls == 2], other.pos[other.cls == 2])
    with pytest.warns(UserWarning, match="only 6 internal"):
        big = sample_occurrences(cls, 10, before=10, after=8, seed=0, min_count=3)
    assert int((big.cls == 1).sum()) == 6 and int((big.cls == 2).sum()) == 10


def test_too_few_punctuation_marks_is_a_clear_error():
    tok = tiny_tokenizer("wordpiece")
    tt = tokenize_text(tok, "A short text, with a comma. And one more sentence, ok. " * 3)
    cls = token_classes(tt.text, tt.offsets)
    with pytest.raises(TlprobeError, match=r"too few punctuation marks.*internal: \d+.*longer text"):
        sample_occurrences(cls, 250, before=20, after=10)
    with pytest.raises(TlprobeError, match="empty"):
        tokenize_text(tok, "   ")


def _numpy_mi(a: np.ndarray, b: np.ndarray, bins: int) -> float:
    joint, _, _ = np.histogram2d(a, b, bins=bins)
    p = joint / joint.sum()
    px, py = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    return float((p[nz] * np.log(p[nz] / (px @ py)[nz])).sum())


def test_window_dependence_equals_numpy():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, 3, 7, 48, generator=g, dtype=torch.float64)
    h[0, 1, 5] = 0.5 * h[0, 1, 2] ** 2 + 0.1 * h[0, 1, 5]  # a non-linear neighbour
    cov, mi = window_dependence(h, centre=2, bins=6)
    assert cov.shape == mi.shape == (2, 3, 7)
    hn = h.numpy()
    for layer in range(2):
        for w in range(3):
            for t in range(7):
                a, b = hn[layer, w, 2], hn[layer, w, t]
                assert cov[layer, w, t].item() == pytest.approx(np.cov(a, b)[0, 1], abs=1e-10)
                assert mi[layer, w, t].item() == pytest.approx(_numpy_mi(a, b, 6), abs=1e-6)
    assert mi[0, 1, 5] > mi[0, 1, 4]
    with pytest.raises(TlprobeError, match="centre"):
        window_dependence(h, centre=7)


def test_pearson_r_equals_scipy_per_group():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 90, generator=g, dtype=torch.float64)
    y = y + 0.5 * x
    lab = torch.arange(90) % 3
    r = pearson_r(x, y, lab)
    for k in range(3):
        assert r[k].item() == pytest.approx(pearsonr(x[lab == k].numpy(), y[lab == k].numpy())[0], abs=1e-12)
    assert pearson_r(x, y)[0].item() == pytest.approx(pearsonr(x.numpy(), y.numpy())[0], abs=1e-12)
    assert pearson_r(torch.ones(5), x[:5]).isnan().all()  # constant: undefined, not 0


def _groups(slope_between: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three tight groups on a line of slope ``slope_between``; inside each, y rises with x."""
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for i in range(3):
        x = torch.randn(300, generator=g, dtype=torch.float64) * 0.3
        y = x + torch.randn(300, generator=g, dtype=torch.float64) * 0.15
        xs.append(x + 3.0 * i)
        ys.append(y + slope_between * 3.0 * i)
    return torch.cat(xs), torch.cat(ys)


@pytest.mark.parametrize("method", ["kmeans", "gmm"])
def test_simpson_paradox_is_flagged(method):
    x, y = _groups(slope_between=-2.0)
    cl = cluster_points(x, y, method=method, seed=0)
    assert cl.k == 3
    check = simpson_check(x, y, cl.labels)
    assert check.pooled_r < -0.5 and all(r > 0.5 for r in check.within_r)
    assert check.flag and "Simpson's paradox" in check.explanation and "reverses" in check.explanation


def test_no_simpson_paradox_without_reversal():
    x, y = _groups(slope_between=+2.0)
    cl = cluster_points(x, y, seed=0)
    assert cl.k == 3
    check = simpson_check(x, y, cl.labels)
    assert check.pooled_r > 0.5 and not check.flag
    assert check.explanation.startswith("No Simpson's paradox")
    one = simpson_check(x, y, torch.zeros_like(x, dtype=torch.long))
    assert not one.flag and one.explanation.startswith("One cluster")
    # Mixed within-cluster signs are not a paradox either.
    y2 = y.clone()
    y2[:300] = -y2[:300] + 2 * y2[:300].mean()
    assert not simpson_check(x, y2, cl.labels).flag


def test_one_blob_is_one_cluster_and_labels_are_ordered():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(2, 500, generator=g)
    assert cluster_points(x, y, seed=0).k == 1
    xg, yg = _groups(+2.0)
    lab = cluster_points(xg, yg, seed=0).labels
    means = [xg[lab == k].mean().item() for k in range(3)]
    assert means == sorted(means)


def test_run_windows_matches_hugging_face_bert():
    from transformers import AutoModel

    import tlprobe
    from tlprobe.access.models import minilm_dir

    model = tlprobe.load_model("minilm", device="cpu")
    tt = tokenize_text(model.tokenizer, "One, two; three. Four: five? Six! " * 6)
    win = cut_windows(tt.ids, torch.tensor([8, 20]), before=4, after=3)
    hidden = run_windows(model, win, [1, 4], batch_size=1)
    hf = AutoModel.from_pretrained(str(minilm_dir())).eval()
    ids = torch.cat([torch.full((2, 1), 101), win, torch.full((2, 1), 102)], 1)  # [CLS] window [SEP]
    with torch.no_grad():
        ref = hf(input_ids=ids, output_hidden_states=True).hidden_states
    assert hidden.shape == (2, 2, 8, 384)
    torch.testing.assert_close(hidden[0], ref[1][:, 1:-1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(hidden[1], ref[4][:, 1:-1], atol=1e-4, rtol=1e-4)


def test_run_windows_decoder_prepends_bos_and_stops_early():
    model = tiny_model("gpt2", n_layers=3)
    tt = tokenize_text(model.tokenizer, "She gave her the book, twice; then it rests. " * 4)
    win = cut_windows(tt.ids, torch.tensor([6, 12, 18]), before=5, after=2)
    hidden = run_windows(model, win, [0, 1], batch_size=2)  # stops before block 1
    bos = torch.full((3, 1), model.tokenizer.bos_token_id)
    with torch.inference_mode():
        _, cache = model.run_with_cache(torch.cat([bos, win], 1))
    from tlprobe.access.hooks import resid_stack

    ref = resid_stack(cache, [0, 1])[:, :, 1:]
    torch.testing.assert_close(hidden, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(TlprobeError, match="out of range"):
        run_windows(model, win, [4])


def test_cluster_panels_end_to_end_and_deterministic():
    g = torch.Generator().manual_seed(0)
    text_cls = torch.zeros(400, dtype=torch.long)
    text_cls[torch.arange(20, 380, 9)] = 1
    text_cls[torch.arange(24, 380, 9)] = 2
    occ = sample_occurrences(text_cls, 12, before=4, after=3, seed=0, min_count=5)
    windows = torch.randint(0, 50, (len(occ), 8), generator=g)
    hidden = torch.randn(2, len(occ), 8, 32, generator=g)
    dep = punctuation_dependence(hidden, windows, text_cls, occ, before=4, depth=[1, 2], bins=5)
    assert dep.cov.shape == dep.mi.shape == (2, len(occ), 8)
    assert dep.slot_class[:, 4].tolist() == occ.cls.tolist()
    a = cluster_panels(dep, seed=0)
    b = cluster_panels(dep, seed=0)
    assert [(p.depth, p.cls) for p in a] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert json.dumps([p.to_dict() for p in a]) == json.dumps([p.to_dict() for p in b])
    for p in a:
        assert p.x.numel() == 12 * 7 and sum(c["size"] for c in p.clusters) == 12 * 7


def test_stdlib_corpus_is_deterministic_prose():
    a = stdlib_corpus(["textwrap", "json", "csv"])
    assert a == stdlib_corpus(["csv", "json", "textwrap"])
    cc = char_classes(a)
    assert (cc == 1).sum() > 20 and (cc == 2).sum() > 20
    assert ">>>" not in a


def test_recipe_runs_on_a_text_file_and_is_reproducible(tmp_path):
    from recipes import punctuation_clusters as recipe

    text = tmp_path / "prose.txt"
    text.write_text(stdlib_corpus(["csv", "json", "textwrap"]), encoding="utf-8")
    opts = dict(text=str(text), layers=[1, 3], n=20, before=6, after=3, k_max=3, progress=False, quiet=True)
    paths = recipe.run(out=str(tmp_path / "a"), **opts)
    res = json.loads(paths["results"].read_text())
    assert res["params"]["depths"] == [1, 3]
    assert [(p["depth"], p["class"]) for p in res["panels"]] == [
        (1, "internal"),
        (1, "terminal"),
        (3, "internal"),
        (3, "terminal"),
    ]
    for p in res["panels"]:
        assert len(p["points"]["covariance"]) == 20 * 9
        assert isinstance(p["simpson"]["flag"], bool) and p["simpson"]["explanation"]
    html = paths["report"].read_text()
    assert "Simpson" in html and "Pooled vs within-cluster Pearson r" in html
    again = recipe.run(out=str(tmp_path / "b"), **opts)
    assert again["results"].read_bytes() == paths["results"].read_bytes()
    with pytest.raises(TlprobeError, match="too few punctuation marks"):
        recipe.run(out=str(tmp_path / "c"), **{**opts, "before": 20, "after": 10, "text": _short(tmp_path)})


def _short(tmp_path) -> str:
    p = tmp_path / "short.txt"
    p.write_text("Only a few marks here, really. Two sentences, two commas.", encoding="utf-8")
    return str(p)


def test_window_dependence_does_not_depend_on_chunking():
    h = torch.randn(2, 9, 5, 40, generator=torch.Generator().manual_seed(3))
    cov, mi = window_dependence(h, centre=1, bins="sqrt", chunk=1000)
    cov2, mi2 = window_dependence(h, centre=1, bins="sqrt", chunk=4)
    assert torch.equal(cov, cov2) and torch.equal(mi, mi2)
