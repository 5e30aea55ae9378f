"""Long texts: tokenise with character offsets, cut fixed-size windows, run them in batches.

A corpus (a novel, a set of docstrings) is tokenised once, as one sequence, with the model's own
fast tokenizer; every token keeps the ``[start, end)`` character span it came from, so that
decisions about a token (is this period a decimal point?) can be made from the characters of
the text rather than from token strings, whatever the tokenizer (BERT WordPiece splits every
punctuation mark off; GPT-2-style byte-level BPE merges runs such as ``'."'`` or ``'...'`` and
may split one character over several byte tokens).

Windows of ``before`` tokens, a centre token and ``after`` tokens are cut around chosen
positions; centres too close to either end of the text are skipped. :func:`run_windows` runs the
windows through the model and keeps only the requested residual-stream layers
(``names_filter``), so memory is ``windows x layers x tokens x d_model``, not every hook, and
stops after the deepest requested block (``stop_at_layer``), so later blocks and the
unembedding are not computed.

Special tokens (documented choice). A window is cut from the middle of a text, so it has no
natural start. The model gets its input wrapped as it was during training, and the wrapping is
removed from the returned hidden states so that index ``before`` is always the centre token:

* encoders (BERT, MiniLM): ``[CLS] window [SEP]``, as the tokenizer adds for every input
  (BERT never saw input without them);
* decoders: ``BOS window`` when the model's TransformerLens config prepends BOS by default
  (``cfg.default_prepend_bos``, True for GPT-2 and LLaMA-style models), nothing otherwise
  (NeoX/Pythia configs). GPT-2 was trained on chunks cut from a concatenated stream; a BOS
  first token acts as the attention sink the model expects at position 0, so the first real
  window token is not distorted by "being first". The hidden state of BOS itself is dropped.
"""

from __future__ import annotations

import importlib
import inspect
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int

from tlprobe.access.hooks import resid_hook_names, resid_stack
from tlprobe.access.models import model_info
from tlprobe.access.run import forward_cache
from tlprobe.errors import TlprobeError


@dataclass(frozen=True)
class TokenizedText:
    """A whole text as one token sequence, with character offsets.

    Attributes:
        text: the text.
        ids: ``[n_tokens]`` token ids (no special tokens).
        offsets: ``[n_tokens, 2]`` character span ``[start, end)`` of each token in ``text``.
            Byte-level BPE may give several tokens the same span (one character split over
            several bytes); WordPiece spans never include spaces; BPE spans may include the
            leading space.
    """

    text: str
    ids: Int[torch.Tensor, " tokens"]
    offsets: Int[torch.Tensor, "tokens 2"]

    def __len__(self) -> int:
        return int(self.ids.numel())

    def span(self, i: int) -> str:
        """The characters of token ``i``."""
        a, b = self.offsets[i].tolist()
        return self.text[a:b]


def tokenize_text(tokenizer, text: str) -> TokenizedText:
    """Tokenise a long text in one go, keeping each token's character offsets.

    No special tokens are added and nothing is truncated (the model's context length does not
    apply: windows are cut afterwards).

    Args:
        tokenizer: a Hugging Face *fast* tokenizer (``model.tokenizer``); slow tokenizers have
            no offset mapping.
        text: any text.

    Returns:
        :class:`TokenizedText`.

    Raises:
        TlprobeError: empty text, or a tokenizer without offsets.

    Example:
        >>> from tlprobe.testing import tiny_tokenizer
        >>> tt = tokenize_text(tiny_tokenizer("wordpiece"), "Pi is 3.14, roughly.")
        >>> [tt.span(i) for i in range(len(tt))]
        ['Pi', 'is', '3', '.', '14', ',', 'roughly', '.']
    """
    if not isinstance(text, str) or not text.strip():
        raise TlprobeError("the text is empty; give a UTF-8 text file with some prose")
    if not getattr(tokenizer, "is_fast", False):
        raise TlprobeError(
            f"{type(tokenizer).__name__} is not a fast tokenizer and has no character offsets; load the "
            "model's tokenizer with use_fast=True (AutoTokenizer does by default)"
        )
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    ids = torch.tensor(enc["input_ids"], dtype=torch.long)
    offsets = torch.tensor(enc["offset_mapping"], dtype=torch.long).reshape(-1, 2)
    if ids.numel() == 0:
        raise TlprobeError("the tokenizer produced no tokens for this text")
    return TokenizedText(text, ids, offsets)


def window_starts(
    n_tokens: int, positions: Int[torch.Tensor, " n"], *, before: int, after: int
) -> tuple[Int[torch.Tensor, " kept"], Int[torch.Tensor, " kept"]]:
    """Which centre positions leave room for a full window, and where their windows start.

    Args:
        n_tokens: length of the token sequence.
        positions: ``[n]`` candidate centre positions.
        before, after: tokens to keep before and after the centre.

    Returns:
        ``(kept, starts)``: the centres with ``before <= p < n_tokens - after`` (in the given
        order) and their window start ``p - before``.

    Example:
        >>> kept, starts = window_starts(10, torch.tensor([0, 2, 5, 8, 9]), before=2, after=1)
        >>> kept.tolist(), starts.tolist()
        ([2, 5, 8], [0, 3, 6])
    """
    _check_window(before, after)
    positions = torch.as_tensor(positions, dtype=torch.long).flatten()
    ok = (positions >= before) & (positions < n_tokens - after)
    kept = positions[ok]
    return kept, kept - before


def cut_windows(
    ids: Int[torch.Tensor, " tokens"], centres: Int[torch.Tensor, " n"], *, before: int, after: int
) -> Int[torch.Tensor, "n window"]:
    """Token windows ``ids[c - before : c + after + 1]`` around each centre ``c``.

    Args:
        ids: ``[n_tokens]`` the token sequence.
        centres: ``[n]`` centre positions, each with room for a full window (see
            :func:`window_starts`).
        before, after: tokens before and after the centre.

    Returns:
        ``[n, before + 1 + after]``; column ``before`` is the centre token.

    Raises:
        TlprobeError: a centre too close to an edge of the sequence (says which).

    Example:
        >>> cut_windows(torch.arange(10), torch.tensor([2, 7]), before=2, after=1).tolist()
        [[0, 1, 2, 3], [5, 6, 7, 8]]
    """
    _check_window(before, after)
    centres = torch.as_tensor(centres, dtype=torch.long).flatten()
    n = ids.numel()
    bad = (centres < before) | (centres >= n - after)
    if bool(bad.any()):
        c = int(centres[bad][0])
        raise TlprobeError(
            f"centre position {c} is too close to an edge of the {n}-token text for a window of "
            f"{before} before and {after} after; filter the centres with window_starts first"
        )
    offs = torch.arange(-before, after + 1, device=ids.device)
    return ids[(centres.to(ids.device)[:, None] + offs)]


def _check_window(before: int, after: int) -> None:
    for name, v in (("before", before), ("after", after)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise TlprobeError(f"{name} must be a non-negative integer, got {v!r}")


def special_wrapping(model) -> tuple[list[int], list[int]]:
    """Token ids put before and after every window (see the module docstring for the choice).

    Returns:
        ``(prefix, suffix)`` id lists: ``[CLS]``/``[SEP]`` for encoders, ``[BOS]`` (or nothing)
        for decoders.

    Example:
        >>> from tlprobe.testing import tiny_model
        >>> special_wrapping(tiny_model("gpt2"))  # GPT-2 prepends BOS (id 0 in the tiny tokenizer)
        ([0], [])
    """
    tok = model.tokenizer
    if model_info(model).is_encoder:
        with_sp = list(tok("a")["input_ids"])
        without = list(tok("a", add_special_tokens=False)["input_ids"])
        for i in range(len(with_sp) - len(without) + 1):
            if with_sp[i : i + len(without)] == without:
                return with_sp[:i], with_sp[i + len(without) :]
        return [], []  # pragma: no cover - tokenizer that rewrites the text itself
    bos = getattr(tok, "bos_token_id", None)
    if getattr(model.cfg, "default_prepend_bos", True) and bos is not None:
        return [int(bos)], []
    return [], []


def run_windows(
    model,
    windows: Int[torch.Tensor, "n window"],
    depth: Sequence[int],
    *,
    batch_size: int = 64,
    progress: bool = False,
) -> Float[torch.Tensor, "depth n window d_model"]:
    """Run token windows through ``model``; keep the residual stream at the requested depths.

    All windows have the same length, so there is no padding. Special tokens are added as the
    model was trained (see :func:`special_wrapping`) and removed from the output, so position
    ``i`` of the result is token ``windows[:, i]``.

    Args:
        model: a ``TransformerBridge``.
        windows: ``[n, window]`` token ids (e.g. from :func:`cut_windows`).
        depth: residual-stream indices as in :func:`tlprobe.access.hooks.resid_stack`
            (0 = embeddings, ``l`` = output of block ``l - 1``, the Hugging Face
            ``hidden_states[l]``).
        batch_size: windows per forward pass.
        progress: show a progress bar over batches.

    Returns:
        ``[len(depth), n, window, d_model]`` on the model's device, float32 or the model dtype.

    Raises:
        TlprobeError: empty windows, a depth out of range, or windows longer than the context.

    Example:
        >>> from tlprobe.testing import tiny_model
        >>> run_windows(tiny_model("gpt2"), torch.tensor([[5, 6, 7], [8, 9, 10]]), [0, 2]).shape
        torch.Size([2, 2, 3, 64])
    """
    windows = torch.as_tensor(windows, dtype=torch.long)
    if windows.ndim != 2 or windows.shape[0] == 0 or windows.shape[1] == 0:
        raise TlprobeError(f"windows has shape {tuple(windows.shape)}; expected a non-empty [n, window]")
    if batch_size < 1:
        raise TlprobeError(f"batch_size must be >= 1, got {batch_size}")
    n_layers = model_info(model).n_layers
    depth = [int(d) for d in depth]
    bad = [d for d in depth if not 0 <= d <= n_layers]
    if bad or not depth:
        raise TlprobeError(
            f"depth {bad or depth} out of range: residual-stream indices go from 0 (embeddings) to "
            f"{n_layers} (output of the last block)"
        )
    prefix, suffix = special_wrapping(model)
    width = windows.shape[1]
    total = len(prefix) + width + len(suffix)
    if total > int(model.cfg.n_ctx):
        raise TlprobeError(
            f"windows of {width} tokens (+{total - width} special) exceed the model's context of "
            f"{model.cfg.n_ctx}; use smaller before/after"
        )
    device = next(model.parameters()).device
    pre = torch.tensor(prefix, dtype=torch.long).expand(windows.shape[0], -1)
    suf = torch.tensor(suffix, dtype=torch.long).expand(windows.shape[0], -1)
    tokens = torch.cat([pre, windows.cpu(), suf], dim=1)
    names = resid_hook_names(model, depth)
    starts = range(0, tokens.shape[0], batch_size)
    if progress and len(starts) > 1:
        from tqdm.auto import tqdm  # only for multi-batch runs with a progress bar

        starts = tqdm(starts, desc="windows", unit="batch")
    # Blocks after the deepest requested one (and the unembedding, 30522 x 384 on MiniLM: most of
    # the cost) are not run: stop_at_layer=k stops before block k, after block k - 1's output.
    stop = max(depth) if max(depth) < n_layers else None
    out = []
    with torch.no_grad():
        for s in starts:
            chunk = tokens[s : s + batch_size].to(device)
            cache = forward_cache(model, chunk, torch.ones_like(chunk), names=names, stop_at_layer=stop)
            out.append(resid_stack(cache, depth)[:, :, len(prefix) : len(prefix) + width].clone())
            del cache
    return torch.cat(out, dim=1)


#: Standard-library modules whose docstrings make the default corpus (fixed, sorted at use).
STDLIB_MODULES = (
    "abc argparse ast asyncio base64 bisect calendar collections concurrent.futures configparser "
    "contextlib copy csv dataclasses datetime decimal difflib email.message enum fractions functools "
    "getopt gettext glob gzip hashlib heapq hmac html.parser http.client http.cookiejar imaplib "
    "importlib.metadata inspect io ipaddress itertools json locale logging logging.handlers mailbox "
    "mimetypes multiprocessing numbers operator optparse os pathlib pickle pkgutil platform plistlib "
    "pprint queue random re reprlib sched secrets selectors shelve shlex shutil smtplib socket "
    "socketserver sqlite3 statistics string struct subprocess tarfile tempfile textwrap threading "
    "timeit tokenize trace traceback types typing unittest unittest.mock urllib.parse urllib.request "
    "uuid warnings weakref xml.etree.ElementTree zipfile zoneinfo"
).split()


def stdlib_corpus(modules: Sequence[str] = STDLIB_MODULES, *, drop_doctest_lines: bool = True) -> str:
    """English prose that ships with every Python: docstrings of standard-library modules.

    Deterministic for a given Python installation: modules in sorted order; for each, the
    module docstring, then its public classes and functions (defined in that module, sorted by
    name), and each class's public methods (sorted); every docstring once (``inspect.cleandoc``),
    separated by blank lines. Doctest lines (``>>>`` and ``...``) are dropped: they are code, not
    prose. Modules missing from this installation are skipped.

    Methods that other packages attach to standard-library classes count too (transformers adds
    ``logging.Logger.warning_advice``), so the text also depends on what has been imported:
    call it at the same point of a program (e.g. after loading the model) for the same text.

    Example:
        >>> text = stdlib_corpus(["textwrap"])
        >>> text.startswith("Text wrapping and filling.")
        True
    """
    seen: set[str] = set()
    docs: list[str] = []

    def add(doc) -> None:
        if not isinstance(doc, str) or not doc.strip():
            return
        doc = inspect.cleandoc(doc)
        if drop_doctest_lines:
            doc = "\n".join(ln for ln in doc.splitlines() if not ln.lstrip().startswith((">>>", "...")))
        if doc not in seen:
            seen.add(doc)
            docs.append(doc)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in sorted(set(modules)):
            try:
                mod = importlib.import_module(name)
            except ImportError:
                continue
            add(mod.__doc__)
            members = vars(mod)
            for key in sorted(members):
                obj = members[key]
                if key.startswith("_") or getattr(obj, "__module__", None) != name:
                    continue
                if inspect.isfunction(obj):
                    add(obj.__doc__)
                elif inspect.isclass(obj):
                    add(obj.__doc__)
                    for mkey, meth in sorted(vars(obj).items()):
                        if not mkey.startswith("_") and inspect.isfunction(meth):
                            add(meth.__doc__)
    if not docs:
        raise TlprobeError("no standard-library docstrings found (python -OO strips them); give --text FILE")
    return "\n\n".join(docs)
