"""Test-wide settings: offline, quiet, and a private model cache shared by the whole session."""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["UNLEARNKIT_PROGRESS"] = "0"
# One cache per test session, so tests never depend on (or pollute) the user's cache.
os.environ["UNLEARNKIT_CACHE"] = tempfile.mkdtemp(prefix="unlearnkit-test-cache-")
