"""L13: clusters in internal vs terminal punctuation, with a Simpson's-paradox check.

A long text is tokenised with the model's tokenizer; every token is labelled 0 (not
punctuation), 1 (internal: , ; :) or 2 (terminal: . ? !) from the characters around it (a
decimal point, a version string, an ellipsis or an abbreviation is not a sentence end). For
each class ``n`` marks are drawn with a seed (``n = 0``: every mark with room for a window) and
a window of ``before`` tokens, the mark and ``after`` tokens is run through the model, batch by
batch. At each requested layer, the covariance and the mutual information across hidden dimensions between the mark's vector and every other
position's vector give one (covariance, MI) point per position; the points of each class and
layer are clustered, and Pearson r over all points is compared with r inside each cluster.
The hidden states of one batch of windows exist at a time: each window's covariance and MI are
computed from its own hidden states and only those ``[layers, windows, tokens]`` numbers are kept,
so a novel-length text with every mark sampled needs memory for the points, not for the hidden
states of all windows.

Copy this file (``tlprobe cp punctuation-clusters my_recipe.py``) and change what you need.
"""

from __future__ import annotations

import math
import pathlib
import platform
import sys
from dataclasses import dataclass, replace
from typing import Literal

from tlprobe.access.punctuation import INTERNAL, TERMINAL, token_classes
from tlprobe.access.text import cut_windows, run_windows, stdlib_corpus, tokenize_text
from tlprobe.analyses.mi import BIN_RULES
from tlprobe.analyses.punctuation import (
    WINDOW_CHUNK,
    DependenceAccumulator,
    PanelResult,
    PunctuationClusters,
    bins_from_counts,
    cluster_panels,
    rule_bin_counts,
    sample_occurrences,
    window_dependence_bytes,
)
from tlprobe.checks import as_int, check_choice, check_memory
from tlprobe.errors import TlprobeError
from tlprobe.figures.punctuation import cluster_position_figure, punctuation_scatter_figure
from tlprobe.findings import Finding, check
from tlprobe.recipes.common import ModelOptions, RecipeResult, option, prose, resolve, script_main, setup
from tlprobe.report import Report

NAME = "punctuation-clusters"
DESCRIPTION = "L13: covariance vs MI around internal and terminal punctuation, clusters and a Simpson's-paradox check"
LESSON = "L13"

# The criteria of the findings: fixed here, stated in each criterion's text, never tuned to a run.
#: k-means keeps one cluster unless some k reaches this silhouette ("reasonable structure").
MIN_SILHOUETTE = 0.5
#: A best silhouette closer than this to MIN_SILHOUETTE leaves the number of clusters undecided.
SILHOUETTE_MARGIN = 0.05
#: A panel (one depth and class) with fewer (covariance, MI) points cannot decide its clusters.
MIN_POINTS = 200
#: Significance level of every test of the Simpson check, and the fewest points of a cluster it reads.
ALPHA = 0.05
MIN_CLUSTER_SIZE = 10


@dataclass(frozen=True)
class Options(ModelOptions):
    text: str | None = option(None, doc="UTF-8 text file (default: docstrings of the Python standard library)")
    layers: tuple[int, ...] | None = option(
        None, doc="residual-stream depths (0 = embeddings, l = output of block l-1; default: 1 and ~2/3 of depth)"
    )
    n: int = option(250, doc="windows per punctuation class (0: every mark of each class with room for a full window)")
    before: int = option(20, doc="tokens before the mark")
    after: int = option(10, doc="tokens after the mark")
    bins: int = option(10, doc="MI histogram bins per token vector")
    cluster_method: Literal["kmeans", "gmm"] = option(
        "kmeans", doc="kmeans (k by silhouette, 1 if no k reaches 0.5) or gmm (k by BIC)"
    )
    k_max: int = option(5, doc="largest number of clusters tried")
    internal: str = option(INTERNAL, doc="internal punctuation characters")
    terminal: str = option(TERMINAL, doc="terminal punctuation characters")
    batch_size: int = option(50, doc="windows per forward pass; only one batch's hidden states are held at a time")


def default_layers(n_layers: int) -> list[int]:
    """Depth 1 (output of the first block) and about 2/3 of the depth."""
    deep = max(2, round(2 * n_layers / 3))
    return sorted({min(1, n_layers), min(deep, n_layers)})


def read_corpus(path: str | None) -> tuple[str, str]:
    """``(text, source)``: the file at ``path``, or the standard library's docstrings."""
    if path is None:
        return stdlib_corpus(), f"docstrings of the Python {platform.python_version()} standard library"
    return pathlib.Path(path).read_text(encoding="utf-8"), pathlib.Path(path).name


def check_options(o: Options) -> Options:
    """``o`` with its options checked before the model loads, each refusal naming its flag.

    ``--layers`` may be one depth (from Python, ``layers=3``). One joint histogram of ``--bins``
    is ``bins**2`` cells whatever the model: a size that cannot fit is refused here.

    Raises:
        TlprobeError: a count below its minimum (``--n`` >= 0, ``--k-max``, ``--batch-size`` >= 1,
            ``--before``/``--after`` >= 0 with at least one neighbour), ``--bins`` below 2 or an
            unknown rule, a negative depth, or a working set over the available memory.

    Example:
        >>> check_options(Options(layers=3)).layers
        (3,)
    """
    as_int(o.n, "--n", minimum=0, fix="0 takes every mark with room for a window")
    for flag, value in (("--k-max", o.k_max), ("--batch-size", o.batch_size)):
        as_int(value, flag, minimum=1)
    before, after = as_int(o.before, "--before", minimum=0), as_int(o.after, "--after", minimum=0)
    if before + after < 1:
        raise TlprobeError("--before and --after are both 0: a window needs at least one neighbour of the mark")
    layers = o.layers
    if layers is not None:
        layers = (layers,) if not isinstance(layers, (tuple, list)) else layers
        layers = tuple(
            as_int(d, "--layers", minimum=0, fix="0 is the embeddings, l the output of block l-1") for d in layers
        )
    if isinstance(o.bins, str):
        check_choice(o.bins, BIN_RULES, "--bins rule")
    else:
        bins = as_int(o.bins, "--bins", minimum=2, fix="one bin carries no information")
        check_memory(
            window_dependence_bytes(1, 2, 2, bins=bins), f"one joint histogram of --bins {bins}", "lower --bins"
        )
    return replace(o, layers=layers)


def check_sizes(o: Options, n_layers: int, d_model: int) -> None:
    """Refuse, before the text is tokenised, an MI working set over the free memory.

    One batch of windows is in memory at a time: its MI call covers ``n_layers * --batch-size``
    windows (at most :data:`~tlprobe.analyses.punctuation.WINDOW_CHUNK`), whatever ``--n``.
    """
    if isinstance(o.bins, str):
        return  # a rule gives at most about sqrt(d_model) bins
    windows = n_layers * min(o.batch_size, 2 * o.n) if o.n else n_layers * o.batch_size
    need = window_dependence_bytes(windows, o.before + 1 + o.after, d_model, bins=o.bins)
    what = f"the MI of {min(windows, WINDOW_CHUNK)} windows of {o.before + 1 + o.after} tokens with --bins {o.bins}"
    check_memory(need, what, "lower --bins")


def stream_dependence(model, o: Options, tt, classes, occ, depth: list[int]):
    """The covariance and MI between each mark and every position of its window, batch by batch.

    Hidden states of the requested layers only, one batch of windows at a time; only the
    per-window numbers are kept, so memory does not grow with the number of windows. A bin
    rule takes one count from all windows: a first pass finds it.
    """

    def batches():
        """``(windows, hidden)`` of each batch, in the order of ``occ``."""
        starts = range(0, len(occ), o.batch_size)
        if o.progress and len(starts) > 1:
            from tqdm.auto import tqdm  # only for multi-batch runs with a progress bar

            starts = tqdm(starts, desc="windows", unit="batch")
        for s in starts:
            windows = cut_windows(tt.ids, occ.pos[s : s + o.batch_size], before=o.before, after=o.after)
            yield windows, run_windows(model, windows, depth, batch_size=o.batch_size)

    resolved = None
    if isinstance(o.bins, str):
        resolved = bins_from_counts([rule_bin_counts(hidden, o.bins) for _, hidden in batches()], o.bins)
    acc = DependenceAccumulator(classes, occ, before=o.before, depth=depth, bins=o.bins, resolved_bins=resolved)
    for windows, hidden in batches():
        acc.update(hidden, windows)
        del hidden
    return acc.result()


def run(options: Options | None = None, **overrides) -> RecipeResult:
    """Run the recipe (``run(n=60)`` or ``run(Options(...))``); see :class:`Options`."""
    o = resolve(Options, options, overrides)
    if o.text is not None and not pathlib.Path(o.text).is_file():
        raise TlprobeError(f"text file not found: {o.text}")
    o = check_options(o)
    r = setup(NAME, o)
    # Read after loading the model: the default corpus includes a docstring that transformers
    # (imported by then) attaches to logging.Logger, as when the 0.1.0 numbers were recorded.
    corpus, source = read_corpus(o.text)
    depth = default_layers(r.info.n_layers) if not o.layers else sorted(set(o.layers))
    bad = [d for d in depth if not 0 <= d <= r.info.n_layers]
    if bad:
        raise TlprobeError(f"--layers {bad} out of range: 0 (embeddings) to {r.info.n_layers} (last block)")
    check_sizes(o, len(depth), r.info.d_model)
    text = prose(NAME)

    # 1. Tokenise the whole text with offsets; label every token from the characters it spans.
    tt = tokenize_text(r.model.tokenizer, corpus)
    classes = token_classes(tt.text, tt.offsets, internal=o.internal, terminal=o.terminal)
    occ = sample_occurrences(classes, o.n, before=o.before, after=o.after, seed=o.seed)
    r.lap("tokenise and sample")

    # 2. Covariance and MI between the mark and every position, batch by batch of windows.
    dep = stream_dependence(r.model, o, tt, classes, occ, depth)
    r.lap("forward + covariance + MI")

    # 3. Clusters of the (covariance, MI) points and the Simpson check, per layer and class.
    clusters = cluster_panels(
        dep,
        o.cluster_method,
        k_max=o.k_max,
        seed=o.seed,
        min_silhouette=MIN_SILHOUETTE,
        alpha=ALPHA,
        min_size=MIN_CLUSTER_SIZE,
    )
    r.lap("clusters")
    found = findings(clusters)

    # 4. Figures and report.
    values = {
        **vars(o),
        "n": o.n or "all",  # --n 0: every mark with room for a window
        "model": r.info.name.rsplit("/", 1)[-1],
        "depths": ", ".join(map(str, depth)),
        "source": source,
        "characters": len(tt.text),
        "tokens": len(tt),
        "window": o.before + 1 + o.after,
        "points": o.before + o.after,
        "d_model": r.info.d_model,
    }
    values["alpha"], values["min_size"] = ALPHA, MIN_CLUSTER_SIZE
    report = Report(text["title"].format(**values), subtitle=DESCRIPTION)
    report.heading("What this shows")
    for key in ("classes", "measures"):
        report.text(text[key].format(**values))
    report.table(occ.rows(), caption="Token classes in the text")
    report.heading("Covariance vs MI")
    report.figure(punctuation_scatter_figure(clusters), caption=text["scatter_caption"])
    report.heading("What the clusters are")
    report.text(text["clusters"])
    for p in clusters.panels:  # what each cluster is made of, from its summaries
        line = p.describe()
        report.text(f"{line[0].upper()}{line[1:]}.")
    report.table([row for p in clusters.panels for row in p.rows()], caption="Cluster summaries")
    report.figure(cluster_position_figure(clusters))
    report.heading("Simpson's-paradox check")
    for p in clusters.panels:
        report.text(f"Depth {p.depth}, {p.class_name}: {p.simpson.explanation}")
    report.table(clusters.rows(), caption="Pooled vs within-cluster Pearson r")
    report.heading("What the lesson reported")
    report.text(text["lesson_found"].format(**values))
    r.lap("figures")
    facts = {
        "depths": depth,
        "corpus": {"source": source, "characters": len(tt.text), "tokens": len(tt)},
        "python": platform.python_version(),
    }
    return r.finish(report, results={"occurrences": occ, "clusters": clusters}, facts=facts, findings=found)


# -- findings: the lesson's claims, checked on this run's results ----------------------------


def findings(clusters: PunctuationClusters) -> list[Finding]:
    """The claims of lesson L13, each checked on this run's clusters (no model needed).

    The shallowest depth run stands for the lesson's layer 1, the deepest for its layer 20.

    Args:
        clusters: :class:`~tlprobe.analyses.punctuation.PunctuationClusters` (``cluster_panels``).

    Returns:
        One :class:`~tlprobe.findings.Finding` per claim: the layer-1 split, the merge at depth,
        Simpson's paradox.
    """
    depths = sorted({p.depth for p in clusters.panels})
    shallow, deep = depths[0], depths[-1]
    panel = {(p.depth, p.class_name): p for p in clusters.panels}
    rule = (
        f"k-means on the standardised points, k by silhouette, one cluster unless some k reaches "
        f"{MIN_SILHOUETTE:g}; undecided with fewer than {MIN_POINTS} points or a best silhouette within "
        f"{SILHOUETTE_MARGIN:g} of {MIN_SILHOUETTE:g}"
    )
    out = []

    # 1. Layer 1: internal punctuation splits into clusters, terminal punctuation stays one.
    claim = "layer-1 covariance splits internal punctuation into clusters, terminal stays one"
    crit = f"at the shallowest depth run: internal k >= 2 and terminal k = 1 ({rule})"
    internal, terminal = panel.get((shallow, "internal")), panel.get((shallow, "terminal"))
    nums: dict = {"depth": shallow}
    if internal is None or terminal is None:
        missing = "internal" if internal is None else "terminal"
        out.append(check(claim, crit, nums, holds=None, why=f"no {missing} panel at depth {shallow}", lesson=LESSON))
    else:
        nums |= {
            "k internal": internal.clustering.k,
            "k terminal": terminal.clustering.k,
            "silhouette internal": _best_silhouette(internal),
            "silhouette terminal": _best_silhouette(terminal),
        }
        undecided = _undecided(internal) or _undecided(terminal)
        holds = None if undecided else internal.clustering.k >= 2 and terminal.clustering.k == 1
        why = undecided or f"at depth {shallow}, internal: {_split(internal)}; terminal: {_split(terminal)}"
        out.append(check(claim, crit, nums, holds=holds, why=why, lesson=LESSON))

    # 2. Deep: the clusters of internal punctuation merge into one.
    claim = "the clusters merge at the deep layer"
    crit = f"internal punctuation: k >= 2 at the shallowest depth run and k = 1 at the deepest ({rule})"
    first, last = panel.get((shallow, "internal")), panel.get((deep, "internal"))
    nums = {"depths": [shallow, deep]}
    if first is None or last is None or deep == shallow:
        why = (
            f"only depth {shallow} was run: give two depths (--layers 1,N)" if deep == shallow else "no internal panel"
        )
        out.append(check(claim, crit, nums, holds=None, why=why, lesson=LESSON))
    else:
        nums |= {
            "k internal": [first.clustering.k, last.clustering.k],
            "silhouette internal": [_best_silhouette(first), _best_silhouette(last)],
        }
        undecided = _undecided(first) or _undecided(last)
        k0, k1 = first.clustering.k, last.clustering.k
        if undecided:
            holds, why = None, undecided
        elif k1 >= 2:
            holds, why = False, f"at depth {deep} internal punctuation still splits: {_split(last)}"
        elif k0 == 1:
            holds, why = None, f"internal punctuation is one cluster at depth {shallow} already: nothing to merge"
        else:
            holds, why = True, f"{k0} clusters at depth {shallow}, one at depth {deep} ({_split(last)})"
        out.append(check(claim, crit, nums, holds=holds, why=why, lesson=LESSON))

    # 3. Simpson's paradox: the pooled r has the opposite sign of the r within every cluster.
    claim = "pooled r has the opposite sign of within-cluster r (Simpson's paradox)"
    test = clusters.panels[0].simpson.test
    alpha = clusters.panels[0].simpson.alpha
    crit = (
        f"in some panel (depth, class), the pooled r and the r within every cluster of >= {MIN_CLUSTER_SIZE} "
        f"points are each significant at alpha = {alpha:g} ({test}; all must reject, an intersection-union "
        "test), the pooled sign opposite to every cluster's; differs when every panel with two such clusters "
        "is decided without a reversal"
    )
    compared = [p for p in clusters.panels if p.simpson.outcome != "no subgroups"]
    flagged = [p for p in compared if p.simpson.flag]
    largest_p = [max([p.simpson.pooled_p, *p.simpson.within_p[p.simpson.considered].tolist()]) for p in compared]
    nums = {
        "panels compared": len(compared),
        "reversals": len(flagged),
        "panel": [f"d{p.depth} {p.class_name}" for p in compared],
        "pooled r": [p.simpson.pooled_r for p in compared],
        "within r": [p.simpson.within_r[p.simpson.considered].tolist() for p in compared],
        "largest p": largest_p,
    }
    undecided_panels = [p for p in compared if p.simpson.outcome == "undecided"]
    if flagged:
        holds, why = True, "; ".join(f"{p.name}: {_rs(p)}, reversed in every cluster" for p in flagged)
    elif not compared:
        holds = None
        why = f"no panel has two clusters of >= {MIN_CLUSTER_SIZE} points: no subgroups to pool"
    elif undecided_panels:
        holds = None
        why = "; ".join(f"{p.name}: {_rs(p)}, an r not significant at alpha = {alpha:g}" for p in undecided_panels)
    else:
        holds = False
        same = all(
            p.simpson.within_r[p.simpson.considered].sign().eq(math.copysign(1, p.simpson.pooled_r)).all()
            for p in compared
        )
        rs = [r for p in compared for r in p.simpson.within_r[p.simpson.considered].tolist()]
        pooled = [p.simpson.pooled_r for p in compared]
        why = f"no reversal in any of the {len(compared)} panels with clusters" + (
            f": every pooled r ({min(pooled):+.2f} to {max(pooled):+.2f}) and within-cluster r "
            f"({min(rs):+.2f} to {max(rs):+.2f}) has one sign, all significant (largest p {max(largest_p):.2g})"
            if same and len({math.copysign(1, v) for v in pooled}) == 1
            else ": " + "; ".join(f"{p.name}: {_rs(p)}" for p in compared)
        )
    out.append(check(claim, crit, nums, holds=holds, why=why, lesson=LESSON))
    return out


def _best_silhouette(p: PanelResult) -> float:
    """The best silhouette of the k tried (k-means); NaN for a Gaussian mixture (k by BIC)."""
    scores = p.clustering.scores
    return max(scores) if p.clustering.method == "kmeans" and scores else math.nan


def _undecided(p: PanelResult) -> str:
    """Why a panel's number of clusters is undecided ("" when it is decided)."""
    n = int(p.covariance.numel())
    if n < MIN_POINTS:
        return f"{p.name} has {n} points, fewer than {MIN_POINTS}: give more windows (--n)"
    best = _best_silhouette(p)
    if abs(best - MIN_SILHOUETTE) < SILHOUETTE_MARGIN:  # False for NaN (a mixture)
        return (
            f"{p.name}: the best silhouette {best:.2f} is within {SILHOUETTE_MARGIN:g} of {MIN_SILHOUETTE:g}, "
            "so the number of clusters is not clear-cut"
        )
    return ""


def _split(p: PanelResult) -> str:
    """``"2 clusters (silhouette 0.82); besides the main one, cluster 1 (320 points): the window's ..."``."""
    k, best = p.clustering.k, _best_silhouette(p)
    score = "" if math.isnan(best) else f" (silhouette {best:.2f})"
    if k == 1:
        return f"one cluster{score}"
    sizes = p.simpson.sizes.tolist()
    main = max(range(k), key=lambda j: sizes[j])
    rest = [f"cluster {j} ({sizes[j]} points): {p.makeup(j, brief=True)}" for j in range(k) if j != main]
    return f"{k} clusters{score}; besides the main one, " + ", ".join(rest)


def _rs(p: PanelResult) -> str:
    """``"pooled r +0.81, within +0.54, +0.96"`` (the considered clusters)."""
    within = ", ".join(f"{r:+.2f}" for r in p.simpson.within_r[p.simpson.considered].tolist())
    return f"pooled r {p.simpson.pooled_r:+.2f}, within {within}"


if __name__ == "__main__":
    raise SystemExit(script_main(sys.modules[__name__]))
