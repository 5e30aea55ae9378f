"""L04-L05: representational similarity (RSA) of Q and K, its laminar profile, and category selectivity.

Words of several semantic categories, each in several sentences, run through the model; each
word's vector at every layer (residual stream, and Q, K, V, whole layer and per head) is its mean
over its sentences. A representational dissimilarity matrix (RDM: 1 - Pearson correlation between
word vectors) per layer is compared (Spearman by default) with the other RDMs and with the
category model (0 within a category, 1 across), against a null that permutes the word labels.
Category selectivity: a one-way ANOVA across categories for every feature, the fraction of
features selective after a false-discovery-rate correction, against a label-permutation null.

Copy this file (``tlprobe cp rsa my_recipe.py``) and change what you need.
"""

from __future__ import annotations

import os
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from tlprobe.access.hooks import get_qkv, hook_names, resid_hook_names, resid_stack
from tlprobe.access.labels import head_label, head_labels, layer_labels, resid_labels
from tlprobe.access.run import tokenize_prompts
from tlprobe.access.tokens import Positions, find_token_positions
from tlprobe.analyses.geometry import (
    RDMs,
    RSATest,
    Selectivity,
    category_rdm,
    category_selectivity,
    condition_means,
    noise_ceiling,
    rdm,
    rsa_test,
)
from tlprobe.analyses.stats import bootstrap_interval
from tlprobe.checks import check_index
from tlprobe.errors import TlprobeError
from tlprobe.figures.depth import head_heatmap_figure
from tlprobe.figures.geometry import rdm_figure, rsa_depth_figure, selectivity_figure
from tlprobe.findings import Finding, check, interval_verdict
from tlprobe.recipes.common import (
    ModelOptions,
    RecipeResult,
    data_path,
    gather_rows,
    option,
    prose,
    resolve,
    script_main,
    setup,
)
from tlprobe.report import Report

NAME = "rsa"
DESCRIPTION = "L04-L05: RSA of Q and K vs a category model at every layer and head, and category selectivity"

# The criteria of the findings: fixed here, stated in each criterion's text, never tuned to a run.
#: Significance level of every permutation test.
ALPHA = 0.05
#: A peak is "in the middle" when it is interior and beats both ends by this many null standard deviations.
PEAK_MARGIN_SD = 2.0
#: Fewest heads (the replicates of a layer's statistic) for an interval.
MIN_HEADS = 3
#: Bootstrap resamples and confidence level of every interval.
N_RESAMPLES = 2000
CONFIDENCE = 0.95
#: Fewest categories, words per category and sentences per word a stimulus file may have.
MIN_CATEGORIES, MIN_WORDS, MIN_SENTENCES = 2, 2, 2


@dataclass(frozen=True)
class Options(ModelOptions):
    layer: int | None = option(None, doc="block of the L04 focus (default: the middle layer)")
    head: int | None = option(None, doc="the focus RDMs of this head's Q and K slices (default: the whole layer)")
    categories: str | None = option(
        None, doc="TOML file: [category] word = [sentences, ...] (default: 8 categories x 6 words x 4 sentences)"
    )
    method: Literal["spearman", "kendall", "pearson", "cosine"] = option(
        "spearman",
        doc="how two RDMs are compared (kendall: Kendall's tau-a, quadratic in the word pairs: its Q-vs-K nulls "
        "take minutes, ~2 min for --permutations 100 on 2 CPU cores)",
    )
    permutations: int = option(1000, doc="word-label permutations of every RSA test")
    selectivity_permutations: int = option(200, doc="category-label permutations of the selectivity null")
    batch_size: int = option(32, doc="sentences per forward pass")


@dataclass(frozen=True)
class Stimuli:
    """Words of several categories, each in several sentences (one occurrence per sentence).

    Attributes:
        words: the words, grouped by category in file order.
        categories: each word's category.
        sentences: every sentence, grouped by word.
        word_of: the index (in ``words``) of each sentence's word.
    """

    words: tuple[str, ...]
    categories: tuple[str, ...]
    sentences: tuple[str, ...]
    word_of: tuple[int, ...]

    def sentences_of(self, word: int) -> list[int]:
        """The indices of word ``word``'s sentences, in file order."""
        return [i for i, w in enumerate(self.word_of) if w == word]

    def halves(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Sentence indices of each word's even-numbered and odd-numbered sentences (two disjoint halves).

        Raises:
            TlprobeError: a word with a single sentence (it cannot be in both halves).
        """
        if self.repetitions() < 2:
            raise TlprobeError("every word needs at least 2 sentences (one for each half of the replication)")
        each = [self.sentences_of(w) for w in range(len(self.words))]
        even, odd = (sorted(i for rows in each for i in rows[h::2]) for h in (0, 1))
        return torch.tensor(even), torch.tensor(odd)

    def repetitions(self) -> int:
        """Sentences every word has (the fewest over words): the repetitions of the noise ceiling."""
        return min(len(self.sentences_of(w)) for w in range(len(self.words)))


def read_categories(path: str | os.PathLike | None) -> Stimuli:
    """The stimuli of a TOML file ``[category] word = ["sentence", ...]`` (default: the bundled ones).

    Raises:
        TlprobeError: a missing or malformed file, fewer than 2 categories, a category with
            fewer than 2 words, a word listed twice, or a word without sentences.
    """
    p = data_path("rsa_categories.toml") if path is None else os.fspath(path)
    try:
        with open(p, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise TlprobeError(f"file not found: {p}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TlprobeError(f"{p} is not a TOML file of [category] word = [sentences]: {exc}") from None
    words, cats, sentences, word_of = [], [], [], []
    fix = f"see {data_path('rsa_categories.toml')} for the format"
    for cat, entries in data.items():
        if not isinstance(entries, dict) or len(entries) < MIN_WORDS:
            raise TlprobeError(f"{p}: category {cat!r} needs a table of at least {MIN_WORDS} words; {fix}")
        for word, said in entries.items():
            if word in words:
                raise TlprobeError(f"{p}: the word {word!r} is listed twice; each word belongs to one category")
            if not isinstance(said, list) or len(said) < MIN_SENTENCES or not all(isinstance(s, str) for s in said):
                raise TlprobeError(
                    f"{p}: {cat}.{word} must be a list of at least {MIN_SENTENCES} sentences containing {word!r} "
                    f"(each half of them replicates the profiles); {fix}"
                )
            word_of += [len(words)] * len(said)
            words.append(word)
            cats.append(cat)
            sentences += [s.strip() for s in said]
    if len(set(cats)) < MIN_CATEGORIES:
        n = len(set(cats))
        raise TlprobeError(
            f"{p}: {n} categor{'y' if n == 1 else 'ies'}; RSA against a category model needs {MIN_CATEGORIES}"
        )
    return Stimuli(tuple(words), tuple(cats), tuple(sentences), tuple(word_of))


def run(options: Options | None = None, **overrides) -> RecipeResult:
    """Run the recipe (``run(layer=2)`` or ``run(Options(...))``); see :class:`Options`."""
    o = resolve(Options, options, overrides)
    stim = read_categories(o.categories)
    r = setup(NAME, o)
    info, text = r.info, prose(NAME)
    layer = check_index(info.n_layers // 2 if o.layer is None else o.layer, info.n_layers, "--layer")
    head = None if o.head is None else check_index(o.head, info.n_heads, "--head")

    # 1. Each sentence's word, at every layer: the residual stream and the per-head Q, K, V.
    tokens, mask = tokenize_prompts(r.model, list(stim.sentences))
    names = resid_hook_names(r.model) + hook_names(["q", "k", "v"], range(info.n_layers), model=r.model)
    where = word_positions(r.model, tokens, mask, stim)
    cache = gather_rows(r.model, tokens, mask, {"words": where}, names, progress=o.progress, batch_size=o.batch_size)
    # resid [depth, sentences, d]; Q/K/V [layer, sentences, head, d_head]
    occ = occurrence_vectors(cache["words"], info.n_layers)
    r.lap("forward")

    # 2. Word vectors (mean over each word's sentences), RDMs, RSA, noise ceiling, selectivity.
    words = torch.tensor(stim.word_of)
    flat = {k: v.flatten(-2) if k != "resid" else v for k, v in occ.items()}  # [.., sentences, features]
    means = {k: condition_means(v, words, len(stim.words)) for k, v in flat.items()}
    rdms = {k: rdm(v) for k, v in means.items()}
    heads = {k: rdm(condition_means(v.movedim(-2, -3), words, len(stim.words))) for k, v in occ.items() if k != "resid"}
    model_rdm = category_rdm(stim.categories)
    by = {"resid": {"depth": resid_labels(info.n_layers)}, **{k: {"layer": layer_labels(info.n_layers)} for k in "QKV"}}
    by_head = {"layer": layer_labels(info.n_layers), "head": head_labels(info.n_heads)}
    test: dict[str, Any] = dict(method=o.method, n_permutations=o.permutations, seed=o.seed)
    rsa = {f"category {k}": rsa_test(m, model_rdm, axes=by[k], **test) for k, m in rdms.items()}
    rsa["Q vs K"] = rsa_test(rdms["Q"], rdms["K"], axes=by["Q"], **test)
    per_head = {f"heads category {k}": rsa_test(m, model_rdm, axes=by_head, **test) for k, m in heads.items()}
    per_head["heads Q vs K"] = rsa_test(heads["Q"], heads["K"], axes=by_head, **test)
    # The laminar profiles once more from each half of every word's sentences (a replication).
    halves = {"half": ("even sentences", "odd sentences"), **by["resid"]}
    half_means = torch.stack([condition_means(flat["resid"][:, h], words[h], len(stim.words)) for h in stim.halves()])
    rsa["category resid halves"] = rsa_test(rdm(half_means), model_rdm, axes=halves, **test)
    ceiling = noise_ceiling(repetition_rdms(flat["resid"], stim), method=o.method, axes=by["resid"])
    sel_opts: dict[str, Any] = dict(n_permutations=o.selectivity_permutations, seed=o.seed, alpha=ALPHA)
    selectivity = {
        f"selectivity {k}": category_selectivity(m, stim.categories, axes=by[k], **sel_opts) for k, m in means.items()
    }
    selectivity["selectivity resid halves"] = category_selectivity(half_means, stim.categories, axes=halves, **sel_opts)
    src = heads if head is not None else rdms
    focus_name = head_label(head, layer) if head is not None else f"L{layer}"
    pick = (lambda t: t[layer, head]) if head is not None else (lambda t: t[layer])
    focus = RDMs(
        torch.stack([pick(src["Q"]), pick(src["K"]), model_rdm]),
        conditions=stim.words,
        categories=stim.categories,
        axes={"rdm": (f"Q {focus_name}", f"K {focus_name}", "category model")},
    )
    r.lap("analysis")

    # 3. Figures and report.
    model = info.name.rsplit("/", 1)[-1]
    report = Report(text["title"].format(model=model, focus=focus_name), subtitle=DESCRIPTION)
    report.heading("What this shows")
    n_cat = len(set(stim.categories))
    shows = dict(n_words=len(stim.words), n_categories=n_cat, n_sentences=len(stim.sentences), method=o.method)
    report.text(text["shows"].format(**shows, permutations=o.permutations))
    report.text(text["lesson"])
    report.heading(f"L04: grouping at {focus_name}")
    report.figure(rdm_figure(focus), caption=text["rdm_caption"])
    report.table([{"test": k, **rsa[k][layer : layer + 1].rows()[0]} for k in ("category Q", "category K", "Q vs K")])
    report.heading("L05: the laminar profile")
    profiles = {k: t for k, t in rsa.items() if k != "category resid halves"}
    report.figure(rsa_depth_figure(profiles, ceiling), caption=text["depth_caption"])
    for key, t in per_head.items():
        report.figure(head_heatmap_figure(t, "observed", cols=1, title=f"{key}: {o.method} per head"))
    report.heading("L05: category selectivity")
    report.text(text["selectivity"].format(alpha=ALPHA, n_words=len(stim.words)))
    shown = {k: v for k, v in selectivity.items() if k != "selectivity resid halves"}
    report.figure(selectivity_figure(shown), caption=text["selectivity_caption"])
    r.lap("figures")

    found = findings(rsa, per_head, selectivity, layer=layer, seed=o.seed)
    results = {**rsa, **per_head, **selectivity, "focus RDMs": focus, "noise ceiling": ceiling}
    facts = {
        "layer": layer,
        "head": head,
        "n_words": len(stim.words),
        "n_categories": n_cat,
        "n_sentences": len(stim.sentences),
        "repetitions": stim.repetitions(),
        "positions": where.pos.tolist(),
    }
    return r.finish(report, results=results, facts=facts, findings=found)


# -- data: where each word is, and its vectors -----------------------------------------------


def word_positions(model, tokens: torch.Tensor, mask: torch.Tensor, stim: Stimuli) -> Positions:
    """Each sentence's own word (its last token when it has several), one position per sentence."""
    batch, pos = [], []
    for w, word in enumerate(stim.words):
        rows = stim.sentences_of(w)
        found = find_token_positions(
            model.tokenizer, tokens[rows], word, mask[rows], prompts=[stim.sentences[i] for i in rows]
        )
        batch += [rows[int(b)] for b in found.batch]
        pos += found.pos.tolist()
    order = np.argsort(batch, kind="stable")
    return Positions(torch.tensor(batch)[order], torch.tensor(pos)[order])


def occurrence_vectors(cache, n_layers: int) -> dict[str, torch.Tensor]:
    """``resid`` ``[depth, sentences, d_model]`` and ``Q``/``K``/``V`` ``[layer, sentences, head, d_head]``."""
    qkv = [get_qkv(cache, layer) for layer in range(n_layers)]
    out = {"resid": resid_stack(cache)[:, :, 0]}
    for i, kind in enumerate("QKV"):
        out[kind] = torch.stack([t[i][:, 0] for t in qkv])
    return out


def repetition_rdms(x: torch.Tensor, stim: Stimuli) -> torch.Tensor:
    """RDMs of the r-th sentence of every word, ``[..., repetitions, words, words]`` (r below every word's count)."""
    m = stim.repetitions()
    idx = torch.tensor([stim.sentences_of(w)[:m] for w in range(len(stim.words))])
    return rdm(x[..., idx.T, :])  # [..., rep, words, features] -> [..., rep, words, words]


# -- findings: the lessons' claims, checked on this run's results ------------------------------


def findings(
    rsa: Mapping[str, RSATest],
    per_head: Mapping[str, RSATest],
    selectivity: Mapping[str, Selectivity],
    *,
    layer: int,
    seed: int = 0,
) -> list[Finding]:
    """The claims of lessons L04-L05, checked on this run's RSA tests (no model needed).

    Args:
        rsa: ``"category resid"`` (``[depth]``), ``"category Q"``, ``"category K"``, ``"category V"``,
            ``"Q vs K"`` (``[layer]``) :class:`RSATest` results.
        per_head: ``"heads category Q"``, ``"heads category K"``, ``"heads Q vs K"`` ``[layer, head]``.
        selectivity: ``"selectivity resid"`` ``[depth]`` (and the Q/K/V ones) :class:`Selectivity`.
        layer: the L04 focus layer.
        seed: seed of the bootstrap over heads.

    Returns:
        One :class:`~tlprobe.findings.Finding` per claim.
    """
    out = []
    qk, q_cat, k_cat = per_head["heads Q vs K"], per_head["heads category Q"], per_head["heads category K"]
    n_heads = int(qk.observed.shape[-1])

    # 1. L04: Q and K agree with each other more than with the category model.
    claim = f"at layer {layer}, Q and K RDMs agree more with each other than with the category model"
    crit = (
        f"per head: RSA(Q, K) - max(RSA(Q, category), RSA(K, category)), mean over the layer's heads, "
        f"{CONFIDENCE:.0%} bootstrap interval above 0"
    )
    nums: dict[str, Any] = {
        "Q_vs_K": float(rsa["Q vs K"].observed[layer]),
        "Q_vs_category": float(rsa["category Q"].observed[layer]),
        "K_vs_category": float(rsa["category K"].observed[layer]),
    }
    diff = (qk.observed[layer] - torch.maximum(q_cat.observed[layer], k_cat.observed[layer])).double().numpy()
    if n_heads < MIN_HEADS or not np.isfinite(diff).all():
        why = f"{n_heads} heads with a defined RSA, need {MIN_HEADS} for an interval"
        out.append(check(claim, crit, nums, holds=None, why=why, lesson="L04"))
    else:
        low, high = bootstrap_interval([diff], np.mean, seed=seed, n_resamples=N_RESAMPLES, confidence=CONFIDENCE)
        holds = interval_verdict(low, high, above=0.0)
        why = {
            True: "queries and keys share a geometry beyond the category grouping",
            False: "queries and keys resemble the category model at least as much as each other",
            None: "the per-head interval straddles 0",
        }[holds]
        nums.update(heads=n_heads, head_mean=float(diff.mean()), interval=[low, high])
        out.append(check(claim, crit, nums, holds=holds, why=why, lesson="L04"))

    # 2. L04: Q and K each group the words by category.
    claim = f"at layer {layer}, Q and K each group the words by category"
    crit = f"RSA with the category model, word-label permutation p < {ALPHA:g} for both Q and K"
    p_q, p_k = float(rsa["category Q"].p_value[layer]), float(rsa["category K"].p_value[layer])
    nums = {"Q": nums["Q_vs_category"], "p_Q": p_q, "K": nums["K_vs_category"], "p_K": p_k}
    holds = p_q < ALPHA and p_k < ALPHA
    why = "both orderings put same-category words closer" if holds else "at least one is not above the label null"
    out.append(check(claim, crit, nums, holds=holds, why=why, lesson="L04"))

    # 3. L05: category information (RSA with the category model) peaks in the middle layers.
    claim = "category information peaks in the middle layers (residual stream RSA)"
    out.append(_peak(claim, rsa["category resid"], rsa["category resid halves"]))
    # 4. L05: every layer has more selective features than chance.
    sel = selectivity["selectivity resid"]
    claim = "every layer has more category-selective features than chance"
    crit = f"fraction of features with FDR-corrected ANOVA p < {sel.alpha:g}, label-permutation p < {ALPHA:g} at every depth"
    nums = {"fraction": sel.fraction.tolist(), "null_mean": sel.null_fraction.mean(-1).tolist(), "largest_p": 0.0}
    nums["largest_p"] = float(sel.p_value.max())
    holds = bool((sel.p_value < ALPHA).all())
    why = "each depth's features separate the categories beyond a shuffle" if holds else "some depth is at chance"
    out.append(check(claim, crit, nums, holds=holds, why=why, lesson="L05"))
    # 5. L05: selectivity peaks in the middle layers.
    claim = "category selectivity peaks in the middle layers (residual stream)"
    out.append(_peak(claim, sel, selectivity["selectivity resid halves"]))
    return out


def _peak(claim: str, result: RSATest | Selectivity, halves: RSATest | Selectivity) -> Finding:
    """A statistic over depth peaks inside: an interior argmax that beats both ends by PEAK_MARGIN_SD
    null standard deviations, and an interior argmax in each half of the sentences too."""
    value, null = _profile(result)
    labels = result.axes.get("depth") or tuple(str(i) for i in range(value.shape[-1]))
    crit = (
        f"largest at a depth other than the first and last, above both ends by more than {PEAK_MARGIN_SD:g} standard "
        "deviations of the label-permutation null at the peak, and largest inside in each half of every word's sentences"
    )
    v, hv = value.double().numpy(), _profile(halves)[0].double().numpy()
    if not (np.isfinite(v).all() and np.isfinite(hv).all()):
        return check(claim, crit, {"by_depth": v.tolist()}, holds=None, why="undefined at some depth", lesson="L05")
    i = int(v.argmax())
    sd = float(null[i].double().std())
    margin = float(v[i] - max(v[0], v[-1]))
    half_peaks = [int(h.argmax()) for h in hv]
    nums: dict[str, Any] = {"peak": labels[i], "peak_value": float(v[i]), "first": float(v[0]), "last": float(v[-1])}
    nums.update(margin=margin, null_sd=sd, half_peaks=[labels[h] for h in half_peaks], by_depth=v.tolist())
    if i in (0, len(v) - 1):
        end = "first" if i == 0 else "last"
        return check(
            claim, crit, nums, holds=False, why=f"it is largest at the {end} depth ({labels[i]})", lesson="L05"
        )
    if margin <= PEAK_MARGIN_SD * sd:
        why = f"largest at {labels[i]}, but within {PEAK_MARGIN_SD:g} null sds of an end: the profile is flat"
        return check(claim, crit, nums, holds=None, why=why, lesson="L05")
    if any(h in (0, len(v) - 1) for h in half_peaks):
        why = f"largest at {labels[i]}, but a half of the sentences peaks at an end: the shape does not replicate"
        return check(claim, crit, nums, holds=None, why=why, lesson="L05")
    return check(
        claim, crit, nums, holds=True, why=f"it rises to {labels[i]} and falls after, in both halves", lesson="L05"
    )


def _profile(result: RSATest | Selectivity) -> tuple[torch.Tensor, torch.Tensor]:
    """The statistic over depth and its null: ``([..., depth], [..., depth, permutations])``."""
    if isinstance(result, RSATest):
        return result.observed, result.null
    return result.fraction, result.null_fraction


if __name__ == "__main__":
    raise SystemExit(script_main(sys.modules[__name__]))
