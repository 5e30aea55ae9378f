"""Findings: a lesson's claims checked against this run's numbers.

A recipe declares each claim of its lesson as a check over its own results: the claim in words,
the criterion (fixed in the recipe's code, stated in words here), the numbers it measured, and a
verdict:

* ``holds``: the criterion is met;
* ``differs``: it is not (the model shows something else; ``why`` says what);
* ``inconclusive``: the data cannot decide (too few samples, an interval that straddles the
  threshold, an undefined statistic); ``why`` says which.

A recipe's :class:`~tlprobe.recipes.common.RecipeResult` carries its findings; the report opens
with them as a table, ``results.json`` has them under ``"findings"``, and the terminal prints one
line each (:meth:`Finding.line`).

Example:
    >>> f = check(
    ...     "cosine extremes are more frequent than correlation extremes",
    ...     "fraction with |s| > 0.9 under cosine >= 2 x under correlation",
    ...     {"cosine": 0.12, "correlation": 0.01},
    ...     holds=0.12 >= 2 * 0.01,
    ...     why="the features' mean offsets drive the extremes",
    ...     lesson="L02",
    ... )
    >>> f.verdict, f.line()
    ('holds', 'holds         L02 cosine extremes are more frequent than correlation extremes (cosine=0.12, correlation=0.01)')
    >>> Finding.from_dict(f.to_dict()) == f
    True
    >>> interval_verdict(0.2, 0.4, above=0.1), interval_verdict(-0.1, 0.3, above=0.1)
    (True, None)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from tlprobe.errors import TlprobeError
from tlprobe.result import Result

Verdict = Literal["holds", "differs", "inconclusive"]
VERDICTS: tuple[str, ...] = get_args(Verdict)


@dataclass(frozen=True, eq=False)
class Finding(Result):
    """One claim of a lesson, checked on this run.

    Attributes:
        claim: the lesson's claim, in words.
        criterion: the test applied (fixed in code), in words.
        numbers: the measured numbers the verdict rests on, by name.
        verdict: ``holds``, ``differs`` or ``inconclusive``.
        why: one line: what the numbers mean for this model, or why the data cannot decide.
        lesson: the lesson the claim comes from (``"L02"``), if any.
    """

    claim: str
    criterion: str
    numbers: dict[str, Any]
    verdict: str
    why: str
    lesson: str = ""

    def __post_init__(self):
        super().__post_init__()
        if self.verdict not in VERDICTS:
            raise TlprobeError(f"a finding's verdict must be one of {', '.join(VERDICTS)}, got {self.verdict!r}")
        if not self.claim.strip() or not self.criterion.strip():
            raise TlprobeError("a finding needs its claim and its criterion in words")
        if self.verdict == "inconclusive" and not self.why.strip():
            raise TlprobeError("an inconclusive finding must say why (too few samples, an interval that overlaps, ...)")

    def numbers_text(self) -> str:
        """The numbers as ``name=value`` pairs (3 significant digits)."""
        return ", ".join(f"{k}={fmt_number(v)}" for k, v in self.numbers.items())

    def line(self) -> str:
        """One line for the terminal: verdict, lesson, claim and numbers."""
        lesson = f"{self.lesson} " if self.lesson else ""
        return f"{self.verdict:<13} {lesson}{self.claim} ({self.numbers_text()})"

    def rows(self) -> list[dict]:
        return [
            {
                "lesson": self.lesson,
                "claim": self.claim,
                "criterion": self.criterion,
                "numbers": self.numbers_text(),
                "verdict": self.verdict,
                "why": self.why,
            }
        ]


def fmt_number(v: Any) -> str:
    """A number as shown in findings: 3 significant digits, NaN or ``None`` as ``undefined``.

    Example:
        >>> fmt_number(0.123456), fmt_number(12345.6), fmt_number(3), fmt_number(None), fmt_number("L3")
        ('0.123', '1.23e+04', '3', 'undefined', 'L3')
    """
    if v is None:
        return "undefined"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(fmt_number(x) for x in v) + "]"
        return str(v)
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "undefined"
    return f"{v:.3g}"


def fmt_percent(fraction: float) -> str:
    """A fraction as a short percentage (2 significant digits below 10 %).

    Example:
        >>> fmt_percent(0.0948), fmt_percent(0.62), fmt_percent(2.26e-05), fmt_percent(0.0), fmt_percent(float("nan"))
        ('9.5%', '62%', '0.0023%', '0%', 'undefined')
    """
    if math.isnan(fraction):
        return "undefined"
    if fraction == 0:
        return "0%"
    return f"{100 * fraction:.2g}%" if fraction < 0.1 else f"{100 * fraction:.0f}%"


def check(
    claim: str,
    criterion: str,
    numbers: Mapping[str, Any],
    *,
    holds: bool | None,
    why: str,
    lesson: str = "",
) -> Finding:
    """A :class:`Finding` from the outcome of a criterion: ``holds`` True, False or None (undecided).

    Numbers are stored as plain Python values (tensors and numpy scalars converted), floats
    rounded to 4 significant digits so that ``results.json`` and the report show the same value,
    NaN (undefined) as ``None``.
    """
    verdict = "inconclusive" if holds is None else ("holds" if holds else "differs")
    return Finding(
        claim=claim,
        criterion=criterion,
        numbers={str(k): _plain(v) for k, v in numbers.items()},
        verdict=verdict,
        why=why,
        lesson=lesson,
    )


def interval_verdict(low: float, high: float, *, above: float) -> bool | None:
    """Whether an interval lies above a threshold: True (all above), False (all at or below) or
    None (it straddles it, or is undefined)."""
    if math.isnan(low) or math.isnan(high):
        return None
    if low > above:
        return True
    if high <= above:
        return False
    return None


def _plain(v: Any) -> Any:
    if hasattr(v, "tolist"):  # tensors, numpy arrays and scalars
        v = v.tolist()
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, int):
        return v
    if isinstance(v, float):  # NaN (undefined) as None, as results.json stores it
        return None if math.isnan(v) else v if math.isinf(v) or v == 0 else float(f"{v:.4g}")
    if isinstance(v, Sequence):
        return [_plain(x) for x in v]
    raise TlprobeError(f"a finding's numbers must be numbers, strings or lists of them, got {type(v).__name__}")


def summary(findings: Sequence[Finding]) -> str:
    """``'2 hold, 1 differs, 0 inconclusive'``.

    Example:
        >>> f = check("a", "b", {}, holds=True, why="")
        >>> summary([f, f])
        '2 hold, 0 differ, 0 inconclusive'
    """
    n = {v: sum(f.verdict == v for f in findings) for v in VERDICTS}
    hold = "holds" if n["holds"] == 1 else "hold"
    differ = "differs" if n["differs"] == 1 else "differ"
    return f"{n['holds']} {hold}, {n['differs']} {differ}, {n['inconclusive']} inconclusive"
