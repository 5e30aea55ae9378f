"""The README's Python example runs (on MiniLM instead of the hub's gpt2)."""

import pathlib
import re

import tlprobe

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs(minilm, monkeypatch, capsys):
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert 'load_model("gpt2")' in code
    monkeypatch.setattr(tlprobe, "load_model", lambda name, **kw: minilm)
    exec(compile(code.replace("layer=6", "layer=3"), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "'block': 'QQ'" in out and "'block': 'VV'" in out
