"""Token positions: where a target word sits in each prompt, and seeded non-target samples.

Tokenizer-aware: a word is matched as whole tokens at a word boundary, with or without a
leading space (GPT-2 BPE ``" her"`` vs ``"her"`` at the start of a text, SentencePiece ``"▁her"``,
BERT WordPiece ``"her"``), so ``"her"`` never matches inside ``"herself"`` or ``"other"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Int

from tlprobe.checks import check_choice
from tlprobe.errors import TlprobeError, TokenNotFoundError


@dataclass(frozen=True)
class Positions:
    """A set of (prompt, position) pairs, used to index ``[batch, pos, ...]`` activations.

    Attributes:
        batch: prompt index of each pair, ``[n]``.
        pos: token position of each pair, ``[n]``.
    """

    batch: Int[torch.Tensor, " n"]
    pos: Int[torch.Tensor, " n"]

    def __len__(self) -> int:
        return int(self.batch.numel())

    def gather(self, acts: torch.Tensor) -> torch.Tensor:
        """``acts[batch, pos]`` for ``[batch, pos, ...]`` activations: ``[n, ...]``."""
        return acts[self.batch.to(acts.device), self.pos.to(acts.device)]

    def to_dict(self) -> dict:
        return {"batch": self.batch.tolist(), "pos": self.pos.tolist()}


def _special_ids(tokenizer) -> set[int]:
    return {int(i) for i in getattr(tokenizer, "all_special_ids", []) or []}


def _is_wordpiece(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return type(backend.model).__name__ == "WordPiece"
    return any(t.startswith("##") for t in tokenizer.get_vocab())


def _continues_word(tokenizer, tok_id: int, wordpiece: bool) -> bool:
    """True if the token glues onto the previous one (no space or punctuation before it)."""
    raw = tokenizer.convert_ids_to_tokens(int(tok_id))
    if wordpiece:
        return raw.startswith("##")
    text = tokenizer.decode([int(tok_id)])
    return bool(text) and (text[0].isalnum() or text[0] == "_") and not raw.startswith(("Ġ", "▁"))


def _ends_word(tokenizer, tok_id: int) -> bool:
    text = tokenizer.decode([int(tok_id)])
    return bool(text) and (text[-1].isalnum() or text[-1] == "_")


def _unk_id(tokenizer) -> int | None:
    unk = getattr(tokenizer, "unk_token_id", None)
    return None if unk is None else int(unk)


def _tokenizer_name(tokenizer) -> str:
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


def target_variants(tokenizer, target: str) -> list[list[int]]:
    """Token-id sequences that spell ``target`` as a word: as written and with a leading space.

    Raises:
        TlprobeError: ``target`` is not a non-empty string; it tokenises to (or contains) the
            unknown token (``[UNK]`` stands for *every* character the tokenizer does not know, so
            the target would match any of them); or it holds a special token (``[CLS]``, BOS).

    Example:
        >>> from tlprobe.testing import tiny_tokenizer
        >>> target_variants(tiny_tokenizer("wordpiece"), "猫")
        Traceback (most recent call last):
        tlprobe.errors.TlprobeError: target '猫' is unknown to the tokenizer ...: it tokenises to ['[UNK]'], ...
    """
    if not isinstance(target, str) or not target.strip():
        raise TlprobeError(f"target must be a non-empty string, got {target!r}")
    word = target.strip()
    unk = _unk_id(tokenizer)
    specials = _special_ids(tokenizer)
    variants: list[list[int]] = []
    for text in (word, " " + word):
        ids = [int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]
        # SentencePiece may emit a lone word-start marker token before the word: drop it.
        while ids and tokenizer.decode([ids[0]]).strip() == "" and len(ids) > 1:
            ids = ids[1:]
        pieces = tokenizer.convert_ids_to_tokens(ids)
        # A literal "[UNK]" typed as the target is a special token, not an unknown character.
        if unk is not None and unk in ids and str(tokenizer.unk_token) not in word:
            raise TlprobeError(
                f"target {target!r} is unknown to the tokenizer {_tokenizer_name(tokenizer)}: it tokenises "
                f"to {pieces}, and {tokenizer.unk_token} stands for every character the tokenizer does not "
                f"know, so it would match any of them; choose a word the tokenizer knows (check with "
                f"tokenizer.tokenize({word!r}))"
            )
        if specials & set(ids):
            raise TlprobeError(
                f"target {target!r} holds a special token of the tokenizer {_tokenizer_name(tokenizer)} "
                f"({pieces}), which marks structure, not a word; choose a word"
            )
        if ids and ids not in variants:
            variants.append(ids)
    return variants


def find_token_positions(
    tokenizer,
    tokens: Int[torch.Tensor, "batch pos"],
    target: str,
    attention_mask: Int[torch.Tensor, "batch pos"] | None = None,
    *,
    occurrence: Literal["first", "last", "all"] = "first",
    prompts: Sequence[str] | None = None,
) -> Positions:
    """Find a target word in every prompt of a padded token batch.

    A multi-token word is matched as a whole and reported at its *last* token (the position
    whose representation has seen the whole word).

    Args:
        tokenizer: the model's tokenizer (``model.tokenizer``).
        tokens: ``[batch, pos]`` token ids (any padding side).
        target: the word, e.g. ``"her"``; a leading space is optional.
        attention_mask: ``[batch, pos]``, 1 for real tokens; padding is never matched.
        occurrence: ``"first"``, ``"last"`` (one position per prompt) or ``"all"``.
        prompts: the prompt texts (one per row of ``tokens``; a lone string is one prompt), only
            to quote them in error messages.

    Returns:
        :class:`Positions`; for ``"first"``/``"last"`` exactly one per prompt, in prompt order.

    Raises:
        TokenNotFoundError: the word is missing from a prompt (``first``/``last``), or from every
            prompt (``all``); the message names the prompts.
        TlprobeError: the target is unknown to the tokenizer (it tokenises to ``[UNK]``, which
            stands for every unknown character) or holds a special token; see :func:`target_variants`.

    Example:
        >>> from tlprobe.testing import tiny_tokenizer
        >>> tok = tiny_tokenizer()
        >>> ids = torch.tensor([tok("She gave her the book")["input_ids"]])
        >>> find_token_positions(tok, ids, "her").pos.tolist()
        [2]
    """
    check_choice(occurrence, ("first", "last", "all"), "occurrence")
    if tokens.ndim != 2:
        raise TlprobeError(f"tokens has shape {tuple(tokens.shape)}; expected [batch, pos]")
    toks = tokens.detach().cpu()
    mask = torch.ones_like(toks, dtype=torch.bool) if attention_mask is None else attention_mask.detach().cpu().bool()
    if isinstance(prompts, str):
        prompts = [prompts]  # one prompt, not its characters
    if prompts is not None and len(prompts) != toks.shape[0]:
        raise TlprobeError(
            f"prompts has {len(prompts)} texts for {toks.shape[0]} rows of tokens; pass the prompts that were tokenised"
        )
    specials = _special_ids(tokenizer)
    unk = _unk_id(tokenizer)
    wordpiece = _is_wordpiece(tokenizer)
    variants = target_variants(tokenizer, target)

    hits = torch.zeros_like(toks, dtype=torch.bool)  # marks the last token of each match
    for var in variants:
        n = len(var)
        if n > toks.shape[1]:
            continue
        win = toks.unfold(1, n, 1)  # [batch, pos - n + 1, n]
        mwin = mask.unfold(1, n, 1).all(-1)
        # Never a match by [UNK] identity: an unknown character is not the target (the variants
        # hold no [UNK]; this keeps it so for any id sequence).
        cand = (win == torch.tensor(var)).all(-1) & mwin
        if unk is not None:
            cand &= ~(win == unk).any(-1)
        for b, start in cand.nonzero().tolist():
            end = start + n  # first position after the match
            if start > 0 and mask[b, start - 1] and int(toks[b, start - 1]) not in specials:
                if _continues_word(tokenizer, var[0], wordpiece) and _ends_word(tokenizer, int(toks[b, start - 1])):
                    continue  # "her" inside "other"
            if end < toks.shape[1] and mask[b, end] and int(toks[b, end]) not in specials:
                if _continues_word(tokenizer, int(toks[b, end]), wordpiece):
                    continue  # "her" + "self"
            hits[b, end - 1] = True

    found = hits.any(1)
    if occurrence == "all":
        if not bool(found.any()):
            raise TokenNotFoundError(_missing_msg(target, list(range(len(toks))), prompts, tokenizer, toks, mask))
        b, p = hits.nonzero(as_tuple=True)
        return Positions(b, p)
    missing = (~found).nonzero().flatten().tolist()
    if missing:
        raise TokenNotFoundError(_missing_msg(target, missing, prompts, tokenizer, toks, mask))
    idx = torch.arange(toks.shape[1]).expand_as(toks)
    if occurrence == "first":
        pos = torch.where(hits, idx, toks.shape[1]).min(1).values
    else:
        pos = torch.where(hits, idx, -1).max(1).values
    return Positions(torch.arange(len(toks)), pos)


def _missing_msg(target, missing, prompts, tokenizer, toks, mask) -> str:
    i = missing[0]
    if prompts is not None:
        shown = repr(prompts[i][:80])
    else:
        shown = repr(tokenizer.decode(toks[i][mask[i]].tolist())[:80])
    more = f" (and {len(missing) - 1} more: {missing[1:6]})" if len(missing) > 1 else ""
    unk = _unk_id(tokenizer)
    n_unk = 0 if unk is None else int((toks[i][mask[i]] == unk).sum())
    unknown = (
        f" (it holds {n_unk} {tokenizer.unk_token} token(s): words with characters the tokenizer does not know)"
        if n_unk
        else ""
    )
    return (
        f"target {target!r} not found as a whole word in prompt {i}{more}: {shown}{unknown}. "
        "Check the spelling, or drop prompts without it"
    )


def sample_positions(
    attention_mask: Int[torch.Tensor, "batch pos"],
    exclude: Positions,
    tokens: Int[torch.Tensor, "batch pos"] | None = None,
    tokenizer=None,
    *,
    where: Literal["before", "any"] = "before",
    seed: int = 0,
) -> Positions:
    """Draw one non-target position per prompt, reproducibly.

    Args:
        attention_mask: ``[batch, pos]``, 1 for real tokens.
        exclude: the target positions (one per prompt, e.g. from :func:`find_token_positions`).
        tokens, tokenizer: if given, special tokens (BOS, ``[CLS]``, ``[SEP]``) are never drawn.
        where: ``"before"`` draws from positions before the target (L02/L03); ``"any"`` from
            every other real position.
        seed: seed of the draw; the same seed gives the same positions.

    Returns:
        :class:`Positions`, one per prompt.

    Raises:
        TlprobeError: a prompt has no candidate position (e.g. the target is its first word
            and ``where="before"``); the message names the prompt.
    """
    check_choice(where, ("before", "any"), "where")
    mask = attention_mask.detach().cpu().bool()
    if len(exclude) != mask.shape[0] or not torch.equal(exclude.batch.cpu(), torch.arange(mask.shape[0])):
        raise TlprobeError("exclude must hold exactly one target position per prompt, in prompt order")
    cand = mask.clone()
    if tokens is not None and tokenizer is not None:
        special = torch.tensor(sorted(_special_ids(tokenizer)) or [-1])
        cand &= ~torch.isin(tokens.detach().cpu(), special)
    idx = torch.arange(mask.shape[1]).expand_as(mask)
    tpos = exclude.pos.cpu()[:, None]
    cand &= idx < tpos if where == "before" else idx != tpos
    empty = (~cand.any(1)).nonzero().flatten().tolist()
    if empty:
        raise TlprobeError(
            f"prompt {empty[0]} has no non-target token {'before the target' if where == 'before' else ''}"
            f" to sample{f' (also prompts {empty[1:6]})' if len(empty) > 1 else ''}; use where='any' or "
            "put at least one word before the target"
        )
    gen = torch.Generator().manual_seed(int(seed))
    scores = torch.rand(mask.shape, generator=gen)
    scores[~cand] = -1.0
    return Positions(torch.arange(mask.shape[0]), scores.argmax(1))
