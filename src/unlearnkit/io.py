"""Safe model loading and atomic saving (safetensors; pickles only on explicit opt-in)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from .errors import UserInputError

if TYPE_CHECKING:
    import torch


@contextmanager
def atomic_dir(final: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``final``; rename it into place only if the block succeeds.

    A crash or kill at any point leaves either no ``final`` or the complete one, never half of it; when
    the block fails, the parent folders this call created are removed again.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise UserInputError(f"The output path {final} already exists; choose another or pass --overwrite.")
    created = [p for p in (final.parent, *final.parent.parents) if not p.exists()]
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    tmp.chmod(0o755)  # mkdtemp makes folders private; outputs are meant to be shared
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in created:  # deepest first; one that gained other content stays
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes files private; results and reports are meant to be read
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def save_state_dict(state: dict[str, "torch.Tensor"], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Save tensors as safetensors (contiguous CPU copies; shared storage is split), atomically."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_state_dict(path: str | os.PathLike, *, trust_pickle: bool = False) -> dict[str, "torch.Tensor"]:
    """Load weights from ``.safetensors``; ``.pt/.bin`` only with ``weights_only=True`` unless trusted."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"The weights file {path} does not exist.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:  # a corrupt or foreign file: say so in one sentence
            raise UserInputError(f"The weights file {path} is not a valid safetensors file ({error}).") from None
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        if not trust_pickle:
            raise UserInputError(
                f"The checkpoint {path} is a pickle that cannot be loaded safely; convert it to safetensors or pass --trust-pickle if you trust its source."
            ) from None
        return torch.load(path, map_location="cpu", weights_only=False)  # explicit user opt-in


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
