"""Aggregation over seeds: every seed's value is kept; mean, sample std (ddof=1) and n."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

STD_DDOF = 1  # sample standard deviation, stated in every report


@dataclass(frozen=True)
class Aggregate:
    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if self.n > 1 else None


def metric_value(run: dict, split: str, metric: str) -> float | None:
    return (run.get("metrics", {}).get(split) or {}).get(metric)


def aggregate(runs: list[dict], split: str, metric: str) -> Aggregate | None:
    values = [v for v in (metric_value(r, split, metric) for r in runs) if v is not None]
    return Aggregate(tuple(values)) if values else None
