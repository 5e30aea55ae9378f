"""Lenses: read every layer's residual stream through the vocabulary (L15-L17).

Three lenses, each labelled for what it measures:

* **logit lens** (decoders, :func:`logit_lens`): every depth of the residual stream (the input
  of each block, then the last block's output) goes through the model's final norm, with fresh
  statistics per vector, and the unembedding: "what would the model predict if it stopped
  here?". The last depth reproduces the model's own logits.
* **MLM lens** (encoders whose masked-language-model head was trained, :func:`mlm_lens`): every
  layer's hidden state goes through the model's own head (dense -> activation -> LayerNorm ->
  tied decoder). Refused when the head is missing from the checkpoint (TransformerLens fills it
  with random weights, as for the bundled all-MiniLM-L6-v2): its "predictions" would be noise.
* **embedding lens** (any model, :func:`embedding_lens`): cosine similarity of each layer's
  hidden state with the rows of the token embedding ``W_E``. It measures how much of the
  *input token's identity* a layer still carries; it is **not** a prediction.

TransformerLens 4 ships :func:`transformer_lens.tools.analysis.logit_lens`, which reads the same
path for decoders (``ln_final`` with recomputed statistics, ``W_U``, ``b_U``, the adapter's
output transform) and whose structural check tlprobe reuses; the tests compare the two on the
same caches. tlprobe adds, in one call and one pass over the vocabulary: top-k tokens *and*
target ranks/probabilities together (TL takes one selector per call), the KL divergence of
every layer to the final distribution, chunking over the *vocabulary* (not only over rows) so
that ``[layer, batch, pos, vocab]`` never exists at once, a check against the model's own
logits for caches built elsewhere, the compatibility mode recorded in the result, and the two
encoder lenses (TL's refuses encoders).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
from jaxtyping import Bool, Float, Int

from tlprobe.access.hooks import resid_stack
from tlprobe.access.labels import resid_labels
from tlprobe.access.models import model_info
from tlprobe.access.unembed import (
    TokenStrings,
    apply_final_norm,
    check_decoder_readout,
    decode_tokens,
    embedding_matrix,
    is_training,
    lens_targets,
    mlm_head_check,
    mlm_transform,
    output_transform,
    target_token_ids,
    token_strings,
    unembedding,
)
from tlprobe.checks import as_int, check_choice
from tlprobe.errors import TlprobeError, UnsupportedModelError
from tlprobe.result import Result

#: Names of the lenses, as they appear in results and reports.
LOGIT_LENS = "logit lens"
MLM_LENS = "MLM lens"
EMBEDDING_LENS = "embedding lens (token identity, not prediction)"

#: Elements of one ``[depth, rows, vocab-chunk]`` block when ``chunk_size`` is automatic.
DEFAULT_MAX_ELEMENTS = 2**24

#: What :func:`lens_logits` returns.
ReturnType = Literal["logits", "log_probs", "probs"]
#: The read-outs of :func:`lens_logits`: the logit lens (decoders) or the MLM lens (encoders).
PredictionLens = Literal["logit", "mlm"]
#: What :func:`choose_lens` picks.
LensName = Literal["logit", "mlm", "embedding"]


# --------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True, eq=False)
class TopK(Result):
    """Top-k tokens per depth and position: ``ids`` and their ``values`` (probabilities or cosines).

    Attributes:
        ids, values: ``[depth, batch, pos, k]``, best first.
        vocab: the strings of the ids (for :meth:`rows`).
    """

    ids: Int[torch.Tensor, "... batch pos k"]
    values: Float[torch.Tensor, "... batch pos k"]
    vocab: TokenStrings

    def rows(self) -> list[dict]:
        """One row per depth label, prompt, position and rank: the token id, its text and value."""
        ids, values = self.ids.cpu().numpy(), self.values.detach().cpu().double().numpy()
        text = np.array(self.vocab.decode(self.ids), dtype=object)
        n = len(self.axes)
        rows = []
        for idx in np.ndindex(*ids.shape):
            row: dict = {axis: labels[i] for (axis, labels), i in zip(self.axes.items(), idx)}
            row.update(zip(("batch", "pos", "rank"), idx[n:]))
            row.update(id=int(ids[idx]), token=text[idx], value=float(values[idx]))
            rows.append(row)
        return rows


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the ``[batch, pos]`` dims (after the leading depth dim) where ``mask``."""
    m = mask.to(x.device, x.dtype)
    while m.ndim < x.ndim - 1:
        m = m.unsqueeze(-1)
    n = m.sum(dim=(0, 1)).clamp_min(1)
    return (x * m).sum(dim=(1, 2)) / n


def _masked_median(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Lower median over the masked ``[batch, pos]`` dims of ``[depth, batch, pos, T]`` (-1 if none)."""
    sel = mask.to(x.device)
    if not bool(sel.any()):
        return torch.full((x.shape[0], x.shape[-1]), -1, dtype=x.dtype, device=x.device)
    return x[:, sel].median(dim=1).values


@dataclass(frozen=True, eq=False)
class LensResult(Result):
    """A logit lens or MLM lens over the depths of the residual stream.

    The ``depth`` axis (``axes["depth"]``) is labelled ``"embed"`` (the input of block 0), then
    ``"block l"`` (the output of block ``l``; for decoders the input of block ``l + 1``). The last
    is the model's final hidden state.

    Attributes:
        kind: :data:`LOGIT_LENS` or :data:`MLM_LENS`.
        top_ids, top_probs: ``[depth, batch, pos, k]`` most probable tokens and their probabilities.
        entropy: ``[depth, batch, pos]`` entropy of each distribution, in nats.
        kl_to_final: ``[depth, batch, pos]`` ``KL(p_final || p_depth)`` in nats (0 at the last depth).
        target_ids: ``[n_targets]`` token ids of the targets (may be empty).
        target_names: the targets as given (an id given as a number: its token's text).
        target_ranks: ``[depth, batch, pos, n_targets]`` rank in the full vocabulary (0 = top;
            ties count only strictly larger logits, as in TransformerLens).
        target_probs: ``[depth, batch, pos, n_targets]`` probabilities.
        mean_entropy, mean_kl_to_final: ``[depth]`` means over the real positions (``mask``).
        target_mean_probs: ``[depth, n_targets]`` each target's mean probability over real positions.
        target_median_ranks: ``[depth, n_targets]`` each target's (lower) median rank over real
            positions (-1 when there are none).
        mask: ``[batch, pos]`` real (non-padding) positions.
        token_ids: ``[batch, pos]`` the input tokens, when given (``None`` otherwise).
        vocab: the text of every id above (input, top-k and target tokens).
        compatibility_mode: the model's weights were processed (a bridge in compatibility mode,
            or a ``HookedTransformer`` with folded LN / centred weights). A centred unembedding
            shifts logits by a constant per position (the model's own logits do too);
            probabilities are unchanged.
        readout: what the last depth reproduces, in words.
        final_max_abs_error: largest difference between the last depth's logits and the model's
            own logits, when those were given (``None`` otherwise).
        model_name: the model's name.
        numerics: which numerics the activations came from
            (:func:`tlprobe.access.worlds.numerics`, e.g. ``"bridge (raw Hugging Face weights)"``).
    """

    kind: str
    top_ids: Int[torch.Tensor, "... batch pos k"]
    top_probs: Float[torch.Tensor, "... batch pos k"]
    entropy: Float[torch.Tensor, "... batch pos"]
    kl_to_final: Float[torch.Tensor, "... batch pos"]
    target_ids: Int[torch.Tensor, " n_targets"]
    target_names: tuple[str, ...]
    target_ranks: Int[torch.Tensor, "... batch pos n_targets"]
    target_probs: Float[torch.Tensor, "... batch pos n_targets"]
    mean_entropy: Float[torch.Tensor, "..."]
    mean_kl_to_final: Float[torch.Tensor, "..."]
    target_mean_probs: Float[torch.Tensor, "... n_targets"]
    target_median_ranks: Int[torch.Tensor, "... n_targets"]
    mask: Bool[torch.Tensor, "batch pos"]
    token_ids: Int[torch.Tensor, "batch pos"] | None
    vocab: TokenStrings
    compatibility_mode: bool
    readout: str
    final_max_abs_error: float | None
    model_name: str
    numerics: str = ""

    def top(self, k: int | None = None) -> TopK:
        """The ``k`` most probable tokens per depth and position (``k`` <= the computed top-k)."""
        return TopK(*_top(self.top_ids, self.top_probs, k), vocab=self.vocab, axes=self.axes)

    def rows(self) -> list[dict]:
        """Per depth: mean entropy and KL to final over real positions, and each target's mean
        probability and median rank (columns named by the target's ``repr``, e.g. ``' Paris' mean prob``)."""
        rows = super().rows()
        n = len(rows)
        probs = self.target_mean_probs.reshape(n, -1).tolist()
        ranks = self.target_median_ranks.reshape(n, -1).tolist()
        for row, p, r in zip(rows, probs, ranks):
            for name, pt, rt in zip(self.target_names, p, r):
                row[f"{name!r} mean prob"] = pt
                row[f"{name!r} median rank"] = rt
        return rows


@dataclass(frozen=True, eq=False)
class EmbeddingLensResult(Result):
    """The embedding lens: cosine of each depth's hidden state with every row of ``W_E``.

    A token-identity probe: a high cosine with the input token's own embedding row means the
    layer still carries *which token this is*. It says nothing about what comes next. The
    ``depth`` axis is labelled as in :class:`LensResult`.

    Attributes:
        kind: :data:`EMBEDDING_LENS`.
        top_ids, top_cosines: ``[depth, batch, pos, k]`` nearest embedding rows and their cosines.
        token_ranks: ``[depth, batch, pos]`` rank of the input token's row (0 = nearest).
        token_cosines: ``[depth, batch, pos]`` cosine with the input token's row.
        top1_recovery, top5_recovery: ``[depth]`` fraction of the ``mask`` positions whose input
            token is the nearest row / among the 5 nearest (:meth:`recovery`).
        mean_cosine_with_input_token: ``[depth]`` mean of ``token_cosines`` over ``mask``.
        token_ids: ``[batch, pos]`` the input tokens.
        mask: ``[batch, pos]`` positions counted (real tokens, usually without special tokens).
        vocab: the text of the input and top-k tokens.
        model_name: the model's name.
        numerics: which numerics the activations came from (as in :class:`LensResult`).
    """

    kind: str
    top_ids: Int[torch.Tensor, "... batch pos k"]
    top_cosines: Float[torch.Tensor, "... batch pos k"]
    token_ranks: Int[torch.Tensor, "... batch pos"]
    token_cosines: Float[torch.Tensor, "... batch pos"]
    top1_recovery: Float[torch.Tensor, "..."]
    top5_recovery: Float[torch.Tensor, "..."]
    mean_cosine_with_input_token: Float[torch.Tensor, "..."]
    token_ids: Int[torch.Tensor, "batch pos"]
    mask: Bool[torch.Tensor, "batch pos"]
    vocab: TokenStrings
    model_name: str
    numerics: str = ""

    def top(self, k: int | None = None) -> TopK:
        """The ``k`` nearest embedding rows per depth and position."""
        return TopK(*_top(self.top_ids, self.top_cosines, k), vocab=self.vocab, axes=self.axes)

    def recovery(self, k: int = 1) -> Float[torch.Tensor, "..."]:
        """Fraction of masked positions whose input token is among the ``k`` nearest rows, per depth."""
        hit = (self.token_ranks < k).float()
        return _masked_mean(hit, self.mask) if hit.ndim == 3 else _masked_mean(hit[None], self.mask)[0]


def _top(ids: torch.Tensor, values: torch.Tensor, k: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    kmax = ids.shape[-1]
    if k is None:
        return ids, values
    k = as_int(k, "k", minimum=1, maximum=kmax, fix="the top-k the lens was run with is the largest")
    return ids[..., :k], values[..., :k]


# --------------------------------------------------------------------------------------------
# The streaming core: one or two passes over vocabulary chunks.


def _chunks(d_vocab: int, n_rows: int, chunk_size: int | None) -> list[slice]:
    if chunk_size is None:
        size = max(256, DEFAULT_MAX_ELEMENTS // max(n_rows, 1))
    else:
        size = as_int(chunk_size, "chunk_size", minimum=1, fix="pass a positive integer or None (automatic)")
    size = min(size, d_vocab)
    return [slice(s, min(s + size, d_vocab)) for s in range(0, d_vocab, size)]


def _stream(
    scores: Callable[[slice], torch.Tensor],
    d_vocab: int,
    n_depth: int,
    n_rows: int,
    top_k: int,
    targets: torch.Tensor,
    target_scores: torch.Tensor | None,
    chunk_size: int | None,
    softmax: bool,
    reference: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Statistics of ``scores(vocab_slice) -> [depth, rows, chunk]`` in one pass over the vocabulary.

    Args:
        targets: ``[rows, T]`` token ids followed per row.
        target_scores: ``[depth, rows, T]`` their scores, computed up front so that ranks can be
            counted chunk by chunk (the target's own column is never counted against itself).
        softmax: also compute log-sum-exp, entropy and ``KL(p_last || p_depth)``. Each chunk keeps
            its own normaliser, entropy and KL partial sum; they are combined exactly at the end
            (in float64): with ``w_c = exp(lse_c - lse)``, ``H = sum_c w_c (H_c - log w_c)`` and
            ``KL_d = sum_c w_c[last] G_c[d] - (lse[last] - lse[d])`` where
            ``G_c = sum_{v in c} p_c[last](v) (z_last(v) - z_d(v))``.
        reference: ``[rows, vocab]`` scores the last depth must reproduce (largest difference
            returned as ``reference_error``).
    """
    slices = _chunks(d_vocab, n_depth * n_rows, chunk_size)
    n_t = targets.shape[-1]
    top_v = top_i = tgot = err = None
    ranks = torch.zeros(n_depth, n_rows, n_t, dtype=torch.long, device=targets.device)
    parts_lse, parts_h, parts_g = [], [], []
    for vs in slices:
        z = scores(vs)
        kk = min(top_k, z.shape[-1])
        v, i = torch.topk(z, kk, dim=-1)
        i = i + vs.start
        if top_v is None or top_i is None:
            top_v, top_i = v, i
        else:
            cat_v, cat_i = torch.cat([top_v, v], -1), torch.cat([top_i, i], -1)
            top_v, pick = torch.topk(cat_v, min(top_k, cat_v.shape[-1]), dim=-1)
            top_i = cat_i.gather(-1, pick)
        if n_t and target_scores is not None:
            inside = ((targets >= vs.start) & (targets < vs.stop)).to(z.device)
            local = (targets - vs.start).clamp(0, z.shape[-1] - 1).to(z.device)
            got = z.gather(-1, local.unsqueeze(0).expand(n_depth, -1, -1))
            tgot = torch.where(inside, got, torch.zeros((), dtype=z.dtype, device=z.device) if tgot is None else tgot)
            ts = target_scores.to(z.device, z.dtype)
            above = (z.unsqueeze(-2) > ts.unsqueeze(-1)).sum(-1, dtype=torch.int32)
            above -= (inside & (got > ts)).to(torch.int32)  # the target's own column
            ranks += above.to(ranks.device)
        if softmax:
            m = z.amax(-1, keepdim=True)
            zm = z - m
            e = zm.exp()
            sm = e.sum(-1)
            log_s = sm.log()
            parts_lse.append((m.squeeze(-1) + log_s).double())
            parts_h.append((log_s - (e * zm).sum(-1) / sm).double())
            pf = e[-1] / sm[-1].unsqueeze(-1)
            parts_g.append((pf * (z[-1] - z)).sum(-1).double())
        if reference is not None:
            diff = (z[-1] - reference[:, vs].to(z.device, z.dtype)).abs().max()
            err = diff if err is None else torch.maximum(err, diff)
    assert top_v is not None and top_i is not None  # the vocabulary has at least one chunk
    dtype = top_v.dtype
    out = {"top_scores": top_v, "top_ids": top_i, "target_ranks": ranks.to(top_v.device)}
    out["target_scores"] = (
        tgot if tgot is not None else torch.zeros(n_depth, n_rows, 0, dtype=dtype, device=top_v.device)
    )
    if softmax:
        lse_c = torch.stack(parts_lse)  # [chunks, depth, rows]
        lse = torch.logsumexp(lse_c, dim=0)
        log_w = lse_c - lse
        w = log_w.exp()
        entropy = (w * (torch.stack(parts_h) - log_w)).sum(0)
        kl = (w[:, -1:] * torch.stack(parts_g)).sum(0) - (lse[-1:] - lse)
        out.update(lse=lse.to(dtype), entropy=entropy.clamp_min(0).to(dtype), kl=kl.clamp_min(0).to(dtype))
    if err is not None:
        out["reference_error"] = err
    return out


# --------------------------------------------------------------------------------------------
# Read-outs


def _model_of(cache, model):
    model = model if model is not None else getattr(cache, "model", None)
    if model is None:
        raise TlprobeError(
            "the cache holds no model (cache.model is None); pass model=, or build the cache with "
            "model.run_with_cache / tlprobe.run_batch"
        )
    if is_training(model):
        raise TlprobeError("the model is in training mode (dropout on): call model.eval() before the lens")
    return model


@dataclass(frozen=True)
class _Readout:
    kind: str
    hidden: torch.Tensor  # [depth, batch, pos, d] vectors ready for the unembedding
    W: torch.Tensor  # [d, vocab]
    b: torch.Tensor  # [vocab]
    transform: Callable[[torch.Tensor], torch.Tensor]


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _readout(cache, model, lens: str, trust_head: bool) -> _Readout:
    info = model_info(model)
    stack = resid_stack(cache)
    W_U, b_U = unembedding(model)
    with torch.no_grad():
        if lens == "logit":
            if info.is_encoder:
                raise UnsupportedModelError(
                    f"the logit lens reads next-token predictions, but {info.name or 'this model'} is an "
                    f"encoder ({info.family}, bidirectional attention): it predicts no next token. Use "
                    "mlm_lens (encoders with a trained masked-LM head) or embedding_lens (token identity)"
                )
            check_decoder_readout(model)
            hidden = apply_final_norm(model, stack)
            kind = LOGIT_LENS
        else:
            if not info.is_encoder:
                raise UnsupportedModelError(
                    f"the MLM lens reads a masked-language-model head, but {info.name or 'this model'} is a "
                    "decoder: use logit_lens"
                )
            check = mlm_head_check(model)
            if check.status in ("missing", "no-head") or (check.status == "unknown" and not trust_head):
                extra = (
                    " Pass trust_head=True only if you know the head was trained." if check.status == "unknown" else ""
                )
                raise UnsupportedModelError(
                    f"refusing the MLM lens on {info.name or 'this model'}: {check.reason}.{extra} "
                    "Use embedding_lens instead: it reads token identity (cosine with W_E), not predictions"
                )
            hidden = mlm_transform(model, stack)
            kind = MLM_LENS
    transform = (lambda z: output_transform(model, z)) if lens == "logit" else (lambda z: z)
    return _Readout(kind, hidden, W_U, b_U, transform)


def _score_fn(r: _Readout) -> tuple[Callable[[slice | torch.Tensor], torch.Tensor], int]:
    dt = _compute_dtype(r.hidden)
    h = r.hidden.to(device=r.W.device, dtype=dt).flatten(1, 2)  # [depth, rows, d]

    def scores(vs: slice | torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return r.transform(h @ r.W[:, vs].to(dt) + r.b[vs].to(dt))

    return scores, h.shape[1]


def _check_top_k(top_k: int, d_vocab: int) -> int:
    return as_int(top_k, "top_k", minimum=1, maximum=d_vocab, fix=f"the vocabulary has {d_vocab} tokens")


def _batch_shaped(x, name: str, batch: int, pos: int, device) -> torch.Tensor | None:
    """``x`` as a ``[batch, pos]`` tensor on ``device`` (``None`` stays ``None``)."""
    if x is None:
        return None
    if not isinstance(x, torch.Tensor) or tuple(x.shape) != (batch, pos):
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise TlprobeError(f"{name} has shape {got}; expected the cached input's [batch, pos] = {(batch, pos)}")
    return x.detach().to(device)


def _mask(x, name: str, batch: int, pos: int, device) -> torch.Tensor:
    """A ``[batch, pos]`` boolean mask (default: every position); one that selects nothing is refused
    (its means would read 0.0, a number computed from no position)."""
    m = _batch_shaped(x, name, batch, pos, device)
    if m is None:
        return torch.ones(batch, pos, dtype=torch.bool, device=device)
    if not bool(m.bool().any()):
        raise TlprobeError(f"{name} selects no position (all zeros); pass 1 for the real tokens, or leave it None")
    return m.bool()


def _depth_axes(axes: Mapping[str, Sequence[str]] | None, depth: int) -> Mapping[str, Sequence[str]]:
    """The leading-axis labels: ``axes`` if given, else ``{"depth": ("embed", "block 0", ...)}``."""
    return {"depth": resid_labels(depth - 1, style="block")} if axes is None else axes


def _target_names(model, targets: Sequence[str | int], ids: list[int]) -> tuple[str, ...]:
    """The targets as given; an id given as a number is named by its token's text."""
    return tuple(t if isinstance(t, str) else text for t, text in zip(targets, decode_tokens(model, ids)))


def _lens(
    cache, lens: PredictionLens, targets, top_k, chunk_size, logits, attention_mask, tokens, model, trust_head, axes
) -> LensResult:
    model = _model_of(cache, model)
    info = model_info(model)
    r = _readout(cache, model, lens, trust_head)
    depth, batch, pos, _ = r.hidden.shape
    d_vocab = int(r.W.shape[-1])
    top_k = _check_top_k(top_k, d_vocab)
    targets = lens_targets(targets)
    tid_list = target_token_ids(model, targets)
    tids = torch.tensor(tid_list, dtype=torch.long, device=r.W.device)
    token_ids = _batch_shaped(tokens, "tokens", batch, pos, r.W.device)
    mask = _mask(attention_mask, "attention_mask", batch, pos, r.W.device)
    scores, n_rows = _score_fn(r)
    reference = None
    if logits is not None:
        if tuple(logits.shape) != (batch, pos, d_vocab):
            raise TlprobeError(
                f"logits has shape {tuple(logits.shape)}; expected the model's output for the cached "
                f"input, [batch, pos, vocab] = {(batch, pos, d_vocab)}"
            )
        reference = logits.detach().reshape(n_rows, d_vocab)
    with torch.no_grad():
        tscores = scores(tids) if tids.numel() else None
    st = _stream(scores, d_vocab, depth, n_rows, top_k, tids.expand(n_rows, -1), tscores, chunk_size, True, reference)
    err = None
    if reference is not None:
        err = float(st["reference_error"])
        ref = reference.float()
        spread = float((ref - ref.mean(-1, keepdim=True)).abs().max())
        if err > 1e-2 * max(spread, 1e-12):
            raise UnsupportedModelError(
                f"the {r.kind} does not reproduce the model's logits at the last layer (max difference "
                f"{err:.3g} against a spread of {spread:.3g}): the model transforms its last hidden state "
                "in a way the lens does not follow, or the logits come from another input"
            )

    def shape(x):
        return x.reshape(depth, batch, pos, *x.shape[2:])

    lse = st["lse"].unsqueeze(-1)
    readout = "logits"
    if info.compatibility_mode:
        readout = (
            "centred logits (compatibility mode: W_U is centred, so logits shift by a constant "
            "per position, as the model's own do; probabilities are unchanged)"
        )
    top_ids, entropy, kl = shape(st["top_ids"]), shape(st["entropy"]), shape(st["kl"])
    target_ranks, target_probs = shape(st["target_ranks"]), shape((st["target_scores"] - lse).exp())
    shown = [top_ids, tids] + ([] if token_ids is None else [token_ids])
    return LensResult(
        kind=r.kind,
        top_ids=top_ids,
        top_probs=shape((st["top_scores"] - lse).exp()),
        entropy=entropy,
        kl_to_final=kl,
        target_ids=tids,
        target_names=_target_names(model, targets, tid_list),
        target_ranks=target_ranks,
        target_probs=target_probs,
        mean_entropy=_masked_mean(entropy, mask),
        mean_kl_to_final=_masked_mean(kl, mask),
        target_mean_probs=_masked_mean(target_probs, mask),
        target_median_ranks=_masked_median(target_ranks, mask),
        mask=mask,
        token_ids=None if token_ids is None else token_ids.long(),
        vocab=token_strings(model, *shown),
        compatibility_mode=info.compatibility_mode,
        readout=readout,
        final_max_abs_error=err,
        model_name=info.name,
        numerics=info.numerics,
        axes=_depth_axes(axes, depth),
    )


def logit_lens(
    cache,
    targets: str | int | Sequence[str | int] | None = None,
    *,
    top_k: int = 10,
    chunk_size: int | None = None,
    logits: Float[torch.Tensor, "batch pos vocab"] | None = None,
    attention_mask: Int[torch.Tensor, "batch pos"] | None = None,
    tokens: Int[torch.Tensor, "batch pos"] | None = None,
    model=None,
    axes: Mapping[str, Sequence[str]] | None = None,
) -> LensResult:
    """The logit lens of a decoder: every depth of the residual stream read as a prediction.

    Depth ``0`` is ``blocks.0`` 's input (the embeddings), depth ``l + 1`` the output of block
    ``l`` (:func:`tlprobe.access.hooks.resid_stack`). Each vector goes through ``ln_final`` with
    fresh statistics, ``W_U`` and ``b_U`` (and the adapter's soft cap / logit scale, if any). The
    last depth equals the model's logits; in compatibility mode the model's (centred) logits.

    Args:
        cache: an ``ActivationCache`` of the input with the residual hooks
            (``resid_hook_names``) and ``cache.model`` set.
        targets: tokens whose rank and probability to follow per depth: single-token strings
            (GPT-2 style BPE: ``" Paris"`` with its space) or ids; a lone string (``" her"``) or
            id is one target, not a sequence of characters.
        top_k: tokens kept per depth and position.
        chunk_size: vocabulary columns per matrix product; ``None`` picks a size that keeps one
            ``[depth, rows, chunk]`` block under :data:`DEFAULT_MAX_ELEMENTS`. Several chunks cost
            a second pass; the results are the same.
        logits: the model's own output for the cached input; if given, the last depth is checked
            against it (error recorded in ``final_max_abs_error``; a mismatch raises).
        attention_mask: ``[batch, pos]`` real positions (the means and medians count only these).
        tokens: ``[batch, pos]`` the input token ids, kept in the result (figures label positions
            with them).
        model: the model, if the cache does not carry it.
        axes: labels of the leading (depth) axis; default ``{"depth": ("embed", "block 0", ...)}``.

    Returns:
        :class:`LensResult`.

    Raises:
        UnsupportedModelError: an encoder (use :func:`mlm_lens` or :func:`embedding_lens`), or a
            model whose read-out is not ``ln_final -> unembed``.
        TlprobeError: a target that is not one token, a bad ``top_k`` / ``chunk_size``.

    Example:
        >>> from tlprobe.testing import tiny_model
        >>> model = tiny_model("gpt2")
        >>> logits, cache = model.run_with_cache("She gave her the book")
        >>> res = logit_lens(cache, [" her"], top_k=3, logits=logits)
        >>> res.axes["depth"], tuple(res.top(2).ids.shape), res.final_max_abs_error < 1e-5
        (('embed', 'block 0', 'block 1'), (3, 1, 6, 2), True)
        >>> float(res["block 1"].kl_to_final.abs().max()), list(res.rows()[-1])
        (0.0, ['depth', 'mean_entropy', 'mean_kl_to_final', "' her' mean prob", "' her' median rank"])
    """
    return _lens(cache, "logit", targets, top_k, chunk_size, logits, attention_mask, tokens, model, False, axes)


def mlm_lens(
    cache,
    targets: str | int | Sequence[str | int] | None = None,
    *,
    top_k: int = 10,
    chunk_size: int | None = None,
    logits: Float[torch.Tensor, "batch pos vocab"] | None = None,
    attention_mask: Int[torch.Tensor, "batch pos"] | None = None,
    tokens: Int[torch.Tensor, "batch pos"] | None = None,
    model=None,
    trust_head: bool = False,
    axes: Mapping[str, Sequence[str]] | None = None,
) -> LensResult:
    """The MLM lens of an encoder: every layer's hidden state through the trained MLM head.

    Each depth (the LayerNorm'd embeddings, then every block's output) goes through the model's
    own head code (BERT: dense -> activation -> LayerNorm) and the tied decoder ``W_U``, ``b_U``;
    the last depth equals the model's MLM logits. Positions holding ``[MASK]`` show what each
    layer would fill in (lessons L16-L17).

    The head must come from the checkpoint (:func:`tlprobe.access.unembed.mlm_head_check`).
    Arguments as in :func:`logit_lens`, plus ``trust_head``: accept a head whose origin cannot be
    verified (a model built in memory); a head known to be missing is refused regardless.

    Raises:
        UnsupportedModelError: a decoder; or the MLM head is missing from the checkpoint (e.g. the
            bundled all-MiniLM-L6-v2: TransformerLens fills it with random weights), with the
            reason, pointing to :func:`embedding_lens`.

    Example:
        >>> from tlprobe.access.models import load_model
        >>> _, cache = load_model("minilm", device="cpu").run_with_cache("a [MASK] sat")
        >>> mlm_lens(cache)
        Traceback (most recent call last):
        tlprobe.errors.UnsupportedModelError: refusing the MLM lens on ...: the checkpoint model.safetensors has no weights for cls.predictions.transform.dense, ...
    """
    return _lens(cache, "mlm", targets, top_k, chunk_size, logits, attention_mask, tokens, model, trust_head, axes)


def lens_logits(
    cache,
    return_type: ReturnType = "logits",
    *,
    lens: PredictionLens = "logit",
    chunk_size: int | None = None,
    model=None,
    trust_head: bool = False,
) -> Float[torch.Tensor, "depth batch pos vocab"]:
    """The full ``[depth, batch, pos, vocab]`` read-out of the logit lens (or MLM lens).

    Computed chunk by chunk over the vocabulary into one output tensor; ``"log_probs"`` and
    ``"probs"`` subtract the log-sum-exp accumulated over the chunks. Prefer :func:`logit_lens`
    for summaries: it never holds this tensor.

    Args:
        cache, chunk_size, model, trust_head: as in :func:`logit_lens` / :func:`mlm_lens`.
        return_type: ``"logits"``, ``"log_probs"`` or ``"probs"``.
        lens: ``"logit"`` (decoders) or ``"mlm"`` (encoders with a trained head).

    Example:
        >>> from tlprobe.testing import tiny_model
        >>> logits, cache = tiny_model("neox").run_with_cache("She gave her the book")
        >>> out = lens_logits(cache, chunk_size=100)
        >>> tuple(out.shape), bool(torch.allclose(out[-1], logits, atol=1e-5))
        ((3, 1, 5, 600), True)
    """
    check_choice(return_type, get_args(ReturnType), "return_type")
    check_choice(lens, get_args(PredictionLens), "lens")
    model = _model_of(cache, model)
    r = _readout(cache, model, lens, trust_head)
    depth, batch, pos, _ = r.hidden.shape
    d_vocab = int(r.W.shape[-1])
    scores, n_rows = _score_fn(r)
    slices = _chunks(d_vocab, depth * n_rows, chunk_size)
    out = None
    lse = None
    for vs in slices:
        z = scores(vs)
        if out is None:
            out = torch.empty(depth, n_rows, d_vocab, dtype=z.dtype, device=z.device)
        out[..., vs] = z
        part = torch.logsumexp(z, dim=-1)
        lse = part if lse is None else torch.logaddexp(lse, part)
    assert out is not None and lse is not None  # the vocabulary has at least one chunk
    if return_type != "logits":
        out -= lse.unsqueeze(-1)
        if return_type == "probs":
            out.exp_()
    return out.reshape(depth, batch, pos, d_vocab)


def embedding_lens(
    cache,
    tokens: Int[torch.Tensor, "batch pos"],
    *,
    top_k: int = 5,
    chunk_size: int | None = None,
    mask: Int[torch.Tensor, "batch pos"] | None = None,
    model=None,
    axes: Mapping[str, Sequence[str]] | None = None,
) -> EmbeddingLensResult:
    """The embedding lens: cosine of each depth's hidden state with every row of ``W_E``.

    A token-identity probe, **not a prediction**: it asks which input embedding a layer's
    vector still points at. On an encoder whose MLM head is missing from the checkpoint (the
    bundled all-MiniLM-L6-v2) it is the honest alternative to the MLM lens. Works on decoders too
    (there it tracks how fast the current token's identity fades from the residual stream).

    Args:
        cache: an ``ActivationCache`` with the residual hooks and ``cache.model``.
        tokens: ``[batch, pos]`` the input token ids of the cached run.
        top_k: nearest embedding rows kept per depth and position.
        chunk_size: as in :func:`logit_lens`.
        mask: ``[batch, pos]`` positions that count in the recovery fractions and mean cosine
            (default all; pass :func:`tlprobe.access.unembed.content_mask` to leave out padding
            and special tokens).
        model: the model, if the cache does not carry it.
        axes: labels of the leading (depth) axis; default ``{"depth": ("embed", "block 0", ...)}``.

    Example:
        >>> from tlprobe.testing import tiny_model
        >>> model = tiny_model("gpt2")
        >>> tokens = model.to_tokens("She gave her the book")
        >>> _, cache = model.run_with_cache(tokens)
        >>> res = embedding_lens(cache, tokens)
        >>> res.kind
        'embedding lens (token identity, not prediction)'
        >>> tuple(res.top1_recovery.shape), res.rows()[0]["depth"]
        ((3,), 'embed')
    """
    model = _model_of(cache, model)
    info = model_info(model)
    top_k = _check_top_k(top_k, info.d_vocab)
    stack = resid_stack(cache)
    depth, batch, pos, _ = stack.shape
    W_E = embedding_matrix(model)
    tok = _batch_shaped(tokens, "tokens", batch, pos, W_E.device)
    if tok is None:
        raise TlprobeError("tokens is required: the input token ids of the cached run, [batch, pos]")
    tok = tok.long()
    dt = _compute_dtype(stack)
    with torch.no_grad():
        E = torch.nn.functional.normalize(W_E.detach().to(dt), dim=-1).T.contiguous()  # [d, vocab]
        h = torch.nn.functional.normalize(stack.detach().to(device=E.device, dtype=dt), dim=-1).flatten(1, 2)

        def scores(vs: slice) -> torch.Tensor:
            return h @ E[:, vs]

        n_rows = batch * pos
        flat = tok.reshape(n_rows, 1)
        own = (h * E.T[flat[:, 0]]).sum(-1, keepdim=True)  # cosine with the input token's row
        st = _stream(scores, E.shape[1], depth, n_rows, top_k, flat, own, chunk_size, False)

    def shape(x):
        return x.reshape(depth, batch, pos, *x.shape[2:])

    m = _mask(mask, "mask", batch, pos, E.device)
    top_ids, ranks, cosines = (
        shape(st["top_ids"]),
        shape(st["target_ranks"])[..., 0],
        shape(st["target_scores"])[..., 0],
    )
    return EmbeddingLensResult(
        kind=EMBEDDING_LENS,
        top_ids=top_ids,
        top_cosines=shape(st["top_scores"]),
        token_ranks=ranks,
        token_cosines=cosines,
        top1_recovery=_masked_mean((ranks < 1).float(), m),
        top5_recovery=_masked_mean((ranks < 5).float(), m),
        mean_cosine_with_input_token=_masked_mean(cosines, m),
        token_ids=tok,
        mask=m,
        vocab=token_strings(model, top_ids, tok),
        model_name=info.name,
        numerics=info.numerics,
        axes=_depth_axes(axes, depth),
    )


def choose_lens(model) -> tuple[LensName, str]:
    """Which lens fits a model, and why: ``("logit" | "mlm" | "embedding", reason)``.

    Decoders get the logit lens; encoders with a trained MLM head the MLM lens; other encoders
    (head missing from the checkpoint, or unverifiable) the embedding lens.

    Example:
        >>> from tlprobe.testing import tiny_model
        >>> choose_lens(tiny_model("llama"))[0]
        'logit'
    """
    info = model_info(model)
    if not info.is_encoder:
        return "logit", "a decoder: its residual stream is read through ln_final and the unembedding"
    check = mlm_head_check(model)
    if check.trained:
        return "mlm", f"an encoder with a trained MLM head: {check.reason}"
    saved = f", saved as {', '.join(check.architectures)}" if check.architectures else ""
    return "embedding", (
        f"an encoder whose MLM head is {check.status} in its checkpoint{saved}: the MLM lens is refused "
        "and the embedding lens reads token identity (not prediction) instead"
    )
