"""A rich progress bar that stays quiet where nobody watches (tests, CI, pipes)."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator


def progress_enabled() -> bool:
    """Bars show when stderr (where they draw) is an interactive terminal, unless ``UNLEARNKIT_PROGRESS`` is
    ``0``/``false``/``no``/``off`` (any case); ``1``/``true``/``yes``/``on`` shows them anywhere. Unset or
    empty: the terminal decides. Under a launcher (``torchrun``, ``accelerate launch``) only the process of rank 0
    draws, so several processes sharing one terminal do not interleave their bars."""
    if os.environ.get("RANK", "0").strip() not in ("", "0"):
        return False
    flag = os.environ.get("UNLEARNKIT_PROGRESS", "").strip().lower()
    if flag:
        return flag not in ("0", "false", "no", "off")
    return sys.stderr.isatty()


class _Bar:
    def __init__(self, progress, task) -> None:
        self._progress, self._task = progress, task

    def advance(self, n: int = 1, **fields: object) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=n, **fields)


@contextmanager
def progress_bar(description: str, total: int | None, *, loss: bool = True) -> Iterator[_Bar]:
    """Yield an object with ``advance(n, loss=...)``; draws a bar on stderr only when enabled (stdout is left
    to results, so piping it never catches a bar). ``loss=False`` leaves out the loss column (work that
    trains nothing)."""
    if not progress_enabled():
        yield _Bar(None, None)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *([TextColumn("loss {task.fields[loss]}")] if loss else []),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    forced = os.environ.get("UNLEARNKIT_PROGRESS", "").strip() != ""  # asked for: drawn into a file or pipe too
    with Progress(*columns, transient=True, console=Console(stderr=True, force_terminal=forced or None)) as progress:
        task = progress.add_task(description, total=total, loss="-")
        yield _Bar(progress, task)


def quiet_library_bars() -> None:
    """Silence Hugging Face's own bars (e.g. "Loading weights") where unlearnkit draws none, so a refusal
    that follows a model load stays one line on stderr (and processes of rank > 0 draw no bar over rank 0's)."""
    if progress_enabled():
        return
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
