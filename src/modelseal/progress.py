"""Progress reporting: library calls take an optional callback fed with bytes processed."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[int], None]


def no_progress(_: int) -> None:
    return None
