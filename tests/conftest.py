"""Test-wide settings: offline, quiet, and a private model cache shared by the whole test run."""

import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["UNLEARNKIT_PROGRESS"] = "0"

# One cache per test run, so tests never depend on (or pollute) the user's cache. Parallel workers
# (pytest-xdist) share it: cache entries are written atomically, so the first to finish wins.
_run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
if _run:
    _cache = Path(tempfile.gettempdir()) / f"unlearnkit-test-cache-{_run}"
    _cache.mkdir(exist_ok=True)
    os.environ["UNLEARNKIT_CACHE"] = str(_cache)
    import torch

    torch.set_num_threads(1)  # one core per worker; two workers fill a 2-core machine
else:
    os.environ["UNLEARNKIT_CACHE"] = tempfile.mkdtemp(prefix="unlearnkit-test-cache-")
