"""Safe model loading and atomic saving (safetensors; pickles only on explicit opt-in)."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import pickle
import re
import shutil
import signal
import socket
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping

from .errors import UserInputError

if TYPE_CHECKING:
    import torch


def check_output(out: str | os.PathLike, *, overwrite: bool, inputs: Iterable[Any] = (), file: bool = False) -> None:
    """Refuse, before any work, an output path that cannot be written or that ``--overwrite`` would use to
    destroy something: an existing path without ``overwrite``, a path with no name of its own ("", ".", ".."),
    one under an existing file, a file where a folder is wanted (or the reverse), the current folder or one
    above it, and a path that is, holds or lies inside one of ``inputs`` (paths; None entries are skipped)."""
    path = Path(out)
    what = "file" if file else "folder"
    if path.name in ("", ".", ".."):
        raise UserInputError(f"The output path {str(out)!r} names no {what} of its own; give the path of a new {what}.")
    resolved = path.resolve()
    blocking = next((p for p in reversed(resolved.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise UserInputError(f"The output path {out} lies under {blocking}, which is a file, not a folder.")
    if resolved == Path.cwd() or resolved in Path.cwd().parents:
        raise UserInputError(f"The output path {out} is the current folder or one above it; choose a new {what}.")
    for given in (Path(p) for p in inputs if p is not None):
        if resolved == given.resolve() or resolved in given.resolve().parents:
            raise UserInputError(f"The output path {out} holds the input {given}; --overwrite would delete it. "
                                 "Choose another output path.")
        # an input that does not exist yet (a cache a run will create) may become a folder: nothing may go inside it
        if not given.is_file() and given.resolve() in resolved.parents:
            raise UserInputError(f"The output path {out} lies inside the input folder {given}; writing there would "
                                 "change it. Choose a path outside it.")
    if os.path.lexists(path) and not overwrite:  # a dangling link too: the final rename would fail
        raise UserInputError(f"The output path {out} already exists; choose another or pass --overwrite.")
    if path.exists() and path.is_dir() == file:
        raise UserInputError(f"The output path {out} is {'a folder' if file else 'a file'}; {what} output cannot replace it.")


def named_files(settings: Mapping[str, Any]) -> list[Path]:
    """The setting values (in nested mappings too, as a bench's per-method settings) that are text naming an
    existing file, e.g. SSD's ``full_importance``: inputs of a run, which :func:`check_output` must keep an
    output from replacing."""
    found = []
    for value in settings.values():
        if isinstance(value, Mapping):
            found += named_files(value)
        elif isinstance(value, (str, os.PathLike)) and os.path.isfile(value):
            found.append(Path(value))
    return found


@contextmanager
def atomic_dir(final: str | os.PathLike, *, overwrite: bool = False,
               on_placed: Callable[[], None] | None = None) -> Iterator[Path]:
    """Yield a temporary directory beside ``final``; rename it into place only if the block succeeds.

    A crash or kill at any point leaves either no ``final`` or the complete one, never half of it; when
    the block fails, the parent folders this call created are removed again. Without ``overwrite``, an
    output that appeared at ``final`` while the block ran is never replaced: the call fails instead.
    ``on_placed`` runs once the new folder is in place; if it fails, the new folder is removed and the
    one it replaced (if any) is put back. A first Ctrl-C while ``on_placed`` runs is held until it returns (and
    raised then), so it cannot remove the folder after ``on_placed`` recorded it (e.g. committed a ledger row).
    Temporary folders of ``final`` left by a killed run are removed.
    """
    final = Path(final)
    if os.path.lexists(final) and not overwrite:
        raise UserInputError(f"The output path {final} already exists; choose another or pass --overwrite.")
    created = [p for p in (final.parent, *final.parent.parents) if not p.exists()]
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{_owner()}-", dir=final.parent))
    tmp.chmod(0o755 & ~_umask())  # mkdtemp makes folders private; outputs are meant to be shared (as the umask allows)
    try:
        yield tmp
        _shareable(tmp)
        old = _place(tmp, final, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_empty_folders(created)
        raise
    held: list[int] = []
    try:
        if on_placed is not None:
            with _ctrl_c_held() as held:
                on_placed()
    except BaseException:
        shutil.rmtree(final, ignore_errors=True)
        if old is not None:
            os.replace(old, final)
        else:
            remove_empty_folders(created)
        raise
    if old is not None:
        _discard(old)
    if held:  # the output and what on_placed recorded are both in place: now stop, as the user asked
        raise KeyboardInterrupt


@contextmanager
def _ctrl_c_held() -> Iterator[list[int]]:
    """Hold a first Ctrl-C (SIGINT) while the block runs; yield the list of signals held. A second Ctrl-C
    interrupts at once, as usual. Nothing is held where SIGINT does not raise KeyboardInterrupt (outside the
    main thread, or where the signal is ignored or handled by someone else)."""
    held: list[int] = []
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield held
        return

    def hold(signum: int, frame: Any) -> None:
        held.append(signum)
        if len(held) > 1:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, hold)
    try:
        yield held
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _discard(path: Path) -> None:
    """Remove what an overwritten output was moved aside to: a folder, or a file or link (never what a link points to)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _shareable(folder: Path) -> None:
    """Give private files in ``folder`` (some writers, e.g. transformers' ``save_pretrained``, create their files
    with ``mkstemp``, mode 0600) mode 0644 less the umask, as :func:`save_state_dict` gives the files it writes."""
    mode = _new_file_mode()
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_mode & 0o777 == 0o600:
            path.chmod(mode)


#: What renaming onto ``final`` fails with when another run put or took something there meanwhile.
_RACED = (errno.EEXIST, errno.ENOTEMPTY, errno.ENOENT, errno.ENOTDIR, errno.EISDIR)


def _place(tmp: Path, final: Path, overwrite: bool) -> Path | None:
    """Rename ``tmp`` to ``final``; return where the ``final`` it replaced was moved (None: nothing replaced)."""
    if not overwrite:
        appeared = UserInputError(f"The output path {final} was created by something else while this run worked; "
                                  "nothing was written. Choose another or pass --overwrite.")
        if final.exists():
            raise appeared
        try:
            os.rename(tmp, final)  # unlike os.replace, fails on a folder or file that appeared just now
        except OSError as error:
            if error.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                raise appeared from None
            raise
        return None
    raced = UserInputError(f"Another run wrote the output path {final} at the same time; nothing was written by "
                           "this one.")
    try:
        if not os.path.lexists(final):
            os.replace(tmp, final)
            return None
        old = final.with_name(f".{final.name}.old-{_owner()}")
        os.replace(final, old)
    except OSError as error:  # another run placed (or moved away) its own output here just now
        if error.errno in _RACED:
            raise raced from None
        raise
    try:
        os.replace(tmp, final)
    except OSError as error:
        if error.errno not in _RACED:
            os.replace(old, final)
            raise
        _discard(old)  # another run placed its output once the old one was moved aside: theirs stands
        raise raced from None
    except BaseException:
        os.replace(old, final)
        raise
    return old


def remove_empty_folders(folders: Iterable[Path]) -> None:
    """Remove ``folders``, deepest first, up to the first that is not empty (it gained other content)."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            break


def _owner() -> str:
    """This process, as temporary names carry it: a short hash of the host name, and the process id (an
    output folder may sit on a file system that processes on several hosts share)."""
    return f"{hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]}-{os.getpid()}"


def _remove_leftovers(final: Path) -> None:
    """Remove the ``.NAME.tmp-HOST-PID-*`` files and folders and ``.NAME.old-HOST-PID`` folders of ``final`` left
    by a process of this host that is gone (another host's processes cannot be checked, so theirs stay).

    A temporary file or folder never holds a published output. An ``old`` folder does when a kill came between
    moving the previous output aside and renaming the new one into place; it is kept while ``final`` is missing.
    """
    host = _owner().split("-")[0]
    pattern = re.compile(re.escape(f".{final.name}.") + r"(?:tmp|(old))-([0-9a-f]{8})-(\d+)(?:-[a-z0-9_]+)?")
    for path in final.parent.iterdir():
        match = pattern.fullmatch(path.name)
        if match is None or path.is_symlink() or match[2] != host:
            continue
        if match[1] is not None and not (path.is_dir() and final.exists()):
            continue
        if not _process_running(int(match[3])):
            _discard(path)


def _process_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process, or not a process id at all
        return True
    return True


def _umask() -> int:
    """This process's umask (read without changing it where Linux shows it)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _new_file_mode(replaced: Path | None = None) -> int:
    """The mode of a written file: that of the regular file it replaces, else 0644 less the umask (mkstemp makes
    files private; results and reports are meant to be read, but never more widely than the umask allows)."""
    if replaced is not None and replaced.is_file() and not replaced.is_symlink():
        return replaced.stat().st_mode & 0o777
    return 0o644 & ~_umask()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` as UTF-8 (whatever the locale) through a temporary file and a rename; temporary
    files of ``path`` that a killed process of this host left behind are removed first. A lone surrogate, which a
    path name that is not UTF-8 becomes (in a page's command line or title), is written as its ``\\u`` escape.

    A file that is replaced keeps its mode; a new one gets 0644 less the umask."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{_owner()}-", dir=path.parent)
    try:
        os.fchmod(fd, _new_file_mode(path))
        with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented, standard JSON, atomically: a number that is not finite (NaN, ±inf: a metric
    that could not be computed) is written as ``null``, since the bare ``NaN`` Python's json writes is no JSON
    and other readers (jq, JavaScript, pandas' strict mode) refuse the file."""
    write_text_atomic(path, json_text(data, indent=2) + "\n")


def json_text(data: Any, indent: int | None = None) -> str:
    """``data`` as standard JSON: numpy and torch scalars as numbers, a float that is not finite as ``null``."""
    return json.dumps(_finite(data), indent=indent, allow_nan=False, default=_json_default)


def _finite(value: Any) -> Any:
    """``value`` with every float that is not finite, at any depth of dicts, lists and tuples, replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy and torch, scalars (a number) and arrays (nested lists) alike
        return _finite(value.tolist())
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def save_state_dict(state: dict[str, "torch.Tensor"], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Save tensors as safetensors (contiguous CPU copies; shared storage is split), atomically; the file's mode is
    that of the file it replaces, else 0644 less the umask."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    path = Path(path)
    _remove_leftovers(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{_owner()}-", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, _new_file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


#: What a refused pickle's sentence tells the user to do, where the caller offers ``--trust-pickle``.
TRUST_PICKLE_ADVICE = "convert it to safetensors or pass --trust-pickle if you trust its source"


def load_state_dict(path: str | os.PathLike, *, trust_pickle: bool = False,
                    pickle_advice: str = TRUST_PICKLE_ADVICE) -> dict[str, "torch.Tensor"]:
    """Load weights from ``.safetensors``; ``.pt/.bin`` only with ``weights_only=True`` unless trusted.
    ``pickle_advice`` ends the sentence that refuses a pickle (a caller without ``--trust-pickle`` names its own fix)."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"The weights file {path} {'is a folder' if path.is_dir() else 'does not exist'}.")
    try:
        with path.open("rb"):  # else safetensors calls an unreadable file missing, and torch's check a traceback
            pass
    except OSError as error:
        raise UserInputError(f"The weights file {path} cannot be read ({error.strerror or type(error).__name__}).") from None
    if path.suffix.lower() == ".safetensors":  # as data files, whatever the case of the suffix
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:  # a corrupt or foreign file: say so in one sentence
            raise UserInputError(f"The weights file {path} is not a valid safetensors file ({error}).") from None
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        if not _torch_save_file(path):
            raise UserInputError(f"The weights file {path} is neither safetensors nor a torch.save checkpoint.") from None
        if not trust_pickle and not isinstance(error, pickle.UnpicklingError):
            # a damaged archive, not a pickle that needs trust: --trust-pickle would not help
            raise UserInputError(f"The weights file {path} is a damaged or foreign torch.save archive "
                                 f"({_first_line(error)}).") from None
        if not trust_pickle:
            raise UserInputError(f"The checkpoint {path} is a pickle that cannot be loaded safely; {pickle_advice}.") from None
        try:
            return torch.load(path, map_location="cpu", weights_only=False)  # explicit user opt-in
        except Exception as error:  # e.g. a class the pickle names is not importable here
            raise UserInputError(f"The checkpoint {path} could not be unpickled ({_first_line(error)}).") from None


def _first_line(error: Exception) -> str:
    """``Type: the first line of its message`` (at most 200 characters of it), for a one-sentence error."""
    return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}"


def _torch_save_file(path: Path) -> bool:
    """Whether the file looks like ``torch.save`` output: a zip archive, or a legacy pickle (protocol byte 0x80)."""
    import zipfile

    with path.open("rb") as handle:
        if zipfile.is_zipfile(handle):
            return True
        handle.seek(0)  # is_zipfile read from the end
        return handle.read(1) == b"\x80"


def fingerprint(state: dict[str, "torch.Tensor"]) -> str:
    """SHA-256 over parameter names, shapes and bytes, in sorted order."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
