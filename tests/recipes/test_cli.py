"""The tlprobe command and the qkv-similarity recipe end to end on MiniLM."""

import json
import subprocess
import sys

import numpy as np
import pytest

import tlprobe
from tlprobe import recipes
from tlprobe.cli import main
from tlprobe.recipes.common import data_path, read_lines


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "tlprobe", *args], capture_output=True, text=True, cwd=cwd)


def test_ls_lists_recipes(capsys):
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    assert "qkv-similarity" in out and "L02" in out


def test_cp_copies_recipe(tmp_path, capsys):
    mod = recipes.get("qkv-similarity")

    assert main(["cp", "qkv-similarity", str(tmp_path)]) == 0
    copied = tmp_path / "qkv_similarity.py"
    assert copied.read_text() == open(mod.__file__).read()
    assert main(["cp", "qkv-similarity", str(tmp_path)]) == 2  # refuses to overwrite
    assert "--force" in capsys.readouterr().err


def test_run_help_shows_defaults(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "qkv-similarity", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--target" in out and "default: her" in out


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("qkv")
    proc = _cli("run", "qkv-similarity", "--out", str(out), "--no-progress", "--bins", "40")
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_recipe_writes_report_and_results(recipe_run):
    out, proc = recipe_run
    assert str(out / "report.html") in proc.stdout and str(out / "results.json") in proc.stdout
    html = (out / "report.html").read_text()
    assert "CircuitsVis.render" in html and "Plotly.newPlot" in html
    # everything inlined: no external script or stylesheet (the browser tests check requests)
    assert "<script src" not in html.replace(" ", "") and "<script src" not in html
    assert html.count("CircuitsVis=") == 1  # the bundle once


def test_recipe_numbers_match_independent_numpy(recipe_run, minilm):
    """Recompute the target population's cosine QQ statistics with numpy from HF-free activations."""
    from tlprobe import find_token_positions, fused_qkv, run_batch
    from tlprobe.access import hook_names

    out, _ = recipe_run
    res = tlprobe.load(out / "results.json")
    layer = res.facts["layer"]
    prompts = read_lines(data_path("her_sentences.txt"))
    batch = run_batch(minilm, prompts, names=hook_names(["q", "k", "v"], [layer]))
    tpos = find_token_positions(minilm.tokenizer, batch.tokens, "her", batch.attention_mask)
    assert tpos.pos.tolist() == res.facts["target_positions"]
    x = tpos.gather(fused_qkv(batch.cache, layer)).double().numpy()
    n = x.shape[1] // 3
    for method, mat in (("cosine", None), ("correlation", np.corrcoef(x, rowvar=False))):
        if mat is None:
            xn = x / np.linalg.norm(x, axis=0)
            mat = xn.T @ xn
        qq = mat[:n, :n][np.triu_indices(n, 1)]
        (row,) = res.results[method]["target"].rows(block="QQ")
        assert row["n_pairs"] == qq.size
        assert row["mean"] == pytest.approx(qq.mean(), abs=1e-5)
        assert row["frac_abs_gt_0.9"] == pytest.approx((np.abs(qq) > 0.9).mean(), abs=1e-4)
    # The L02 finding on MiniLM: cosine extremes vanish under correlation.
    frac = {m: res.results[m]["target"].rows(block="QQ")[0]["frac_abs_gt_0.9"] for m in ("cosine", "correlation")}
    assert frac["cosine"] > 10 * frac["correlation"]


def test_same_seed_same_bytes(recipe_run, tmp_path):
    out, _ = recipe_run
    assert main(["run", "qkv-similarity", "--out", str(tmp_path), "--no-progress", "--bins", "40"]) == 0
    assert (tmp_path / "results.json").read_bytes() == (out / "results.json").read_bytes()


def test_other_seed_other_baselines(recipe_run, tmp_path):
    out, _ = recipe_run
    assert main(["run", "qkv-similarity", "--out", str(tmp_path), "--no-progress", "--bins", "40", "--seed", "1"]) == 0
    a = json.loads((out / "results.json").read_text())
    b = json.loads((tmp_path / "results.json").read_text())
    assert a["facts"]["target_positions"] == b["facts"]["target_positions"]
    assert a["facts"]["non_target_positions"] != b["facts"]["non_target_positions"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["run", "nope"], "unknown recipe 'nope'"),
        (["run", "qkv-similarity", "--target", "zebra"], "target 'zebra' not found as a whole word in prompt 0"),
        (["run", "qkv-similarity", "--layer", "99"], "layer 99 is out of range"),
        (["run", "qkv-similarity", "--head", "12"], "head 12 is out of range"),
        (["run", "qkv-similarity", "--model", "no-such-model-xyz"], "could not load model 'no-such-model-xyz'"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, message, tmp_path, capsys):
    extra = ["--out", str(tmp_path), "--no-progress"] if len(args) > 2 else []
    assert main(args + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tlprobe: error: ") and message in err[0], err


def test_too_few_sentences(tmp_path, capsys):
    f = tmp_path / "s.txt"
    f.write_text("She saw her cat.\nHe met her friend.\n")
    assert main(["run", "qkv-similarity", "--sentences", str(f), "--out", str(tmp_path)]) == 2
    assert "too few samples for the Q/K/V similarity: got 2, need at least 10" in capsys.readouterr().err


def test_error_from_subprocess_is_one_line_and_debug_shows_traceback(tmp_path):
    proc = _cli("run", "qkv-similarity", "--layer", "99", "--out", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("tlprobe: error: --layer 99")
    assert "Traceback" not in proc.stderr
    proc = _cli("--debug", "run", "qkv-similarity", "--layer", "99", "--out", str(tmp_path))
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_copied_recipe_runs_as_a_script(tmp_path):
    import os
    import pathlib

    env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).resolve().parents[2])}  # also when not installed
    assert main(["cp", "qkv-similarity", str(tmp_path / "mine.py")]) == 0
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "mine.py"), "--help"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert "--target" in proc.stdout
    assert "tlprobe-out/mine)" in proc.stdout  # a copy writes to its own default folder
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "mine.py"), "--layer", "42", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 2 and proc.stderr.strip().endswith("valid: 0..5)")
    assert "Traceback" not in proc.stderr
