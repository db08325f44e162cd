"""Progress bars on stderr (rich), shown only for long work on an interactive terminal."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

_MIN_BYTES = 64 << 20


@contextlib.contextmanager
def bar(description: str, total: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    if not enabled or total < _MIN_BYTES or not sys.stderr.isatty():
        yield lambda _n: None
        return
    console = Console(stderr=True)
    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)
