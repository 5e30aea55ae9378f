"""Punctuation rules: which characters and tokens of a text are internal or terminal marks.

Every token of a long text is labelled 0 = not punctuation, 1 = internal (``, ; :``) or
2 = terminal (``. ? !``), decided from the *characters* around each mark (through the
tokenizer's character offsets, see :mod:`tlprobe.access.text`), so that the period of ``3.14``,
``1.2.3``, ``os.path``, ``...`` or ``e.g.`` is not a sentence end, whatever the tokenizer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch
from jaxtyping import Int

from tlprobe.errors import TlprobeError

#: Class id -> name (the ids of :func:`char_classes` and :func:`token_classes`).
CLASS_NAMES: dict[int, str] = {0: "none", 1: "internal", 2: "terminal"}
#: Internal punctuation (class 1).
INTERNAL = ",;:"
#: Terminal punctuation (class 2).
TERMINAL = ".?!"
#: Characters that may sit between a mark and the following space: ``stop."`` / ``(see here).``
CLOSERS = "\"')]}\u00bb\u2019\u201d"
#: Words whose following period is an abbreviation, not a sentence end (lower case, no period).
ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc cf al fig figs eq eqs vol vols ch sec approx ca esp dept "
    "inc ltd co corp jan feb mar apr jun jul aug sep sept oct nov dec resp viz ibid".split()
)


def char_classes(
    text: str,
    *,
    internal: str = INTERNAL,
    terminal: str = TERMINAL,
    abbreviations: frozenset[str] | Sequence[str] = ABBREVIATIONS,
) -> np.ndarray:
    """Class of every character of ``text``: 0 = none, 1 = internal mark, 2 = terminal mark.

    A mark counts only when it ends a phrase: it must be followed by whitespace or the end of
    the text, possibly after closing quotes or brackets (``stop."``, ``(see above).``). So the
    ``.`` of ``3.14`` and ``1.2.3``, the ``,`` of ``1,000``, the ``:`` of ``10:30`` or ``http://``
    are not marks. A period is further *not* terminal when

    * it is part of a run of periods (an ellipsis ``...``);
    * it ends an abbreviation: a word containing a period (``e.g.``, ``i.e.``, ``U.S.``), a
      single capital letter (an initial, ``J. Smith``), or a word of ``abbreviations``
      (``Mr.``, ``etc.``); a sentence that really ends on such a word is missed, on purpose;
    * the next word, on the same line, starts with a lower-case letter (``approx. three``): not
      a sentence start.

    ``?`` and ``!`` only need the first rule.

    Args:
        text: the text.
        internal: characters of class 1.
        terminal: characters of class 2; the period rules apply to ``"."`` only.
        abbreviations: lower-case words (without the period) that are abbreviations; a lone
            string is one word.

    Returns:
        ``int8`` array of ``len(text)``.

    Raises:
        TlprobeError: ``text`` is not a string, or the classes are empty, overlap or hold
            letters, digits or spaces.

    Example:
        >>> s = "Pi is 3.14, e.g. in v1.2.3... Really? Yes."
        >>> cls = char_classes(s)
        >>> [(i, s[i], int(cls[i])) for i in cls.nonzero()[0].tolist()]
        [(10, ',', 1), (36, '?', 2), (41, '.', 2)]
    """
    if not isinstance(text, str):
        raise TlprobeError(f"text must be a string, got {type(text).__name__}")
    internal, terminal = str(internal), str(terminal)
    if not internal and not terminal:
        raise TlprobeError("give at least one internal or terminal punctuation character")
    both = set(internal) & set(terminal)
    if both:
        raise TlprobeError(f"characters {sorted(both)} are both internal and terminal; pick one class each")
    if any(ch.isalnum() or ch.isspace() for ch in internal + terminal):
        raise TlprobeError("punctuation classes may not contain letters, digits or spaces")
    if isinstance(abbreviations, str):
        abbreviations = (abbreviations,)  # one abbreviation, not its letters
    abbrev = frozenset(a.lower().rstrip(".") for a in abbreviations)
    out = np.zeros(len(text), dtype=np.int8)
    n = len(text)
    for m in re.finditer(f"[{re.escape(internal + terminal)}]", text):
        i = m.start()
        j = i + 1
        while j < n and text[j] in CLOSERS:
            j += 1
        if j < n and not text[j].isspace():
            continue  # inside a token: 3.14, 1,000, os.path, http://, "?!" (the last one counts)
        if text[i] in internal:
            out[i] = 1
        elif not (text[i] == "." and _is_non_terminal_period(text, i, j, abbrev)):
            out[i] = 2
    return out


def _is_non_terminal_period(text: str, i: int, j: int, abbrev: frozenset[str]) -> bool:
    if (i > 0 and text[i - 1] == ".") or (i + 1 < len(text) and text[i + 1] == "."):
        return True  # ellipsis
    k = i
    while k > 0 and (text[k - 1].isalpha() or text[k - 1] == "."):
        k -= 1
    word = text[k:i]
    if word:
        if "." in word or word.lower() in abbrev:
            return True
        if len(word) == 1 and word.isupper():
            return True  # an initial
    # The next word, on the same line, starts in lower case: not a sentence start. (After a
    # line break a lower-case word is often a name in a list, so the period still counts.)
    while j < len(text) and text[j].isspace():
        if text[j] in "\n\r":
            return False
        j += 1
    return j < len(text) and text[j].islower()


def token_classes(
    text: str,
    offsets: Int[torch.Tensor, "tokens 2"],
    *,
    internal: str = INTERNAL,
    terminal: str = TERMINAL,
    abbreviations: frozenset[str] | Sequence[str] = ABBREVIATIONS,
) -> Int[torch.Tensor, " tokens"]:
    """Class of every token from the characters it spans (see :func:`char_classes`).

    A token is terminal (2) if its span holds a terminal mark, else internal (1) if it holds an
    internal mark, else 0. This works for any tokenizer: WordPiece gives every mark its own
    token; byte-level BPE may merge a run (``'."'``, ``'),'``: classed by the mark it holds). When
    consecutive tokens share one span (a multi-byte character split over byte tokens) only the
    last one, which completes the character, keeps the class.

    Args:
        text: the tokenised text.
        offsets: ``[tokens, 2]`` character spans (e.g. :attr:`tlprobe.access.text.TokenizedText.offsets`).
        internal, terminal, abbreviations: see :func:`char_classes`.

    Returns:
        ``[tokens]`` long tensor of 0, 1, 2.

    Raises:
        TlprobeError: ``offsets`` is not ``[tokens, 2]`` or points outside the text.

    Example:
        >>> from tlprobe.access.text import tokenize_text
        >>> from tlprobe.testing import tiny_tokenizer
        >>> tt = tokenize_text(tiny_tokenizer("wordpiece"), "Pi is 3.14, roughly.")
        >>> token_classes(tt.text, tt.offsets).tolist()
        [0, 0, 0, 0, 0, 1, 0, 2]
    """
    offsets = torch.as_tensor(offsets, dtype=torch.long).cpu()
    if offsets.ndim != 2 or offsets.shape[-1] != 2:
        raise TlprobeError(f"offsets has shape {tuple(offsets.shape)}; expected [tokens, 2]")
    if offsets.numel() and (int(offsets.min()) < 0 or int(offsets.max()) > len(text)):
        raise TlprobeError("offsets point outside the text; pass the text that was tokenised")
    cc = char_classes(text, internal=internal, terminal=terminal, abbreviations=abbreviations)
    cc = torch.from_numpy(cc.astype(np.int64))
    zero = torch.zeros(1, dtype=torch.long)
    cum1 = torch.cat([zero, (cc == 1).cumsum(0)])
    cum2 = torch.cat([zero, (cc == 2).cumsum(0)])
    a, b = offsets[:, 0], offsets[:, 1]
    has2 = (cum2[b] - cum2[a]) > 0
    has1 = (cum1[b] - cum1[a]) > 0
    out = torch.where(has2, 2, torch.where(has1, 1, 0))
    same_next = torch.zeros_like(has1)
    same_next[:-1] = (offsets[:-1] == offsets[1:]).all(-1)
    return out.masked_fill(same_next, 0)
