"""Bad input, as an adversarial user gives it: one line naming the problem and the fix, never a
traceback, never a silently wrong result (issue 13's cases, kept so they stay fixed).

The command-line cases run in-process through ``tlprobe.cli.main`` and check the exit code, that
stderr is exactly one line, and the message fragment. Most fail before a model loads.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

import tlprobe
from tlprobe.access import models as access_models
from tlprobe.access.hooks import fused_qkv, hook_name, resid_stack
from tlprobe.access.models import model_info
from tlprobe.access.run import run_batch
from tlprobe.analyses.similarity import qkv_block_similarity
from tlprobe.checks import as_int, as_tensor, check_index
from tlprobe.cli import main
from tlprobe.errors import EXIT_BAD_INPUT, EXIT_BUG, ModelLoadError, TlprobeError
from tlprobe.recipes import mi_vs_covariance, qkv_similarity
from tlprobe.report import Report
from tlprobe.testing import tiny_model

SENTENCES = [
    f"Sentence {i} about her and the {w}."
    for i, w in enumerate("cat dog sun sea hill tree rain road ship bell key".split())
]


@pytest.fixture
def files(tmp_path):
    """Bad files and folders a user might pass, by name."""
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "empty-model").mkdir()
    (tmp_path / "config-only").mkdir()
    (tmp_path / "config-only" / "config.json").write_text('{"model_type": "gpt2"}')
    (tmp_path / "bad-config").mkdir()
    (tmp_path / "bad-config" / "config.json").write_text("{not json")
    (tmp_path / "no-tokenizer").mkdir()
    (tmp_path / "no-tokenizer" / "config.json").write_text("{}")
    (tmp_path / "no-tokenizer" / "model.safetensors").write_bytes(b"")
    (tmp_path / "latin1.txt").write_bytes("\n".join(s.replace("her", "hér") for s in SENTENCES).encode("latin-1"))
    (tmp_path / "repeated.txt").write_text("\n".join(["She gave her the book."] * 12))
    (tmp_path / "emoji.txt").write_text("\n".join(f"{s} 🙃" for s in SENTENCES))
    (tmp_path / "dogs.txt").write_text("\n".join(f"{s} 狗" for s in SENTENCES))
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "report.html").write_text("<html>my own notes</html>")
    report = Report("A report with one figure")
    report.figure(go.Figure(go.Bar(y=[1, 2])), caption="bars")
    report.write(tmp_path / "report" / "report.html")
    return tmp_path


#: (command line with {tmp} for the fixture folder, message fragment, exit code)
CLI_CASES = [
    # options, checked where they are parsed
    ("run qkv-similarity --seed 9223372036854775808", "--seed must be >= 0 and <= 9223372036854775807", 2),
    ("run qkv-similarity --seed -1", "--seed must be >= 0", 2),
    ("run qkv-similarity --layer 3.5", "--layer must be an integer", 2),
    ("run qkv-similarity --bins many", "argument --bins: invalid int value", 2),
    ("run mi-vs-covariance --noise nan", "--noise must be a finite number", 2),
    ("run mi-vs-covariance --noise inf", "--noise must be a finite number", 2),
    ("run mi-vs-covariance --noise -1", ">= 0, got -1.0", 2),
    ("run mi-vs-covariance --samples 1000000000", "GiB", 2),
    ("run qkv-similarity --no-such-option", "unrecognized arguments: --no-such-option", 2),
    ("run no-such-recipe", "unknown recipe 'no-such-recipe'", 2),
    ("frobnicate", "invalid choice: 'frobnicate'", 2),
    # devices, against what torch sees
    ("run qkv-similarity --device banana", "unknown device 'banana'; use cpu, cuda, cuda:N or mps", 2),
    # models: local folders get their own errors
    ("run qkv-similarity --model {tmp}/missing-model", "does not exist", 2),
    ("run qkv-similarity --model {tmp}/a-file", "is a file, not a folder", 2),
    ("run qkv-similarity --model {tmp}/empty-model", "has no config.json", 2),
    ("run qkv-similarity --model {tmp}/config-only", "has a config.json but no weights", 2),
    ("run qkv-similarity --model {tmp}/bad-config", "is not a readable JSON config", 2),
    ("run qkv-similarity --model {tmp}/no-tokenizer", "has no tokenizer files", 2),
    # input files
    ("run qkv-similarity --sentences {tmp}/latin1.txt", "is not UTF-8 text (byte 0xe9", 2),
    ("run qkv-similarity --sentences {tmp}", "is a folder; pass a text file", 2),
    ("run qkv-similarity --sentences {tmp}/missing.txt", "file not found", 2),
    ("run qkv-similarity --sentences {tmp}/repeated.txt", "only 1 distinct sentences among the 12 given", 2),
    # output folders, before the model loads
    ("run qkv-similarity --out {tmp}/a-file", "is a file, not a folder", 2),
    ("run qkv-similarity --out {tmp}/a-file/sub", "is a file; choose a folder path", 2),
    ("run qkv-similarity --out {tmp}/foreign", "was not written by tlprobe", 2),
    ("export {tmp}/report --scale 0", "--scale must be > 0", 2),
    ("export {tmp}/report --scale nan", "--scale must be a finite number", 2),
    ("export {tmp}/report --width 0", "--width must be >= 1", 2),
    ("export {tmp}/nothing-here.html", "report not found", 2),
]

#: Cases that load the bundled model before they fail (the target is checked against its tokenizer).
MODEL_CASES = [
    ("run qkv-similarity --target 😀 --sentences {tmp}/emoji.txt", "unknown to the tokenizer", 2),
    ("run qkv-similarity --target 猫 --sentences {tmp}/dogs.txt", "unknown to the tokenizer", 2),
    ("run qkv-similarity --bins 100000000", "GiB", 2),
]
if not torch.cuda.is_available():
    CLI_CASES.append(("run qkv-similarity --device cuda", "torch sees no CUDA device", 2))
    CLI_CASES.append(("run qkv-similarity --device cuda:3", "torch sees no CUDA device", 2))
if not torch.backends.mps.is_available():
    CLI_CASES.append(("run qkv-similarity --device mps", "no Apple MPS device", 2))


def _run_cli(line: str, tmp, capsys) -> tuple[int, list[str]]:
    argv = [a.replace("{tmp}", str(tmp)) for a in line.split()]
    if argv[0] == "run" and "--out" not in argv:
        argv += ["--out", str(tmp / "out")]
    try:
        code = main([*argv, "--no-progress"] if argv[0] == "run" else argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize(("line", "fragment", "code"), CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_bad_command_line_is_one_line(line, fragment, code, files, capsys):
    got, err = _run_cli(line, files, capsys)
    assert got == code and len(err) == 1, err
    assert err[0].startswith("tlprobe") and ": error: " in err[0] and fragment in err[0], err
    assert not (files / "out" / "report.html").exists()


@pytest.mark.parametrize(("line", "fragment", "code"), MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_bad_input_found_with_the_model_is_one_line(line, fragment, code, files, capsys):
    got, err = _run_cli(line, files, capsys)
    assert got == code and len(err) == 1, err
    assert err[0].startswith("tlprobe: error: ") and fragment in err[0], err
    assert not (files / "out" / "report.html").exists()  # nothing written for a refused run


def test_a_bug_is_one_line_exit_1_and_debug_shows_it(monkeypatch, tmp_path, capsys):
    def broken(options=None, **_):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(mi_vs_covariance, "run", broken)
    assert main(["run", "mi-vs-covariance", "--out", str(tmp_path)]) == EXIT_BUG
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "internal error: RuntimeError: boom second line" in err[0], err
    assert "bug in tlprobe" in err[0] and "--debug" in err[0]
    with pytest.raises(RuntimeError, match="boom"):
        main(["--debug", "run", "mi-vs-covariance", "--out", str(tmp_path)])


def test_out_of_memory_is_bad_input_not_a_bug(monkeypatch, tmp_path, capsys):
    def oom(options=None, **_):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(mi_vs_covariance, "run", oom)
    assert main(["run", "mi-vs-covariance", "--out", str(tmp_path)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "out of memory" in err[0], err


@pytest.fixture
def hub(monkeypatch):
    """The hub client, online, answering ``model_info`` with ``hub.answer`` and a cache holding ``hub.cached``."""
    import huggingface_hub
    import huggingface_hub.constants as hc

    class Hub:
        answer: BaseException = ConnectionError("[Errno -2] Name or service not known")
        cached: str | None = None
        calls: list = []

    def model_info(self, repo_id, timeout=None, **_):
        Hub.calls.append(timeout)
        raise Hub.answer

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: Hub.cached)
    import transformers.utils.hub as th

    if hasattr(th, "_is_offline_mode"):  # transformers 4.x: restored after the test, as the flags above
        monkeypatch.setattr(th, "_is_offline_mode", th._is_offline_mode)
    Hub.calls = []
    return Hub


def test_unreachable_hub_fails_at_once_without_retries(hub):
    """A hub id that is not cached, with the hub unreachable: one call, one line (was 31 s of retries)."""
    with pytest.raises(ModelLoadError, match="hub is unreachable .* not in the local cache"):
        tlprobe.load_model("gpt2")
    assert hub.calls == [access_models.HUB_TIMEOUT_S]


def test_unreachable_hub_with_a_cached_model_loads_offline(hub):
    import huggingface_hub.constants as hc

    hub.cached = "/cache/gpt2/config.json"
    access_models._check_hub("gpt2")
    assert hc.HF_HUB_OFFLINE is True  # Transformers then reads the cache without asking the hub


def test_unknown_hub_id_is_named(hub):
    from huggingface_hub.errors import RepositoryNotFoundError

    hub.answer = RepositoryNotFoundError.__new__(RepositoryNotFoundError)  # as the client raises on a 404
    Exception.__init__(hub.answer, "404 Client Error: Repository Not Found")
    with pytest.raises(ModelLoadError, match="has no such model"):
        tlprobe.load_model("no-such-org/no-such-model")


# -- the Python API ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2():
    return tiny_model("gpt2")


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda m: run_batch(m, ["her cat"], batch_size=0), "batch_size must be >= 1"),
        (lambda m: run_batch(m, ["her cat"], batch_size=2.5), "batch_size must be an integer"),
        (lambda m: run_batch(m, "her cat"), "got one string"),
        (lambda m: model_info(object()), "must be a TransformerLens model"),
        (lambda m: fused_qkv(None, 3), "cache must be an ActivationCache"),
        (lambda m: resid_stack({}), "no blocks.N.hook_resid_post"),
        (lambda m: as_tensor(torch.ones(3, dtype=torch.complex64), "x"), "is complex"),
        (lambda m: as_tensor(None, "x"), "must be a tensor or array"),
        (lambda m: qkv_block_similarity(torch.randn(10, 6, dtype=torch.complex64)), "is complex"),
        (lambda m: check_index(True, 6, "layer"), "layer must be an integer, got True"),
        (lambda m: check_index(np.float64(3.0), 6, "layer"), "layer must be an integer"),
        (lambda m: as_int(2**70, "seed", maximum=2**63 - 1), "seed must be <= 9223372036854775807"),
        (lambda m: tlprobe.load_model("minilm", device="banana"), "unknown device 'banana'"),
        (lambda m: qkv_similarity.run(model=object(), out=None, quiet=True), "must be a TransformerLens model"),
        (lambda m: qkv_similarity.run(seed=2**64, out=None, quiet=True), "--seed must be"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_bad_api_input_is_a_clear_error(gpt2, call, fragment):
    with pytest.raises(TlprobeError) as exc:
        call(gpt2)
    assert fragment in str(exc.value) and "\n" not in str(exc.value)


def test_integer_like_scalars_are_integers(gpt2):
    """numpy and torch integers are accepted wherever an int is (were refused as "not an integer")."""
    assert check_index(np.int64(3), 6, "layer") == 3 and check_index(torch.tensor(-1), 6, "layer") == 5
    assert hook_name("q", np.int64(1)) == hook_name("q", 1)
    _, cache = gpt2.run_with_cache("She gave her the book")
    assert torch.equal(fused_qkv(cache, np.int32(1), head=torch.tensor(2)), fused_qkv(cache, 1, head=2))
    options = qkv_similarity.Options(layer=np.int64(2), head=torch.tensor(1), seed=np.uint8(3))
    assert (options.layer, options.head, options.seed) == (2, 1, 3)
    assert all(type(v) is int for v in (options.layer, options.head, options.seed))


def test_tensors_that_require_grad_are_used_as_values():
    x = torch.randn(2, 20, 12, generator=torch.Generator().manual_seed(0))
    assert qkv_block_similarity(x.clone().requires_grad_(), bins=10) == qkv_block_similarity(x, bins=10)


def test_last_head_by_negative_index(gpt2, tmp_path):
    """``--head -1`` is the last head (it gave an empty pattern and "1 head indices given for 0 heads")."""
    sentences = tmp_path / "s.txt"
    sentences.write_text("\n".join(SENTENCES))
    common = {"model": gpt2, "sentences": str(sentences), "out": None, "quiet": True, "progress": False, "bins": 20}
    last = qkv_similarity.run(head=-1, **common)
    explicit = qkv_similarity.run(head=gpt2.cfg.n_heads - 1, **common)
    assert last.results["cosine"] == explicit.results["cosine"] and last.facts == explicit.facts


@pytest.mark.parametrize("out", ["{tmp}/a-file", "{tmp}/a-file/sub", "{tmp}/foreign"])
def test_a_bad_out_is_refused_before_the_model_loads(out, files, capsys, monkeypatch):
    """Output-path problems are found first (they came as tracebacks after all the computation)."""
    from tlprobe.recipes import common

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(common, "load_model", no_model)
    code, err = _run_cli(f"run qkv-similarity --out {out}", files, capsys)
    assert code == 2 and len(err) == 1 and "--out" in err[0] or "tlprobe" in err[0], err


def test_an_all_zero_attention_mask_is_refused(gpt2):
    """The lens summaries over no position read 0.0 (an entropy computed from nothing) before."""
    from tlprobe.analyses.lens import logit_lens

    _, cache = gpt2.run_with_cache("She gave her the book")
    mask = torch.zeros(1, cache["hook_embed"].shape[1], dtype=torch.long)
    with pytest.raises(TlprobeError, match="attention_mask selects no position"):
        logit_lens(cache, [" her"], attention_mask=mask, model=gpt2)
    some = logit_lens(cache, [" her"], attention_mask=mask.index_fill(1, torch.tensor([2]), 1), model=gpt2)
    assert torch.isfinite(some.mean_entropy).all()
