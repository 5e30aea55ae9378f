"""A recipe's output folder: checked before the work, replaced whole, never clobbering a user's files.

The recipe here is mi-vs-covariance (no model, under a second), so a run can be repeated and
interrupted many times.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

import tlprobe
from tlprobe.errors import TlprobeError
from tlprobe.recipes import mi_vs_covariance
from tlprobe.report import html as report_html, outputs
from tlprobe.report.outputs import check_out_dir, written_by_tlprobe

FAST = {"samples": 400, "shuffles": 20, "progress": False, "quiet": True}
RUN_ID = re.compile(r"<meta name='tlprobe-run-id' content='([0-9a-f]+)'>")


def run(out, **kw):
    return mi_vs_covariance.run(out=str(out), **{**FAST, **kw})


def pair(out) -> tuple[str, str]:
    """The run ids that ``report.html`` and ``results.json`` in ``out`` carry (each complete)."""
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.rstrip().endswith("</html>"), "report.html is incomplete"
    found = RUN_ID.search(page)
    assert found, "report.html has no run id"
    return found.group(1), json.loads((out / "results.json").read_text())["run_id"]


def no_staging(out) -> bool:
    return not [p for p in out.iterdir() if p.name.startswith(".tlprobe-staging-")]


def test_report_and_results_carry_one_run_id(tmp_path):
    r = run(tmp_path)
    assert pair(tmp_path) == (r.run_id, r.run_id)
    assert tlprobe.load(tmp_path / "results.json").run_id == r.run_id == r.digest()
    assert run(tmp_path / "again").run_id == r.run_id  # a digest of the results: same options, same id
    assert run(tmp_path / "seed1", seed=1).run_id != r.run_id
    assert written_by_tlprobe(tmp_path / "report.html") and written_by_tlprobe(tmp_path / "results.json")
    assert no_staging(tmp_path)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: (p / "out").write_text("x"), "is a file, not a folder"),
        (lambda p: (p / "f").write_text("x"), "is a file; choose a folder path"),
        (lambda p: ((p / "out").mkdir(), (p / "out" / "report.html").write_text("<html>mine</html>")), "--force"),
        (lambda p: ((p / "out").mkdir(), (p / "out" / "results.json").write_text('{"a": 1}')), "--force"),
        (
            lambda p: (
                (p / "out" / "figures").mkdir(parents=True),
                (p / "out" / "figures" / "notes.txt").write_text(""),
            ),
            "PNG",
        ),
    ],
    ids=["out-is-a-file", "under-a-file", "foreign-report", "foreign-results", "foreign-figures"],
)
def test_bad_out_is_refused_before_any_work(tmp_path, make, message):
    make(tmp_path)
    target = tmp_path / ("f/sub" if (tmp_path / "f").exists() else "out")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(TlprobeError, match=re.escape(message)):
        run(target)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before  # nothing touched


def test_force_replaces_a_foreign_report(tmp_path):
    (tmp_path / "report.html").write_text("<html>mine</html>")
    with pytest.raises(TlprobeError, match="not written by tlprobe"):
        run(tmp_path)
    r = run(tmp_path, force=True)
    assert pair(tmp_path) == (r.run_id, r.run_id)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_out_is_refused(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(TlprobeError, match="not writable|cannot be created"):
            check_out_dir(tmp_path / "out")
    finally:
        tmp_path.chmod(0o700)


def test_stale_figures_of_an_earlier_run_are_removed(tmp_path):
    run(tmp_path)
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "fig01-old.png").write_bytes(b"\x89PNG old")
    run(tmp_path, seed=1)
    assert not (tmp_path / "figures").exists()


def test_interrupt_while_writing_keeps_the_previous_output(tmp_path, monkeypatch):
    old = run(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}

    def interrupted(self, path):
        (path.parent / "report.html").write_text("<html>half")  # a partial write in the staging folder
        raise KeyboardInterrupt

    monkeypatch.setattr(report_html.Report, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, seed=1)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    assert pair(tmp_path) == (old.run_id, old.run_id) and no_staging(tmp_path)


def test_ctrl_c_while_moving_into_place_finishes_the_move(tmp_path, monkeypatch):
    run(tmp_path)
    real = os.replace
    calls = []

    def replace_and_interrupt(src, dst):
        if os.path.dirname(dst) == str(tmp_path):  # the renames into place (not the staging writes)
            if not calls:
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C between them: held back until they are done
            calls.append(dst)
        real(src, dst)

    monkeypatch.setattr(outputs.os, "replace", replace_and_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, seed=1)
    assert len(calls) == 2
    new = mi_vs_covariance.run(out=None, seed=1, **FAST)
    assert pair(tmp_path) == (new.run_id, new.run_id) and no_staging(tmp_path)


def _cli_run(out, seed, **popen):
    args = ["run", "mi-vs-covariance", "--out", str(out), "--samples", "400", "--shuffles", "20", "--no-progress"]
    cmd = [sys.executable, "-m", "tlprobe", *args, "--seed", str(seed)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


@pytest.mark.parametrize("delay", [0.5, 1.5, 2.0, 2.3, 2.6, 3.0])
def test_sigint_at_any_moment_leaves_one_complete_output(tmp_path, delay):
    """A real Ctrl-C at several moments of a run (import, computation, writing, after the end)."""
    old = run(tmp_path)
    proc = _cli_run(tmp_path, seed=1)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    ids = pair(tmp_path)
    assert ids[0] == ids[1], f"report and results of different runs after SIGINT at {delay} s"
    new = mi_vs_covariance.run(out=None, seed=1, **FAST)
    assert ids[0] in (old.run_id, new.run_id)
    if proc.returncode == 0:
        assert ids[0] == new.run_id
    elif ids[0] == old.run_id:
        assert proc.returncode in (130, -signal.SIGINT, 1) or _aborted_in_extension_import(proc.returncode, err), err
    assert no_staging(tmp_path)


def _aborted_in_extension_import(returncode: int, err: str) -> bool:
    """A Ctrl-C that lands while a pybind11 extension (torch's) is being imported makes its C++ code
    call std::terminate (SIGABRT, "pybind11::error_already_set ... KeyboardInterrupt"): that exit
    status is the extension's, before tlprobe's code ran; the outputs must still be intact."""
    return returncode == -signal.SIGABRT and "pybind11::error_already_set" in err and "KeyboardInterrupt" in err


def test_two_runs_into_one_folder_do_not_mix(tmp_path):
    run(tmp_path)
    procs = [_cli_run(tmp_path, seed=s) for s in (1, 2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    ids = pair(tmp_path)
    assert ids[0] == ids[1]
    assert ids[0] in {mi_vs_covariance.run(out=None, seed=s, **FAST).run_id for s in (1, 2)}
