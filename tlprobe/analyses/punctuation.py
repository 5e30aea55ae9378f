"""L13: internal vs terminal punctuation, covariance vs MI between tokens, clusters, Simpson's paradox.

The pipeline (see ``recipes/punctuation_clusters.py``):

1. :func:`char_classes` / :func:`token_classes`: label every token of a long text
   0 = not punctuation, 1 = internal (``, ; :``), 2 = terminal (``. ? !``), decided from the
   *characters* around each mark (via the tokenizer's character offsets), so that the period of
   ``3.14``, ``1.2.3``, ``os.path``, ``...`` or ``e.g.`` is not a sentence end, whatever the
   tokenizer.
2. :func:`sample_occurrences`: a seeded sample of ``n`` marks per class with room for a window.
3. :func:`window_dependence`: in each window, the covariance and the mutual information *across
   hidden dimensions* between the punctuation token's vector and every position's vector,
   vectorised over layers, windows and positions.
4. :func:`cluster_points` and :func:`simpson_check` (together: :func:`cluster_panels`): clusters
   of the (covariance, MI) points, Pearson r over all points and within each cluster, and a
   Simpson's-paradox flag when pooling reverses the within-cluster sign.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from jaxtyping import Float, Int

from tlprobe.checks import as_tensor, check_choice, check_finite, check_min_samples, check_ndim, upcast
from tlprobe.errors import TlprobeError

#: Class ids and names.
CLASS_NAMES: dict[int, str] = {0: "none", 1: "internal", 2: "terminal"}
INTERNAL = ",;:"
TERMINAL = ".?!"
#: Characters that may sit between a mark and the following space: ``stop."`` / ``(see here).``
CLOSERS = "\"')]}\u00bb\u2019\u201d"
#: Words whose following period is an abbreviation, not a sentence end (lower case, no period).
ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc cf al fig figs eq eqs vol vols ch sec approx ca esp dept "
    "inc ltd co corp jan feb mar apr jun jul aug sep sept oct nov dec resp viz ibid".split()
)


# --------------------------------------------------------------------------- token classes
def char_classes(
    text: str,
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
        abbreviations: lower-case words (without the period) that are abbreviations.

    Returns:
        ``int8`` array of ``len(text)``.

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
    abbrev = frozenset(a.lower().rstrip(".") for a in abbreviations)
    out = np.zeros(len(text), dtype=np.int8)
    n = len(text)
    marks = re.escape(internal + terminal)
    for m in re.finditer(f"[{marks}]", text):
        i = m.start()
        ch = text[i]
        j = i + 1
        while j < n and text[j] in CLOSERS:
            j += 1
        if j < n and not text[j].isspace():
            continue  # inside a token: 3.14, 1,000, os.path, http://, "?!" (the last one counts)
        if ch in internal:
            out[i] = 1
            continue
        if ch == "." and _is_non_terminal_period(text, i, j, abbrev):
            continue
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
        offsets: ``[tokens, 2]`` character spans (e.g. :attr:`TokenizedText.offsets`).
        internal, terminal, abbreviations: see :func:`char_classes`.

    Returns:
        ``[tokens]`` long tensor of 0, 1, 2.

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
    cc = torch.from_numpy(char_classes(text, internal, terminal, abbreviations).astype(np.int64))
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


# --------------------------------------------------------------------------- sampling
@dataclass(frozen=True)
class Occurrences:
    """Sampled punctuation positions, grouped by class.

    Attributes:
        cls: ``[n]`` class of each sampled occurrence (1 or 2), class 1 first.
        pos: ``[n]`` token position of each occurrence in the text.
        available: class -> number of marks of that class with room for a window.
    """

    cls: Int[torch.Tensor, " n"]
    pos: Int[torch.Tensor, " n"]
    available: dict[int, int]

    def __len__(self) -> int:
        return int(self.pos.numel())

    def to_dict(self) -> dict:
        return {
            "cls": self.cls.tolist(),
            "pos": self.pos.tolist(),
            "available": {CLASS_NAMES.get(k, str(k)): v for k, v in self.available.items()},
        }


def sample_occurrences(
    classes: Int[torch.Tensor, " tokens"],
    n: int,
    before: int,
    after: int,
    seed: int = 0,
    which: Sequence[int] = (1, 2),
    min_count: int = 20,
) -> Occurrences:
    """Draw ``n`` occurrences of each punctuation class, with room for a full window.

    Marks closer than ``before`` tokens to the start or ``after`` tokens to the end are skipped.
    The draw is a seeded permutation, so the same seed gives the same sample; the positions of
    each class are returned in text order.

    Args:
        classes: ``[tokens]`` token classes (:func:`token_classes`).
        n: occurrences per class; if fewer are available all are taken, with a warning.
        before, after: window size around each mark.
        seed: seed of the draw.
        which: the classes to sample.
        min_count: fewer eligible marks than this in a class is an error (no statistics).

    Raises:
        TlprobeError: a class has fewer than ``min_count`` eligible marks (the message gives
            the counts and the fix).

    Example:
        >>> cls = torch.tensor([0, 1, 0, 2, 0, 1, 0, 2, 0, 1, 2, 0])
        >>> occ = sample_occurrences(cls, 2, before=1, after=1, min_count=1)
        >>> occ.cls.tolist(), occ.available
        ([1, 1, 2, 2], {1: 3, 2: 3})
    """
    from tlprobe.access.text import window_starts

    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise TlprobeError(f"n must be a positive integer, got {n!r}")
    classes = torch.as_tensor(classes).cpu()
    gen = torch.Generator().manual_seed(int(seed))
    cls_out, pos_out, available = [], [], {}
    for c in which:
        cand, _ = window_starts(classes.numel(), (classes == c).nonzero().flatten(), before, after)
        available[int(c)] = int(cand.numel())
    short = {c: k for c, k in available.items() if k < min_count}
    if short:
        what = ", ".join(f"{CLASS_NAMES.get(c, c)}: {k}" for c, k in short.items())
        raise TlprobeError(
            f"too few punctuation marks with room for a window of {before} before and {after} after "
            f"({what}; need at least {min_count} per class). Give a longer text (--text FILE) or "
            "smaller --before/--after"
        )
    for c in which:
        cand, _ = window_starts(classes.numel(), (classes == c).nonzero().flatten(), before, after)
        if cand.numel() < n:
            warnings.warn(
                f"only {cand.numel()} {CLASS_NAMES.get(int(c), c)} punctuation marks available, fewer than "
                f"n={n}: using all of them",
                stacklevel=2,
            )
        pick = cand[torch.randperm(cand.numel(), generator=gen)[:n]].sort().values
        cls_out.append(torch.full_like(pick, int(c)))
        pos_out.append(pick)
    return Occurrences(torch.cat(cls_out), torch.cat(pos_out), available)


# --------------------------------------------------------------------------- dependence
def window_dependence(
    hidden: Float[torch.Tensor, "... windows tokens dims"],
    centre: int,
    bins: int | str = 10,
    correction: str | None = None,
    chunk: int = 256,
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
        chunk: windows (over all leading dimensions) per MI call: bounds the memory of the
            one-hot bin codes to about ``chunk * tokens * dims * bins`` numbers; the result does
            not depend on it.

    Returns:
        ``(cov, mi)``, each ``[..., windows, tokens]``; MI in nats.

    Example:
        >>> h = torch.randn(4, 5, 64, generator=torch.Generator().manual_seed(0))
        >>> h[:, 1] = 2 * h[:, 2] + 1
        >>> cov, mi = window_dependence(h, centre=2, bins=8)
        >>> bool((cov[:, 1] > cov[:, 0]).all()), bool((mi[:, 1] == mi[:, 2]).all())
        (True, True)
    """
    from tlprobe.analyses.mi import cross_mi

    hidden = upcast(as_tensor(hidden, "hidden"))
    check_ndim(hidden, "hidden", 3, "[..., windows, tokens, dims]")
    if not isinstance(centre, int) or isinstance(centre, bool) or not 0 <= centre < hidden.shape[-2]:
        raise TlprobeError(f"centre must be a token index in 0..{hidden.shape[-2] - 1}, got {centre!r}")
    check_min_samples(hidden.shape[-1], 2, "covariance across hidden dimensions")
    check_finite(hidden, "hidden")
    hc = hidden - hidden.mean(-1, keepdim=True)
    cov = torch.einsum("...d,...td->...t", hc[..., centre, :], hc) / (hidden.shape[-1] - 1)
    if not isinstance(chunk, int) or chunk < 1:
        raise TlprobeError(f"chunk must be a positive integer, got {chunk!r}")
    if isinstance(bins, str):  # a rule: resolve it once so that every chunk uses the same count
        from tlprobe.analyses.mi import resolve_bins

        bins = resolve_bins(hidden.mT, bins)
    flat = hidden.reshape(-1, *hidden.shape[-2:])  # [windows, tokens, dims]
    mi = torch.cat(
        [
            cross_mi(part[:, centre : centre + 1].mT, part.mT, bins=bins, correction=correction)[:, 0]
            for part in flat.split(chunk)
        ]
    )
    return cov, mi.reshape(cov.shape).to(cov.dtype)


@dataclass(frozen=True)
class PunctuationDependence:
    """Covariance and MI between each punctuation token and its neighbours, per layer.

    Attributes:
        depth: residual-stream indices of the layers (0 = embeddings, ``l`` = block ``l - 1``'s output).
        cls: ``[windows]`` class of each window's centre (1 internal, 2 terminal).
        pos: ``[windows]`` token position of each centre in the text.
        rel: ``[tokens]`` relative position of each window slot (``-before .. after``).
        cov: ``[layers, windows, tokens]`` covariance across hidden dimensions.
        mi: ``[layers, windows, tokens]`` MI (nats) across hidden dimensions.
        same_token: ``[windows, tokens]`` the slot holds the same token id as the centre.
        slot_class: ``[windows, tokens]`` punctuation class of the token in each slot.
        bins: MI bins used.
    """

    depth: tuple[int, ...]
    cls: Int[torch.Tensor, " windows"]
    pos: Int[torch.Tensor, " windows"]
    rel: Int[torch.Tensor, " tokens"]
    cov: Float[torch.Tensor, "layers windows tokens"]
    mi: Float[torch.Tensor, "layers windows tokens"]
    same_token: torch.Tensor
    slot_class: Int[torch.Tensor, "windows tokens"]
    bins: int | str = 10

    def points(self, layer: int, cls: int) -> dict[str, torch.Tensor]:
        """Flattened points of one layer (index into ``depth``) and class, centre slot excluded.

        Returns ``x`` (covariance), ``y`` (MI), ``rel``, ``window`` (index into this class's
        windows), ``same_token`` and ``slot_class``, each ``[points]``.
        """
        sel = (self.cls == cls).nonzero().flatten()
        if sel.numel() == 0:
            raise TlprobeError(f"no windows of class {cls} ({CLASS_NAMES.get(cls, cls)})")
        keep = (self.rel != 0).nonzero().flatten()
        grid = torch.arange(sel.numel())[:, None].expand(-1, keep.numel())
        return {
            "x": self.cov[layer][sel][:, keep].flatten(),
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
    before: int,
    depth: Sequence[int],
    bins: int | str = 10,
    correction: str | None = None,
) -> PunctuationDependence:
    """:func:`window_dependence` for sampled punctuation windows, with what each slot holds.

    Args:
        hidden: ``[layers, windows, tokens, dims]`` (e.g. :func:`tlprobe.access.text.run_windows`).
        windows: ``[windows, tokens]`` the token ids of the windows.
        classes: ``[text_tokens]`` token classes of the whole text.
        occurrences: the sampled centres (same order as ``windows``).
        before: tokens before the centre (the centre's index in a window).
        depth: the layers of ``hidden`` (for the record).
        bins, correction: MI options.
    """
    hidden = as_tensor(hidden, "hidden")
    check_ndim(hidden, "hidden", 4, "[layers, windows, tokens, dims]")
    if hidden.shape[1] != len(occurrences) or tuple(windows.shape) != tuple(hidden.shape[1:3]):
        raise TlprobeError(
            f"hidden {tuple(hidden.shape)}, windows {tuple(windows.shape)} and {len(occurrences)} occurrences "
            "do not match; pass the windows cut around these occurrences"
        )
    if len(depth) != hidden.shape[0]:
        raise TlprobeError(f"{len(depth)} depth indices for {hidden.shape[0]} layers of hidden states")
    cov, mi = window_dependence(hidden, before, bins=bins, correction=correction)
    n_tok = windows.shape[1]
    rel = torch.arange(n_tok) - before
    slots = occurrences.pos[:, None] + rel
    windows = windows.cpu()
    return PunctuationDependence(
        depth=tuple(int(d) for d in depth),
        cls=occurrences.cls,
        pos=occurrences.pos,
        rel=rel,
        cov=cov.cpu(),
        mi=mi.cpu(),
        same_token=windows == windows[:, before : before + 1],
        slot_class=torch.as_tensor(classes).cpu()[slots],
        bins=bins,
    )


# --------------------------------------------------------------------------- clusters and Simpson
def pearson_r(
    x: Float[torch.Tensor, " n"], y: Float[torch.Tensor, " n"], labels: Int[torch.Tensor, " n"] | None = None
) -> Float[torch.Tensor, " groups"]:
    """Pearson r of ``x`` and ``y`` within each group of ``labels`` (all points if ``None``).

    One pass with ``index_add`` over groups (no loop). Groups with fewer than 3 points or a
    constant variable get NaN (r is undefined there).

    Example:
        >>> x = torch.tensor([0.0, 1, 2, 10, 11, 12])
        >>> y = torch.tensor([5.0, 6, 7, 0, 1, 2])
        >>> pearson_r(x, y).round(decimals=3), pearson_r(x, y, torch.tensor([0, 0, 0, 1, 1, 1]))
        (tensor([-0.8880], dtype=torch.float64), tensor([1., 1.], dtype=torch.float64))
    """
    x = as_tensor(x, "x").double().flatten()
    y = as_tensor(y, "y").double().flatten()
    if x.numel() != y.numel():
        raise TlprobeError(f"x has {x.numel()} points and y {y.numel()}")
    lab = torch.zeros(x.numel(), dtype=torch.long) if labels is None else torch.as_tensor(labels).long().flatten()
    if lab.numel() != x.numel():
        raise TlprobeError(f"{lab.numel()} labels for {x.numel()} points")
    k = int(lab.max()) + 1 if lab.numel() else 1
    n = torch.bincount(lab, minlength=k).double()
    mx = torch.zeros(k, dtype=x.dtype).index_add_(0, lab, x) / n
    my = torch.zeros(k, dtype=x.dtype).index_add_(0, lab, y) / n
    dx, dy = x - mx[lab], y - my[lab]
    sxy = torch.zeros(k, dtype=x.dtype).index_add_(0, lab, dx * dy)
    sxx = torch.zeros(k, dtype=x.dtype).index_add_(0, lab, dx * dx)
    syy = torch.zeros(k, dtype=x.dtype).index_add_(0, lab, dy * dy)
    den = (sxx * syy).sqrt()
    r = (sxy / den).clamp(-1, 1)
    tiny = den <= 1e-12 * (sxx + syy + 1e-300)
    return torch.where((n < 3) | tiny, torch.nan, r)


@dataclass(frozen=True)
class Clustering:
    """Clusters of 2-D points.

    Attributes:
        labels: ``[n]`` cluster of each point, ``0..k-1``, ordered by the clusters' mean ``x``.
        k: number of clusters.
        method: ``"kmeans"`` (k by silhouette) or ``"gmm"`` (k by BIC).
        scores: k -> silhouette (kmeans, k >= 2) or BIC (gmm); the chosen k is the best one
            (for kmeans k = 1 when no silhouette reaches ``min_silhouette``).
        min_silhouette: the kmeans threshold.
    """

    labels: Int[torch.Tensor, " n"]
    k: int
    method: str
    scores: dict[int, float]
    min_silhouette: float

    def to_dict(self) -> dict:
        return {
            "k": self.k,
            "method": self.method,
            "scores": {str(k): v for k, v in self.scores.items()},
            "min_silhouette": self.min_silhouette,
            "labels": self.labels.tolist(),
        }


def cluster_points(
    x: Float[torch.Tensor, " n"],
    y: Float[torch.Tensor, " n"],
    method: str = "kmeans",
    k_max: int = 5,
    seed: int = 0,
    min_silhouette: float = 0.5,
    sample_size: int = 3000,
) -> Clustering:
    """Cluster 2-D points (each axis standardised), choosing the number of clusters.

    * ``"kmeans"``: scikit-learn ``KMeans`` for k = 2..k_max, k chosen by the silhouette score
      (on a seeded sample of ``sample_size`` points); if the best silhouette is below
      ``min_silhouette`` (0.5: "reasonable structure" in Kaufman and Rousseeuw's scale) the
      points are one cluster. Robust to the skewed, non-Gaussian blobs of covariance/MI data.
    * ``"gmm"``: scikit-learn ``GaussianMixture`` (full covariances) for k = 1..k_max, k by BIC.
      BIC can choose one cluster by itself, but on skewed blobs it tends to add components to
      fit the shape (measured on MiniLM: it picked the largest k offered).

    Args:
        x, y: ``[n]`` coordinates (e.g. covariance and MI).
        method: ``"kmeans"`` or ``"gmm"``.
        k_max: largest number of clusters tried.
        seed: ``random_state`` of every fit and of the silhouette sample.
        min_silhouette: kmeans only, see above.
        sample_size: kmeans only, points used for the silhouette score.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> blobs = torch.cat([torch.randn(100, 2, generator=g), torch.randn(100, 2, generator=g) + 6])
        >>> cluster_points(blobs[:, 0], blobs[:, 1]).k
        2
        >>> cluster_points(*torch.randn(2, 300, generator=g)).k  # one Gaussian blob
        1
    """
    from threadpoolctl import threadpool_limits  # installed with scikit-learn

    check_choice(method, ("kmeans", "gmm"), "clustering method")
    x = as_tensor(x, "x").double().flatten()
    y = as_tensor(y, "y").double().flatten()
    if x.numel() != y.numel():
        raise TlprobeError(f"x has {x.numel()} points and y {y.numel()}")
    if not isinstance(k_max, int) or k_max < 1:
        raise TlprobeError(f"k_max must be a positive integer, got {k_max!r}")
    check_min_samples(x.numel(), max(3 * k_max, 10), "clustering", "give more windows or a smaller k_max")
    pts = torch.stack([x, y], 1)
    check_finite(pts, "points")
    std = pts.std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    z = ((pts - pts.mean(0)) / std).numpy()
    with threadpool_limits(1):
        k, scores, fits = _fit_clusters(z, method, k_max, seed, min_silhouette, sample_size)
    lab = torch.from_numpy(np.asarray(fits[k], dtype=np.int64))
    # Canonical order: clusters sorted by mean x, numbered 0..k-1 (empty ones dropped).
    used = torch.unique(lab)
    means = torch.stack([x[lab == u].mean() for u in used])
    order = used[means.argsort()]
    remap = torch.empty(int(lab.max()) + 1, dtype=torch.long)
    remap[order] = torch.arange(order.numel())
    return Clustering(remap[lab], int(order.numel()), method, scores, float(min_silhouette))


def _fit_clusters(z, method, k_max, seed, min_silhouette, sample_size):
    # One thread: 2-D points are small, and OpenMP threads made KMeans 4-6x slower on a busy
    # 2-core machine (results are identical); it also makes them independent of the core count.
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score
    from sklearn.mixture import GaussianMixture

    scores: dict[int, float] = {}
    fits: dict[int, np.ndarray] = {}
    if method == "kmeans":
        fits[1] = np.zeros(len(z), dtype=np.int64)
        for k in range(2, k_max + 1):
            lab = KMeans(k, n_init=4, random_state=seed).fit_predict(z)
            if len(np.unique(lab)) < 2:
                continue
            fits[k] = lab
            scores[k] = float(silhouette_score(z, lab, sample_size=min(sample_size, len(z)), random_state=seed))
        best = max(scores, key=scores.get) if scores else 1
        k = best if scores and scores[best] >= min_silhouette else 1
    else:
        for k in range(1, k_max + 1):
            gm = GaussianMixture(k, covariance_type="full", n_init=2, random_state=seed).fit(z)
            scores[k] = float(gm.bic(z))
            fits[k] = gm.predict(z)
        k = min(scores, key=scores.get)
    return k, scores, fits


@dataclass(frozen=True)
class SimpsonCheck:
    """Pearson r pooled vs within clusters, and whether pooling reverses the sign.

    Attributes:
        pooled_r: r over all points.
        within_r: r inside each cluster (NaN where undefined).
        sizes: points per cluster.
        considered: clusters large enough (``min_size``) with a defined r.
        flag: Simpson's paradox: at least two considered clusters, their r all of one sign, the
            pooled r of the other sign (each ``|r| >= min_abs_r``).
        explanation: one sentence saying what was found.
    """

    pooled_r: float
    within_r: tuple[float, ...]
    sizes: tuple[int, ...]
    considered: tuple[bool, ...]
    flag: bool
    explanation: str

    def to_dict(self) -> dict:
        return {
            "pooled_r": _num(self.pooled_r),
            "within_r": [_num(r) for r in self.within_r],
            "sizes": list(self.sizes),
            "considered": list(self.considered),
            "flag": self.flag,
            "explanation": self.explanation,
        }


def _num(v: float) -> float | None:
    return None if v != v else float(v)


def _fmt_r(v: float) -> str:
    return "undefined" if v != v else f"{v:+.2f}"


def simpson_check(
    x: Float[torch.Tensor, " n"],
    y: Float[torch.Tensor, " n"],
    labels: Int[torch.Tensor, " n"],
    min_size: int = 10,
    min_abs_r: float = 0.02,
    xname: str = "covariance",
    yname: str = "MI",
) -> SimpsonCheck:
    """Flag Simpson's paradox: the pooled correlation has the opposite sign of every subgroup's.

    Args:
        x, y: ``[n]`` the two measures.
        labels: ``[n]`` subgroup (cluster) of each point.
        min_size: clusters with fewer points are not considered (their r is too noisy).
        min_abs_r: an r closer to 0 than this has no sign (no flag from noise around 0).
        xname, yname: names for the explanation.

    Example:
        >>> x = torch.tensor([0.0, 1, 2, 10, 11, 12])
        >>> y = torch.tensor([5.0, 6, 7, 0, 1, 2])
        >>> simpson_check(x, y, torch.tensor([0, 0, 0, 1, 1, 1]), min_size=3).flag
        True
    """
    labels = torch.as_tensor(labels).long().flatten()
    pooled = float(pearson_r(x, y)[0])
    within = pearson_r(x, y, labels)
    sizes = torch.bincount(labels, minlength=within.numel())
    ok = (sizes >= min_size) & ~within.isnan()
    w = within[ok]
    n, k = int(labels.numel()), int(within.numel())
    sign = lambda r: 0 if abs(r) < min_abs_r else (1 if r > 0 else -1)  # noqa: E731
    word = {1: "positively", -1: "negatively", 0: "not"}
    rs = ", ".join(_fmt_r(float(r)) for r in within)
    signs = {sign(float(r)) for r in w}
    flag = False
    if pooled != pooled:
        text = f"The pooled r of {xname} and {yname} is undefined (a constant measure), so there is nothing to check."
    elif k < 2:
        text = (
            f"One cluster: no subgroups to pool, so no Simpson's paradox ({xname} and {yname} "
            f"r = {_fmt_r(pooled)} over {n} points)."
        )
    elif int(ok.sum()) < 2:
        text = (
            f"Fewer than two clusters have at least {min_size} points and a defined r (within r = {rs}), "
            f"so the pooled r = {_fmt_r(pooled)} cannot be checked against subgroups."
        )
    elif sign(pooled) == 0:
        text = (
            f"The pooled r = {_fmt_r(pooled)} is too close to 0 to have a sign (within r = {rs}), "
            "so there is no reversal to flag; read each cluster separately."
        )
    elif len(signs) == 1 and 0 not in signs and signs != {sign(pooled)}:
        flag = True
        (s,) = signs
        text = (
            f"Simpson's paradox: over all {n} points {xname} and {yname} correlate {word[sign(pooled)]} "
            f"(r = {_fmt_r(pooled)}), but {word[s]} within each of the {int(ok.sum())} clusters (r = {rs}), "
            "because the clusters sit at different levels and pooling them reverses the trend."
        )
    elif signs == {sign(pooled)}:
        text = (
            f"No Simpson's paradox: the pooled r = {_fmt_r(pooled)} has the same sign as the r within "
            f"every cluster ({rs})."
        )
    else:
        text = (
            f"No consistent sign within clusters (r = {rs}; pooled {_fmt_r(pooled)}), so no Simpson's "
            "paradox is flagged, but the clusters behave differently: read them separately."
        )
    return SimpsonCheck(
        pooled, tuple(float(r) for r in within), tuple(int(s) for s in sizes), tuple(bool(b) for b in ok), flag, text
    )


@dataclass(frozen=True)
class PanelResult:
    """Clusters and the Simpson check for one layer and one punctuation class.

    Attributes:
        depth: residual-stream index of the layer.
        cls: punctuation class (1 internal, 2 terminal).
        x, y, rel: ``[points]`` covariance, MI and relative position of every point.
        clustering: :class:`Clustering` of the points.
        simpson: :class:`SimpsonCheck`.
        clusters: one summary dict per cluster (size, mean covariance and MI, r, fraction of
            points that are the centre's own token / any punctuation, median |relative
            position|, count per relative position).
    """

    depth: int
    cls: int
    x: Float[torch.Tensor, " points"]
    y: Float[torch.Tensor, " points"]
    rel: Int[torch.Tensor, " points"]
    clustering: Clustering
    simpson: SimpsonCheck
    clusters: tuple[dict, ...] = field(default_factory=tuple)

    @property
    def name(self) -> str:
        return f"depth {self.depth}, {CLASS_NAMES.get(self.cls, self.cls)}"

    def table(self) -> list[dict]:
        """One row per cluster, for a report table."""
        return [
            {
                "layer (depth)": self.depth,
                "class": CLASS_NAMES.get(self.cls, self.cls),
                **{k: v for k, v in c.items() if k != "rel_counts"},
            }
            for c in self.clusters
        ]

    def to_dict(self) -> dict:
        return {
            "depth": self.depth,
            "class": CLASS_NAMES.get(self.cls, str(self.cls)),
            "n_points": int(self.x.numel()),
            "clustering": self.clustering.to_dict(),
            "simpson": self.simpson.to_dict(),
            "clusters": list(self.clusters),
            "points": {"covariance": self.x.tolist(), "mi": self.y.tolist(), "rel": self.rel.tolist()},
        }


def cluster_panels(
    dep: PunctuationDependence,
    method: str = "kmeans",
    k_max: int = 5,
    seed: int = 0,
    min_silhouette: float = 0.5,
    min_size: int = 10,
    min_abs_r: float = 0.02,
) -> list[PanelResult]:
    """Cluster the (covariance, MI) points of every layer and class and run the Simpson check.

    Args:
        dep: :class:`PunctuationDependence`.
        method, k_max, seed, min_silhouette: see :func:`cluster_points`.
        min_size, min_abs_r: see :func:`simpson_check`.

    Returns:
        One :class:`PanelResult` per (layer, class), layers outer.
    """
    out = []
    rel_all = dep.rel[dep.rel != 0]
    for li, d in enumerate(dep.depth):
        for c in sorted(torch.unique(dep.cls).tolist()):
            p = dep.points(li, c)
            cl = cluster_points(p["x"], p["y"], method=method, k_max=k_max, seed=seed, min_silhouette=min_silhouette)
            sc = simpson_check(p["x"], p["y"], cl.labels, min_size=min_size, min_abs_r=min_abs_r)
            lab, k = cl.labels, cl.k
            n = torch.bincount(lab, minlength=k).double()

            def mean(v, lab=lab, n=n, k=k):
                return (torch.zeros(k, dtype=torch.float64).index_add_(0, lab, v.double()) / n).tolist()

            rel_idx = torch.searchsorted(rel_all, p["rel"])
            rel_counts = torch.zeros(k, rel_all.numel(), dtype=torch.long).index_put_(
                (lab, rel_idx), torch.ones_like(lab), accumulate=True
            )
            abs_rel = p["rel"].abs()
            clusters = []
            for j, (mx, my, fs, fp) in enumerate(
                zip(mean(p["x"]), mean(p["y"]), mean(p["same_token"]), mean(p["slot_class"] > 0))
            ):
                clusters.append(
                    {
                        "cluster": j,
                        "size": int(n[j]),
                        "mean_covariance": mx,
                        "mean_mi": my,
                        "r": _num(sc.within_r[j]),
                        "frac_same_token": fs,
                        "frac_punctuation": fp,
                        "median_abs_rel": float(abs_rel[lab == j].double().median()),
                        "rel_counts": dict(zip(rel_all.tolist(), rel_counts[j].tolist())),
                    }
                )
            out.append(PanelResult(d, int(c), p["x"], p["y"], p["rel"], cl, sc, tuple(clusters)))
    return out
