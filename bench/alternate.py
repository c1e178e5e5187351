"""Timing contenders in alternation, the way every bench here compares things.

This machine's speed drifts by tens of percent over minutes, so contenders timed in blocks one after the
other were compared at different speeds (a ratio moved from 0.82 to 0.98 between two runs). Each round
times every contender once, in the same order; a figure is the median over rounds, and a ratio the median of
the rounds' own ratios, so that drift falls on all contenders alike.
"""

import statistics
import time
from typing import Callable


def alternate(actions: dict[str, Callable[[], object]], rounds: int,
              before: Callable[[str], object] | None = None) -> dict[str, list[float]]:
    """Seconds each action took in each round. `before(name)`, if given, runs untimed before each timed
    action (a pause, a few warm-up calls)."""
    seconds: dict[str, list[float]] = {name: [] for name in actions}
    for _ in range(rounds):
        for name, action in actions.items():
            if before is not None:
                before(name)
            started = time.perf_counter()
            action()
            seconds[name].append(time.perf_counter() - started)
    return seconds


def median_ratio(numerators: list[float], denominators: list[float]) -> float:
    """The median of the rounds' own ratios."""
    return statistics.median(a / b for a, b in zip(numerators, denominators))
