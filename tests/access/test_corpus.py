"""The corpus runner: windows of a text, batches into accumulators, checkpoints and resume,
and data parallelism on torch.distributed (gloo, 2 processes under torchrun)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from tlprobe.access import resid_hook_names, run_windows
from tlprobe.access.corpus import checkpoint_path, stream, text_windows, window_hidden
from tlprobe.analyses.streaming import Accumulator
from tlprobe.errors import TlprobeError
from tlprobe.testing import tiny_model

ROOT = pathlib.Path(__file__).resolve().parents[2]
TEXT = " ".join(f"Sentence {i} tells of tea, ships and {i % 7} harbours." for i in range(40))


class Sums(Accumulator):
    """Sum, sum of squares and count of every feature: the simplest exact accumulator."""

    KIND = "test-sums"

    def __init__(self):
        self.s1: torch.Tensor | None = None
        self.s2: torch.Tensor | None = None
        self.count = torch.zeros(1, dtype=torch.int64)
        self.order: list[float] = []  # first value of each batch, in the order they came

    @property
    def n_samples(self) -> int:  # type: ignore[override]
        return int(self.count)

    def update(self, x):
        x = x.double()
        s1, s2 = x.sum(-2), (x * x).sum(-2)
        self.s1 = s1 if self.s1 is None else self.s1 + s1
        self.s2 = s2 if self.s2 is None else self.s2 + s2
        self.count += x.shape[-2]
        self.order.append(float(x.flatten()[0]))
        return self

    def state_dict(self):
        return {"kind": self.KIND, "s1": self.s1, "s2": self.s2, "count": self.count, "order": tuple(self.order)}

    def _load(self, state):
        self.s1, self.s2, self.count, self.order = state["s1"], state["s2"], state["count"], list(state["order"])

    def _sums(self):
        assert self.s1 is not None and self.s2 is not None
        return [self.s1, self.s2, self.count]


@pytest.fixture(scope="module")
def model():
    return tiny_model("gpt2", n_layers=2)


def feed(windows):
    def f(cache, batch, acc):
        acc["sums"].update(window_hidden(cache, batch, windows))

    return f


def test_windows_cover_every_token_once_in_order(model):
    w = text_windows(model, TEXT, window=50)
    ids = torch.cat(w.ids)
    assert w.n_tokens == ids.numel() == len(model.tokenizer(TEXT, add_special_tokens=False)["input_ids"])
    assert torch.equal(ids, torch.tensor(model.tokenizer(TEXT, add_special_tokens=False)["input_ids"]))
    lengths = [int(x.numel()) for x in w.ids]
    assert max(lengths) - min(lengths) <= 1 and max(lengths) + len(w.prefix) + len(w.suffix) <= 50
    assert lengths == sorted(lengths, reverse=True)  # longer windows first, so batches never mix lengths
    batches = w.batches(3)
    assert sum(b["tokens"].shape[0] for b in batches) == len(w)
    assert all(b["tokens"][:, : len(w.prefix)].tolist() == [list(w.prefix)] * len(b["tokens"]) for b in batches)


def test_windows_refuse_a_window_longer_than_the_context(model):
    with pytest.raises(TlprobeError, match="longer than the model's context"):
        text_windows(model, TEXT, window=int(model.cfg.n_ctx) + 1)


def test_window_hidden_equals_run_windows(model):
    """The runner's samples are the hidden states run_windows gives for the same windows."""
    w = text_windows(model, TEXT, window=30)
    batches = w.batches(4)
    got = []

    def keep(cache, batch, acc):
        got.append(window_hidden(cache, batch, w))

    stream(model, batches, {}, keep, names=resid_hook_names(model))
    same_length = [x for x in w.ids if x.numel() == w.ids[0].numel()]
    want = run_windows(model, torch.stack(same_length), range(3))  # [depth, n, window, d]
    first = torch.cat(got, 1)[:, : want.shape[1] * want.shape[2]]
    torch.testing.assert_close(first, want.reshape(3, -1, want.shape[-1]), rtol=1e-5, atol=1e-5)


def test_stream_sums_equal_the_sums_of_each_window_run_alone(model):
    w = text_windows(model, TEXT, window=30)
    names = resid_hook_names(model)
    acc = stream(model, w.batches(4), {"sums": Sums()}, feed(w), names=names)["sums"]
    want = torch.zeros(len(names), model.cfg.d_model, dtype=torch.float64)
    a = len(w.prefix)
    for ids in w.ids:  # an independent path: each window alone, hook by hook
        _, cache = model.run_with_cache(torch.tensor([[*w.prefix, *ids.tolist(), *w.suffix]]), names_filter=names)
        want += torch.stack([cache[k][0, a : a + ids.numel()].double().sum(0) for k in names])
    assert acc.n_samples == w.n_tokens
    assert acc.s1 is not None
    torch.testing.assert_close(acc.s1, want, rtol=1e-5, atol=1e-4)


def test_a_resumed_run_equals_an_uninterrupted_one(model, tmp_path):
    w = text_windows(model, TEXT, window=20)
    batches = w.batches(2)
    assert len(batches) >= 6
    names = resid_hook_names(model)
    whole = stream(model, batches, {"sums": Sums()}, feed(w), names=names)["sums"]
    ck = tmp_path / "ck.pt"
    part = stream(model, batches, {"sums": Sums()}, feed(w), names=names, checkpoint=ck, every=2, stop_after=3)
    assert part["sums"].n_samples < whole.n_samples
    saved = torch.load(ck, weights_only=True)
    assert saved["next"] == 3
    # a new process would start from fresh accumulators: the checkpoint fills them
    resumed = stream(model, batches, {"sums": Sums()}, feed(w), names=names, checkpoint=ck, every=2)["sums"]
    assert resumed.order == whole.order  # every batch once, in order
    assert torch.equal(resumed.count, whole.count)
    assert resumed.s1 is not None and whole.s1 is not None
    torch.testing.assert_close(resumed.s1, whole.s1, rtol=0, atol=0)
    # a finished checkpoint gives the result again without running a batch
    again = stream(model, batches, {"sums": Sums()}, lambda *a: pytest.fail("ran a batch"), names=names, checkpoint=ck)
    assert again["sums"].order == whole.order


def test_a_checkpoint_of_another_run_is_refused_and_kept(model, tmp_path):
    w = text_windows(model, TEXT, window=20)
    names = resid_hook_names(model)
    ck = tmp_path / "ck.pt"
    stream(model, w.batches(2), {"sums": Sums()}, feed(w), names=names, checkpoint=ck, stop_after=1)
    before = ck.read_bytes()
    with pytest.raises(TlprobeError, match="checkpoint of another run"):
        stream(model, w.batches(3), {"sums": Sums()}, feed(w), names=names, checkpoint=ck)
    with pytest.raises(TlprobeError, match="checkpoint of another run"):
        stream(model, w.batches(2), {"sums": Sums()}, feed(w), names=names, checkpoint=ck, settings=(11,))
    assert ck.read_bytes() == before
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(TlprobeError, match="not a readable tlprobe checkpoint"):
        stream(model, w.batches(2), {"sums": Sums()}, feed(w), names=names, checkpoint=tmp_path / "junk.pt")


def test_checkpoints_are_per_rank():
    assert checkpoint_path("a/ck.pt", 0, 1) == pathlib.Path("a/ck.pt")
    assert checkpoint_path("a/ck.pt", 1, 2) == pathlib.Path("a/ck.pt.rank1")


def test_stream_refuses_an_empty_corpus(model):
    with pytest.raises(TlprobeError, match="corpus is empty"):
        stream(model, [], {}, lambda *a: None, names=resid_hook_names(model))


WORKER = r"""
import json, sys, torch
from tlprobe.access import resid_hook_names
from tlprobe.access.corpus import init_distributed, stream, text_windows, window_hidden, world
sys.path.insert(0, {root!r})
from tests.access.test_corpus import Sums, TEXT
from tlprobe.testing import tiny_model

rank, size = init_distributed()
model = tiny_model("gpt2", n_layers=2)
w = text_windows(model, TEXT, window=20)
from tlprobe.analyses import MICounts, MomentsAccumulator, RangeAccumulator, SimilarityAccumulator
seen = []
edges = torch.linspace(-4, 4, 6, dtype=torch.float64).expand(3, 8, 6)  # fixed edges: 5 bins, 8 dimensions
def feed(cache, batch, acc):
    seen.append(str(batch["tokens"][0].tolist()))
    h = window_hidden(cache, batch, w)
    for k in ("sums", "moments", "similarity", "range"):
        acc[k].update(h)
    acc["counts"].update(h[..., :8])
accs = {{"sums": Sums(), "moments": MomentsAccumulator(), "similarity": SimilarityAccumulator(),
        "range": RangeAccumulator(), "counts": MICounts(edges)}}
accs = stream(model, w.batches(2), accs, feed, names=resid_hook_names(model))
acc = accs["sums"]
m = accs["moments"].result()
out = {{"rank": rank, "world": size, "s1": acc.s1.tolist(), "s2": acc.s2.tolist(), "n": acc.n_samples,
       "seen": seen, "backend": torch.distributed.get_backend() if size > 1 else None,
       "var": m.var.tolist(), "rel_var": m.rel_var.tolist(),
       "corr": accs["similarity"].result("correlation").tolist(),
       "edges": accs["range"].edges(5).tolist(), "mi": accs["counts"].result().tolist(),
       "counts_n": accs["counts"].n_samples}}
with open(sys.argv[1] + f".{{rank}}.json", "w") as f:
    json.dump(out, f)
"""


def _run_worker(tmp_path, nproc: int) -> list[dict]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(root=str(ROOT)))
    out = tmp_path / f"out{nproc}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    if nproc == 1:
        cmd = [sys.executable, str(script), str(out)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
        cmd += [str(script), str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(pathlib.Path(f"{out}.{r}.json").read_text()) for r in range(nproc)]


def test_two_gloo_processes_under_torchrun_equal_one(tmp_path):
    (one,) = _run_worker(tmp_path, 1)
    two = _run_worker(tmp_path, 2)
    assert [t["backend"] for t in two] == ["gloo", "gloo"]
    assert [t["world"] for t in two] == [2, 2]
    # each rank ran its own share: together every batch once
    assert sorted(two[0]["seen"] + two[1]["seen"]) == sorted(one["seen"])
    assert two[0]["seen"] and two[1]["seen"] and not set(two[0]["seen"]) & set(two[1]["seen"])
    for t in two:  # after the all-reduce every rank holds the whole corpus's statistics
        assert t["n"] == one["n"] == t["counts_n"]
        assert t["edges"] == one["edges"]  # min/max: exact
        assert t["mi"] == one["mi"]  # integer counts summed: the MI to the bit
        for key in ("var", "rel_var", "corr"):  # Chan merges in another order: float rounding only
            torch.testing.assert_close(torch.tensor(t[key]), torch.tensor(one[key]), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(torch.tensor(t["s1"]), torch.tensor(one["s1"]), rtol=1e-12, atol=1e-9)
        torch.testing.assert_close(torch.tensor(t["s2"]), torch.tensor(one["s2"]), rtol=1e-12, atol=1e-9)
