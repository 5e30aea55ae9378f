"""Benchmark: L03 block histograms across depth, naive numpy loop vs tlprobe's batched torch path.

The GPT-2 XL shape of the lesson: 54 samples x 4800 Q|K|V coordinates, 48 layers, 100-bin
histograms of the 6 upper-triangle Q/K/V blocks, cosine similarity. Random data with a
per-feature mean offset (so the histograms are not all alike).

Both paths compute the same numbers (histogram, mean, std, fraction |s| > 0.9 per layer and
block); the script checks they agree, then prints the timings side by side and the ratio.

    HF_HUB_OFFLINE=1 PYTHONPATH=. python bench/bench_depth.py                   # full 48 layers
    HF_HUB_OFFLINE=1 PYTHONPATH=. python bench/bench_depth.py --naive-layers 12 # naive on 12, extrapolated

On a machine shared with other busy processes, torch's multi-threaded run can be several times
slower than its one-thread run (OpenMP threads spin at every op while a core is taken);
``OMP_WAIT_POLICY=PASSIVE`` in the environment removes most of that. Both rows are printed.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from tlprobe.analyses.similarity import BLOCKS, TILE_CELLS, _plan, qkv_block_similarity


def naive_layer(x: np.ndarray, masks: dict[str, np.ndarray], bins: int, extreme: float) -> dict:
    """One layer the straightforward way: normalised dot, boolean masks, np.histogram per block."""
    xn = x / np.linalg.norm(x, axis=0, keepdims=True)
    sim = np.clip(xn.T @ xn, -1.0, 1.0)
    out = {"prob": [], "mean": [], "std": [], "frac_extreme": []}
    for mask in masks.values():
        v = sim[mask]
        hist, _ = np.histogram(v, bins=bins, range=(-1.0, 1.0))
        out["prob"].append(hist / v.size)
        out["mean"].append(v.mean())
        out["std"].append(v.std())
        out["frac_extreme"].append(np.mean(np.abs(v) > extreme))
    return {k: np.array(v) for k, v in out.items()}


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=48)
    p.add_argument("--samples", type=int, default=54)
    p.add_argument("--features", type=int, default=4800, help="Q|K|V coordinates (3 * d_model)")
    p.add_argument("--bins", type=int, default=100)
    p.add_argument(
        "--naive-layers",
        type=int,
        default=None,
        help="time the naive loop on this many layers only and extrapolate to --layers",
    )
    p.add_argument("--chunk-size", type=int, default=None, help="tlprobe layers per chunk (default: automatic)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    gen = torch.Generator().manual_seed(args.seed)
    L, S, F = args.layers, args.samples, args.features
    n = F // 3
    offset = torch.randn(L, 1, F, generator=gen)
    x = (torch.randn(L, S, F, generator=gen) + offset).float()
    print(
        f"shape: {L} layers x {S} samples x {F} Q|K|V coordinates; {args.bins} bins; cosine; "
        f"torch threads {torch.get_num_threads()}"
    )

    # tlprobe first, so that the memory high-water mark below is its own. With torch's default
    # thread count and, if that is more than one, with one thread too: on a busy machine the
    # OpenMP barriers of a multi-threaded run can wait for a descheduled core at every op.
    default_threads = torch.get_num_threads()
    thread_counts = [default_threads] + ([1] if default_threads > 1 and args.threads is None else [])
    rss0 = max_rss_mb()
    t_tl = {}
    for threads in thread_counts:
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        st = qkv_block_similarity(x, "cosine", bins=args.bins, chunk_size=args.chunk_size)
        t_tl[threads] = time.perf_counter() - t0
    torch.set_num_threads(default_threads)
    rss1 = max_rss_mb()
    chunk, rows = _plan(L, n, args.chunk_size)
    work = 3 * chunk * rows * n * 4 + chunk * S * F * (4 + 8)
    print(
        f"tlprobe: chunks of {chunk} layer(s), tiles of {rows} x {n} similarities (TILE_CELLS {TILE_CELLS}); "
        f"working memory about {work / 2**20:.1f} MiB; process max RSS {rss0:.0f} -> {rss1:.0f} MiB "
        f"(a full [{L}, {F}, {F}] float32 similarity tensor would be {L * F * F * 4 / 2**30:.1f} GiB)"
    )

    lab = np.repeat(np.array([1, 2, 3]), n)
    codes = np.triu(np.outer(lab, lab), k=1)
    masks = {name: codes == c for name, c in BLOCKS.items()}
    n_naive = L if args.naive_layers is None else max(1, min(L, args.naive_layers))
    xs = x.numpy()
    t0 = time.perf_counter()
    naive = [naive_layer(xs[layer], masks, args.bins, 0.9) for layer in range(n_naive)]
    t_naive_run = time.perf_counter() - t0
    t_naive = t_naive_run * L / n_naive

    # Same numbers?
    diffs = {
        k: max(float(np.abs(np.asarray(getattr(st, k)[:n_naive]) - np.stack([r[k] for r in naive])).max()), 0.0)
        for k in ("prob", "mean", "std", "frac_extreme")
    }
    print("max |tlprobe - naive| over the compared layers: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))

    note = (
        ""
        if n_naive == L
        else f"  (measured on {n_naive} layers in {t_naive_run:.2f} s, extrapolated x{L / n_naive:.2f})"
    )
    print(f"{'path':<44}{'seconds':>10}{'per layer':>12}{'naive / this':>14}")
    print(f"{'naive numpy per-layer loop':<44}{t_naive:>10.2f}{t_naive / L:>12.3f}{'':>14}{note}")
    for threads, t in t_tl.items():
        name = f"tlprobe qkv_block_similarity ({threads} thr)"
        print(f"{name:<44}{t:>10.2f}{t / L:>12.3f}{t_naive / t:>13.1f}x")
    print(
        f"ratio naive / tlprobe: {t_naive / min(t_tl.values()):.1f}x (best tlprobe run); "
        f"{t_naive / t_tl[default_threads]:.1f}x at torch's default {default_threads} thread(s)"
    )


if __name__ == "__main__":
    main()
