"""Benchmark: peak memory of qkv_block_similarity against the number of samples.

MiniLM's fused Q|K|V width (3 x 384 coordinates), 2 populations, correlation, 100 bins, random
float32 data with a per-feature mean offset. Each size runs in a fresh child process, so its
``ru_maxrss`` (the high-water mark of the resident set) is that size's own: tracemalloc does not
see torch's allocations. The input grows linearly with the samples, so the table also gives the
peak minus the input's bytes and minus the child's memory just before the call (torch, the
input): the working memory, which stays flat. The last column is what the float64 Gram
identity of tlprobe 0.2 (``[c, 3, s, s]``, 8 * c * 3 * s * s bytes) alone would have held.

    HF_HUB_OFFLINE=1 PYTHONPATH=. python bench/bench_memory.py
    HF_HUB_OFFLINE=1 PYTHONPATH=. python bench/bench_memory.py --samples 1000 4000 16000 --method cosine
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

MIB = 2**20


def child(samples: int, features: int, populations: int, method: str, bins: int) -> None:
    """Run one size and print its measurements as one JSON line."""
    import torch

    from tlprobe.analyses.similarity import qkv_block_similarity

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(populations, samples, features, generator=gen)
    x += torch.randn(populations, 1, features, generator=gen)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    qkv_block_similarity(x, method, bins=bins)  # type: ignore[arg-type]
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"before": before, "peak": peak, "input": x.numel() * x.element_size(), "seconds": seconds}))


def main() -> None:
    p = argparse.ArgumentParser(description="peak memory of qkv_block_similarity against the number of samples")
    p.add_argument("--samples", type=int, nargs="+", default=[1000, 4000, 16000])
    p.add_argument("--features", type=int, default=3 * 384, help="Q|K|V coordinates (3 * d_model)")
    p.add_argument("--populations", type=int, default=2)
    p.add_argument("--method", choices=("cosine", "correlation"), default="correlation")
    p.add_argument("--bins", type=int, default=100)
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        child(args.child, args.features, args.populations, args.method, args.bins)
        return

    c, f = args.populations, args.features
    print(
        f"qkv_block_similarity peak memory: {c} populations x samples x {f} Q|K|V coordinates, "
        f"{args.method}, {args.bins} bins, float32; one fresh process per size"
    )
    head = (
        f"{'samples':>8}{'input MiB':>11}{'peak MiB':>10}{'peak/1st':>10}{'peak-input':>12}"
        f"{'work MiB':>10}{'work/1st':>10}{'seconds':>9}{'old gram MiB':>14}"
    )
    print(head)
    first = None
    for s in args.samples:
        cmd = [sys.executable, __file__, "--child", str(s), "--features", str(f), "--populations", str(c)]
        cmd += ["--method", args.method, "--bins", str(args.bins)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        work = r["peak"] - r["before"]
        first = first or (r["peak"], work)
        old = 8 * c * 3 * s * s
        print(
            f"{s:>8}{r['input'] / MIB:>11.1f}{r['peak'] / MIB:>10.1f}{r['peak'] / first[0]:>10.2f}"
            f"{(r['peak'] - r['input']) / MIB:>12.1f}{work / MIB:>10.1f}{work / max(first[1], 1):>10.2f}"
            f"{r['seconds']:>9.2f}{old / MIB:>14.0f}"
        )
    print(
        "work = peak minus the child's resident set just before the call (torch and the input); "
        "old gram = 8 * c * 3 * s * s bytes, the [c, 3, s, s] float64 Gram tensor of the previous kernel"
    )


if __name__ == "__main__":
    main()
