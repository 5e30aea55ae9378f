"""Punctuation rules: which characters and tokens are internal or terminal marks, for any tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tlprobe.access.punctuation import CLASS_NAMES, char_classes, token_classes
from tlprobe.access.text import tokenize_text
from tlprobe.errors import TlprobeError
from tlprobe.testing import tiny_tokenizer

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


def _marks(text: str, **rules) -> list[tuple[str, int]]:
    cc = char_classes(text, **rules)
    return [(text[i], int(cc[i])) for i in np.flatnonzero(cc).tolist()]


@pytest.mark.parametrize("text, expected", SENTENCES)
def test_char_classes_hand_written(text, expected):
    assert _marks(text) == expected


def test_a_period_after_a_line_break_still_ends_the_sentence():
    assert _marks("See the list.\nname, value") == [(".", 2), (",", 1)]
    assert _marks("See the list. name, value") == [(",", 1)]  # lower case on the same line: no sentence start


def test_own_classes_and_abbreviations():
    assert _marks("Tea - then coffee. Fine", internal="-") == [("-", 1), (".", 2)]
    assert _marks("It is coffee. Fine", abbreviations=["coffee"]) == []
    assert CLASS_NAMES == {0: "none", 1: "internal", 2: "terminal"}


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
    with pytest.raises(TlprobeError, match="at least one"):
        char_classes("a, b.", internal="", terminal="")
    with pytest.raises(TlprobeError, match="must be a string"):
        char_classes(b"a, b.")  # type: ignore[arg-type]


def test_bad_offsets_are_refused():
    with pytest.raises(TlprobeError, match=r"expected \[tokens, 2\]"):
        token_classes("a, b.", torch.tensor([0, 1, 2]))
    with pytest.raises(TlprobeError, match="outside the text"):
        token_classes("a, b.", torch.tensor([[0, 1], [2, 40]]))
