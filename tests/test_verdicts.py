"""gni_lib.verdicts: the four verdicts from an interval, judging per-seed values, the ledger glue keys."""

from __future__ import annotations

import json

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gni_lib.verdicts import VERDICTS, claim_result, judge, ledger_key, record_claim, result_key, verdict, verdict_key

POSITIVE = (0.0, math.inf)


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (0.1, 0.3, "holds"),  # inside the claim
        (-0.1, 0.3, "inconclusive"),  # straddles its boundary
        (-0.3, -0.1, "did not reproduce"),  # excludes it
        (-0.3, 0.0, "did not reproduce"),  # touches the boundary from outside: excludes the open claim
    ],
)
def test_verdict_by_hand_one_sided(low: float, high: float, expected: str) -> None:
    assert verdict(low, high, claim=POSITIVE) == expected


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (0.9, 1.1, "holds"),  # ratio near 1, as claimed
        (1.5, 2.5, "holds approximately"),  # right direction, not the claimed size
        (1.1, 1.5, "holds approximately"),  # in direction, straddles the size bound
        (-0.5, -0.1, "did not reproduce"),  # wrong direction
        (-0.5, 0.9, "inconclusive"),  # too wide to say
    ],
)
def test_verdict_by_hand_with_approx(low: float, high: float, expected: str) -> None:
    assert verdict(low, high, claim=(0.8, 1.25), approx=(0.0, math.inf)) == expected


@settings(max_examples=200, deadline=None)
@given(st.floats(-10, 10), st.floats(0, 10), st.floats(-5, 5), st.floats(0.01, 5))
def test_verdict_is_exactly_one_and_consistent(low: float, width: float, a: float, span: float) -> None:
    high = low + width
    result = verdict(low, high, claim=(a, a + span))
    assert result in VERDICTS and result != "holds approximately"
    inside = a < low and high < a + span
    disjoint = high <= a or low >= a + span
    assert (result == "holds") == inside
    assert (result == "did not reproduce") == disjoint


def test_narrowing_an_inconclusive_interval_decides_it() -> None:
    """The verdict depends on the interval, not the point estimate: the same centre, two widths."""
    assert verdict(0.05 - 0.2, 0.05 + 0.2, claim=POSITIVE) == "inconclusive"
    assert verdict(0.05 - 0.01, 0.05 + 0.01, claim=POSITIVE) == "holds"


def test_judge_uses_the_t_interval() -> None:
    values = [1.0, 2.0, 3.0, 2.5]
    judgement = judge(values, claim=POSITIVE)
    mean = np.mean(values)
    se = np.std(values, ddof=1) / 2
    half = 3.182446305284263 * se  # t_{3, 0.975}
    assert judgement.mean == pytest.approx(mean)
    assert judgement.se == pytest.approx(se)
    assert (judgement.low, judgement.high) == pytest.approx((mean - half, mean + half))
    assert judgement.n == 4 and judgement.verdict == "holds"
    assert "4 seeds" in judgement.interval_text()


def test_judge_accepts_a_tensor() -> None:
    judgement = judge(torch.tensor([-1.0, 1.0, -0.5, 0.4]), claim=POSITIVE)
    assert judgement.n == 4 and judgement.verdict == "inconclusive"


def test_keys() -> None:
    assert verdict_key("camuto.fig4") == "verdict_camuto_fig4"
    assert ledger_key("camuto.fig4") == "ledger_camuto_fig4"


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"low": 1.0, "high": 0.0, "claim": POSITIVE}, ValueError, "low"),
        ({"low": math.nan, "high": 0.0, "claim": POSITIVE}, ValueError, "low"),
        ({"low": 0.0, "high": math.inf, "claim": POSITIVE}, ValueError, "high"),
        ({"low": "0", "high": 1.0, "claim": POSITIVE}, TypeError, "low"),
        ({"low": 0.0, "high": 1.0, "claim": (1.0, 0.0)}, ValueError, "claim"),
        ({"low": 0.0, "high": 1.0, "claim": 0.0}, TypeError, "claim"),
        ({"low": 0.0, "high": 1.0, "claim": (0.0, math.nan)}, TypeError, "claim"),
        ({"low": 0.0, "high": 1.0, "claim": (0.0, 1.0), "approx": (0.5, 2.0)}, ValueError, "approx"),
        ({"low": 0.0, "high": 1.0, "claim": (0.0, 1.0), "approx": "wide"}, TypeError, "approx"),
    ],
)
def test_bad_input_names_the_argument(kwargs: dict, error: type, name: str) -> None:
    with pytest.raises(error, match=name):
        verdict(**kwargs)


def test_judge_bad_input() -> None:
    with pytest.raises(ValueError, match="values"):
        judge([1.0], claim=POSITIVE)
    with pytest.raises(ValueError, match="level"):
        judge([1.0, 2.0], claim=POSITIVE, level=1.5)


def test_record_claim_bad_input() -> None:
    with pytest.raises(ValueError, match="verdict_text"):
        record_claim("camuto.fig4", "holds mostly", "x")
    with pytest.raises(ValueError, match="claim_id"):
        record_claim("fig4", "holds", "x")
    with pytest.raises(TypeError, match="measured"):
        record_claim("camuto.fig4", "holds", "")


def test_record_claim_glues_both_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    import myst_nb

    glued = {}
    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display=True: glued.update({name: (value, display)}))
    record_claim("camuto.fig4", "holds approximately", "ratio 0.4 [0.3, 0.5]")
    result = glued.pop(result_key("camuto.fig4"))
    assert glued == {
        "verdict_camuto_fig4": ("holds approximately", False),
        "ledger_camuto_fig4": ("ratio 0.4 [0.3, 0.5]", False),
    }
    assert result[1] is False
    assert json.loads(result[0]) == claim_result("camuto.fig4", "holds approximately", "ratio 0.4 [0.3, 0.5]")


def test_claim_result_carries_the_intervals_seeds_and_preset(monkeypatch: pytest.MonkeyPatch) -> None:
    from gni_lib import scale

    monkeypatch.setenv(scale.SCALE_ENV_VAR, "large")
    steps = scale.by_scale(quick=10, large=20, paper=30)
    judged = judge([0.1, 0.2, 0.3, 0.4], claim=POSITIVE)
    result = claim_result("camuto.fig4", judged.verdict, "x", evidence=judged)
    assert result["intervals"] == [[judged.low, judged.high]] and result["seeds"] == 4
    assert result["level"] == 0.95 and result["scale"] == "large"
    line = "steps = scale.by_scale(quick=10, large=20, paper=30)"
    assert {"line": line, "value": steps, "paper": 30, "is_paper": False} in result["settings"]
    joint = claim_result("camuto.fig4", "holds", "x", evidence=[(0.0, 1.0), judged], seeds=7)
    assert joint["intervals"] == [[0.0, 1.0], [judged.low, judged.high]] and joint["seeds"] == 7
    assert claim_result("camuto.fig4", "holds", "x")["intervals"] == []


@pytest.mark.parametrize(
    ("evidence", "seeds", "error", "match"),
    [
        ((2.0, 1.0), None, ValueError, "low <= high"),
        ("0.1-0.2", None, TypeError, "evidence"),
        ([[(0.0, 1.0), (1.0, 2.0)]], None, TypeError, "evidence"),
        ((0.0, 1.0), 0, ValueError, "seeds"),
        ((0.0, 1.0), True, ValueError, "seeds"),
    ],
)
def test_claim_result_bad_evidence(evidence: object, seeds: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        claim_result("camuto.fig4", "holds", "x", evidence=evidence, seeds=seeds)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        (["holds", "holds"], "holds"),
        (["holds", "holds approximately"], "holds approximately"),
        (["holds", "inconclusive"], "inconclusive"),
        (["holds approximately", "inconclusive", "did not reproduce"], "did not reproduce"),
        (["did not reproduce"], "did not reproduce"),
        (("inconclusive", "inconclusive"), "inconclusive"),
    ],
)
def test_combine_takes_the_weakest(parts: list, expected: str) -> None:
    from gni_lib.verdicts import combine

    assert combine(parts) == expected


@pytest.mark.parametrize(("bad", "error"), [([], ValueError), (["holds", "maybe"], ValueError), ("holds", TypeError)])
def test_combine_bad_input(bad: object, error: type) -> None:
    from gni_lib.verdicts import combine

    with pytest.raises(error, match="verdicts"):
        combine(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("intervals", "expected"),
    [
        ([(0.9, 1.1), (0.85, 1.2)], "holds"),
        ([(0.9, 1.1), (0.6, 0.7)], "holds approximately"),  # one part only in the weaker reading
        ([(0.6, 0.75), (0.25, 0.9)], "did not reproduce"),  # part 1 excludes the claim; part 2 undecided
        ([(0.7, 0.9), (0.25, 0.9)], "inconclusive"),  # no part excludes the claim, not all inside
        ([(-0.2, 0.3), (0.9, 1.1)], "did not reproduce"),
    ],
)
def test_joint_verdict_is_the_verdict_of_the_box(intervals: list, expected: str) -> None:
    from gni_lib.verdicts import joint_verdict

    assert joint_verdict(intervals, claim=(0.8, 1.25), approx=(0.5, 2.0)) == expected


def test_joint_verdict_differs_from_combining_labels_only_where_documented() -> None:
    from gni_lib.verdicts import combine, joint_verdict, verdict

    intervals = [(0.6, 0.75), (0.25, 0.9)]
    labels = [verdict(*i, claim=(0.8, 1.25), approx=(0.5, 2.0)) for i in intervals]
    assert labels == ["holds approximately", "inconclusive"]
    assert combine(labels) == "inconclusive"
    assert joint_verdict(intervals, claim=(0.8, 1.25), approx=(0.5, 2.0)) == "did not reproduce"


def test_joint_verdict_per_part_regions_and_bad_input() -> None:
    from gni_lib.verdicts import joint_verdict

    assert joint_verdict([(1.0, 2.0), (-2.0, -1.0)], claim=[(0, math.inf), (-math.inf, 0)]) == "holds"
    with pytest.raises(ValueError, match="claim must give one region per interval"):
        joint_verdict([(1.0, 2.0)], claim=[(0, 1), (0, 2)])
    with pytest.raises(ValueError, match="intervals"):
        joint_verdict([], claim=(0, 1))
    with pytest.raises(TypeError, match="intervals"):
        joint_verdict([1.0], claim=(0, 1))
