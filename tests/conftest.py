"""Test-wide settings: offline, quiet, and a private model cache shared by the whole test run."""

import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["UNLEARNKIT_PROGRESS"] = "0"

# One cache per test run, so tests never depend on (or pollute) the user's cache. The first process to
# load this file (pytest, or pytest-xdist's controller, which starts the workers after) makes it and removes
# it when the run ends; workers and the processes tests start inherit it. Workers share its entries: a
# reference model two of them need at once is built by one while the other waits.
_OWN_CACHE = "UNLEARNKIT_TEST_CACHE" not in os.environ
if _OWN_CACHE:
    os.environ["UNLEARNKIT_TEST_CACHE"] = tempfile.mkdtemp(prefix="unlearnkit-test-cache-")
os.environ["UNLEARNKIT_CACHE"] = os.environ["UNLEARNKIT_TEST_CACHE"]
if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    torch.set_num_threads(1)  # one core per worker; two workers fill a 2-core machine


def pytest_unconfigure(config):
    """Remove the run's cache, in the process that made it."""
    if _OWN_CACHE:
        shutil.rmtree(os.environ["UNLEARNKIT_TEST_CACHE"], ignore_errors=True)
