"""Does a cell reproduce the paper? A verdict from our seeds, never from a fixed tolerance.

With n ≥ 2 seeds, ours is a 95 % Student-t interval on the seed mean, widened by the paper's printed
std when it prints one:

    mean ± t(0.975, n−1) · sqrt(s²/n + s_paper²)

(s: our sample std, ddof=1). The paper's std enters whole, not divided by the square root of its own
run count, because the papers do not always say how many runs it is over: the interval is the wider,
more lenient one. The cell *reproduces* when the paper's number lies inside the interval and is
*outside* otherwise. One seed has no spread, so it gets no verdict; Δ = ours − paper is shown always.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mmbench.results.aggregate import Aggregate

CONFIDENCE = 0.95
REPRODUCED, OUTSIDE, ONE_SEED = "reproduced", "outside", "1 seed"
MARK = {REPRODUCED: "✓ in CI", OUTSIDE: "✗ outside CI", ONE_SEED: "1 seed: no verdict"}


@dataclass(frozen=True)
class Verdict:
    status: str  # REPRODUCED, OUTSIDE or ONE_SEED
    low: float | None = None
    high: float | None = None


def t_quantile(probability: float, df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(probability, df))


def interval(ours: Aggregate, paper_std: float | None) -> tuple[float, float] | None:
    """Our 95 % interval for the paper's number (None below 2 seeds)."""
    if ours.n < 2:
        return None
    spread = math.sqrt(ours.std ** 2 / ours.n + (paper_std or 0.0) ** 2)
    half = t_quantile(0.5 + CONFIDENCE / 2, ours.n - 1) * spread
    return ours.mean - half, ours.mean + half


def verdict(ours: Aggregate | None, paper: float | None, paper_std: float | None) -> Verdict | None:
    """None when there is nothing to compare (no run or no paper number)."""
    if ours is None or paper is None:
        return None
    bounds = interval(ours, paper_std)
    if bounds is None:
        return Verdict(ONE_SEED)
    low, high = bounds
    return Verdict(REPRODUCED if low <= paper <= high else OUTSIDE, low, high)


def summary(verdicts: list[Verdict | None], compared: int) -> str:
    """`k of m cells reproduced, j outside, i without verdict` over the m cells that have a paper
    number and an mmbench row; those not run yet are counted apart."""
    done = [v for v in verdicts if v is not None]
    count = {status: sum(v.status == status for v in done) for status in MARK}
    not_run = compared - len(done)
    return (f"{count[REPRODUCED]} of {compared} cells reproduced, {count[OUTSIDE]} outside, "
            f"{count[ONE_SEED]} without verdict (1 seed)" + (f", {not_run} not run" if not_run else ""))
