"""str_tokens: one string per position of the model's own run_with_cache, in every world."""

import pytest

import tlprobe
from tlprobe.access import hook_name
from tlprobe.errors import TlprobeError

TEXT = "She gave her the book, and he <s> read it."


def _check(model):
    tokens = tlprobe.str_tokens(model, TEXT)
    _, cache = model.run_with_cache(TEXT)
    assert len(tokens) == cache[hook_name("resid_post", 0, model=model)].shape[1]
    if hasattr(model, "to_str_tokens"):  # TransformerLens' own spelling where it exists
        assert tokens == list(model.to_str_tokens(TEXT))
    return tokens


def test_encoder_tokens_are_wrapped_in_cls_and_sep(minilm):
    tokens = _check(minilm)
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"


@pytest.mark.parametrize("family", ["gpt2", "neox", "llama"])
def test_decoder_tokens_match_to_str_tokens(tiny_models, family):
    _check(tiny_models[family])


def test_one_string_only(minilm):
    with pytest.raises(TlprobeError, match="one string"):
        tlprobe.str_tokens(minilm, ["a", "b"])  # type: ignore[arg-type]
