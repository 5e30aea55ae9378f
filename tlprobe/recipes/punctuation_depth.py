"""L14: punctuation clusters at every depth: counts, separation, Simpson's check, where they merge.

The L13 pipeline of ``punctuation-clusters`` (its corpus, sample, windows, covariance and MI
across hidden dimensions, clusters and Simpson check, imported from that recipe and from
:mod:`tlprobe.analyses.punctuation`) at every residual-stream depth, 0 (embeddings) to the last
block's output, from one forward pass per batch of windows. At the depths punctuation-clusters
runs, the panels are that recipe's panels (tested with ``torch.equal``). Each (class, depth)
panel is summarised in a :class:`~tlprobe.analyses.punctuation.ClusterDepth`: the number of
clusters, the best silhouette, what the minor clusters are made of against the main one, and the
Simpson outcome.

Copy this file (``tlprobe cp punctuation-depth my_recipe.py``) and change what you need.
"""

from __future__ import annotations

import pathlib
import platform
import sys
from dataclasses import dataclass, replace

from tlprobe.access.punctuation import token_classes
from tlprobe.access.text import tokenize_text
from tlprobe.analyses.punctuation import (
    MAKEUP_KINDS,
    ClusterDepth,
    PunctuationClusters,
    cluster_depth,
    cluster_panels,
    sample_occurrences,
)
from tlprobe.errors import TlprobeError
from tlprobe.figures.punctuation import (
    cluster_depth_figure,
    cluster_makeup_depth_figure,
    punctuation_scatter_figure,
)
from tlprobe.findings import Finding, check
from tlprobe.recipes import punctuation_clusters as l13
from tlprobe.recipes.common import RecipeResult, option, prose, resolve, script_main, setup
from tlprobe.report import Report

NAME = "punctuation-depth"
DESCRIPTION = "L14: punctuation clusters (covariance vs MI) at every layer: counts, separation, Simpson check, merge"
LESSON = "L14"

# The criteria are punctuation-clusters' (imported), so that the two recipes agree on every panel.
MIN_SILHOUETTE = l13.MIN_SILHOUETTE
SILHOUETTE_MARGIN = l13.SILHOUETTE_MARGIN
MIN_POINTS = l13.MIN_POINTS
ALPHA = l13.ALPHA
MIN_CLUSTER_SIZE = l13.MIN_CLUSTER_SIZE
#: The scatter figure shows at most this many depths (the first, the last, the first changes of k).
MAX_SCATTER_DEPTHS = 4
#: The criteria, as the report's text names them.
CRITERIA = {
    "alpha": ALPHA,
    "min_size": MIN_CLUSTER_SIZE,
    "min_silhouette": MIN_SILHOUETTE,
    "min_points": MIN_POINTS,
    "margin": SILHOUETTE_MARGIN,
    "max_scatter": MAX_SCATTER_DEPTHS,
}


@dataclass(frozen=True)
class Options(l13.Options):
    layers: tuple[int, ...] | None = option(
        None, doc="residual-stream depths (0 = embeddings, l = output of block l-1; default: every depth)"
    )


def check_options(o: Options) -> Options:
    """``o`` checked before the model loads: punctuation-clusters' checks (:func:`~tlprobe.recipes.punctuation_clusters.check_options`).

    Example:
        >>> check_options(Options(layers=(2, 0))).layers
        (2, 0)
    """
    return replace(o, layers=l13.check_options(o).layers)


def run(options: Options | None = None, **overrides) -> RecipeResult:
    """Run the recipe (``run(n=60)`` or ``run(Options(...))``); see :class:`Options`."""
    o = resolve(Options, options, overrides)
    if o.text is not None and not pathlib.Path(o.text).is_file():
        raise TlprobeError(f"text file not found: {o.text}")
    o = check_options(o)
    r = setup(NAME, o)
    corpus, source = l13.read_corpus(o.text)  # after the model loads, as punctuation-clusters does
    depth = list(range(r.info.n_layers + 1)) if not o.layers else sorted(set(o.layers))
    bad = [d for d in depth if not 0 <= d <= r.info.n_layers]
    if bad:
        raise TlprobeError(f"--layers {bad} out of range: 0 (embeddings) to {r.info.n_layers} (last block)")
    l13.check_sizes(o, len(depth), r.info.d_model)
    text, l13_text = prose(NAME), prose(l13.NAME)

    # 1. The text, its token classes and the sampled marks: punctuation-clusters' own.
    tt = tokenize_text(r.model.tokenizer, corpus)
    classes = token_classes(tt.text, tt.offsets, internal=o.internal, terminal=o.terminal)
    occ = sample_occurrences(classes, o.n, before=o.before, after=o.after, seed=o.seed)
    r.lap("tokenise and sample")

    # 2. Covariance and MI at every depth, batch by batch of windows; 3. clusters per panel.
    dep = l13.stream_dependence(r.model, o, tt, classes, occ, depth)
    r.lap("forward + covariance + MI")
    clusters = cluster_panels(
        dep,
        o.cluster_method,
        k_max=o.k_max,
        seed=o.seed,
        min_silhouette=MIN_SILHOUETTE,
        alpha=ALPHA,
        min_size=MIN_CLUSTER_SIZE,
    )
    summary = cluster_depth(clusters)
    r.lap("clusters")
    found = findings(clusters)

    # 4. Figures and report.
    shown = scatter_depths(summary)
    values = {
        **vars(o),
        "n": o.n or "all",
        "model": r.info.name.rsplit("/", 1)[-1],
        "depths": f"{depth[0]}-{depth[-1]}" if depth == list(range(depth[0], depth[-1] + 1)) else str(depth),
        "depth_labels": ", ".join(summary.depth_labels),
        "n_depths": len(depth),
        "source": source,
        "characters": len(tt.text),
        "tokens": len(tt),
        "window": o.before + 1 + o.after,
        "points": o.before + o.after,
        "d_model": r.info.d_model,
        **CRITERIA,
        "scatter_depths": ", ".join(summary.depth_labels[summary.depth.tolist().index(d)] for d in shown),
    }
    report = Report(text["title"].format(**values), subtitle=DESCRIPTION)
    report.heading("What this shows")
    for key in ("classes", "measures"):
        report.text(l13_text[key].format(**values))
    report.text(text["depth"].format(**values))
    report.table(occ.rows(), caption="Token classes in the text")
    report.heading("Clusters at every depth")
    report.figure(cluster_depth_figure(summary))
    report.table(summary.rows(), caption="Clusters per class and depth")
    report.heading("What separates the clusters")
    report.text(text["separates"])
    report.figure(cluster_makeup_depth_figure(summary))
    for p in clusters.panels:
        if p.clustering.k > 1:
            line = p.describe()
            report.text(f"{line[0].upper()}{line[1:]}.")
    report.heading("Covariance vs MI where the clusters change")
    report.text(text["scatter"].format(**values))
    subset = PunctuationClusters(panels=tuple(p for p in clusters.panels if p.depth in shown))
    report.figure(punctuation_scatter_figure(subset), caption=l13_text["scatter_caption"])
    report.heading("Simpson's-paradox check per depth")
    report.table(clusters.rows(), caption="Pooled vs within-cluster Pearson r, per depth and class")
    report.heading("What the lesson reported")
    report.text(text["lesson_found"].format(**values))
    r.lap("figures")
    facts = {
        "depths": depth,
        "scatter depths": shown,
        "corpus": {"source": source, "characters": len(tt.text), "tokens": len(tt)},
        "python": platform.python_version(),
    }
    results = {"occurrences": occ, "clusters": clusters, "depth": summary}
    return r.finish(report, results=results, facts=facts, findings=found)


def scatter_depths(summary: ClusterDepth, limit: int = MAX_SCATTER_DEPTHS) -> list[int]:
    """The depths the scatter figure shows: the first, the last, and (up to ``limit`` in all) the
    first depths where either class's number of clusters differs from the depth before."""
    d = summary.depth.tolist()
    changed = (summary.k[:, 1:] != summary.k[:, :-1]).any(0).nonzero().flatten() + 1
    chosen = {d[0], d[-1], *(d[i] for i in changed.tolist()[: max(limit - 2, 0)])}
    return sorted(chosen)


# -- findings: the lesson's claims, checked on this run's clusters ---------------------------


def undecided(name: str, points: int, silhouette: float) -> str:
    """Why a panel's number of clusters is undecided ("" when decided): punctuation-clusters' rule.

    Fewer than :data:`MIN_POINTS` points, or a best silhouette within :data:`SILHOUETTE_MARGIN`
    of :data:`MIN_SILHOUETTE` (a NaN silhouette, a Gaussian mixture's, is decided).

    Example:
        >>> undecided("depth 1, internal", 7500, 0.52)
        'depth 1, internal: the best silhouette 0.52 is within 0.05 of 0.5, so the number of clusters is not clear-cut'
        >>> undecided("depth 1, internal", 7500, 0.8)
        ''
    """
    if points < MIN_POINTS:
        return f"{name} has {points} points, fewer than {MIN_POINTS}: give more windows (--n)"
    if abs(silhouette - MIN_SILHOUETTE) < SILHOUETTE_MARGIN:  # False for NaN
        return (
            f"{name}: the best silhouette {silhouette:.2f} is within {SILHOUETTE_MARGIN:g} of {MIN_SILHOUETTE:g}, "
            "so the number of clusters is not clear-cut"
        )
    return ""


def findings(clusters: PunctuationClusters) -> list[Finding]:
    """The claims of lesson L14, each checked on this run's clusters (no model needed).

    Args:
        clusters: :class:`~tlprobe.analyses.punctuation.PunctuationClusters` with every class at
            every depth run (``cluster_panels``).

    Returns:
        One :class:`~tlprobe.findings.Finding` per claim: splits per depth, where the clusters
        merge, what separates them, Simpson's paradox per depth.
    """
    s = cluster_depth(clusters)
    labels = s.depth_labels
    rule = (
        f"k-means on the standardised points, k by silhouette, one cluster unless some k reaches "
        f"{MIN_SILHOUETTE:g}; undecided with fewer than {MIN_POINTS} points or a best silhouette within "
        f"{SILHOUETTE_MARGIN:g} of {MIN_SILHOUETTE:g}"
    )
    why_undecided = {
        (c, i): undecided(f"{c} at {labels[i]}", int(s.points[ci, i]), float(s.silhouette[ci, i]))
        for ci, c in enumerate(s.classes)
        for i in range(len(labels))
    }

    def split_at(c: str) -> list[str]:
        ci = s.classes.index(c)
        return [labels[i] for i in range(len(labels)) if s.k[ci, i] >= 2 and not why_undecided[c, i]]

    def open_at(c: str) -> list[str]:
        return [labels[i] for i in range(len(labels)) if why_undecided[c, i]]

    out = []
    have = {"internal", "terminal"} <= set(s.classes)

    # 1. Cluster count per depth: internal punctuation splits at more depths than terminal.
    claim = "internal punctuation splits into clusters at more depths than terminal punctuation"
    crit = (
        "depths with k >= 2: internal's count exceeds terminal's however the undecided panels fall "
        f"(differs when it cannot exceed it; {rule})"
    )
    if not have:
        out.append(check(claim, crit, {}, holds=None, why="needs an internal and a terminal panel", lesson=LESSON))
    else:
        si, st, ui, ut = split_at("internal"), split_at("terminal"), open_at("internal"), open_at("terminal")
        ki, kt = (s.k[s.classes.index(c)].tolist() for c in ("internal", "terminal"))
        nums = {"depths": list(labels), "k internal": ki, "k terminal": kt}
        nums |= {"silhouette internal": s.silhouette[s.classes.index("internal")].tolist()}
        nums |= {"silhouette terminal": s.silhouette[s.classes.index("terminal")].tolist()}
        said = f"internal splits at {_list(si)}; terminal at {_list(st)}"
        if ui or ut:
            said += f"; undecided: {'; '.join(why_undecided[c, labels.index(d)] for c, u in (('internal', ui), ('terminal', ut)) for d in u)}"
        if len(si) > len(st) + len(ut):
            holds = True
        elif len(si) + len(ui) <= len(st):
            holds = False
        else:
            holds = None
        out.append(check(claim, crit, nums, holds=holds, why=said, lesson=LESSON))

    # 2. Where the clusters of internal punctuation merge.
    claim = "the clusters of internal punctuation merge after depth N"
    crit = (
        "internal punctuation: N = the last depth with k >= 2, k = 1 at every deeper depth; holds when N is "
        f"shallower than the deepest depth, differs when the deepest still splits; undecided when a panel from "
        f"the first split on is undecided ({rule})"
    )
    if "internal" not in s.classes:
        out.append(check(claim, crit, {}, holds=None, why="no internal panel", lesson=LESSON))
    else:
        ci = s.classes.index("internal")
        k = s.k[ci].tolist()
        decided_split = [i for i in range(len(k)) if k[i] >= 2 and not why_undecided["internal", i]]
        start = decided_split[0] if decided_split else 0
        blocking = [why_undecided["internal", i] for i in range(start, len(k)) if why_undecided["internal", i]]
        nums = {"depths": list(labels), "k internal": k}
        if blocking:
            holds, why = None, "; ".join(blocking)
        elif not decided_split:
            holds, why = None, "internal punctuation is one cluster at every depth: nothing to merge"
        elif k[-1] >= 2:
            holds, why = False, f"internal punctuation still splits at the deepest depth, {labels[-1]} (k = {k[-1]})"
        else:
            last = decided_split[-1]
            nums["N"] = labels[last]
            holds = True
            why = f"internal splits at {_list([labels[i] for i in decided_split])}; one cluster at every depth after {labels[last]}"
        out.append(check(claim, crit, nums, holds=holds, why=why, lesson=LESSON))

    # 3. What separates the clusters: the same makeup of the minor clusters at every split.
    claim = "the same kind of token separates the clusters at every depth where they split"
    crit = (
        "at every decided panel with k >= 2 (either class), the pooled minor clusters' kind (at least "
        "half the mark's own token: its other marks; else at least half punctuation; else other tokens) "
        "is the same, and differs from the main cluster's kind"
    )
    split = [
        (ci, i)
        for ci, c in enumerate(s.classes)
        for i in range(len(labels))
        if s.k[ci, i] >= 2 and not why_undecided[c, i]
    ]
    nums = {
        "panel": [f"{s.classes[ci]} {labels[i]}" for ci, i in split],
        "minor kind": [MAKEUP_KINDS[int(s.minor_kind[ci, i])] for ci, i in split],
        "main kind": [MAKEUP_KINDS[int(s.main_kind[ci, i])] for ci, i in split],
        "minor punctuation": [float(s.minor_frac_punctuation[ci, i]) for ci, i in split],
        "main punctuation": [float(s.main_frac_punctuation[ci, i]) for ci, i in split],
        "minor own token": [float(s.minor_frac_same_token[ci, i]) for ci, i in split],
        "main own token": [float(s.main_frac_same_token[ci, i]) for ci, i in split],
        "minor median distance": [float(s.minor_median_distance[ci, i]) for ci, i in split],
        "main median distance": [float(s.main_median_distance[ci, i]) for ci, i in split],
    }
    if not split:
        out.append(
            check(claim, crit, nums, holds=None, why="no decided panel splits: nothing separates", lesson=LESSON)
        )
    else:
        kinds = set(nums["minor kind"])
        same_as_main = [p for p, a, b in zip(nums["panel"], nums["minor kind"], nums["main kind"]) if a == b]
        detail = "; ".join(
            f"{p}: minor {m} ({mp:.0%} punctuation, {ms:.0%} own token, median distance {md:g}) vs main {a}"
            for p, m, mp, ms, md, a in zip(
                nums["panel"],
                nums["minor kind"],
                nums["minor punctuation"],
                nums["minor own token"],
                nums["minor median distance"],
                nums["main kind"],
            )
        )
        holds = len(kinds) == 1 and not same_as_main
        out.append(check(claim, crit, nums, holds=holds, why=detail, lesson=LESSON))

    # 4. Simpson's paradox per depth: the depths with a reversal.
    claim = "pooled r has the opposite sign of within-cluster r at some depth (Simpson's paradox)"
    test = clusters.panels[0].simpson.test
    crit = (
        f"in some panel (depth, class), the pooled r and the r within every cluster of >= {MIN_CLUSTER_SIZE} "
        f"points are each significant at alpha = {ALPHA:g} ({test}; all must reject), the pooled sign opposite "
        "to every cluster's (punctuation-clusters' check); differs when every panel with two such clusters is "
        "decided without a reversal"
    )
    name = {(p.class_name, p.depth): f"{p.class_name} at {depth_name(s, p.depth)}" for p in clusters.panels}
    compared = [p for p in clusters.panels if p.simpson.outcome != "no subgroups"]
    flagged = [p for p in compared if p.simpson.flag]
    open_panels = [p for p in compared if p.simpson.outcome == "undecided"]
    nums = {
        "panels compared": len(compared),
        "reversals": [name[p.class_name, p.depth] for p in flagged],
        "panel": [name[p.class_name, p.depth] for p in compared],
        "outcome": [p.simpson.outcome for p in compared],
        "pooled r": [p.simpson.pooled_r for p in compared],
    }
    if flagged:
        holds, why = True, "reversal at " + "; ".join(f"{name[p.class_name, p.depth]} ({_rs(p)})" for p in flagged)
    elif not compared:
        holds, why = None, f"no panel has two clusters of >= {MIN_CLUSTER_SIZE} points: no subgroups to pool"
    elif open_panels:
        holds = None
        why = "; ".join(f"{name[p.class_name, p.depth]}: {_rs(p)}, an r not significant" for p in open_panels)
    else:
        holds = False
        why = f"no reversal in the {len(compared)} panels with clusters: " + "; ".join(
            f"{name[p.class_name, p.depth]}: {_rs(p)}" for p in compared
        )
    out.append(check(claim, crit, nums, holds=holds, why=why, lesson=LESSON))
    return out


def depth_name(summary: ClusterDepth, depth: int) -> str:
    """The label of residual-stream index ``depth`` in ``summary`` (``"embed"``, ``"L0"``, ...)."""
    return summary.depth_labels[summary.depth.tolist().index(depth)]


def _list(labels: list[str]) -> str:
    return ", ".join(labels) if labels else "no depth"


def _rs(p) -> str:
    """``"pooled r +0.81, within +0.54, +0.96"`` (the considered clusters)."""
    within = ", ".join(f"{r:+.2f}" for r in p.simpson.within_r[p.simpson.considered].tolist())
    return f"pooled r {p.simpson.pooled_r:+.2f}, within {within}"


if __name__ == "__main__":
    raise SystemExit(script_main(sys.modules[__name__]))
