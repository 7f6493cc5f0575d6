"""What a single-server queue with deterministic service allows (M/D/1), for the MLPerf Server scenario.

The Server scenario offers Poisson arrivals and asks for the highest rate whose p99 latency stays
within a bound (MLPerf BERT: 130 ms). For a server that answers one request at a time in a fixed
``service_s``, the p99 of the time in system (waiting + service) at arrival rate ``rate`` follows
from Lindley's recursion; it is simulated here (seeded, so the figure is reproducible).
"""

from __future__ import annotations

import numpy as np


def md1_p99(rate: float, service_s: float, customers: int = 200_000, seed: int = 0) -> float:
    """p99 time in system (s) of an M/D/1 queue; inf when the queue is unstable (rate * service >= 1)."""
    return md1_percentile(rate, service_s, 99, customers, seed)


def md1_percentile(rate: float, service_s: float, percentile: float, customers: int = 200_000, seed: int = 0) -> float:
    """A percentile of the time in system (s) of an M/D/1 queue; inf when unstable (rate * service >= 1)."""
    if rate * service_s >= 1.0:
        return float("inf")
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, customers)
    wait = np.empty(customers)
    current = 0.0
    for i, gap in enumerate(gaps):  # Lindley: W_n+1 = max(0, W_n + D - A_n+1)
        wait[i] = current
        current = max(0.0, current + service_s - gap)
    return float(np.percentile(wait + service_s, percentile))


def md1_max_rate(service_s: float, p99_bound_s: float, tolerance: float = 0.005) -> float:
    """The highest Poisson rate (1/s) whose M/D/1 p99 time in system is within ``p99_bound_s``."""
    if service_s >= p99_bound_s:
        return 0.0
    low, high = 0.0, 1.0 / service_s
    while high - low > tolerance * high:
        middle = (low + high) / 2
        if md1_p99(middle, service_s) <= p99_bound_s:
            low = middle
        else:
            high = middle
    return low
