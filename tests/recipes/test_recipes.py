"""Properties every recipe must have: reproducible results.json, self-explaining CLI."""

import pathlib

import pytest
from conftest import run_recipe_fast

import recipes
from tlprobe.cli import main

NAMES = sorted(recipes.available())


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_gives_byte_identical_results(name, recipe_output, tmp_path):
    first = pathlib.Path(recipe_output(name)["results"])
    second = pathlib.Path(run_recipe_fast(recipes.available()[name], tmp_path)["results"])
    assert first.read_bytes() == second.read_bytes()


@pytest.mark.parametrize("name", NAMES)
def test_recipe_contract(name, capsys):
    mod = recipes.available()[name]
    assert mod.DESCRIPTION and "\n" not in mod.DESCRIPTION
    assert callable(mod.run) and callable(mod.add_arguments) and callable(mod.main)
    assert "script_main" in pathlib.Path(mod.__file__).read_text(), "recipe files must run as scripts"
    with pytest.raises(SystemExit) as exc:
        main(["run", name, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--out", "--seed"):
        assert opt in out
    assert "default:" in out


def test_ls_lists_every_recipe(capsys):
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    for name in NAMES:
        assert name in out


@pytest.mark.parametrize(
    "args,message",
    [
        (["punctuation-clusters", "--text", "/no/such/file.txt"], "not found: /no/such/file.txt"),
        (["punctuation-clusters", "--layers", "99"], "out of range"),
        (["pairwise-mi", "--bins", "1"], "bins must be >= 2"),
        (["mi-vs-covariance", "--samples", "1"], "too few samples for the simulation"),
        (["logit-lens", "--prompt", " "], "--prompt is empty"),
        (["logit-lens", "--top-k", "0"], "top_k must be an integer"),
        (["layer-similarity", "--target", "zzzq"], "target 'zzzq' not found as a whole word in prompt 0"),
        (["qkv-similarity", "--bins", "0"], "bins must be"),
    ],
)
def test_recipe_bad_options_exit_2_with_one_line(args, message, tmp_path, capsys):
    assert main(["run", *args, "--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tlprobe: error: ") and message in err[0], err
