"""L13: covariance vs MI between a punctuation token and its neighbours, clustered per layer and class.

The pipeline (see ``tlprobe/recipes/punctuation_clusters.py``):

1. :func:`tlprobe.access.punctuation.token_classes`: label every token of a long text
   0 = none, 1 = internal, 2 = terminal punctuation, from the characters around each mark.
2. :func:`sample_occurrences` -> :class:`Occurrences`: a seeded sample of ``n`` marks per
   class with room for a window.
3. :func:`window_dependence`: in each window, the covariance and the mutual information *across
   hidden dimensions* between the punctuation token's vector and every position's vector,
   vectorised over layers, windows and positions; :func:`punctuation_dependence` ->
   :class:`PunctuationDependence` adds what each window slot holds. Each window depends on its
   own hidden states only: :class:`DependenceAccumulator` folds batches of windows into the same
   result, so only one batch's hidden states need exist at a time.
4. :func:`cluster_panels` -> :class:`PunctuationClusters`: per layer and class (one
   :class:`PanelResult` each), clusters of the (covariance, MI) points
   (:func:`tlprobe.analyses.stats.cluster_points`), Pearson r over all points and within each
   cluster, and a Simpson's-paradox check with its p-values (:func:`tlprobe.analyses.stats.simpson_check`);
   :meth:`PanelResult.describe` says in words what each cluster is made of.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int

from tlprobe.access.labels import resid_labels
from tlprobe.access.punctuation import CLASS_NAMES
from tlprobe.access.text import window_starts
from tlprobe.analyses.mi import BIN_RULES, BinRule, Correction, cross_mi, mi_working_bytes, resolve_bins
from tlprobe.analyses.stats import Clustering, ClusterMethod, SimpsonCheck, cluster_points, simpson_check
from tlprobe.checks import as_int, as_tensor, check_choice, check_finite, check_min_samples, check_ndim, upcast
from tlprobe.errors import TlprobeError
from tlprobe.result import Result, index_rows

#: Windows (over all leading dimensions) per MI call of :func:`window_dependence`.
WINDOW_CHUNK = 256
#: :func:`cluster_makeup`: a cluster whose points are at least this fraction the mark's own
#: token is "the window's other marks of the same kind" (e.g. the other commas).
SAME_TOKEN_MAJORITY = 0.5
#: :func:`cluster_makeup`: a cluster at least this fraction punctuation (of any kind) is
#: "mostly punctuation".
PUNCTUATION_MAJORITY = 0.5


def window_dependence_bytes(
    windows: int, tokens: int, dims: int, *, bins: int, chunk_size: int = WINDOW_CHUNK, device=None
) -> int:
    """Bytes one MI call of :func:`window_dependence` allocates (``chunk_size`` windows at a time),
    estimated before any allocation (:func:`tlprobe.analyses.mi.mi_working_bytes`).

    Example:
        >>> window_dependence_bytes(500, 31, 384, bins=10) < 2**30
        True
    """
    lead = min(as_int(windows, "windows", minimum=1), as_int(chunk_size, "chunk_size", minimum=1))
    return mi_working_bytes(lead, dims, 1, tokens, bins=bins, device=device)


def _class_name(class_id: int) -> str:
    return CLASS_NAMES.get(int(class_id), str(class_id))


# --------------------------------------------------------------------------- sampling
@dataclass(frozen=True, eq=False)
class Occurrences(Result):
    """Sampled punctuation positions, grouped by class.

    Attributes:
        cls: ``[n]`` class of each sampled occurrence (1 or 2), class 1 first.
        pos: ``[n]`` token position of each occurrence in the text.
        class_counts: class name -> tokens of that class in the whole text (every class id
            from 0, in order).
        available: class name -> marks of that class with room for a window (sampled classes).
    """

    cls: Int[torch.Tensor, " n"]
    pos: Int[torch.Tensor, " n"]
    class_counts: dict[str, int]
    available: dict[str, int]

    def __len__(self) -> int:
        return int(self.pos.numel())

    def rows(self) -> list[dict]:
        """One row per class: tokens in the text, marks with room for a window, marks sampled."""
        return [
            {
                "class": name,
                "tokens": count,
                "with room for a window": self.available.get(name, ""),
                "sampled": int((self.cls == class_id).sum()) if name in self.available else "",
            }
            for class_id, (name, count) in enumerate(self.class_counts.items())
        ]


def sample_occurrences(
    classes: Int[torch.Tensor, " tokens"],
    n: int,
    *,
    before: int,
    after: int,
    seed: int = 0,
    class_ids: Sequence[int] = (1, 2),
    min_count: int = 20,
) -> Occurrences:
    """Draw ``n`` occurrences of each punctuation class, with room for a full window.

    Marks closer than ``before`` tokens to the start or ``after`` tokens to the end are skipped.
    The draw is a seeded permutation, so the same seed gives the same sample; the positions of
    each class are returned in text order. ``n = 0`` takes every mark of each class that has
    room for a full window (``before <= position < tokens - after``), in text order, without a
    warning; it is the sample any ``n`` at least the number of such marks draws.

    Args:
        classes: ``[tokens]`` token classes (:func:`tlprobe.access.punctuation.token_classes`).
        n: occurrences per class, 0 for all with room for a window; if fewer than ``n`` are
            available all are taken, with a warning.
        before, after: window size around each mark.
        seed: seed of the draw.
        class_ids: the classes to sample.
        min_count: fewer eligible marks than this in a class is an error (no statistics).

    Returns:
        :class:`Occurrences`.

    Raises:
        TlprobeError: ``n`` is not an integer >= 0, or a class has fewer than ``min_count``
            eligible marks (the message gives the counts and the fix).

    Example:
        >>> cls = torch.tensor([0, 1, 0, 2, 0, 1, 0, 2, 0, 1, 2, 0])
        >>> occ = sample_occurrences(cls, 2, before=1, after=1, min_count=1)
        >>> occ.cls.tolist(), occ.available
        ([1, 1, 2, 2], {'internal': 3, 'terminal': 3})
        >>> sample_occurrences(cls, 0, before=1, after=1, min_count=1).pos.tolist()
        [1, 5, 9, 3, 7, 10]
    """
    n = as_int(n, "n", minimum=0, fix="0 takes every mark with room for a window")
    before, after = as_int(before, "before", minimum=0), as_int(after, "after", minimum=0)
    min_count = as_int(min_count, "min_count", minimum=1)
    seed = as_int(seed, "seed")
    classes = torch.as_tensor(classes).cpu()
    candidates = {
        int(c): window_starts(classes.numel(), (classes == c).nonzero().flatten(), before=before, after=after)[0]
        for c in class_ids
    }
    short = {c: cand.numel() for c, cand in candidates.items() if cand.numel() < min_count}
    if short:
        what = ", ".join(f"{_class_name(c)}: {k}" for c, k in short.items())
        raise TlprobeError(
            f"too few punctuation marks with room for a window of {before} before and {after} after "
            f"({what}; need at least {min_count} per class). Give a longer text (--text FILE) or "
            "smaller --before/--after"
        )
    gen = torch.Generator().manual_seed(seed)
    cls_out, pos_out = [], []
    for c, cand in candidates.items():
        if n and cand.numel() < n:
            warnings.warn(
                f"only {cand.numel()} {_class_name(c)} punctuation marks available, fewer than n={n}: using all of them",
                stacklevel=2,
            )
        pick = cand[torch.randperm(cand.numel(), generator=gen)[: n or cand.numel()]].sort().values
        cls_out.append(torch.full_like(pick, c))
        pos_out.append(pick)
    counts = torch.bincount(classes.long(), minlength=len(CLASS_NAMES)).tolist()
    return Occurrences(
        cls=torch.cat(cls_out),
        pos=torch.cat(pos_out),
        class_counts={_class_name(c): int(k) for c, k in enumerate(counts)},
        available={_class_name(c): int(cand.numel()) for c, cand in candidates.items()},
    )


# --------------------------------------------------------------------------- dependence
def window_dependence(
    hidden: Float[torch.Tensor, "... windows tokens dims"],
    centre: int,
    *,
    bins: int | BinRule = 10,
    correction: Correction | None = None,
    chunk_size: int = WINDOW_CHUNK,
) -> tuple[Float[torch.Tensor, "... windows tokens"], Float[torch.Tensor, "... windows tokens"]]:
    """Covariance and MI across hidden dimensions between the centre token and every token.

    For window ``w`` and position ``t``, the two vectors ``hidden[w, centre]`` and
    ``hidden[w, t]`` are treated as paired samples over the hidden dimensions (the L13
    token-by-token view): covariance (``ddof=1``) and the histogram MI of
    :func:`tlprobe.analyses.mi.cross_mi` (equal-width bins over each vector's own range). All
    layers, windows and positions in one batched call; at ``t == centre`` the values are the
    variance and the entropy.

    Args:
        hidden: ``[..., windows, tokens, dims]`` hidden states, e.g. ``[layers, windows, 31, d_model]``.
        centre: index of the punctuation token in each window.
        bins: bins per vector for the MI (integer or a rule, see ``cross_mi``).
        correction: MI bias correction (``None`` or ``"miller-madow"``).
        chunk_size: windows (over all leading dimensions) per MI call: bounds the memory of the
            one-hot bin codes to about ``chunk_size * tokens * dims * bins`` numbers; the result
            does not depend on it.

    Returns:
        ``(covariance, mi)``, each ``[..., windows, tokens]``; MI in nats.

    Raises:
        TlprobeError: ``hidden`` has fewer than 3 dimensions or non-finite values, ``centre`` is
            not a token index, or ``chunk_size`` is not a positive integer.

    Example:
        >>> h = torch.randn(4, 5, 64, generator=torch.Generator().manual_seed(0))
        >>> h[:, 1] = 2 * h[:, 2] + 1
        >>> cov, mi = window_dependence(h, centre=2, bins=8)
        >>> bool((cov[:, 1] > cov[:, 0]).all()), bool((mi[:, 1] == mi[:, 2]).all())
        (True, True)
    """
    hidden = upcast(as_tensor(hidden, "hidden"))
    check_ndim(hidden, "hidden", 3, "[..., windows, tokens, dims]")
    try:
        centre = as_int(centre, "centre", minimum=0, maximum=hidden.shape[-2] - 1)
    except TlprobeError:
        raise TlprobeError(f"centre must be a token index in 0..{hidden.shape[-2] - 1}, got {centre!r}") from None
    check_min_samples(hidden.shape[-1], 2, "covariance across hidden dimensions")
    check_finite(hidden, "hidden")
    chunk_size = as_int(chunk_size, "chunk_size (windows per MI call)", minimum=1)
    hc = hidden - hidden.mean(-1, keepdim=True)
    cov = torch.einsum("...d,...td->...t", hc[..., centre, :], hc) / (hidden.shape[-1] - 1)
    if isinstance(bins, str):  # a rule: resolve it once so that every chunk uses the same count
        bins = resolve_bins(hidden.mT, bins)
    flat = hidden.reshape(-1, *hidden.shape[-2:])  # [windows, tokens, dims]
    mi = torch.cat(
        [
            cross_mi(part[:, centre : centre + 1].mT, part.mT, bins=bins, correction=correction)[:, 0]
            for part in flat.split(chunk_size)
        ]
    )
    return cov, mi.reshape(cov.shape).to(cov.dtype)


@dataclass(frozen=True, eq=False)
class PunctuationDependence(Result):
    """Covariance and MI between each punctuation token and its neighbours, per layer.

    Attributes:
        depth: ``[layers]`` residual-stream index of each layer (0 = embeddings, ``l`` = block
            ``l - 1``'s output).
        covariance: ``[layers, windows, tokens]`` covariance across hidden dimensions.
        mi: ``[layers, windows, tokens]`` MI (nats) across hidden dimensions.
        cls: ``[windows]`` class of each window's centre (1 internal, 2 terminal).
        pos: ``[windows]`` token position of each centre in the text.
        rel: ``[tokens]`` relative position of each window slot (``-before .. after``).
        same_token: ``[windows, tokens]`` the slot holds the same token id as the centre.
        slot_class: ``[windows, tokens]`` punctuation class of the token in each slot.
        bins: MI bins (a count or a rule, as given).
    """

    depth: Int[torch.Tensor, "..."]
    covariance: Float[torch.Tensor, "... windows tokens"]
    mi: Float[torch.Tensor, "... windows tokens"]
    cls: Int[torch.Tensor, " windows"]
    pos: Int[torch.Tensor, " windows"]
    rel: Int[torch.Tensor, " tokens"]
    same_token: Bool[torch.Tensor, "windows tokens"]
    slot_class: Int[torch.Tensor, "windows tokens"]
    bins: int | BinRule = 10

    def points(self, layer: int, class_id: int) -> dict[str, torch.Tensor]:
        """Flattened points of one layer (index into ``depth``) and class, centre slot excluded.

        Returns:
            ``x`` (covariance), ``y`` (MI), ``rel``, ``window`` (index into this class's
            windows), ``same_token`` and ``slot_class``, each ``[points]``.

        Raises:
            TlprobeError: no window has that class.
        """
        sel = (self.cls == class_id).nonzero().flatten()
        if sel.numel() == 0:
            raise TlprobeError(f"no windows of class {class_id} ({_class_name(class_id)})")
        keep = (self.rel != 0).nonzero().flatten()
        grid = torch.arange(sel.numel())[:, None].expand(-1, keep.numel())
        return {
            "x": self.covariance[layer][sel][:, keep].flatten(),
            "y": self.mi[layer][sel][:, keep].flatten(),
            "rel": self.rel[keep].expand(sel.numel(), -1).flatten(),
            "window": grid.flatten(),
            "same_token": self.same_token[sel][:, keep].flatten(),
            "slot_class": self.slot_class[sel][:, keep].flatten(),
        }


def punctuation_dependence(
    hidden: Float[torch.Tensor, "layers windows tokens dims"],
    windows: Int[torch.Tensor, "windows tokens"],
    classes: Int[torch.Tensor, " text_tokens"],
    occurrences: Occurrences,
    *,
    before: int,
    depth: Sequence[int],
    bins: int | BinRule = 10,
    correction: Correction | None = None,
    axes: Mapping[str, Sequence[str]] | None = None,
) -> PunctuationDependence:
    """:func:`window_dependence` for sampled punctuation windows, with what each slot holds.

    Args:
        hidden: ``[layers, windows, tokens, dims]`` (e.g. :func:`tlprobe.access.text.run_windows`).
        windows: ``[windows, tokens]`` the token ids of the windows.
        classes: ``[text_tokens]`` token classes of the whole text.
        occurrences: the sampled centres (same order as ``windows``).
        before: tokens before the centre (the centre's index in a window).
        depth: the residual-stream index of each layer of ``hidden`` (for the record).
        bins, correction: MI options (see :func:`window_dependence`).
        axes: labels of the layer axis, e.g. ``{"layer": ("L0", "L3")}``, kept in the result.

    Returns:
        :class:`PunctuationDependence`.

    Raises:
        TlprobeError: the shapes of ``hidden``, ``windows``, ``occurrences`` and ``depth`` disagree.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> text = torch.tensor([0, 0, 1, 0, 2, 0, 1, 0, 2, 0])
        >>> occ = sample_occurrences(text, 2, before=1, after=1, min_count=1)
        >>> windows = torch.randint(0, 9, (4, 3), generator=g)
        >>> dep = punctuation_dependence(torch.randn(1, 4, 3, 16, generator=g), windows, text, occ, before=1, depth=[2])
        >>> tuple(dep.covariance.shape), dep.slot_class[:, 1].tolist()
        ((1, 4, 3), [1, 1, 2, 2])
    """
    hidden = as_tensor(hidden, "hidden")
    check_ndim(hidden, "hidden", 4, "[layers, windows, tokens, dims]")
    if hidden.shape[1] != len(occurrences) or tuple(windows.shape) != tuple(hidden.shape[1:3]):
        raise TlprobeError(
            f"hidden {tuple(hidden.shape)}, windows {tuple(windows.shape)} and {len(occurrences)} occurrences "
            "do not match; pass the windows cut around these occurrences"
        )
    acc = DependenceAccumulator(
        classes, occurrences, before=before, depth=depth, bins=bins, correction=correction, axes=axes
    )
    acc.update(hidden, windows)
    return acc.result()


class DependenceAccumulator:
    """:func:`punctuation_dependence` folded over batches of windows, one batch in memory at a time.

    Each window's covariance and MI depend on that window's hidden states only, so the windows
    can be run through the model batch by batch: :meth:`update` computes
    :func:`window_dependence` of one batch and keeps only its ``[layers, batch, tokens]``
    results (on the CPU); :meth:`result` assembles the :class:`PunctuationDependence` of all
    windows, the same numbers as one :func:`punctuation_dependence` call on all of them.

    A bin rule (``"sqrt"``, ...) takes one count from all windows at once: pass that count as
    ``resolved_bins`` (:func:`rule_bin_counts` of every batch, then :func:`bins_from_counts`, a
    first pass over the batches); without it only one :meth:`update` is accepted.

    Args:
        classes: ``[text_tokens]`` token classes of the whole text.
        occurrences: the sampled centres; the batches must come in this order.
        before: tokens before the centre (the centre's index in a window).
        depth: the residual-stream index of each layer of the hidden states.
        bins, correction: MI options (see :func:`window_dependence`); ``bins`` is recorded as given.
        resolved_bins: the count a bin rule gives over all windows (ignored for integer ``bins``).
        axes: labels of the layer axis, kept in the result.
        chunk_size: windows per MI call (see :func:`window_dependence`; no effect on the numbers).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> text = torch.tensor([0, 0, 1, 0, 2, 0, 1, 0, 2, 0])
        >>> occ = sample_occurrences(text, 2, before=1, after=1, min_count=1)
        >>> windows, hidden = torch.randint(0, 9, (4, 3), generator=g), torch.randn(1, 4, 3, 16, generator=g)
        >>> acc = DependenceAccumulator(text, occ, before=1, depth=[2])
        >>> acc.update(hidden[:, :3], windows[:3]); acc.update(hidden[:, 3:], windows[3:])
        >>> dep = acc.result()
        >>> one = punctuation_dependence(hidden, windows, text, occ, before=1, depth=[2])
        >>> torch.equal(dep.covariance, one.covariance) and torch.equal(dep.mi, one.mi)
        True
    """

    def __init__(
        self,
        classes: Int[torch.Tensor, " text_tokens"],
        occurrences: Occurrences,
        *,
        before: int,
        depth: Sequence[int],
        bins: int | BinRule = 10,
        correction: Correction | None = None,
        resolved_bins: int | None = None,
        axes: Mapping[str, Sequence[str]] | None = None,
        chunk_size: int = WINDOW_CHUNK,
    ) -> None:
        self.classes = torch.as_tensor(classes).cpu()
        self.occurrences = occurrences
        self.before = as_int(before, "before", minimum=0)
        self.depth = [int(d) for d in depth]
        self.bins: int | BinRule = bins
        self.correction: Correction | None = correction
        self.axes = axes or {}
        self.chunk_size = chunk_size
        if isinstance(bins, str):
            self._bins: int | BinRule = (
                bins if resolved_bins is None else resolve_bins(torch.zeros(2, 1), resolved_bins)
            )
        else:
            self._bins = resolve_bins(torch.zeros(2, 1), bins)  # checks an integer count now
        self._cov: list[torch.Tensor] = []
        self._mi: list[torch.Tensor] = []
        self._same: list[torch.Tensor] = []
        self._tokens: int | None = None
        self.seen = 0

    def update(
        self, hidden: Float[torch.Tensor, "layers batch tokens dims"], windows: Int[torch.Tensor, "batch tokens"]
    ):
        """Add the next batch: its hidden states (e.g. :func:`tlprobe.access.text.run_windows`
        of ``windows``) and token ids, the next windows of ``occurrences`` in order.

        Raises:
            TlprobeError: shapes that disagree with each other, with ``depth`` or with the
                earlier batches, more windows than occurrences, or a second batch with an
                unresolved bin rule.
        """
        hidden = as_tensor(hidden, "hidden")
        check_ndim(hidden, "hidden", 4, "[layers, windows, tokens, dims]")
        windows = torch.as_tensor(windows)
        if windows.ndim != 2 or tuple(windows.shape) != tuple(hidden.shape[1:3]):
            raise TlprobeError(
                f"hidden {tuple(hidden.shape)} and windows {tuple(windows.shape)} do not match; "
                "pass the token ids of the windows run"
            )
        if len(self.depth) != hidden.shape[0]:
            raise TlprobeError(f"{len(self.depth)} depth indices for {hidden.shape[0]} layers of hidden states")
        if self._tokens is not None and hidden.shape[2] != self._tokens:
            raise TlprobeError(f"windows of {hidden.shape[2]} tokens after windows of {self._tokens}")
        if self.seen + hidden.shape[1] > len(self.occurrences):
            raise TlprobeError(
                f"{self.seen + hidden.shape[1]} windows for {len(self.occurrences)} occurrences; "
                "pass the windows cut around these occurrences"
            )
        if isinstance(self._bins, str) and self.seen:
            raise TlprobeError(
                f"the {self._bins!r} bin rule takes one count from all windows: pass resolved_bins "
                "(bins_from_counts of rule_bin_counts over every batch) to update batch by batch"
            )
        cov, mi = window_dependence(
            hidden, self.before, bins=self._bins, correction=self.correction, chunk_size=self.chunk_size
        )
        windows = windows.cpu()
        self._cov.append(cov.cpu())
        self._mi.append(mi.cpu())
        self._same.append(windows == windows[:, self.before : self.before + 1])
        self._tokens = hidden.shape[2]
        self.seen += hidden.shape[1]

    def result(self) -> PunctuationDependence:
        """The :class:`PunctuationDependence` of every window added.

        Raises:
            TlprobeError: fewer windows added than occurrences.
        """
        if self.seen != len(self.occurrences) or self._tokens is None:
            raise TlprobeError(
                f"{self.seen} windows for {len(self.occurrences)} occurrences; "
                "pass the windows cut around these occurrences"
            )
        occ = self.occurrences
        rel = torch.arange(self._tokens) - self.before
        return PunctuationDependence(
            depth=torch.tensor(self.depth, dtype=torch.long),
            covariance=torch.cat(self._cov, dim=1),
            mi=torch.cat(self._mi, dim=1),
            cls=occ.cls,
            pos=occ.pos,
            rel=rel,
            same_token=torch.cat(self._same),
            slot_class=self.classes[occ.pos[:, None] + rel],
            bins=self.bins,
            axes=self.axes,
        )


def rule_bin_counts(hidden: Float[torch.Tensor, "... windows tokens dims"], bins: BinRule | str) -> torch.Tensor:
    """``[vectors]`` the bin count a rule gives each token vector of ``hidden`` that has a width.

    :func:`tlprobe.analyses.mi.resolve_bins` of ``hidden.mT`` (what :func:`window_dependence`
    uses for a rule) is the lower median of these counts (at least 2): collect them batch by
    batch and :func:`bins_from_counts` gives the same count as all windows at once.

    Example:
        >>> h = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(0))
        >>> bins_from_counts([rule_bin_counts(h[:1], "fd"), rule_bin_counts(h[1:], "fd")], "fd") == resolve_bins(h.mT, "fd")
        True
    """
    check_choice(bins, BIN_RULES, "bin rule")
    x = upcast(as_tensor(hidden, "hidden")).double()  # [..., tokens, dims]: one vector per row
    n = x.shape[-1]
    rng = x.amax(-1) - x.amin(-1)
    if bins == "sqrt":
        width = rng / math.sqrt(n)
    elif bins == "scott":
        width = (24.0 * math.pi**0.5 / n) ** (1.0 / 3.0) * x.std(-1, correction=0)
    else:
        q = torch.quantile(x.reshape(-1, n), torch.tensor([0.75, 0.25], dtype=x.dtype, device=x.device), dim=1)
        width = (2.0 * (q[0] - q[1]) * n ** (-1.0 / 3.0)).reshape(rng.shape)
    valid = width > 0
    return torch.ceil(rng[valid] / width[valid]).cpu()


def bins_from_counts(counts: Sequence[torch.Tensor], bins: BinRule | str) -> int:
    """The bin count of a rule over all batches: the lower median of their :func:`rule_bin_counts`, at least 2.

    Raises:
        TlprobeError: no vector has a width (the rule is undefined).
    """
    flat = torch.cat([torch.as_tensor(c, dtype=torch.float64).flatten() for c in counts]) if counts else torch.zeros(0)
    if flat.numel() == 0:
        raise TlprobeError(
            f"the {bins!r} bin rule is undefined here: every variable has zero width "
            "(constant values, or zero inter-quartile range for 'fd'); pass an integer bins"
        )
    return max(2, int(flat.median()))


# --------------------------------------------------------------------------- clusters and Simpson
@dataclass(frozen=True, eq=False)
class PanelResult(Result):
    """Clusters and the Simpson check for one layer and one punctuation class.

    Attributes:
        depth: residual-stream index of the layer.
        class_name: punctuation class (``"internal"`` or ``"terminal"``).
        covariance, mi, rel: ``[points]`` covariance, MI and relative position of every point.
        clustering: :class:`~tlprobe.analyses.stats.Clustering` of the points.
        simpson: :class:`~tlprobe.analyses.stats.SimpsonCheck` (its ``sizes`` and ``within_r``
            are each cluster's size and r).
        mean_covariance, mean_mi: ``[clusters]`` mean covariance and MI of each cluster.
        frac_same_token: ``[clusters]`` fraction of points whose token is the centre's own token.
        frac_punctuation: ``[clusters]`` fraction of points that are any punctuation.
        median_abs_rel: ``[clusters]`` median ``|relative position|``.
        positions: ``[positions]`` the relative positions (columns of ``rel_counts``).
        rel_counts: ``[clusters, positions]`` points of each cluster at each relative position.
    """

    depth: int
    class_name: str
    covariance: Float[torch.Tensor, " points"]
    mi: Float[torch.Tensor, " points"]
    rel: Int[torch.Tensor, " points"]
    clustering: Clustering
    simpson: SimpsonCheck
    mean_covariance: Float[torch.Tensor, " clusters"]
    mean_mi: Float[torch.Tensor, " clusters"]
    frac_same_token: Float[torch.Tensor, " clusters"]
    frac_punctuation: Float[torch.Tensor, " clusters"]
    median_abs_rel: Float[torch.Tensor, " clusters"]
    positions: Int[torch.Tensor, " positions"]
    rel_counts: Int[torch.Tensor, "clusters positions"]

    @property
    def name(self) -> str:
        """``"depth 1, internal"``."""
        return f"depth {self.depth}, {self.class_name}"

    def makeup(self, j: int, *, brief: bool = False) -> str:
        """What cluster ``j`` is made of, in words (:func:`cluster_makeup` of its summaries)."""
        same, punct, dist = (float(v[j]) for v in (self.frac_same_token, self.frac_punctuation, self.median_abs_rel))
        return cluster_makeup(same, punct, dist, brief=brief)

    def describe(self) -> str:
        """One line: the number of clusters and what each is made of (:meth:`makeup`).

        Example:
            ``"depth 1, internal: 2 clusters: cluster 0 (7180 points) mostly other tokens (...);
            cluster 1 (320 points) the window's other marks of the same kind (...)"``
        """
        k = self.clustering.k
        if k == 1:
            return f"{self.name}: one cluster of {int(self.simpson.sizes[0])} points"
        parts = [f"cluster {j} ({int(self.simpson.sizes[j])} points) {self.makeup(j)}" for j in range(k)]
        return f"{self.name}: {k} clusters: " + "; ".join(parts)

    def rows(self) -> list[dict]:
        """One row per cluster: size, mean covariance and MI, r, fractions, median distance."""
        out = []
        for j in range(self.clustering.k):
            r = float(self.simpson.within_r[j])
            out.append(
                {
                    "layer (depth)": self.depth,
                    "class": self.class_name,
                    "cluster": j,
                    "size": int(self.simpson.sizes[j]),
                    "mean_covariance": float(self.mean_covariance[j]),
                    "mean_mi": float(self.mean_mi[j]),
                    "r": None if r != r else r,
                    "p": _p_cell(float(self.simpson.within_p[j])),
                    "frac_same_token": float(self.frac_same_token[j]),
                    "frac_punctuation": float(self.frac_punctuation[j]),
                    "median_abs_rel": float(self.median_abs_rel[j]),
                }
            )
        return out


@dataclass(frozen=True, eq=False)
class PunctuationClusters(Result):
    """The :class:`PanelResult` of every layer and punctuation class, layers outer.

    Attributes:
        panels: one per (layer, class).
    """

    panels: tuple[PanelResult, ...]

    def rows(self) -> list[dict]:
        """One row per panel: points, clusters, pooled and within-cluster r, the Simpson flag."""
        return [
            {
                "layer (depth)": p.depth,
                "class": p.class_name,
                "points": int(p.covariance.numel()),
                "clusters": p.clustering.k,
                "pooled r": p.simpson.pooled_r,
                "pooled p": _p_cell(p.simpson.pooled_p),
                "within r": ", ".join("n/a" if r != r else f"{r:+.3f}" for r in p.simpson.within_r.tolist()),
                "within p": ", ".join(str(_p_cell(v)) for v in p.simpson.within_p.tolist()),
                "Simpson check": p.simpson.outcome,
                "Simpson flag": "yes" if p.simpson.flag else "no",
            }
            for p in self.panels
        ]


def cluster_panels(
    dependence: PunctuationDependence,
    method: ClusterMethod = "kmeans",
    *,
    k_max: int = 5,
    seed: int = 0,
    min_silhouette: float = 0.5,
    alpha: float = 0.05,
    min_size: int = 10,
    min_abs_r: float = 0.02,
) -> PunctuationClusters:
    """Cluster the (covariance, MI) points of every layer and class and run the Simpson check.

    Args:
        dependence: :class:`PunctuationDependence`.
        method, k_max, seed, min_silhouette: see :func:`tlprobe.analyses.stats.cluster_points`.
        alpha, min_size, min_abs_r: see :func:`tlprobe.analyses.stats.simpson_check`.

    Returns:
        :class:`PunctuationClusters`: one :class:`PanelResult` per (layer, class), layers outer.
    """
    panels = []
    positions = dependence.rel[dependence.rel != 0]
    for li, d in enumerate(dependence.depth.tolist()):
        for c in sorted(torch.unique(dependence.cls).tolist()):
            p = dependence.points(li, c)
            cl = cluster_points(p["x"], p["y"], method, k_max=k_max, seed=seed, min_silhouette=min_silhouette)
            sc = simpson_check(p["x"], p["y"], cl.labels, alpha=alpha, min_size=min_size, min_abs_r=min_abs_r)
            panels.append(
                PanelResult(d, _class_name(c), p["x"], p["y"], p["rel"], cl, sc, **_cluster_summary(p, cl, positions))
            )
    return PunctuationClusters(panels=tuple(panels))


def cluster_makeup(
    frac_same_token: float, frac_punctuation: float, median_abs_rel: float, *, brief: bool = False
) -> str:
    """What a cluster is made of, in words, from its summaries (:class:`PanelResult`).

    At least :data:`SAME_TOKEN_MAJORITY` of its points the mark's own token: "the window's other
    marks of the same kind"; else at least :data:`PUNCTUATION_MAJORITY` punctuation: "mostly
    punctuation"; else "mostly other tokens". The fractions and the median distance follow
    (``brief``: only the fraction that decided).

    Example:
        >>> cluster_makeup(0.97, 0.98, 7.0)
        "the window's other marks of the same kind (97% the mark's own token, 98% punctuation, median distance 7)"
        >>> cluster_makeup(0.01, 0.05, 8.0)
        "mostly other tokens (1% the mark's own token, 5% punctuation, median distance 8)"
        >>> cluster_makeup(0.97, 0.98, 7.0, brief=True)
        "the window's other marks of the same kind (97% the mark's own token)"
    """
    same, punct = f"{frac_same_token:.0%} the mark's own token", f"{frac_punctuation:.0%} punctuation"
    if frac_same_token >= SAME_TOKEN_MAJORITY:
        kind, decided = "the window's other marks of the same kind", same
    elif frac_punctuation >= PUNCTUATION_MAJORITY:
        kind, decided = "mostly punctuation", punct
    else:
        kind, decided = "mostly other tokens", punct
    if brief:
        return f"{kind} ({decided})"
    return (
        f"{kind} ({frac_same_token:.0%} the mark's own token, {frac_punctuation:.0%} punctuation, "
        f"median distance {median_abs_rel:g})"
    )


def _p_cell(p: float) -> str | float:
    """A p-value for a table: 4 significant digits, ``< 1e-4`` below that, ``n/a`` when undefined."""
    if p != p:
        return "n/a"
    return "< 1e-4" if p < 1e-4 else float(f"{p:.4g}")


def _cluster_summary(p: dict[str, torch.Tensor], cl: Clustering, positions: torch.Tensor) -> dict[str, Any]:
    """The per-cluster fields of :class:`PanelResult`."""
    lab, k = cl.labels, cl.k
    n = torch.bincount(lab, minlength=k).double()

    def mean(v: torch.Tensor) -> torch.Tensor:
        return torch.zeros(k, dtype=torch.float64).index_add_(0, lab, v.double()) / n

    rel_idx = torch.searchsorted(positions, p["rel"])
    rel_counts = torch.zeros(k, positions.numel(), dtype=torch.long).index_put_(
        (lab, rel_idx), torch.ones_like(lab), accumulate=True
    )
    abs_rel = p["rel"].abs().double()
    return {
        "mean_covariance": mean(p["x"]),
        "mean_mi": mean(p["y"]),
        "frac_same_token": mean(p["same_token"]),
        "frac_punctuation": mean(p["slot_class"] > 0),
        "median_abs_rel": torch.stack([abs_rel[lab == j].median() for j in range(k)]),
        "positions": positions,
        "rel_counts": rel_counts,
    }


# --------------------------------------------------------------------------- clusters across depth
#: The kinds :func:`cluster_makeup` names, in the order of :func:`makeup_kind`'s codes.
MAKEUP_KINDS = ("the window's other marks of the same kind", "mostly punctuation", "mostly other tokens")


def makeup_kind(
    frac_same_token: Float[torch.Tensor, "..."], frac_punctuation: Float[torch.Tensor, "..."]
) -> Int[torch.Tensor, "..."]:
    """The :data:`MAKEUP_KINDS` code of each cluster, by :func:`cluster_makeup`'s rule, vectorised.

    0: at least :data:`SAME_TOKEN_MAJORITY` the mark's own token; 1: else at least
    :data:`PUNCTUATION_MAJORITY` punctuation; 2: else; -1 where a fraction is NaN (no cluster).

    Example:
        >>> makeup_kind(torch.tensor([0.97, 0.2, 0.01, float("nan")]), torch.tensor([0.98, 0.6, 0.05, 0.5])).tolist()
        [0, 1, 2, -1]
    """
    same, punct = torch.as_tensor(frac_same_token), torch.as_tensor(frac_punctuation)
    code = torch.where(same >= SAME_TOKEN_MAJORITY, 0, torch.where(punct >= PUNCTUATION_MAJORITY, 1, 2))
    return torch.where(same.isnan() | punct.isnan(), -1, code)


@dataclass(frozen=True, eq=False)
class ClusterDepth(Result):
    """The clusters of every punctuation class at every depth, summarised (:func:`cluster_depth`).

    The *main* cluster of a panel is its largest (the first of equal sizes); the *minor* clusters
    are the others, pooled: their fractions are over all their points, their median distance the
    median ``|relative position|`` of all their points. Minor fields are NaN (kinds -1) with one cluster.

    Attributes:
        depth: ``[depth]`` residual-stream index of each depth (0 = embeddings).
        k: ``[class, depth]`` number of clusters.
        silhouette: ``[class, depth]`` best silhouette of the k tried (NaN for a Gaussian mixture
            or when no k >= 2 was tried).
        points: ``[class, depth]`` (covariance, MI) points of the panel.
        minor_share: ``[class, depth]`` the largest minor cluster's share of the points (0 with one cluster).
        main_frac_punctuation, minor_frac_punctuation: ``[class, depth]`` fraction of punctuation
            tokens (any kind) in the main / minor clusters.
        main_frac_same_token, minor_frac_same_token: ``[class, depth]`` fraction of the mark's own token.
        main_median_distance, minor_median_distance: ``[class, depth]`` median ``|relative position|``.
        main_kind, minor_kind: ``[class, depth]`` :data:`MAKEUP_KINDS` code (:func:`makeup_kind`).
        pooled_r: ``[class, depth]`` Pearson r over all points of the panel.
        simpson_flag: ``[class, depth]`` the panel's Simpson's-paradox flag.
        simpson_outcome: ``[class, depth]`` the panel's Simpson outcome, an index into
            :data:`SIMPSON_OUTCOME_NAMES`.
        min_silhouette: the silhouette the clustering required for k >= 2.
    """

    depth: Int[torch.Tensor, " depth"]
    k: Int[torch.Tensor, "... depth"]
    silhouette: Float[torch.Tensor, "... depth"]
    points: Int[torch.Tensor, "... depth"]
    minor_share: Float[torch.Tensor, "... depth"]
    main_frac_punctuation: Float[torch.Tensor, "... depth"]
    minor_frac_punctuation: Float[torch.Tensor, "... depth"]
    main_frac_same_token: Float[torch.Tensor, "... depth"]
    minor_frac_same_token: Float[torch.Tensor, "... depth"]
    main_median_distance: Float[torch.Tensor, "... depth"]
    minor_median_distance: Float[torch.Tensor, "... depth"]
    main_kind: Int[torch.Tensor, "... depth"]
    minor_kind: Int[torch.Tensor, "... depth"]
    pooled_r: Float[torch.Tensor, "... depth"]
    simpson_flag: Bool[torch.Tensor, "... depth"]
    simpson_outcome: Int[torch.Tensor, "... depth"]
    min_silhouette: float = 0.5

    @property
    def classes(self) -> tuple[str, ...]:
        """The class labels (``("internal", "terminal")``)."""
        return tuple(self.axes.get("class", ()))

    @property
    def depth_labels(self) -> tuple[str, ...]:
        """The depth labels (``("embed", "L0", ...)``)."""
        return tuple(self.axes.get("depth", ()))

    def rows(self) -> list[dict]:
        """One row per (class, depth): clusters, silhouette, what separates them, the Simpson outcome."""

        def num(t: torch.Tensor, idx: tuple[int, ...]) -> float | None:
            v = float(t[idx])
            return None if v != v else v

        out = []
        for labels, idx in index_rows(self.axes, tuple(self.k.shape)):
            main, minor = int(self.main_kind[idx]), int(self.minor_kind[idx])
            out.append(
                {
                    **labels,
                    "residual index": int(self.depth[idx[-1]]),
                    "clusters": int(self.k[idx]),
                    "best silhouette": num(self.silhouette, idx),
                    "points": int(self.points[idx]),
                    "largest minor share": float(self.minor_share[idx]),
                    "main: punctuation": num(self.main_frac_punctuation, idx),
                    "minor: punctuation": num(self.minor_frac_punctuation, idx),
                    "main: own token": num(self.main_frac_same_token, idx),
                    "minor: own token": num(self.minor_frac_same_token, idx),
                    "main: median distance": num(self.main_median_distance, idx),
                    "minor: median distance": num(self.minor_median_distance, idx),
                    "main kind": MAKEUP_KINDS[main] if main >= 0 else "",
                    "minor kind": MAKEUP_KINDS[minor] if minor >= 0 else "",
                    "pooled r": num(self.pooled_r, idx),
                    "Simpson check": SIMPSON_OUTCOME_NAMES[int(self.simpson_outcome[idx])],
                }
            )
        return out


#: The Simpson check's outcomes, in the order of :attr:`ClusterDepth.simpson_outcome`'s codes.
SIMPSON_OUTCOME_NAMES = ("reversal", "no reversal", "undecided", "no subgroups")


def depth_label(depth: int) -> str:
    """The house's label of residual-stream index ``depth`` (:func:`tlprobe.access.labels.resid_labels`).

    Example:
        >>> depth_label(0), depth_label(3)
        ('embed', 'L2')
    """
    return resid_labels(int(depth))[int(depth)]


def cluster_depth(clusters: PunctuationClusters) -> ClusterDepth:
    """:class:`ClusterDepth`: each (class, depth) panel of ``clusters`` summarised, ``[class, depth]``.

    A loop over the panels (a few per depth); each summary is torch over the panel's tensors.

    Args:
        clusters: :class:`PunctuationClusters` with every class at every depth (:func:`cluster_panels`).

    Returns:
        :class:`ClusterDepth` with axes ``class`` (in the panels' order) and ``depth``
        (:func:`depth_label`).

    Raises:
        TlprobeError: no panels, or a (class, depth) panel missing or repeated.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> text = torch.zeros(400, dtype=torch.long)
        >>> text[20:380:9], text[24:380:9] = 1, 2
        >>> occ = sample_occurrences(text, 12, before=4, after=3, min_count=5)
        >>> hidden, windows = torch.randn(2, len(occ), 8, 32, generator=g), torch.randint(0, 50, (len(occ), 8), generator=g)
        >>> dep = punctuation_dependence(hidden, windows, text, occ, before=4, depth=[0, 2])
        >>> summary = cluster_depth(cluster_panels(dep, k_max=2))
        >>> summary.axes["depth"], tuple(summary.k.shape), summary.points.tolist()
        (('embed', 'L1'), (2, 2), [[84, 84], [84, 84]])
    """
    if not clusters.panels:
        raise TlprobeError("no panels to summarise: run cluster_panels on at least one depth")
    depths = list(dict.fromkeys(p.depth for p in clusters.panels))
    classes = list(dict.fromkeys(p.class_name for p in clusters.panels))
    grid = {(p.class_name, p.depth): p for p in clusters.panels}
    if len(grid) != len(clusters.panels) or len(grid) != len(depths) * len(classes):
        raise TlprobeError(
            f"{len(clusters.panels)} panels for {len(classes)} classes x {len(depths)} depths: "
            "pass the clusters of every class at every depth, once each (cluster_panels)"
        )
    fields = [[_depth_summary(grid[c, d]) for d in depths] for c in classes]
    stacked = {name: torch.stack([torch.stack([f[name] for f in row]) for row in fields]) for name in fields[0][0]}
    return ClusterDepth(
        depth=torch.tensor(depths, dtype=torch.long),
        min_silhouette=float(clusters.panels[0].clustering.min_silhouette),
        axes={"class": tuple(classes), "depth": tuple(depth_label(d) for d in depths)},
        **stacked,
    )


def _depth_summary(p: PanelResult) -> dict[str, torch.Tensor]:
    """The :class:`ClusterDepth` fields of one panel, each a 0-d tensor."""
    sizes = p.simpson.sizes.long()
    n, k = int(sizes.sum()), p.clustering.k
    main = int(torch.argmax(sizes))  # the first of equal sizes, as the recipes' texts name it
    minor = torch.arange(k) != main
    nan = torch.tensor(math.nan, dtype=torch.float64)
    w = sizes[minor].double()

    def pooled(v: torch.Tensor) -> torch.Tensor:
        return (v[minor].double() * w).sum() / w.sum() if k > 1 else nan

    abs_rel = p.rel.abs().double()
    minor_points = p.clustering.labels != main
    scores = p.clustering.scores
    best = max(scores) if p.clustering.method == "kmeans" and scores else math.nan
    main_same, main_punct = p.frac_same_token[main].double(), p.frac_punctuation[main].double()
    minor_same, minor_punct = pooled(p.frac_same_token), pooled(p.frac_punctuation)
    return {
        "k": torch.tensor(k),
        "silhouette": torch.tensor(best, dtype=torch.float64),
        "points": torch.tensor(int(p.covariance.numel())),
        "minor_share": sizes[minor].max().double() / n if k > 1 else torch.tensor(0.0, dtype=torch.float64),
        "main_frac_punctuation": main_punct,
        "minor_frac_punctuation": minor_punct,
        "main_frac_same_token": main_same,
        "minor_frac_same_token": minor_same,
        "main_median_distance": p.median_abs_rel[main].double(),
        "minor_median_distance": abs_rel[minor_points].median() if k > 1 else nan,
        "main_kind": makeup_kind(main_same, main_punct),
        "minor_kind": makeup_kind(minor_same, minor_punct),
        "pooled_r": torch.tensor(p.simpson.pooled_r, dtype=torch.float64),
        "simpson_flag": torch.tensor(bool(p.simpson.flag)),
        "simpson_outcome": torch.tensor(SIMPSON_OUTCOME_NAMES.index(p.simpson.outcome)),
    }
