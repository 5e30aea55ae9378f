"""Benchmark: pairwise MI between all hidden dimensions, 13 layers x 94 tokens x 768 dims (L09).

Baselines, timed in the same run:

* a per-pair numpy loop, the same plug-in estimator on the same bins (``np.histogram2d`` per
  pair, as a student writes it): a random sample of pairs is timed and extrapolated to one
  layer's upper triangle (``--full-loop`` runs a whole layer instead);
* scikit-learn ``mutual_info_regression`` per pair (a k-nearest-neighbour estimator, what the
  lesson used first; different numbers, so only its time is compared): sampled, extrapolated;
* tlprobe ``pairwise_mi`` on all 13 layers at once (best of ``--repeats``), float32 (with torch's
  threads, and with 1 thread) and float64.

On a machine shared with other busy processes, OpenMP's default spin-waiting can make the
multi-threaded run many times slower than one thread; ``OMP_WAIT_POLICY=PASSIVE`` avoids that.

The max abs difference between tlprobe (float32) and the loop is taken over the sampled pairs
of every layer the loop ran on. Run: ``python bench/bench_mi.py`` from the repository root.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from tlprobe.analyses.mi import pairwise_mi


def make_data(layers: int, tokens: int, dims: int, seed: int) -> np.ndarray:
    """Structured stand-in for hidden states: a shared low-rank signal, re-mixed per layer, plus noise."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((tokens, 16))
    out = np.empty((layers, tokens, dims), dtype=np.float32)
    h = z @ rng.standard_normal((16, dims))
    for layer in range(layers):
        h = np.tanh(0.5 * h) + 0.6 * rng.standard_normal((tokens, dims))
        out[layer] = h
    return out


def loop_mi(x: np.ndarray, i: int, j: int, bins: int) -> float:
    c, _, _ = np.histogram2d(x[:, i], x[:, j], bins=bins)
    p = c / c.sum()
    px, py = p.sum(axis=1), p.sum(axis=0)
    nz = p > 0
    return float(np.sum(p[nz] * np.log(p[nz] / np.outer(px, py)[nz])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=13)
    ap.add_argument("--tokens", type=int, default=94)
    ap.add_argument("--dims", type=int, default=768)
    ap.add_argument("--bins", type=int, default=10)
    ap.add_argument("--loop-pairs", type=int, default=3000, help="pairs timed per layer for the numpy loop")
    ap.add_argument("--loop-layers", type=int, default=2, help="layers the numpy loop samples")
    ap.add_argument("--sklearn-pairs", type=int, default=40, help="pairs timed for mutual_info_regression")
    ap.add_argument("--full-loop", action="store_true", help="run the numpy loop over a whole layer")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    data = make_data(args.layers, args.tokens, args.dims, args.seed)
    d, bins = args.dims, args.bins
    pairs_per_layer = d * (d + 1) // 2  # upper triangle with the diagonal
    rng = np.random.default_rng(args.seed + 1)
    print(
        f"data: {args.layers} layers x {args.tokens} tokens x {d} dims (float32), {bins} bins; "
        f"{pairs_per_layer:,} pairs per layer (upper triangle)"
    )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
        f"{platform.processor() or platform.machine()}, load average before: "
        f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}"
    )

    # tlprobe: all layers at once (warm-up call first: one-time kernel setup).
    x = torch.from_numpy(data)
    pairwise_mi(x[:1, :, :64], bins=bins)
    times32, times64 = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        m32 = pairwise_mi(x, bins=bins)
        times32.append(time.perf_counter() - t)
    for _ in range(max(1, args.repeats - 1)):
        t = time.perf_counter()
        m64 = pairwise_mi(x.double(), bins=bins)
        times64.append(time.perf_counter() - t)
    threads = torch.get_num_threads()
    times1 = []
    if threads > 1:
        torch.set_num_threads(1)
        for _ in range(args.repeats):
            t = time.perf_counter()
            pairwise_mi(x, bins=bins)
            times1.append(time.perf_counter() - t)
        torch.set_num_threads(threads)
    t_tl = min(times32) / args.layers
    t_tl64 = min(times64) / args.layers

    # numpy loop on sampled pairs (float64 copy of the same data: numpy bins in float64 too).
    iu = np.triu_indices(d)
    diffs, loop_time, loop_count = [], 0.0, 0
    for layer in range(min(args.loop_layers, args.layers)):
        xl = data[layer].astype(np.float64)
        if args.full_loop and layer == 0:
            sel = np.arange(pairs_per_layer)
        else:
            sel = rng.choice(pairs_per_layer, size=min(args.loop_pairs, pairs_per_layer), replace=False)
        ii, jj = iu[0][sel], iu[1][sel]
        t = time.perf_counter()
        vals = np.array([loop_mi(xl, i, j, bins) for i, j in zip(ii, jj)])
        loop_time += time.perf_counter() - t
        loop_count += len(sel)
        diffs.append(np.abs(m32[layer].double().numpy()[ii, jj] - vals).max())
        diffs.append(np.abs(m64[layer].numpy()[ii, jj] - vals).max())
    t_loop = loop_time / loop_count * pairs_per_layer
    max_diff32 = float(max(diffs[0::2]))
    max_diff64 = float(max(diffs[1::2]))

    # scikit-learn kNN estimator per pair (sampled).
    from sklearn.feature_selection import mutual_info_regression  # a baseline only: scikit-learn is optional

    xl = data[0].astype(np.float64)
    sel = rng.choice(pairs_per_layer, size=args.sklearn_pairs, replace=False)
    t = time.perf_counter()
    for i, j in zip(iu[0][sel], iu[1][sel]):
        mutual_info_regression(xl[:, [i]], xl[:, j], random_state=0)
    t_sk = (time.perf_counter() - t) / args.sklearn_pairs * pairs_per_layer

    loop_note = "full layer" if args.full_loop else f"{loop_count:,} sampled pairs, extrapolated"
    rows = [
        ("numpy loop (np.histogram2d per pair)", t_loop, loop_note, f"{max_diff32:.1e}"),
        (
            "scikit-learn mutual_info_regression/pair",
            t_sk,
            f"{args.sklearn_pairs} sampled pairs, extrapolated",
            "kNN, n/a",
        ),
        (
            "tlprobe pairwise_mi float64",
            t_tl64,
            f"all {args.layers} layers, best of {len(times64)}",
            f"{max_diff64:.1e}",
        ),
    ]
    if times1:
        rows.append(
            (
                "tlprobe pairwise_mi float32, 1 thread",
                min(times1) / args.layers,
                f"all {args.layers} layers, best of {len(times1)}",
                f"{max_diff32:.1e}",
            )
        )
    rows.append(
        (
            f"tlprobe pairwise_mi float32, {threads} threads",
            t_tl,
            f"all {args.layers} layers, best of {len(times32)}",
            f"{max_diff32:.1e}",
        )
    )
    print()
    print(f"{'method':<42} {'s/layer':>10} {'all layers':>11} {'x tlprobe':>10} {'max|diff|':>10}  how")
    for name, sec, how, diff in rows:
        print(f"{name:<42} {sec:>10.4f} {sec * args.layers:>11.2f} {sec / t_tl:>10.1f} {diff:>10}  {how}")
    print()
    print(
        f"tlprobe float32, all {args.layers} layers: {min(times32):.3f} s (runs: "
        f"{', '.join(f'{v:.3f}' for v in times32)}); speed-up vs numpy loop: {t_loop / t_tl:.0f}x "
        f"(target >= 250x); vs mutual_info_regression: {t_sk / t_tl:.0f}x"
    )
    ok = max_diff32 <= 1e-6
    print(
        f"max |tlprobe float32 - loop| over sampled pairs = {max_diff32:.2e} "
        f"({'<=' if ok else '>'} 1e-6: {'OK' if ok else 'FAIL'}); float64: {max_diff64:.2e}"
    )
    print(f"load average after: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
