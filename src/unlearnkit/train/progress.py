"""A rich progress bar that stays quiet where nobody watches (tests, CI, pipes)."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator


def progress_enabled() -> bool:
    """Bars show on an interactive terminal unless ``UNLEARNKIT_PROGRESS=0``."""
    flag = os.environ.get("UNLEARNKIT_PROGRESS")
    if flag is not None:
        return flag not in ("0", "false", "no")
    return sys.stderr.isatty()


class _Bar:
    def __init__(self, progress, task) -> None:
        self._progress, self._task = progress, task

    def advance(self, n: int = 1, **fields: object) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=n, **fields)


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[_Bar]:
    """Yield an object with ``advance(n, loss=...)``; draws a bar only when enabled."""
    if not progress_enabled():
        yield _Bar(None, None)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task(description, total=total, loss="-")
        yield _Bar(progress, task)


def quiet_library_bars() -> None:
    """Silence Hugging Face's own bars (e.g. "Loading weights") where unlearnkit draws none, so a refusal
    that follows a model load stays one line on stderr."""
    if progress_enabled():
        return
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
