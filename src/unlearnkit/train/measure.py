"""Wall time and peak memory of a block of work."""

from __future__ import annotations

import ctypes
import gc
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


def _release_freed_memory() -> None:
    """Collect garbage and hand the C heap's free pages back to the OS (glibc ``malloc_trim``), so that the
    growth of the resident set over a block's start is the block's own allocation, not reuse of memory
    that earlier work freed but the allocator kept (a no-op where there is no glibc)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_kernel_peak() -> bool:
    """Reset the kernel's record of the process's peak resident set (``VmHWM``) to the resident set now; False
    where it cannot be reset (not Linux, or ``/proc/self/clear_refs`` not writable)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _kernel_peak_bytes() -> int:
    """The kernel's record of the process's peak resident set (``VmHWM``), 0 where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def resident_mb() -> float:
    """The process's resident memory now, in MiB."""
    return _rss_bytes() / 2**20


@dataclass
class Measurement:
    """Seconds elapsed, peak memory and the memory the block added at its peak over its start (MiB): GPU
    allocations on CUDA, else the resident set size."""

    seconds: float = 0.0
    peak_mem_mb: float = 0.0
    added_mem_mb: float = 0.0


#: The blocks being measured, outermost first: a block that resets the peak (the kernel's on CPU, the allocator's
#: on CUDA) first hands the peak so far to the blocks around it.
_ACTIVE: list["measure"] = []


class measure:
    """Context manager: time a block and take its peak memory (on CPU, after handing freed memory back to the OS,
    so that ``added_mem_mb`` measures the block's own need).

    On CPU the peak is the kernel's high-water mark of the resident set, reset at the block's start (Linux), so an
    allocation freed again within microseconds counts; where the mark cannot be reset, a thread samples the
    resident set every 5 ms instead (and misses what lives shorter). On CUDA the figures are of GPU allocations
    (``torch.cuda.max_memory_allocated``, reset at the block's start). Blocks may nest: an outer block's peak
    includes what happened before, within and after the blocks inside it.
    """

    def __init__(self) -> None:
        self.result = Measurement()
        self._stop = threading.Event()
        self._peak = 0

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, _rss_bytes())

    def __enter__(self) -> Measurement:
        self._cuda = torch.cuda.is_available()
        self._thread = None
        if self._cuda:
            torch.cuda.synchronize()  # kernels queued before the block are not the block's time
            for outer in _ACTIVE:  # the reset below forgets their peak so far
                outer._peak = max(outer._peak, torch.cuda.max_memory_allocated())
            torch.cuda.reset_peak_memory_stats()
            _ACTIVE.append(self)
            self._start_bytes = self._peak = torch.cuda.memory_allocated()
        else:
            _release_freed_memory()
            for outer in _ACTIVE:  # the reset below forgets their peak so far (a block that could not reset the
                if outer._kernel_peak:  # peak samples its own: the kernel's would be the whole process's)
                    outer._peak = max(outer._peak, _kernel_peak_bytes())
            self._kernel_peak = _reset_kernel_peak()
            _ACTIVE.append(self)
            self._start_bytes = self._peak = _rss_bytes()
            if not self._kernel_peak:
                self._thread = threading.Thread(target=self._sample, daemon=True)
                self._thread.start()
        self._start = time.perf_counter()
        return self.result

    def __exit__(self, *exc: object) -> None:
        if self._cuda:
            torch.cuda.synchronize()  # kernels still queued belong to the block's time
        self.result.seconds = time.perf_counter() - self._start
        _ACTIVE.remove(self)
        if self._cuda:
            peak = max(self._peak, torch.cuda.max_memory_allocated())
        else:
            if self._thread is not None:
                self._stop.set()
                self._thread.join()
            peak = max(self._peak, _rss_bytes(), _kernel_peak_bytes() if self._kernel_peak else 0)
        self.result.peak_mem_mb = peak / 2**20
        self.result.added_mem_mb = max(peak - self._start_bytes, 0) / 2**20


#: The memory figures of a run (a :class:`Measurement` or a run record); a cached model's meta stores its
#: training's as ``train_<name>``.
MEMORY_FIELDS = ("peak_mem_mb", "added_mem_mb")


def memory_of(measured: object) -> dict[str, float]:
    """The memory figures of a measurement or run record, by name."""
    return {name: getattr(measured, name) for name in MEMORY_FIELDS}


def training_memory(measured: Measurement) -> dict[str, float]:
    """A training's memory figures as a cached model's meta stores them (``train_<name>``)."""
    return {f"train_{name}": value for name, value in memory_of(measured).items()}


def reference_memory(meta: dict) -> dict[str, float]:
    """A cached model's training memory figures by run name; NaN where its meta predates a figure."""
    return {name: meta.get(f"train_{name}", float("nan")) for name in MEMORY_FIELDS}
