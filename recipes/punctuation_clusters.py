"""L13: clusters in internal vs terminal punctuation, with a Simpson's-paradox check.

A long text is tokenised with the model's tokenizer; every token is labelled 0 (not
punctuation), 1 (internal: , ; :) or 2 (terminal: . ? !) from the characters around it (a
decimal point, a version string, an ellipsis or an abbreviation is not a sentence end). For
each class ``n`` marks are drawn with a seed and a window of ``before`` tokens, the mark and
``after`` tokens is run through the model. At each requested layer, the covariance and the
mutual information across hidden dimensions between the mark's vector and every other
position's vector give one (covariance, MI) point per position; the points of each class and
layer are clustered, and Pearson r over all points is compared with r inside each cluster.

Copy this file (``tlprobe cp punctuation-clusters my_recipe.py``) and change what you need.
"""

from __future__ import annotations

import argparse
import pathlib
import platform
import sys

import torch

import tlprobe
from recipes._common import Timer, add_common_arguments, finish, versions
from tlprobe.access import model_info
from tlprobe.access.text import cut_windows, run_windows, stdlib_corpus, tokenize_text
from tlprobe.analyses.punctuation import (
    CLASS_NAMES,
    INTERNAL,
    TERMINAL,
    cluster_panels,
    punctuation_dependence,
    sample_occurrences,
    token_classes,
)
from tlprobe.errors import TlprobeError
from tlprobe.figures.punctuation import cluster_position_figure, punctuation_scatter_figure
from tlprobe.report import Report

NAME = "punctuation-clusters"
DESCRIPTION = "L13: covariance vs MI around internal and terminal punctuation, clusters and a Simpson's-paradox check"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--text", default=None, help="UTF-8 text file (default: docstrings of the Python standard library)"
    )
    parser.add_argument(
        "--layers",
        type=int,
        nargs="+",
        default=None,
        help="residual-stream depths (0 = embeddings, l = output of block l-1; default: 1 and ~2/3 of depth)",
    )
    parser.add_argument("--n", type=int, default=250, help="windows per punctuation class")
    parser.add_argument("--before", type=int, default=20, help="tokens before the mark")
    parser.add_argument("--after", type=int, default=10, help="tokens after the mark")
    parser.add_argument("--bins", type=int, default=10, help="MI histogram bins per token vector")
    parser.add_argument(
        "--cluster-method",
        dest="cluster_method",
        default="kmeans",
        choices=("kmeans", "gmm"),
        help="kmeans (k by silhouette, 1 if no k reaches 0.5) or gmm (k by BIC)",
    )
    parser.add_argument("--k-max", dest="k_max", type=int, default=5, help="largest number of clusters tried")
    parser.add_argument("--internal", default=INTERNAL, help="internal punctuation characters")
    parser.add_argument("--terminal", default=TERMINAL, help="terminal punctuation characters")
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=50, help="windows per forward pass")
    add_common_arguments(parser, NAME)


def default_layers(n_layers: int) -> list[int]:
    """Depth 1 (output of the first block) and about 2/3 of the depth."""
    deep = max(2, round(2 * n_layers / 3))
    return sorted({min(1, n_layers), min(deep, n_layers)})


def run(
    model: str = "minilm",
    text: str | None = None,
    layers: list[int] | None = None,
    n: int = 250,
    before: int = 20,
    after: int = 10,
    bins: int = 10,
    cluster_method: str = "kmeans",
    k_max: int = 5,
    internal: str = INTERNAL,
    terminal: str = TERMINAL,
    batch_size: int = 50,
    device: str | None = None,
    seed: int = 0,
    out: str = f"tlprobe-out/{NAME}",
    progress: bool = True,
    quiet: bool = False,
) -> dict:
    """Run the recipe; returns the paths written (``report``, ``results``)."""
    timer = Timer()
    if text is None:
        corpus, source = stdlib_corpus(), f"docstrings of the Python {platform.python_version()} standard library"
    else:
        path = pathlib.Path(text)
        if not path.is_file():
            raise TlprobeError(f"text file not found: {path}")
        corpus, source = path.read_text(encoding="utf-8"), path.name
    m = tlprobe.load_model(model, device=device)
    info = model_info(m)
    depth = default_layers(info.n_layers) if not layers else sorted(set(layers))
    bad = [d for d in depth if not 0 <= d <= info.n_layers]
    if bad:
        raise TlprobeError(f"--layers {bad} out of range: 0 (embeddings) to {info.n_layers} (last block)")
    timer.lap("load model and text")

    # 1. Tokenise the whole text with offsets; label every token from the characters it spans.
    tt = tokenize_text(m.tokenizer, corpus)
    classes = token_classes(tt.text, tt.offsets, internal=internal, terminal=terminal)
    counts = torch.bincount(classes, minlength=3).tolist()
    occ = sample_occurrences(classes, n, before, after, seed=seed)
    windows = cut_windows(tt.ids, occ.pos, before, after)
    timer.lap("tokenise and sample")

    # 2. Hidden states of the requested layers only, window by window batch.
    hidden = run_windows(m, windows, depth, batch_size=batch_size, progress=progress)
    timer.lap("forward")

    # 3. Covariance and MI between the mark and every position, all layers and windows at once.
    dep = punctuation_dependence(hidden, windows, classes, occ, before, depth, bins=bins)
    timer.lap("covariance + MI")
    panels = cluster_panels(dep, method=cluster_method, k_max=k_max, seed=seed)
    timer.lap("clusters")

    # 4. Report.
    short = info.name.rsplit("/", 1)[-1]
    report = Report(f"L13 punctuation clusters: {short}, depths {', '.join(map(str, depth))}", subtitle=DESCRIPTION)
    report.heading("What this shows")
    report.text(
        f"Text: {source} ({len(tt.text):,} characters, {len(tt):,} tokens). Tokens are labelled "
        f"internal ({internal!r}) or terminal ({terminal!r}) punctuation from the characters around each mark: "
        "a mark must end a phrase (be followed by a space or the end, possibly after closing quotes or "
        "brackets), and a period in a run (ellipsis), after an abbreviation (e.g., Mr., an initial) or "
        "before a lower-case word on the same line is not terminal. "
        f"For each class {n} marks are drawn (seed {seed}), each with {before} tokens before and {after} after "
        f"({before + 1 + after} tokens per window, marks nearer the edges skipped)."
    )
    report.text(
        "In every window, the mark's hidden vector and each other position's vector are compared across "
        f"the {info.d_model} hidden dimensions: covariance (x) and histogram mutual information with "
        f"{bins} bins per vector (y, nats; the plug-in estimate is biased upward by about the same "
        "amount for every pair, so compare points, not absolute values). Each panel holds "
        f"{before + after} points per window. Clusters: {cluster_method} on the standardised points"
        f" (k <= {k_max}, seed {seed}). Pearson r is computed over all points and inside each cluster; "
        "Simpson's paradox is flagged when the pooled sign is the opposite of every cluster's sign."
    )
    report.text(
        "The lesson (GPT-2 medium, a novel) found at layer 1 three covariance clusters for internal "
        "punctuation and one for terminal punctuation, merging into one at layer 20, and a pooled r of "
        "about -0.13 against positive r within every cluster: pooling subgroups can reverse a trend."
    )
    report.table(
        [
            {
                "class": CLASS_NAMES[c],
                "tokens": counts[c],
                "with room for a window": occ.available.get(c, ""),
                "sampled": int((occ.cls == c).sum()) if c else "",
            }
            for c in range(3)
        ],
        caption="Token classes in the text",
    )
    report.heading("Covariance vs MI")
    report.figure(
        punctuation_scatter_figure(panels),
        caption="Colour: relative position of the other token (negative = before the mark); "
        "shape: cluster; black crosses: cluster means.",
    )
    report.heading("Simpson's-paradox check")
    for p in panels:
        report.text(f"Depth {p.depth}, {CLASS_NAMES[p.cls]}: {p.simpson.explanation}")
    report.table(
        [
            {
                "layer (depth)": p.depth,
                "class": CLASS_NAMES[p.cls],
                "points": int(p.x.numel()),
                "clusters": p.clustering.k,
                "pooled r": p.simpson.pooled_r,
                "within r": ", ".join("n/a" if r != r else f"{r:+.3f}" for r in p.simpson.within_r),
                "Simpson flag": "yes" if p.simpson.flag else "no",
            }
            for p in panels
        ],
        caption="Pooled vs within-cluster Pearson r",
    )
    report.heading("What the clusters are")
    report.text(
        "Per cluster: size, mean covariance and MI, r, the fraction of points whose token is the "
        "mark's own token (e.g. another comma), the fraction that are any punctuation, and the "
        "median distance to the mark."
    )
    report.table([row for p in panels for row in p.table()], caption="Cluster summaries")
    report.figure(cluster_position_figure(panels))
    timer.lap("figures")
    report.params(
        {
            "model": info.name,
            "family": info.family,
            "text": source,
            "tokens": len(tt),
            "depths": ", ".join(map(str, depth)),
            "n per class": n,
            "before": before,
            "after": after,
            "MI bins": bins,
            "cluster method": cluster_method,
            "k max": k_max,
            "seed": seed,
            "python": platform.python_version(),
            **versions(),
            **timer.as_params(),
        }
    )

    results = {
        "recipe": NAME,
        "params": {
            "model": info.name,
            "text": source,
            "depths": depth,
            "n": n,
            "before": before,
            "after": after,
            "bins": bins,
            "cluster_method": cluster_method,
            "k_max": k_max,
            "internal": internal,
            "terminal": terminal,
            "seed": seed,
            "python": platform.python_version(),
        },
        "model": info.to_dict(),
        "corpus": {
            "characters": len(tt.text),
            "tokens": len(tt),
            "class_counts": {CLASS_NAMES[c]: counts[c] for c in range(3)},
        },
        "occurrences": occ.to_dict(),
        "panels": [p.to_dict() for p in panels],
    }
    return finish(report, results, out, quiet=quiet)


def main(args: argparse.Namespace) -> dict:
    return run(**vars(args))


if __name__ == "__main__":
    from tlprobe.cli import script_main

    raise SystemExit(script_main(sys.modules[__name__]))
