"""Where a frame's time goes: seconds per pipeline stage, summed as the engine runs.

The engine records into a StageTimes as it works (a perf_counter pair per stage, negligible
next to any stage); the speed benchmark divides by the frames processed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class StageTimes:
    """Seconds and calls per named stage; stages recorded from different threads use different names."""

    def __init__(self) -> None:
        self._seconds: dict[str, float] = {}
        self._calls: dict[str, int] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the enclosed block as one call of `name`."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        self._seconds[name] = self._seconds.get(name, 0.0) + seconds
        self._calls[name] = self._calls.get(name, 0) + 1

    def per_frame_ms(self, frames: int) -> dict[str, float]:
        """Milliseconds each stage costs per processed frame, in the order stages were first seen."""
        if frames <= 0:
            return {}
        return {name: seconds * 1000.0 / frames for name, seconds in dict(self._seconds).items()}
