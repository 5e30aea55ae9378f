"""Long texts: tokenising with offsets, cutting windows at the edges, running windows, the stdlib corpus."""

from __future__ import annotations

import pytest
import torch

from tlprobe.access.hooks import resid_stack
from tlprobe.access.punctuation import char_classes
from tlprobe.access.text import cut_windows, run_windows, special_wrapping, stdlib_corpus, tokenize_text, window_starts
from tlprobe.errors import TlprobeError
from tlprobe.testing import tiny_model, tiny_tokenizer


def test_tokenize_text_keeps_offsets_and_refuses_empty_text():
    tok = tiny_tokenizer("wordpiece")
    tt = tokenize_text(tok, "Pi is 3.14, roughly.")
    assert len(tt) == tt.offsets.shape[0] == tt.ids.numel()
    assert [tt.span(i) for i in range(len(tt))] == ["Pi", "is", "3", ".", "14", ",", "roughly", "."]
    with pytest.raises(TlprobeError, match="empty"):
        tokenize_text(tok, "   ")


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


def test_run_windows_matches_hugging_face_bert(minilm):
    from transformers import AutoModel  # the independent reference implementation

    from tlprobe.access.models import minilm_dir

    tt = tokenize_text(minilm.tokenizer, "One, two; three. Four: five? Six! " * 6)
    win = cut_windows(tt.ids, torch.tensor([8, 20]), before=4, after=3)
    hidden = run_windows(minilm, win, [1, 4], batch_size=1)
    assert special_wrapping(minilm) == ([101], [102])
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
    ref = resid_stack(cache, [0, 1])[:, :, 1:]
    torch.testing.assert_close(hidden, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(TlprobeError, match="out of range"):
        run_windows(model, win, [4])
    with pytest.raises(TlprobeError, match="batch_size"):
        run_windows(model, win, [1], batch_size=0)


def test_stdlib_corpus_is_deterministic_prose():
    a = stdlib_corpus(["textwrap", "json", "csv"])
    assert a == stdlib_corpus(["csv", "json", "textwrap"])
    cc = char_classes(a)
    assert (cc == 1).sum() > 20 and (cc == 2).sum() > 20
    assert ">>>" not in a
    assert ">>>" in stdlib_corpus(["json"], drop_doctest_lines=False)
