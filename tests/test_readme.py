"""The README's Python examples run (on MiniLM / a tiny GPT-2 instead of the hub's gpt2)."""

import pathlib
import re

import pytest

import tlprobe
from tests.helpers import requires_hooked

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def _run(code, model, monkeypatch):
    assert 'load_model("gpt2")' in code
    monkeypatch.setattr(tlprobe, "load_model", lambda name, **kw: model)
    exec(compile(code, "README.md", "exec"), {})


def test_readme_has_five_examples():
    assert len(BLOCKS) == 5


def test_readme_qkv_example_runs(minilm, monkeypatch, capsys):
    _run(BLOCKS[0].replace("layer=6", "layer=3"), minilm, monkeypatch)
    out = capsys.readouterr().out
    assert "'block': 'QQ'" in out and "'block': 'VV'" in out


@requires_hooked
def test_readme_hooked_transformer_example_runs(monkeypatch, capsys):
    """The HookedTransformer example, on a tiny GPT-2 processed as from_pretrained does by default."""
    import transformer_lens

    from tlprobe.testing import tiny_model

    code = BLOCKS[1].replace("layer=6", "layer=1")
    assert 'HookedTransformer.from_pretrained("gpt2")' in code
    model = tiny_model("gpt2", kind="hooked", processed=True)
    monkeypatch.setattr(transformer_lens.HookedTransformer, "from_pretrained", lambda name, **kw: model)
    exec(compile(code, "README.md", "exec"), {"tlprobe": tlprobe})
    out = capsys.readouterr().out
    assert "'block': 'QQ'" in out and "HookedTransformer (folded LN, centred writing weights" in out


def test_readme_recipe_from_python_example_runs(minilm, monkeypatch, capsys):
    from tlprobe.recipes import common

    monkeypatch.setattr(common, "load_model", lambda name, **kw: minilm)
    exec(compile(BLOCKS[2].replace("out=None)", "out=None, progress=False)"), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "'population': 'target'" in out and out.rstrip().endswith(" 3")


def test_readme_notebook_example_runs(minilm, monkeypatch, capsys):
    """The notebook example on MiniLM (6 layers: the recipe's middle layer is 3, not gpt2's 6)."""
    code = BLOCKS[3].replace("L6H3", "L3H3").replace("(6, 3)", "(3, 3)")
    code = code.replace('target="her", out=None)', 'target="her", out=None, progress=False)')
    pio = pytest.importorskip("plotly.io")
    before = pio.renderers.default
    try:
        _run(code, minilm, monkeypatch)
    finally:
        pio.renderers.default = before  # the example calls tlprobe.notebook_mode()
    out = capsys.readouterr().out
    assert "'block': 'QQ'" in out and "torch.Size([1, " in out and out.rstrip().endswith("32])")


def test_readme_mi_and_lens_example_runs(tiny_models, monkeypatch, capsys):
    _run(BLOCKS[4], tiny_models["gpt2"], monkeypatch)
    out = capsys.readouterr().out
    assert "torch.Size([3," in out  # depth = 2 layers + embeddings
