"""Wall time and peak memory of a block of work."""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:  # not Linux: fall back to the process-lifetime peak
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, other systems KiB


def resident_mb() -> float:
    """The process's resident memory now, in MiB."""
    return _rss_bytes() / 2**20


@dataclass
class Measurement:
    """Seconds elapsed and peak memory (MiB): GPU allocations on CUDA, else resident set size."""

    seconds: float = 0.0
    peak_mem_mb: float = 0.0


class measure:
    """Context manager: time a block and sample its peak memory every 5 ms in a thread."""

    def __init__(self) -> None:
        self.result = Measurement()
        self._stop = threading.Event()
        self._peak = 0

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, _rss_bytes())

    def __enter__(self) -> Measurement:
        self._cuda = torch.cuda.is_available()
        if self._cuda:
            torch.cuda.reset_peak_memory_stats()
        self._peak = _rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self._start = time.perf_counter()
        return self.result

    def __exit__(self, *exc: object) -> None:
        if self._cuda:
            torch.cuda.synchronize()  # kernels still queued belong to the block's time
        self.result.seconds = time.perf_counter() - self._start
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, _rss_bytes())
        peak = torch.cuda.max_memory_allocated() if self._cuda else self._peak
        self.result.peak_mem_mb = peak / 2**20
