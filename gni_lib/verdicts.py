r"""Verdicts on empirical claims, computed from an interval (``DESIGN.md`` section 5a).

An identity is asserted; a claim about training is *judged*. The chapter fixes in
advance a statistic, the region of its values that the paper's claim asserts
(``claim``), and optionally a wider region in which the claim holds in direction
but not in size (``approx``). An interval for the statistic, over enough seeds,
then gives exactly one of four verdicts:

=======================  ==========================================================
``holds``                the interval lies inside ``claim``
``holds approximately``  it lies inside ``approx`` but not inside ``claim``
``did not reproduce``    it is disjoint from ``claim`` (and not inside ``approx``)
``inconclusive``         anything else: it is too wide to say
=======================  ==========================================================

The verdict depends on the whole interval, never on the point estimate alone; it
is the same in every random stream only if the interval is far from every boundary
compared with its width (``make robustness`` checks this). :func:`record_claim`
glues a claim's verdict and measured summary under the keys the claims ledger reads.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ._checks import check_interval
from .stats import mean_and_se, t_interval

__all__ = ["VERDICTS", "Judgement", "verdict", "judge", "combine", "joint_verdict", "record_claim", "claim_result", "verdict_key", "ledger_key", "result_key"]

#: The four verdicts, in the order the ledger counts them.
VERDICTS = ("holds", "holds approximately", "did not reproduce", "inconclusive")

Region = tuple[float, float]


def _check_region(region: object, name: str) -> Region:
    if not isinstance(region, (tuple, list)) or len(region) != 2 or any(
        isinstance(v, bool) or not isinstance(v, numbers.Real) or math.isnan(v) for v in region
    ):
        raise TypeError(f"{name} must be a pair (low, high) of real numbers, got {region!r}")
    if region[0] >= region[1]:
        raise ValueError(f"{name} must have low < high, got {region!r}")
    return float(region[0]), float(region[1])


def verdict(low: float, high: float, *, claim: Region, approx: Region | None = None) -> str:
    r"""The verdict on a claim whose statistic has the interval :math:`[\text{low}, \text{high}]`.

    Args:
        low, high: the interval, finite, ``low <= high``.
        claim: ``(a, b)``, the values the claim asserts, :math:`a < b`; either end
            may be infinite (``(0, math.inf)``: "the effect is positive").
        approx: ``(a', b')`` containing ``claim``, where the claim holds in direction
            but not in size; ``None``: no weaker reading.

    Returns:
        one of :data:`VERDICTS`.

    Raises:
        TypeError: if an argument is not of the form above.
        ValueError: if the interval is not finite or reversed, a region is empty,
            or ``approx`` does not contain ``claim``.
    """
    low, high = check_interval(low, high)
    a, b = _check_region(claim, "claim")
    if approx is not None:
        a2, b2 = _check_region(approx, "approx")
        if a2 > a or b2 < b:
            raise ValueError(f"approx must contain claim, got approx={approx!r}, claim={claim!r}")
    if a < low and high < b:
        return VERDICTS[0]
    if approx is not None and a2 < low and high < b2:
        return VERDICTS[1]
    if high <= a or low >= b:
        return VERDICTS[2]
    return VERDICTS[3]


@dataclass(frozen=True)
class Judgement:
    """A statistic over seeds, its interval and the verdict drawn from it."""

    mean: float
    se: float
    low: float
    high: float
    n: int
    level: float
    verdict: str

    def interval_text(self, fmt: str = ".3g") -> str:
        """``"0.12 [0.05, 0.19] (95% t-interval, 20 seeds)"``."""
        return (
            f"{self.mean:{fmt}} [{self.low:{fmt}}, {self.high:{fmt}}] "
            f"({100 * self.level:g}% t-interval, {self.n} seeds)"
        )


def judge(
    values: Sequence[float] | torch.Tensor | np.ndarray,
    *,
    claim: Region,
    approx: Region | None = None,
    level: float = 0.95,
) -> Judgement:
    r"""Judge a claim from per-seed values of its statistic, by their Student-:math:`t` interval.

    ``values``: :math:`n \ge 2` independent per-seed values, shape ``(n,)``;
    ``claim``, ``approx``: as in :func:`verdict`; ``level`` in :math:`(0, 1)`.

    Raises:
        TypeError, ValueError: as :func:`gni_lib.stats.t_interval` and :func:`verdict`.
    """
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().reshape(-1).numpy()
    low, high = t_interval(values, level)
    mean, se = mean_and_se(values)
    n = int(np.asarray(values).size)
    return Judgement(mean, se, low, high, n, level, verdict(low, high, claim=claim, approx=approx))


def combine(verdicts: Sequence[str]) -> str:
    """One verdict for a claim checked by several statistics, each of which must hold.

    All the same: that verdict. Otherwise the weakest: ``did not reproduce`` (one
    part excluded excludes the claim), then ``inconclusive``, then ``holds approximately``.

    Raises:
        ValueError: if ``verdicts`` is empty or holds a string not in :data:`VERDICTS`.
        TypeError: if it is not a sequence of strings.
    """
    if isinstance(verdicts, str) or not isinstance(verdicts, (Sequence, set, frozenset)):
        raise TypeError(f"verdicts must be a sequence of verdict strings, got {type(verdicts).__name__}")
    found = set(verdicts)
    if not found:
        raise ValueError("verdicts must hold at least one verdict")
    unknown = found - set(VERDICTS)
    if unknown:
        raise ValueError(f"verdicts must each be one of {VERDICTS}, got {sorted(map(repr, unknown))}")
    if len(found) == 1:
        return found.pop()
    return next((weakest for weakest in VERDICTS[2:] if weakest in found), VERDICTS[1])


def joint_verdict(
    intervals: Sequence[tuple[float, float]],
    *,
    claim: Region | Sequence[Region],
    approx: Region | Sequence[Region] | None = None,
) -> str:
    r"""The verdict on a claim that *every* one of several statistics lies in its region.

    :func:`verdict`'s rule applied to the box of intervals
    :math:`I_1 \times \dots \times I_k`, the claim being the box
    :math:`C_1 \times \dots \times C_k` and its weaker reading :math:`A_1 \times \dots \times A_k`:

    - ``holds``: every :math:`I_i \subset C_i`;
    - ``holds approximately``: every :math:`I_i \subset A_i`, not all inside :math:`C_i`;
    - ``did not reproduce``: otherwise, if some :math:`I_i` is disjoint from :math:`C_i`;
    - ``inconclusive``: otherwise.

    Unlike :func:`combine` of the parts' verdicts, a part that holds approximately
    *and* excludes its claimed region, beside an inconclusive part, gives ``did not
    reproduce`` here. With intervals at level :math:`1 - \alpha` each, the box covers
    the vector with probability at least :math:`1 - k\alpha`.

    Args:
        intervals: ``[(low, high), ...]``, one per statistic.
        claim: one region for all statistics, or one per statistic.
        approx: likewise, or ``None`` (no weaker reading).

    Raises:
        TypeError, ValueError: as :func:`verdict`, and if the numbers of intervals
            and regions differ or no interval is given.
    """
    if isinstance(intervals, (str, bytes)) or not isinstance(intervals, Sequence) or not intervals:
        raise ValueError("intervals must be a non-empty sequence of (low, high) pairs")
    count = len(intervals)

    def per_part(regions: object, name: str) -> list:
        if regions is None:
            return [None] * count
        if isinstance(regions, (tuple, list)) and regions and isinstance(regions[0], (tuple, list)):
            if len(regions) != count:
                raise ValueError(f"{name} must give one region per interval ({count}), got {len(regions)}")
            return list(regions)
        return [regions] * count

    claims, approxes = per_part(claim, "claim"), per_part(approx, "approx")
    found, disjoint = [], False
    for interval, c, a in zip(intervals, claims, approxes):
        if not isinstance(interval, (tuple, list)) or len(interval) != 2:
            raise TypeError(f"intervals must hold (low, high) pairs, got {interval!r}")
        found.append(verdict(*interval, claim=c, approx=a))
        disjoint |= verdict(*interval, claim=c) == VERDICTS[2]  # disjoint from the claimed region
    if all(v == VERDICTS[0] for v in found):
        return VERDICTS[0]
    if all(v in VERDICTS[:2] for v in found):
        return VERDICTS[1]
    return VERDICTS[2] if disjoint else VERDICTS[3]


def _check_claim_id(claim_id: object) -> None:
    if not isinstance(claim_id, str) or "." not in claim_id or " " in claim_id:
        raise ValueError(f"claim_id must look like 'paper.claim', got {claim_id!r}")


def _glue_key(prefix: str, claim_id: str) -> str:
    _check_claim_id(claim_id)
    return prefix + claim_id.replace(".", "_")


def verdict_key(claim_id: str) -> str:
    """The glue key of a claim's verdict: ``verdict_`` and the id with dots as underscores."""
    return _glue_key("verdict_", claim_id)


def ledger_key(claim_id: str) -> str:
    """The glue key of a claim's measured summary: ``ledger_`` and the id with dots as underscores."""
    return _glue_key("ledger_", claim_id)


def result_key(claim_id: str) -> str:
    """The glue key of a claim's full result: ``result_`` and the id with dots as underscores."""
    return _glue_key("result_", claim_id)


def _evidence_intervals(evidence: object) -> tuple[list[list[float]], int | None, float | None]:
    """Intervals, seeds and level from a Judgement, a (low, high) pair, or a sequence of either."""
    if evidence is None:
        return [], None, None
    if isinstance(evidence, Judgement):
        return [[evidence.low, evidence.high]], evidence.n, evidence.level
    if isinstance(evidence, (tuple, list)) and len(evidence) == 2 and all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) for v in evidence
    ):
        low, high = (float(v) for v in evidence)
        if math.isnan(low) or math.isnan(high) or low > high:
            raise ValueError(f"evidence must be an interval (low, high) with low <= high, got {evidence!r}")
        return [[low, high]], None, None
    if isinstance(evidence, (tuple, list)) and evidence:
        intervals, seeds, level = [], set(), set()
        for part in evidence:
            found, n, lev = _evidence_intervals(part)
            if not found or isinstance(part, (tuple, list)) and len(found) != 1:
                raise TypeError(f"evidence must hold Judgements or (low, high) pairs, got {part!r}")
            intervals += found
            seeds.add(n)
            level.add(lev)
        return intervals, (seeds.pop() if len(seeds) == 1 else None), (level.pop() if len(level) == 1 else None)
    raise TypeError(f"evidence must be a Judgement, a (low, high) pair or a sequence of them, got {evidence!r}")


def claim_result(
    claim_id: str, verdict_text: str, measured: str, *, evidence: object = None, seeds: int | None = None
) -> dict:
    """The record of one claim's check that :func:`record_claim` glues as JSON under :func:`result_key`.

    Keys: ``claim``, ``verdict``, ``measured``, ``intervals`` (those the verdict was
    drawn from, ``[[low, high], ...]``, possibly empty), ``seeds`` and ``level``
    (``None`` where unknown), ``scale`` (:func:`gni_lib.scale.get_scale`) and
    ``settings`` (:func:`gni_lib.scale.settings` at the call).

    Raises:
        ValueError, TypeError: as :func:`record_claim`.
    """
    from .scale import get_scale, settings

    _check_claim_id(claim_id)
    if verdict_text not in VERDICTS:
        raise ValueError(f"verdict_text must be one of {VERDICTS}, got {verdict_text!r}")
    if not isinstance(measured, str) or not measured.strip():
        raise TypeError(f"measured must be a non-empty string, got {measured!r}")
    intervals, n, level = _evidence_intervals(evidence)
    if seeds is not None:
        if isinstance(seeds, bool) or not isinstance(seeds, numbers.Integral) or seeds < 1:
            raise ValueError(f"seeds must be a positive integer, got {seeds!r}")
        n = int(seeds)
    return {
        "claim": claim_id,
        "verdict": verdict_text,
        "measured": measured,
        "intervals": intervals,
        "seeds": n,
        "level": level,
        "scale": get_scale(),
        "settings": settings(),
    }


def record_claim(
    claim_id: str, verdict_text: str, measured: str, *, evidence: object = None, seeds: int | None = None
) -> None:
    """Glue a claim's verdict, its one-line measured summary and its full result for the claims ledger.

    Glues (myst-nb's ``glue``, nothing displayed) ``verdict_text`` under
    :func:`verdict_key`, ``measured`` under :func:`ledger_key` and the JSON of
    :func:`claim_result` (read by ``make results``) under :func:`result_key`. Call it
    once per claim, in the chapter that checks it.

    Args:
        evidence: the interval(s) the verdict was drawn from: a :class:`Judgement`,
            a ``(low, high)`` pair, or a sequence of either (a joint claim).
        seeds: the number of seeds, where ``evidence`` does not carry it.

    Raises:
        ValueError: if ``claim_id`` is malformed, ``verdict_text`` is not one of
            :data:`VERDICTS`, an interval has low > high, or ``seeds`` is not positive.
        TypeError: if ``measured`` is not a non-empty string or ``evidence`` has another type.
    """
    import json

    result = claim_result(claim_id, verdict_text, measured, evidence=evidence, seeds=seeds)
    from myst_nb import glue  # imported here: gni_lib needs myst-nb only inside a chapter

    glue(verdict_key(claim_id), verdict_text, display=False)
    glue(ledger_key(claim_id), measured, display=False)
    glue(result_key(claim_id), json.dumps(result, default=repr, ensure_ascii=False), display=False)
