"""pairwise-mi streamed (a text longer than one window): the counts give the in-memory estimator's
MI over the same tokens, an interrupted run resumes to the same result, and two gloo processes
under torchrun give the numbers of one."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from tlprobe.access import resid_hook_names
from tlprobe.access.corpus import text_windows
from tlprobe.analyses.mi import pairwise_mi
from tlprobe.errors import TlprobeError
from tlprobe.recipes import pairwise_mi as recipe
from tlprobe.recipes.common import data_path, read_lines

ROOT = pathlib.Path(__file__).resolve().parents[2]
PARAGRAPH = " ".join(read_lines(data_path("tea_paragraph.txt")))
WINDOW = 48  # the default paragraph in 3 windows


def window_states(model, text: str, window: int) -> torch.Tensor:
    """``[depth, tokens, d_model]``: each window run alone, special tokens dropped (an independent path)."""
    w = text_windows(model, text, window=window)
    names = resid_hook_names(model)
    a, parts = len(w.prefix), []
    for ids in w.ids:
        tokens = torch.tensor([[*w.prefix, *ids.tolist(), *w.suffix]])
        _, cache = (
            model.run_with_cache(tokens, names_filter=names, one_zero_attention_mask=torch.ones_like(tokens))
            if (type(model).__name__ == "HookedEncoder")
            else model.run_with_cache(tokens, names_filter=names)
        )
        parts.append(torch.stack([cache[k][0, a : a + ids.numel()] for k in names]))
    return torch.cat(parts, 1).float()


def test_streamed_mi_equals_pairwise_mi_of_the_same_tokens(minilm):
    run = recipe.run(model=minilm, stream="always", window=WINDOW, batch_size=2, out=None, quiet=True, progress=False)
    assert run.facts["streamed"] and run.facts["windows"] == 3 and run.facts["null"] == "permutation"
    hs = window_states(minilm, PARAGRAPH, WINDOW)
    assert run.facts["n_tokens"] == hs.shape[1]
    want = recipe.dimension_means(pairwise_mi(hs, bins=10, dtype=torch.float64))
    got = torch.as_tensor(run.facts["dimension_means"]["raw"], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-9)
    assert "gcmi" not in run.results and "token_mi" not in run.results  # they need every sample at once
    assert "Left out of a streamed run" in run.report.to_html()


def test_auto_streams_a_text_longer_than_one_window(minilm, tmp_path):
    text = tmp_path / "long.txt"
    text.write_text(PARAGRAPH)
    short = recipe.run(model=minilm, text=str(text), out=None, quiet=True, progress=False, shuffles=1)
    long = recipe.run(model=minilm, text=str(text), window=WINDOW, out=None, quiet=True, progress=False)
    assert not short.facts["streamed"] and long.facts["streamed"]


def test_a_streamed_run_refuses_a_bin_rule(minilm):
    with pytest.raises(TlprobeError, match="integer number of bins"):
        recipe.run(model=minilm, stream="always", bins="sqrt", out=None, quiet=True, progress=False)


def test_an_interrupted_streamed_run_resumes_to_the_same_result(minilm, tmp_path, monkeypatch):
    opts = dict(model=minilm, stream="always", window=WINDOW, batch_size=1, out=None, quiet=True, progress=False)
    whole = recipe.run(**opts)
    ck = tmp_path / "pm.ck"
    calls = {"n": 0}
    real = recipe.window_hidden

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # pass 1 ran 3 batches; pass 2 stops in its second batch
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(recipe, "window_hidden", interrupted)
    with pytest.raises(KeyboardInterrupt):
        recipe.run(**opts, checkpoint=str(ck), checkpoint_every=1)
    assert torch.load(f"{ck}.counts", weights_only=True)["next"] == 1
    monkeypatch.setattr(recipe, "window_hidden", real)
    resumed = recipe.run(**opts, checkpoint=str(ck), checkpoint_every=1)
    assert resumed.run_id == whole.run_id  # a digest of every number, and of the options that shape them
    assert resumed.facts["dimension_means"] == whole.facts["dimension_means"]


def _cli(tmp_path, out: pathlib.Path, nproc: int) -> dict:
    text = tmp_path / "text.txt"
    text.write_text(PARAGRAPH)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    args = ["-m", "tlprobe", "run", "pairwise-mi", "--text", str(text), "--stream", "always", "--window", str(WINDOW)]
    args += ["--batch-size", "1", "--no-progress", "--device", "cpu", "--out", str(out)]
    launch = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    launch += [] if nproc == 1 else [f"--nproc-per-node={nproc}"]
    done = subprocess.run([*launch, *args], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


def test_two_gloo_processes_under_torchrun_give_the_numbers_of_one(tmp_path):
    one = _cli(tmp_path, tmp_path / "one", 1)
    two = _cli(tmp_path, tmp_path / "two", 2)
    # integer counts summed across processes: the MI computed from them is the same to the bit
    assert two["facts"]["dimension_means"] == one["facts"]["dimension_means"]
    assert two["results"] == one["results"] and two["findings"] == one["findings"]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
