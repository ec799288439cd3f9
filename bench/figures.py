"""What the benchmarks share: how a latency percentile is taken (the same way in every script)."""

from __future__ import annotations

import statistics


def percentile(samples: list[float], p: int) -> float:
    """The p-th percentile of `samples` (inclusive method: p100 is the largest sample)."""
    return statistics.quantiles(samples, n=100, method="inclusive")[p - 1]
