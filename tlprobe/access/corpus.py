"""Corpus scale: a text cut into windows, run batch by batch into streaming accumulators.

:func:`text_windows` cuts a long text into windows the model can read; :func:`stream` runs
batches of them through the model and hands each batch's cache to a ``feed`` function that folds
it into accumulators (:mod:`tlprobe.analyses.streaming`), so no more than one batch's
activations is ever held, whatever the corpus length. Only the hooks asked for are cached, and
the forward pass stops after the deepest block they need (``stop_at_layer``).

Checkpoints: with ``checkpoint=PATH`` the accumulators' states are written to ``PATH`` every
``every`` batches (atomically: a temporary file, then a rename) and at the end. A run started
again with the same ``PATH`` and the same batches resumes after the last batch saved and gives
the result of an uninterrupted run; a checkpoint of another corpus or other settings is refused,
never overwritten.

Data parallelism (``torch.distributed``): under ``torchrun --nproc-per-node N`` (or any launcher
that sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``), :func:`init_distributed`
joins the process group (NCCL when CUDA is there, else gloo); each rank runs batches
``rank, rank + N, ...`` and the accumulators are all-reduced at the end, so every rank holds the
result of the whole corpus (exactly for counts, to float rounding for sums). Checkpoints are per
rank (``PATH.rank0``, ...), and a resumed run needs the same number of processes.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import tempfile
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from tlprobe.access.hooks import resid_stack
from tlprobe.access.run import forward_cache
from tlprobe.access.text import special_wrapping, tokenize_text
from tlprobe.checks import as_int
from tlprobe.errors import TlprobeError

#: Version of the checkpoint format (a checkpoint of another version is refused).
CHECKPOINT_VERSION = 1
#: Longest window (tokens, special tokens included) :func:`text_windows` cuts by default: long
#: enough for context, short enough that attention's quadratic memory stays small.
DEFAULT_WINDOW = 256


# -- torch.distributed -----------------------------------------------------------------------


def world() -> tuple[int, int]:
    """``(rank, world size)`` of this process: ``(0, 1)`` outside a process group.

    Example:
        >>> world()
        (0, 1)
    """
    import torch.distributed as dist  # part of torch; imported here to keep startup light

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launched_distributed() -> bool:
    """Whether a launcher (``torchrun``, SLURM wrappers, ...) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(backend: str | None = None) -> tuple[int, int]:
    """Join the process group a launcher prepared; ``(rank, world size)``.

    Does nothing outside a launcher (``WORLD_SIZE`` unset or 1) or when the group already exists.
    The backend is NCCL when CUDA is available, else gloo; with NCCL each process takes the GPU of
    its ``LOCAL_RANK``.

    Raises:
        TlprobeError: the launcher's environment is incomplete (names the missing variable).
    """
    import torch.distributed as dist  # part of torch; imported here to keep startup light

    if not launched_distributed() or (dist.is_available() and dist.is_initialized()):
        return world()
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise TlprobeError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} is not set; start the run with "
            "torchrun --nproc-per-node N (or set the variables torch.distributed's env:// needs)"
        )
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return world()


def local_device() -> str | None:
    """This process's device under a launcher with CUDA (``cuda:LOCAL_RANK``), else ``None``."""
    if launched_distributed() and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return None


# -- windows of a text -----------------------------------------------------------------------


@dataclass(frozen=True)
class Windows:
    """A text cut into consecutive windows of tokens.

    Attributes:
        ids: one ``[length]`` tensor of token ids per window (no special tokens), in text order;
            lengths differ by at most one token (longer windows first).
        prefix, suffix: special token ids put around every window when it runs
            (:func:`tlprobe.access.text.special_wrapping`).
        n_tokens: tokens of the whole text (every one is in exactly one window).
    """

    ids: tuple[torch.Tensor, ...]
    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    n_tokens: int

    def __len__(self) -> int:
        return len(self.ids)

    def batches(self, batch_size: int) -> list[dict[str, torch.Tensor]]:
        """Batches of up to ``batch_size`` windows of one length, wrapped in their special tokens.

        Each batch is ``{"tokens": [b, length + specials], "attention_mask": ones}``; windows are
        never padded (a batch ends where the window length changes).
        """
        batch_size = as_int(batch_size, "batch_size", minimum=1, fix="windows per forward pass, e.g. 8")
        out: list[dict[str, torch.Tensor]] = []
        pre, suf = torch.tensor(self.prefix, dtype=torch.long), torch.tensor(self.suffix, dtype=torch.long)
        group: list[torch.Tensor] = []
        for w in (*self.ids, None):
            if group and (w is None or len(group) == batch_size or w.numel() != group[0].numel()):
                ids = torch.stack(group)
                b = ids.shape[0]
                tokens = torch.cat([pre.expand(b, -1), ids, suf.expand(b, -1)], dim=1)
                out.append({"tokens": tokens, "attention_mask": torch.ones_like(tokens)})
                group = []
            if w is not None:
                group.append(w)
        return out


def text_windows(model, text: str, *, window: int | None = None) -> Windows:
    """Cut ``text`` into consecutive windows of at most ``window`` tokens the model can read.

    Every token of the text is in exactly one window, and the windows are as even as possible
    (``ceil(n / window)`` windows whose lengths differ by at most one), so no tail is lost and no
    window is a stub. Special tokens are added when the windows run (``[CLS] ... [SEP]`` for
    encoders, ``BOS`` where the decoder's config prepends it) and are not samples.

    Args:
        model: a TransformerLens model (its tokenizer and context length are used).
        text: any text.
        window: tokens per window, special tokens included (default: the model's context or
            :data:`DEFAULT_WINDOW`, whichever is shorter).

    Raises:
        TlprobeError: an empty text, or a window that leaves no room for a token.

    Example:
        >>> from tlprobe.testing import tiny_model
        >>> w = text_windows(tiny_model("gpt2"), "She gave her cat a fish. " * 20, window=33)
        >>> len(w), w.n_tokens, sorted({int(x.numel()) for x in w.ids})
        (7, 220, [31, 32])
    """
    prefix, suffix = special_wrapping(model)
    specials = len(prefix) + len(suffix)
    n_ctx = int(model.cfg.n_ctx)
    window = min(n_ctx, DEFAULT_WINDOW) if window is None else as_int(window, "window", minimum=1)
    if window > n_ctx:
        raise TlprobeError(f"window of {window} tokens is longer than the model's context of {n_ctx}; lower it")
    room = window - specials
    if room < 1:
        raise TlprobeError(f"a window of {window} tokens leaves no room beside {specials} special tokens; raise it")
    ids = tokenize_text(model.tokenizer, text).ids
    n = int(ids.numel())
    k = -(-n // room)  # ceil
    sizes = [n // k + (1 if i < n % k else 0) for i in range(k)]
    return Windows(tuple(torch.split(ids, sizes)), tuple(prefix), tuple(suffix), n)


# -- the runner ------------------------------------------------------------------------------


def fingerprint(batches: Sequence[Mapping[str, Any]], *parts: Any) -> str:
    """A digest of the batches' tensors and ``parts`` (settings): what a checkpoint belongs to."""
    h = hashlib.sha256()
    for b in batches:
        for key in sorted(b):
            v = b[key]
            h.update(key.encode())
            if isinstance(v, torch.Tensor):
                h.update(str((tuple(v.shape), str(v.dtype))).encode())
                h.update(v.detach().cpu().contiguous().numpy().tobytes())
            else:
                h.update(repr(v).encode())
    for p in parts:
        h.update(repr(p).encode())
    return h.hexdigest()[:16]


def checkpoint_path(path: str | os.PathLike, rank: int, world_size: int) -> pathlib.Path:
    """The checkpoint file of ``rank``: ``path`` itself in a one-process run, ``path.rankN`` otherwise."""
    p = pathlib.Path(path)
    return p if world_size == 1 else p.with_name(f"{p.name}.rank{rank}")


def _save_atomic(obj: Any, path: pathlib.Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def _load_checkpoint(path: pathlib.Path, digest: str, rank: int, world_size: int) -> dict | None:
    if not path.exists():
        return None
    try:
        ck = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:
        raise TlprobeError(f"{path} is not a readable tlprobe checkpoint ({exc}); delete it or pick another") from exc
    if not isinstance(ck, dict) or ck.get("version") != CHECKPOINT_VERSION:
        raise TlprobeError(
            f"{path} is not a tlprobe checkpoint of version {CHECKPOINT_VERSION}; delete it or pick another"
        )
    if ck.get("fingerprint") != digest or ck.get("world") != world_size or ck.get("rank") != rank:
        raise TlprobeError(
            f"{path} is the checkpoint of another run (other corpus, settings or number of processes: "
            f"{ck.get('world')} then, {world_size} now); delete it to start over, or pick another checkpoint path"
        )
    return ck


def stream(
    model,
    batches: Sequence[Mapping[str, Any]],
    accumulators: MutableMapping[str, Any],
    feed: Callable[[Any, Mapping[str, Any], MutableMapping[str, Any]], None],
    *,
    names: Sequence[str] | Callable[[str], bool],
    stop_at_layer: int | Literal["auto"] | None = "auto",
    checkpoint: str | os.PathLike | None = None,
    every: int = 50,
    settings: Iterable[Any] = (),
    progress: bool = False,
    desc: str = "corpus",
    reduce: bool = True,
    stop_after: int | None = None,
) -> MutableMapping[str, Any]:
    """Run ``batches`` through ``model`` one at a time into ``accumulators``.

    For each batch (this rank's share under ``torch.distributed``) one forward pass caches the
    hooks in ``names``, and ``feed(cache, batch, accumulators)`` folds what it needs into the
    accumulators; the cache is then dropped. At the end the accumulators are all-reduced across
    ranks (sorted by name), so every rank holds the result of the whole corpus.

    Args:
        model: a TransformerLens model.
        batches: ``{"tokens": [b, pos], "attention_mask": [b, pos], ...}`` (any other keys are
            passed to ``feed``), e.g. :meth:`Windows.batches`.
        accumulators: name -> accumulator (:mod:`tlprobe.analyses.streaming`), updated in place
            (a resumed run replaces them with the saved states).
        feed: ``feed(cache, batch, accumulators)``.
        names: hooks to cache (a list, or a predicate).
        stop_at_layer: stop the forward pass before this block (decoders and bridges);
            ``"auto"`` (the default) stops after the last block when no hook in ``names`` lies
            after it (``ln_final``, ``unembed``): the unembedding is skipped, which on MiniLM is
            most of the forward pass's memory (8 windows of 245 tokens: 239 MB of logits).
            ``None`` runs the whole model.
        checkpoint: a file to save the states to and resume from (see the module docstring).
        every: batches between checkpoints.
        settings: anything else the result depends on (recorded in the checkpoint's fingerprint).
        progress: a progress bar (rank 0 only).
        desc: the progress bar's label.
        reduce: all-reduce across ranks at the end (``False``: each rank keeps its own shard).
        stop_after: stop (after checkpointing) once this many batches of this rank ran in this
            call: a deliberate interruption, for tests and for time-limited jobs.

    Returns:
        ``accumulators``.

    Raises:
        TlprobeError: no batches, fewer batches than processes, or a checkpoint of another run.
    """
    rank, size = world()
    if not batches:
        raise TlprobeError("no batches to run: the corpus is empty")
    if len(batches) < size:
        raise TlprobeError(f"{len(batches)} batches for {size} processes; use fewer processes or a smaller batch size")
    every = as_int(every, "checkpoint every", minimum=1, fix="batches between checkpoints")
    if stop_at_layer == "auto":
        after = callable(names) or any("unembed" in n or "ln_final" in n for n in names)
        stop_at_layer = None if after else int(model.cfg.n_layers)
    mine = list(range(rank, len(batches), size))
    path = None if checkpoint is None else checkpoint_path(checkpoint, rank, size)
    digest = fingerprint(batches, names if not callable(names) else "predicate", stop_at_layer, *settings)
    start = 0
    if path is not None:
        ck = _load_checkpoint(path, digest, rank, size)
        if ck is not None:
            for key, state in ck["states"].items():
                if key not in accumulators:
                    raise TlprobeError(f"{path} holds accumulator {key!r} that this run does not use; delete it")
                accumulators[key] = type(accumulators[key]).from_state_dict(state)
            start = int(ck["next"])

    def save(next_index: int) -> None:
        if path is not None:
            states = {k: _cpu(v.state_dict()) for k, v in accumulators.items()}
            ck = {"version": CHECKPOINT_VERSION, "fingerprint": digest, "rank": rank, "world": size}
            _save_atomic({**ck, "next": next_index, "states": states}, path)

    todo: Iterable[int] = range(start, len(mine))
    if progress and rank == 0 and len(mine) - start > 1:
        from tqdm.auto import tqdm  # only for multi-batch runs with a progress bar

        todo = tqdm(todo, desc=desc, unit="batch", initial=start, total=len(mine))
    device = _input_device(model)
    ran = 0
    with torch.no_grad():
        for j in todo:
            b = batches[mine[j]]
            cache = forward_cache(
                model,
                b["tokens"].to(device),
                b["attention_mask"].to(device),
                names=names,
                stop_at_layer=stop_at_layer,
            )
            feed(cache, b, accumulators)
            del cache
            ran += 1
            done = j + 1
            if done % every == 0 or done == len(mine):
                save(done)
            if stop_after is not None and ran >= stop_after:
                save(done)
                return accumulators
    if reduce and size > 1:
        for key in sorted(accumulators):
            accumulators[key].all_reduce()
    return accumulators


def _cpu(state: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.cpu()
        elif isinstance(v, (tuple, list)):
            out[k] = type(v)(x.cpu() if isinstance(x, torch.Tensor) else x for x in v)
        else:
            out[k] = v
    return out


def _input_device(model) -> torch.device:
    """Where the model's token ids go: its embedding's device (the first device of a split model)."""
    try:
        return model.embed.W_E.device if hasattr(model, "embed") else next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def window_hidden(
    cache, batch: Mapping[str, torch.Tensor], windows: Windows, depth: Sequence[int] | None = None
) -> torch.Tensor:
    """The residual stream of a window batch without its special tokens: ``[depth, b * length, d]``.

    Every token of every window is one sample; layers of a model split over devices are moved to
    the first one.
    """
    h = resid_stack(cache, depth)
    text = _text_span(batch, windows)
    return h[:, :, text].reshape(h.shape[0], -1, h.shape[-1])  # one contiguous copy for every depth


def window_rows(x: torch.Tensor, batch: Mapping[str, torch.Tensor], windows: Windows) -> torch.Tensor:
    """``[b, pos, ...]`` activations of a window batch without its special tokens: ``[b * length, ...]``.

    Example:
        >>> w = Windows((torch.tensor([5, 6]), torch.tensor([7, 8])), prefix=(1,), suffix=(2,), n_tokens=4)
        >>> b = w.batches(2)[0]
        >>> window_rows(b["tokens"], b, w).tolist()
        [5, 6, 7, 8]
    """
    return x[:, _text_span(batch, windows)].flatten(0, 1)


def _text_span(batch: Mapping[str, torch.Tensor], windows: Windows) -> slice:
    """The positions of a window batch that hold text (between the special tokens)."""
    a = len(windows.prefix)
    return slice(a, batch["tokens"].shape[1] - len(windows.suffix))


def is_rank_zero() -> bool:
    """Whether this process writes outputs (rank 0, or the only process)."""
    return world()[0] == 0


__all__ = [
    "Windows",
    "checkpoint_path",
    "fingerprint",
    "init_distributed",
    "is_rank_zero",
    "launched_distributed",
    "local_device",
    "stream",
    "text_windows",
    "window_hidden",
    "world",
]
