"""The findings model: a checked claim, its verdict, its round trip, its table and its terminal line."""

from __future__ import annotations

import html
import json
import math

import pytest
import torch

from tlprobe.errors import TlprobeError
from tlprobe.findings import Finding, check, fmt_number, interval_verdict, summary
from tlprobe.recipes.common import RecipeResult, Run, TargetOptions
from tlprobe.report import Report
from tlprobe.result import load


def _f(holds, why="because", numbers=None):
    return check("a claim", "x > 1", numbers or {"x": 2.0}, holds=holds, why=why, lesson="L02")


@pytest.mark.parametrize(("holds", "verdict"), [(True, "holds"), (False, "differs"), (None, "inconclusive")])
def test_check_maps_the_outcome_to_a_verdict(holds, verdict):
    assert _f(holds).verdict == verdict


def test_bad_findings_are_refused():
    with pytest.raises(TlprobeError, match="verdict must be one of"):
        Finding(claim="c", criterion="k", numbers={}, verdict="maybe", why="")
    with pytest.raises(TlprobeError, match="must say why"):
        _f(None, why=" ")
    with pytest.raises(TlprobeError, match="claim and its criterion"):
        check("", "x", {}, holds=True, why="")
    with pytest.raises(TlprobeError, match="numbers must be numbers"):
        check("c", "k", {"x": object()}, holds=True, why="")


def test_numbers_become_plain_values_rounded_as_shown():
    f = check(
        "c",
        "k",
        {"t": torch.tensor(0.123456789), "n": torch.tensor(7), "v": torch.tensor([1.0, 2.5])},
        holds=True,
        why="",
    )
    assert f.numbers == {"t": 0.1235, "n": 7, "v": [1.0, 2.5]}
    assert type(f.numbers["n"]) is int
    assert f.numbers_text() == "t=0.123, n=7, v=[1, 2.5]"
    assert fmt_number(math.nan) == "undefined"


def test_round_trip_and_rows():
    f = _f(True, numbers={"x": 2.0, "nan": math.nan, "label": "L3"})
    back = Finding.from_dict(json.loads(json.dumps(f.to_dict())))
    assert back == f and f.numbers["nan"] is None and "nan=undefined" in f.numbers_text()
    (row,) = f.rows()
    assert row["verdict"] == "holds" and row["claim"] == "a claim" and row["criterion"] == "x > 1"


@pytest.mark.parametrize(
    ("low", "high", "want"),
    [
        (0.2, 0.4, True),
        (-0.5, 0.1, False),
        (-0.1, 0.3, None),
        (math.nan, 1.0, None),
        (0.0, 0.1, False),
        (0.1, 0.2, None),
    ],
)
def test_interval_verdict(low, high, want):
    assert interval_verdict(low, high, above=0.1) is want


def test_summary_counts_each_verdict():
    assert summary([_f(True), _f(False), _f(False), _f(None)]) == "1 holds, 2 differ, 1 inconclusive"


def test_report_opens_with_the_findings_whatever_the_call_order():
    r = Report("Demo")
    r.heading("Method")
    r.text("What was done.")
    r.findings([_f(True), _f(False, why="<b>escaped</b>")])
    page = r.to_html()
    assert page.index("Findings</h2>") < page.index("Method</h2>")
    assert html.escape("<b>escaped</b>") in page and "<b>escaped</b>" not in page
    assert page.count("v v-holds") == 1 and page.count("v v-differs") == 1
    assert 'href="#findings"' in page  # first in the table of contents
    with pytest.raises(TlprobeError, match="Finding objects"):
        r.findings(["holds"])


def test_long_tables_are_collapsed_short_ones_open():
    r = Report("Demo")
    r.table([{"i": i} for i in range(3)], caption="short")
    r.table([{"i": i} for i in range(40)], caption="long")
    page = r.to_html()
    assert page.count("<details>") == 1
    assert "long (40 rows; click to show)" in page
    assert "<caption>short</caption>" in page


def test_finish_keeps_findings_in_results_json_and_prints_them(tmp_path, capsys):
    run = Run("demo", TargetOptions(out=str(tmp_path / "out"), progress=False))
    findings = [_f(True), _f(None, why="too few samples")]
    result = run.finish(Report("Demo"), results={}, findings=findings)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("report: ") and out[1].startswith("results: ")
    assert out[2] == "findings (1 holds, 0 differ, 1 inconclusive):"
    assert out[3:] == ["  " + f.line() for f in findings]
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [f["verdict"] for f in data["findings"]] == ["holds", "inconclusive"]
    back = load(tmp_path / "out" / "results.json")
    assert isinstance(back, RecipeResult) and back.findings == findings
    assert back.run_id == result.run_id == back.digest()  # the findings are part of the run id
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.index("Findings</h2>") < page.index("Options (as in results.json")


def test_notebook_summary_of_a_run_shows_its_findings():
    run = Run("demo", TargetOptions(out=None, progress=False, quiet=True))
    result = run.finish(Report("Demo"), results={}, findings=[_f(False, why="the model differs")])
    page = result._repr_html_()
    assert "the model differs" in page and "v-differs" in page
