"""How every stage is timed: ``measure`` cuts a bounded run into windows, ``Rate`` holds their median and spread."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

WINDOWS = 5
SPREAD_LIMIT = 0.25


@dataclass
class Rate:
    """A rate measured over consecutive windows: median, spread and the raw window rates."""

    unit: str
    windows: list[float]
    extra: dict = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.windows) if self.windows else 0.0

    @property
    def spread(self) -> float:
        """(max − min) / median of the window rates."""
        if len(self.windows) < 2 or not self.median:
            return 0.0
        return (max(self.windows) - min(self.windows)) / self.median

    def as_dict(self) -> dict:
        return {"median": self.median, "unit": self.unit, "spread": round(self.spread, 3),
                "trusted": self.spread <= SPREAD_LIMIT, "windows": [round(w, 4) for w in self.windows], **self.extra}


def measure(step: Callable[[], float], seconds: float, warmup: int = 1, min_steps: int = WINDOWS) -> list[float]:
    """Call ``step`` (returning the amount it did) ``warmup`` times, then until ``seconds`` pass (at least
    ``min_steps`` calls); the calls are cut into up to WINDOWS consecutive windows, each giving amount / time."""

    def timed() -> tuple[float, float]:
        t0 = time.perf_counter()
        amount = step()
        return amount, time.perf_counter() - t0

    return measure_timed(timed, seconds, warmup, min_steps)


def measure_timed(step: Callable[[], tuple[float, float]], seconds: float, warmup: int = 1,
                  min_steps: int = WINDOWS) -> list[float]:
    """As ``measure``, for a ``step`` that times itself: it returns (amount, seconds it took), for work whose
    own clock leaves out what is not being measured (a process's start-up)."""
    for _ in range(warmup):
        step()
    done: list[tuple[float, float]] = []
    started = time.perf_counter()
    while len(done) < min_steps or time.perf_counter() - started < seconds:
        done.append(step())
    windows = np.array_split(np.arange(len(done)), min(WINDOWS, len(done)))
    return [sum(done[i][0] for i in w) / max(sum(done[i][1] for i in w), 1e-9) for w in windows if len(w)]
