"""Benchmark: pairwise-mi at corpus scale, streamed: flat peak memory, linear time, 1 vs 2 processes.

Texts of 1x, 4x and 16x the characters of the recipe's default paragraph (the paragraph, then
the standard library's docstrings to the length) run through ``tlprobe run pairwise-mi
--stream always`` on MiniLM, each in a fresh process whose peak resident memory comes from
``os.wait4`` (the child's own ``ru_maxrss``). The default run (the paragraph, in memory) is the
reference row. Then the 4x text (or ``--dist-scale``) runs in one process and in two gloo
processes under ``torch.distributed.run``: the streamed counts are summed across processes, so
the MI is the same; the table gives the largest difference and the time ratio.

    HF_HUB_OFFLINE=1 PYTHONPATH=. python bench/bench_stream.py
    HF_HUB_OFFLINE=1 PYTHONPATH=. python bench/bench_stream.py --scales 1 4 16 64 --dist-scale 16
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

MIB = 2**20
ROOT = pathlib.Path(__file__).resolve().parents[1]


def make_text(scale: int, folder: pathlib.Path) -> pathlib.Path:
    """The default paragraph, then standard-library prose, to ``scale`` times its characters."""
    from tlprobe.access.text import stdlib_corpus
    from tlprobe.recipes.common import data_path, read_lines

    paragraph = " ".join(read_lines(data_path("tea_paragraph.txt")))
    extra = " ".join(stdlib_corpus().split())
    text = (paragraph + " " + extra)[: scale * len(paragraph)]
    path = folder / f"text_{scale}x.txt"
    path.write_text(text, encoding="utf-8")
    return path


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """``(seconds, peak resident MiB of the process)`` of one run; its output is kept on failure."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    out = proc.stdout.read().decode() if proc.stdout else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out[-3000:]}")
    return seconds, usage.ru_maxrss * 1024 / MIB


def layer_means(out: pathlib.Path) -> list[float]:
    """The mean raw MI of every layer, from a run's results.json."""
    res = json.loads((out / "results.json").read_text())
    return [float(v) for v in res["results"]["raw"]["mean"]]


def main() -> None:
    p = argparse.ArgumentParser(description="pairwise-mi streamed: memory and time against the text length")
    p.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--dist-scale", type=int, default=4, help="text scale of the 1 vs 2 process comparison")
    p.add_argument("--no-dist", action="store_true", help="skip the 1 vs 2 process comparison")
    args = p.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("WORLD_SIZE", None)
    run = [sys.executable, "-m", "tlprobe", "run", "pairwise-mi", "--no-progress", "--force"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp)
        print("pairwise-mi on MiniLM: peak resident memory and wall time of the whole run, one fresh process each")
        base_s, base_mb = timed([*run, "--out", str(folder / "default")], env)
        print(f"{'run':<28}{'chars':>9}{'peak MiB':>10}{'x default':>10}{'seconds':>9}{'x 1x':>7}")
        print(f"{'default (in memory)':<28}{'':>9}{base_mb:>10.0f}{1.0:>10.2f}{base_s:>9.1f}{'':>7}")
        first = None
        for scale in args.scales:
            text = make_text(scale, folder)
            out = folder / f"s{scale}"
            s, mb = timed([*run, "--text", str(text), "--stream", "always", "--out", str(out)], env)
            first = first or s
            chars = len(text.read_text(encoding="utf-8"))
            name = f"{scale}x streamed"
            print(f"{name:<28}{chars:>9}{mb:>10.0f}{mb / base_mb:>10.2f}{s:>9.1f}{s / first:>7.2f}")
        if args.no_dist:
            return
        text = make_text(args.dist_scale, folder)
        one, two = folder / "one", folder / "two"
        s1, _ = timed([*run, "--text", str(text), "--stream", "always", "--out", str(one)], env)
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
        two_env = {**env, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // 2))}
        cmd = [*torchrun, "-m", "tlprobe", "run", "pairwise-mi", "--no-progress", "--force"]
        s2, _ = timed([*cmd, "--text", str(text), "--stream", "always", "--out", str(two)], two_env)
        a, b = layer_means(one), layer_means(two)
        diff = max(abs(x - y) for x, y in zip(a, b, strict=True))
        print(
            f"\n{args.dist_scale}x text, 1 process vs 2 gloo processes (torch.distributed.run, {os.cpu_count()} cores)"
        )
        print(f"  seconds: 1 process {s1:.1f}, 2 processes {s2:.1f}, ratio {s2 / s1:.2f}")
        print(f"  mean raw MI per layer, largest difference: {diff:.2e} nats")


if __name__ == "__main__":
    main()
