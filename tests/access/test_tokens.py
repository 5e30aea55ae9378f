"""Target positions (tokenizer-aware, word boundaries) and seeded non-target sampling."""

import pytest
import torch

from tlprobe.access import Positions, find_token_positions, sample_positions
from tlprobe.errors import TlprobeError, TokenNotFoundError


def _batch(tok, texts, bos=None):
    rows = [([bos] if bos is not None else []) + tok(t)["input_ids"] for t in texts]
    width = max(map(len, rows))
    pad = tok.pad_token_id or 0
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return ids, mask


def _decoded(tok, ids, pos):
    return [tok.decode([int(ids[b, p])]) for b, p in zip(range(len(ids)), pos)]


def test_bpe_leading_space_and_start_of_text(bpe_tokenizer):
    tok = bpe_tokenizer
    ids, mask = _batch(
        tok, ["She gave her the book.", "her book was red.", "Herself and other hers, then her."], bos=tok.bos_token_id
    )
    pos = find_token_positions(tok, ids, "her", mask).pos
    got = _decoded(tok, ids, pos)
    assert got[0].strip() == "her" and got[1].strip() == "her" and got[2].strip() == "her"
    # the third prompt's only whole-word "her" is the last one (not inside herself/other/hers)
    assert pos[2] == max(i for i in range(ids.shape[1]) if mask[2, i]) - 1


def test_wordpiece_and_occurrences(wordpiece_tokenizer):
    tok = wordpiece_tokenizer
    ids, mask = _batch(tok, ["her cat saw her dog", "the other herself saw her"])
    first = find_token_positions(tok, ids, "her", mask, occurrence="first")
    last = find_token_positions(tok, ids, "her", mask, occurrence="last")
    allp = find_token_positions(tok, ids, "her", mask, occurrence="all")
    toks0 = tok.convert_ids_to_tokens(ids[0].tolist())
    assert toks0[first.pos[0]] == "her" and first.pos[0] == 1 and last.pos[0] == 4
    assert len(allp) == 3 and sorted(allp.batch.tolist()) == [0, 0, 1]
    assert all(tok.convert_ids_to_tokens(int(ids[b, p])) == "her" for b, p in zip(allp.batch, allp.pos))


def test_multi_token_word_reported_at_last_token(wordpiece_tokenizer):
    tok = wordpiece_tokenizer
    word = "tokenization"
    pieces = tok.tokenize(word)
    assert len(pieces) > 1
    ids, mask = _batch(tok, [f"we like {word} a lot"])
    pos = find_token_positions(tok, ids, word, mask).pos
    assert tok.convert_ids_to_tokens(int(ids[0, pos[0]])) == pieces[-1]


def test_missing_target_names_the_prompt(wordpiece_tokenizer):
    ids, mask = _batch(wordpiece_tokenizer, ["her cat", "his dog", "a herd"])
    with pytest.raises(TokenNotFoundError, match=r"prompt 1 \(and 1 more: \[2\]\): 'his dog'"):
        find_token_positions(wordpiece_tokenizer, ids, "her", mask, prompts=["her cat", "his dog", "a herd"])


def test_padding_is_never_matched(wordpiece_tokenizer):
    tok = wordpiece_tokenizer
    ids, mask = _batch(tok, ["her", "a b c d her"])
    ids[0, -1] = tok.convert_tokens_to_ids("her")  # a "her" id inside the padding
    pos = find_token_positions(tok, ids, "her", mask, occurrence="last").pos
    assert pos[0] == 1


def test_sample_positions_seeded_before_and_not_special(wordpiece_tokenizer):
    tok = wordpiece_tokenizer
    texts = [f"a b c d e f g h i j k l {w} her end" for w in "mnopqrstuv"]
    ids, mask = _batch(tok, texts)
    tpos = find_token_positions(tok, ids, "her", mask)
    s1 = sample_positions(mask, tpos, ids, tok, seed=1)
    s1b = sample_positions(mask, tpos, ids, tok, seed=1)
    s2 = sample_positions(mask, tpos, ids, tok, seed=2)
    assert torch.equal(s1.pos, s1b.pos) and not torch.equal(s1.pos, s2.pos)
    assert bool((s1.pos < tpos.pos).all()) and bool((s1.pos >= 1).all())  # never [CLS] at 0
    anyp = sample_positions(mask, tpos, ids, tok, where="any", seed=3)
    assert bool((anyp.pos != tpos.pos).all())
    assert all(int(ids[b, p]) not in tok.all_special_ids for b, p in zip(anyp.batch, anyp.pos))


def test_sample_positions_no_candidate(wordpiece_tokenizer):
    ids, mask = _batch(wordpiece_tokenizer, ["her cat"])
    tpos = find_token_positions(wordpiece_tokenizer, ids, "her", mask)
    with pytest.raises(TlprobeError, match="prompt 0 has no non-target token before the target"):
        sample_positions(mask, tpos, ids, wordpiece_tokenizer)


def test_positions_gather():
    acts = torch.arange(24.0).reshape(2, 3, 4)
    p = Positions(torch.tensor([0, 1]), torch.tensor([2, 0]))
    assert torch.equal(p.gather(acts), torch.stack([acts[0, 2], acts[1, 0]]))


@pytest.mark.parametrize(("target", "other"), [("😀", "🙃"), ("猫", "狗")])
def test_unknown_target_is_refused_not_matched_by_unk(wordpiece_tokenizer, target, other):
    # Before the fix both tokenised to [UNK], and the sentence's unknown `other` was "found".
    tok = wordpiece_tokenizer
    texts = [f"she saw {other} today", f"a {other} and a {other}"]
    ids, mask = _batch(tok, texts)
    assert tok.unk_token_id in ids.tolist()[0]
    with pytest.raises(TlprobeError) as err:
        find_token_positions(tok, ids, target, mask, prompts=texts)
    msg = str(err.value)
    assert f"target {target!r} is unknown to the tokenizer {tok.name_or_path}" in msg
    assert "tokenises to ['[UNK]']" in msg and "choose a word the tokenizer knows" in msg
    assert f"tokenizer.tokenize({target!r})" in msg and "\n" not in msg
    with pytest.raises(TlprobeError, match="is unknown to the tokenizer"):
        find_token_positions(tok, ids, f"cat {target}", mask)  # contains the unknown token


def test_literal_special_token_target_is_refused(wordpiece_tokenizer, bpe_tokenizer):
    ids, mask = _batch(wordpiece_tokenizer, ["her cat"])
    with pytest.raises(TlprobeError, match=r"holds a special token .* \(\['\[UNK\]'\]\)"):
        find_token_positions(wordpiece_tokenizer, ids, "[UNK]", mask)
    ids, mask = _batch(bpe_tokenizer, ["her cat"], bos=bpe_tokenizer.bos_token_id)
    with pytest.raises(TlprobeError, match="holds a special token"):  # the BOS, also the BPE's unk token
        find_token_positions(bpe_tokenizer, ids, "<|endoftext|>", mask)


def test_unknown_characters_in_a_sentence_never_match(wordpiece_tokenizer):
    tok = wordpiece_tokenizer
    texts = ["a cat😀 sat", "the cat sat"]  # WordPiece: "cat😀" is one unknown word, [UNK]
    ids, mask = _batch(tok, texts)
    with pytest.raises(TokenNotFoundError, match=r"prompt 0: 'a cat😀 sat' \(it holds 1 \[UNK\] token\(s\)"):
        find_token_positions(tok, ids, "cat", mask, prompts=texts)
    allp = find_token_positions(tok, ids, "cat", mask, occurrence="all")
    assert allp.batch.tolist() == [1] and tok.convert_ids_to_tokens(int(ids[1, allp.pos[0]])) == "cat"


def test_byte_level_bpe_knows_every_character(bpe_tokenizer):
    # Byte-level BPE has no unknown token for text: emoji are bytes, and only the right one matches.
    tok = bpe_tokenizer
    ids, mask = _batch(tok, ["she saw 😀 today", "a 🙃 and a 😀"], bos=tok.bos_token_id)
    pos = find_token_positions(tok, ids, "😀", mask, occurrence="all")
    assert pos.batch.tolist() == [0, 1]
    assert [tok.decode(ids[b, : p + 1].tolist()).endswith("😀") for b, p in zip(pos.batch, pos.pos)] == [True, True]
    with pytest.raises(TokenNotFoundError, match="prompt 0"):
        find_token_positions(tok, ids, "🙃", mask)


def test_prompts_as_one_string_and_length_checked(wordpiece_tokenizer):
    ids, mask = _batch(wordpiece_tokenizer, ["his dog"])
    with pytest.raises(TokenNotFoundError, match="in prompt 0: 'his dog'"):
        find_token_positions(wordpiece_tokenizer, ids, "her", mask, prompts="his dog")
    with pytest.raises(TlprobeError, match="prompts has 2 texts for 1 rows of tokens"):
        find_token_positions(wordpiece_tokenizer, ids, "her", mask, prompts=["his dog", "x"])
