"""A ratio of two measurements taken in alternating rounds, reported as the median of the rounds' ratios.

Measured on the 2-core VM these benchmarks run on: the same 1024x1024 FP32 matmul loop ran 55-67 GFLOP/s
from one second to the next, and one in-process pass over the same 200 SQuAD questions ran 68-89
questions/s in three passes a minute apart. A ratio of two figures measured minutes apart inherits that
drift; measured in alternating rounds, a slow spell slows both sides of a round alike.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class PairedRatio:
    numerators: list[float] = field(default_factory=list)
    denominators: list[float] = field(default_factory=list)

    @property
    def ratios(self) -> list[float]:
        return [n / d for n, d in zip(self.numerators, self.denominators)]

    @property
    def median(self) -> float:
        return statistics.median(self.ratios)

    def as_dict(self) -> dict:
        return {"numerators": self.numerators, "denominators": self.denominators, "ratios": self.ratios,
                "median_ratio": self.median, "median_numerator": statistics.median(self.numerators),
                "median_denominator": statistics.median(self.denominators)}


def paired_rounds(numerator: Callable[[], float], denominator: Callable[[], float], rounds: int,
                  on_round: Callable[[int, float, float], None] | None = None) -> PairedRatio:
    """``rounds`` rounds of both measurements; the order alternates (denominator first in even rounds), so
    neither side always runs right after the other."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    paired = PairedRatio()
    for index in range(rounds):
        if index % 2 == 0:
            d = denominator()
            n = numerator()
        else:
            n = numerator()
            d = denominator()
        if n <= 0 or d <= 0:
            raise ValueError(f"round {index + 1}: measurements must be positive, got {n} and {d}")
        paired.numerators.append(n)
        paired.denominators.append(d)
        if on_round:
            on_round(index, n, d)
    return paired
