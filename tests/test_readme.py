"""The README's Python examples run (on MiniLM / a tiny GPT-2 instead of the hub's gpt2)."""

import pathlib
import re

import tlprobe

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def _run(code, model, monkeypatch):
    assert 'load_model("gpt2")' in code
    monkeypatch.setattr(tlprobe, "load_model", lambda name, **kw: model)
    exec(compile(code, "README.md", "exec"), {})


def test_readme_has_three_examples():
    assert len(BLOCKS) == 3


def test_readme_qkv_example_runs(minilm, monkeypatch, capsys):
    _run(BLOCKS[0].replace("layer=6", "layer=3"), minilm, monkeypatch)
    out = capsys.readouterr().out
    assert "'block': 'QQ'" in out and "'block': 'VV'" in out


def test_readme_recipe_from_python_example_runs(minilm, monkeypatch, capsys):
    from tlprobe.recipes import common

    monkeypatch.setattr(common, "load_model", lambda name, **kw: minilm)
    exec(compile(BLOCKS[1].replace("out=None)", "out=None, progress=False)"), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "'population': 'target'" in out and out.rstrip().endswith(" 3")


def test_readme_mi_and_lens_example_runs(tiny_models, monkeypatch, capsys):
    _run(BLOCKS[2], tiny_models["gpt2"], monkeypatch)
    out = capsys.readouterr().out
    assert "torch.Size([3," in out  # depth = 2 layers + embeddings
