"""Step load for finding the knee: every --step-time seconds add --step-users users, up to --step-max-users.

Opt-in: `locust -f loadtest/locustfile.py --step-load ...` (or BERTQA_STEP_LOAD=1), or load this file as a
second locustfile: `locust -f loadtest/locustfile.py,loadtest/shapes.py ...`. The options are registered by
loadtest/locustfile.py. The time limit is `-t/--run-time`; without it the shape stops after holding the
maximum for one step. At each step change and at the end it logs the step's own throughput and
percentiles (not the cumulative ones), which is the table to read the knee from.
"""

from __future__ import annotations

import logging
import math
import time

from locust import LoadTestShape

logger = logging.getLogger("bertqa.stepload")


def step_time_limit(step_users: int, step_time_s: float, max_users: int) -> float:
    """Default duration: ramp to max_users, then hold it for one more step."""
    return step_time_s * (math.ceil(max_users / step_users) + 1)


def users_at(elapsed_s: float, step_users: int, step_time_s: float, max_users: int) -> int:
    return min(max_users, step_users * (int(elapsed_s // step_time_s) + 1))


def percentile(histogram: dict[int, int], fraction: float) -> float:
    """The response time (ms, locust's rounded buckets) below which `fraction` of the requests fall."""
    total = sum(histogram.values())
    if total == 0:
        return 0.0
    rank = math.ceil(total * fraction)
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= rank:
            return float(value)
    return float(max(histogram))


class StepLoadShape(LoadTestShape):
    use_common_options = True  # -t/--run-time is the time limit; -u/-r are ignored (see the step options)

    def __init__(self):
        super().__init__()
        self._reset_steps()

    def reset_time(self):
        super().reset_time()
        self._reset_steps()

    def _reset_steps(self):
        self._step_users_now = 0
        self._step_began = time.perf_counter()
        self._step_requests = 0
        self._step_failures = 0
        self._step_histogram: dict[int, int] = {}
        self.steps: list[dict] = []

    def _settings(self) -> tuple[int, float, int, float]:
        options = self.runner.environment.parsed_options
        step_users = max(1, int(options.step_users))
        step_time = max(1.0, float(options.step_time))
        max_users = max(step_users, int(options.step_max_users))
        limit = float(options.run_time) if options.run_time else step_time_limit(step_users, step_time, max_users)
        return step_users, step_time, max_users, limit

    def _close_step(self) -> None:
        """Records the finished step's throughput and latency from the delta of the total stats."""
        if self._step_users_now == 0:
            return
        total = self.runner.stats.total
        now = time.perf_counter()
        histogram = {
            k: v - self._step_histogram.get(k, 0)
            for k, v in total.response_times.items()
            if v - self._step_histogram.get(k, 0) > 0
        }
        requests = total.num_requests - self._step_requests
        seconds = max(now - self._step_began, 1e-9)
        step = {
            "users": self._step_users_now,
            "seconds": round(seconds, 1),
            "requests": requests,
            "failures": total.num_failures - self._step_failures,
            "rps": requests / seconds,
            "p50_ms": percentile(histogram, 0.50),
            "p95_ms": percentile(histogram, 0.95),
            "p99_ms": percentile(histogram, 0.99),
        }
        self.steps.append(step)
        logger.info(
            "step %(users)3d users: %(rps)8.1f req/s  p50 %(p50_ms).0f ms  p95 %(p95_ms).0f ms  "
            "p99 %(p99_ms).0f ms  failures %(failures)d  (%(seconds)s s)",
            step,
        )

    def _open_step(self, users: int) -> None:
        total = self.runner.stats.total
        self._step_users_now = users
        self._step_began = time.perf_counter()
        self._step_requests = total.num_requests
        self._step_failures = total.num_failures
        self._step_histogram = dict(total.response_times)

    def tick(self):
        step_users, step_time, max_users, limit = self._settings()
        elapsed = self.get_run_time()
        if elapsed >= limit:
            self._close_step()
            self._step_users_now = 0
            return None
        users = users_at(elapsed, step_users, step_time, max_users)
        if users != self._step_users_now:
            self._close_step()
            self._open_step(users)
        return users, float(step_users)  # each step's users start within about a second
