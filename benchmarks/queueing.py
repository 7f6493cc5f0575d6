"""What a single-server FIFO queue allows under Poisson arrivals, for the MLPerf Server scenario.

The Server scenario offers Poisson arrivals and asks for the highest rate whose p99 latency stays
within a bound (MLPerf BERT: 130 ms). For a server that answers one request at a time, the p99 of the
time in system (waiting + service) at arrival rate ``rate`` follows from Lindley's recursion; it is
simulated here (seeded, so the figure is reproducible). M/D/1: every request takes the same
``service_s``. M/G/1: service times drawn from measured ones (real SQuAD questions differ: a long
context needs several windows), which is what a server without batching can at best do.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def mg1_percentile(rate: float, service_s: Sequence[float], percentile: float, customers: int = 200_000,
                   seed: int = 0) -> float:
    """A percentile of the time in system (s) of an M/G/1 queue whose service times are drawn from
    ``service_s``; inf when unstable (rate * mean service >= 1)."""
    samples = np.asarray(service_s, dtype=float)
    if rate * samples.mean() >= 1.0:
        return float("inf")
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, customers)
    service = samples[rng.integers(0, samples.size, customers)] if samples.size > 1 else np.full(customers, samples[0])
    wait = np.empty(customers)
    current = 0.0
    for i in range(customers):  # Lindley: W_n+1 = max(0, W_n + S_n - A_n+1)
        wait[i] = current
        current = max(0.0, current + service[i] - gaps[i])
    return float(np.percentile(wait + service, percentile))


def mg1_max_rate(service_s: Sequence[float], p99_bound_s: float, tolerance: float = 0.005) -> float:
    """The highest Poisson rate (1/s) whose M/G/1 p99 time in system is within ``p99_bound_s``."""
    samples = np.asarray(service_s, dtype=float)
    if mg1_percentile(1e-6, samples, 99, customers=20_000) > p99_bound_s:  # the service alone breaks the bound
        return 0.0
    low, high = 0.0, 1.0 / samples.mean()
    while high - low > tolerance * high:
        middle = (low + high) / 2
        if mg1_percentile(middle, samples, 99) <= p99_bound_s:
            low = middle
        else:
            high = middle
    return low


def md1_p99(rate: float, service_s: float, customers: int = 200_000, seed: int = 0) -> float:
    """p99 time in system (s) of an M/D/1 queue; inf when the queue is unstable (rate * service >= 1)."""
    return md1_percentile(rate, service_s, 99, customers, seed)


def md1_percentile(rate: float, service_s: float, percentile: float, customers: int = 200_000, seed: int = 0) -> float:
    """A percentile of the time in system (s) of an M/D/1 queue; inf when unstable (rate * service >= 1)."""
    return mg1_percentile(rate, [service_s], percentile, customers, seed)


def md1_max_rate(service_s: float, p99_bound_s: float, tolerance: float = 0.005) -> float:
    """The highest Poisson rate (1/s) whose M/D/1 p99 time in system is within ``p99_bound_s``."""
    if service_s >= p99_bound_s:
        return 0.0
    return mg1_max_rate([service_s], p99_bound_s, tolerance)
