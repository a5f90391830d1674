"""Content-addressed cache of reference models (``$UNLEARNKIT_CACHE`` or ``~/.cache/unlearnkit``)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

from ..io import atomic_dir, write_json_atomic

#: Bump when a recipe's code changes in a way that changes the trained weights.
RECIPE_VERSION = 1


def cache_root() -> Path:
    """The cache directory."""
    return Path(os.environ.get("UNLEARNKIT_CACHE") or Path.home() / ".cache" / "unlearnkit")  # set but empty: default


def cache_key(config: dict[str, Any]) -> str:
    """A stable hash of the config that makes a cached artefact."""
    payload = json.dumps({"recipe_version": RECIPE_VERSION, **config}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def cached(kind: str, config: dict[str, Any], build: Callable[[Path], dict[str, Any]]) -> tuple[Path, dict[str, Any]]:
    """Return ``(directory, meta)`` of the artefact made by ``build(tmpdir) -> meta`` for ``config``.

    ``build`` writes its files into a temporary directory that is renamed into place when it
    succeeds, so concurrent or killed runs never leave a half-written entry.
    """
    final = cache_root() / kind / cache_key(config)
    meta_path = final / "meta.json"
    if meta_path.is_file():
        return final, json.loads(meta_path.read_text(encoding="utf-8"))
    try:
        with atomic_dir(final) as tmp:
            meta = {"config": config, **build(tmp)}
            write_json_atomic(tmp / "meta.json", meta)
    except Exception:
        if meta_path.is_file():  # another process finished the same entry first
            return final, json.loads(meta_path.read_text(encoding="utf-8"))
        raise
    return final, meta
