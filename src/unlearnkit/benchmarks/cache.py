"""Content-addressed cache of reference models (``$UNLEARNKIT_CACHE`` or ``~/.cache/unlearnkit``)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from ..io import atomic_dir, remove_empty_folders, write_json_atomic

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
    succeeds, so concurrent or killed runs never leave a half-written entry. Processes that ask for the
    same entry at once build it once: the others wait for it (where the system has ``fcntl``).
    """
    final = cache_root() / kind / cache_key(config)
    meta_path = final / "meta.json"
    if meta_path.is_file():
        return final, json.loads(meta_path.read_text(encoding="utf-8"))
    with _building(final):
        if meta_path.is_file():  # built by the process this one waited for
            return final, json.loads(meta_path.read_text(encoding="utf-8"))
        try:
            with atomic_dir(final) as tmp:
                meta = {"config": config, **build(tmp)}
                write_json_atomic(tmp / "meta.json", meta)
        except Exception:
            if meta_path.is_file():  # another process finished the same entry first (no lock on this system)
                return final, json.loads(meta_path.read_text(encoding="utf-8"))
            raise
    return final, meta


@contextmanager
def _building(final: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``final``'s lock file while the entry is built; a process that finds it held
    says on stderr that it waits. The lock file and the folders made for it are removed afterwards (a failed
    build leaves nothing). Without ``fcntl`` (Windows) nothing is locked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    created = [p for p in (final.parent, *final.parent.parents) if not p.exists()]
    lock = final.parent / f"{final.name}.lock"
    try:
        while True:
            final.parent.mkdir(parents=True, exist_ok=True)
            handle = open(lock, "a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"Another process is building the cached {final.parent.name} entry {final.name}; waiting for it.",
                      file=sys.stderr, flush=True)
                fcntl.flock(handle, fcntl.LOCK_EX)
            if lock.exists() and os.stat(lock).st_ino == os.fstat(handle.fileno()).st_ino:
                break
            handle.close()  # its holder removed the file after this process opened it: lock the current one
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)  # before the lock goes, so a waiter sees that its file is gone
            handle.close()
    finally:
        remove_empty_folders(created)
