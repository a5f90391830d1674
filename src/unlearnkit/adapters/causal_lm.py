"""CausalLMAdapter: a local Hugging Face causal language model answering questions.

Items are dicts ``{"question": str, "answer": str, ...}``. The loss is computed on the answer
tokens only (the prompt and the padding carry label −100), and every answer ends with the EOS
token, as in TOFU / OpenUnlearning. Their conventions are kept:

- ``per_item_loss`` is the mean NLL over the answer tokens **including** EOS (avg_loss_i);
- the token-level statistics (``token_logprobs``, ``token_stats``, the Min-K%++ moments) **exclude**
  the final EOS, like OpenUnlearning's ``tokenwise_logprobs``;
- the attention mask comes from the sequence lengths, never from ``ids != pad``, so an EOS used as
  padding does not mask real tokens.

transformers is imported lazily (inside functions) so importing the package stays fast.
"""

from __future__ import annotations

import json
import pickle
import warnings
from contextlib import contextmanager

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserInputError
from .base import device_of, eval_mode

IGNORE = -100
#: The prompt used when the tokenizer has no chat template.
PLAIN_PROMPT = "Question: {question}\nAnswer: "
#: How many items' token ids an adapter keeps (beyond it, further items are tokenized at each use).
ENCODED_ITEMS_KEPT = 100_000
#: Greedy decoding. The model's saved ``generation_config.json`` is set aside while it runs
#: (:func:`_plain_generation_configs`): ``generate`` fills every setting not passed from it.
GREEDY = {"do_sample": False, "num_beams": 1}
#: File names any Hugging Face tokenizer folder holds at least one of.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")
#: The indexes of a sharded checkpoint that transformers reads (they map each weight to its shard file).
CHECKPOINT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def is_adapter_folder(directory: Path) -> bool:
    """True for a folder holding a PEFT adapter alone (``adapter_config.json`` and no ``config.json``)."""
    return (directory / "adapter_config.json").is_file() and not (directory / "config.json").is_file()


def adapter_chain(directory: str | Path) -> tuple[Path, list[Path]]:
    """The full model folder under an adapter folder and the adapters on it, innermost first: an adapter
    may name another adapter folder as its base (an adapter trained on a merged adapter). A plain model
    folder gives itself and no adapters."""
    folder, adapters = Path(directory), []
    while is_adapter_folder(folder):
        if folder.resolve() in (a.resolve() for a in adapters):
            raise UserInputError(f"The adapter folders under {directory} name each other as base models in a loop.")
        adapters.append(folder)
        try:
            config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
            base = config.get("base_model_name_or_path")
        except (ValueError, AttributeError):
            raise UserInputError(f"The adapter folder {folder} has an adapter_config.json that is not a JSON object.") from None
        if config.get("peft_type") != "LORA":  # other PEFT types load further adapters, from the hub too (X-LoRA)
            raise UserInputError(f"The adapter in {folder} is of PEFT type {config.get('peft_type')!r}; only LoRA "
                                 "adapters (peft_type LORA, as --lora writes) are loaded.")
        if not isinstance(base, str) or not Path(base).is_dir():
            raise UserInputError(f"The adapter in {folder} names the base model {base!r}, which is not a local "
                                 "folder; put the base model there or fix base_model_name_or_path.")
        if not (folder / "adapter_model.safetensors").is_file():
            raise UserInputError(f"The adapter folder {folder} has no adapter_model.safetensors (a pickled "
                                 "adapter_model.bin is not loaded); save the adapter with safetensors.")
        folder = Path(base)
    return folder, adapters[::-1]


def model_folders(directory: str | Path) -> list[Path]:
    """The folders that loading the model in ``directory`` reads: itself and, for a PEFT adapter folder, the
    adapters and the base model under it (:func:`adapter_chain`); an output must replace none of them."""
    base, adapters = adapter_chain(directory)
    return [Path(directory), base, *adapters]


def check_shard_names(directory: Path) -> None:
    """Refuse a sharded checkpoint whose index names a shard by anything but a file name of ``directory``
    (``../other/model.safetensors``, an absolute path, a sub-folder): transformers joins the names to the folder
    as given, so such an index would load the weights of another model on this machine."""
    for name in CHECKPOINT_INDEXES:
        index = directory / name
        if not index.is_file():
            continue
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = set(weight_map.values())
        except OSError as error:
            raise UserInputError(f"The checkpoint index {index} cannot be read ({error.strerror or type(error).__name__}).") from None
        except (ValueError, KeyError, TypeError, AttributeError):  # ValueError: not UTF-8, or not JSON
            raise UserInputError(f"The checkpoint index {index} is not a JSON object with a weight_map of shard "
                                 "file names.") from None
        if not all(isinstance(shard, str) and shard not in ("", ".", "..") and Path(shard).name == shard
                   for shard in shards):
            raise UserInputError(f"The checkpoint index {index} names shard files outside {directory}; a shard must "
                                 "be a file name in the model folder.")


def _merge_adapters(base: nn.Module, adapters: Sequence[Path]) -> nn.Module:
    from peft import PeftModel

    model = base
    for folder in adapters:
        try:
            model = PeftModel.from_pretrained(model, folder, is_trainable=False).merge_and_unload()
        except (ValueError, KeyError, RuntimeError) as error:
            raise UserInputError(f"The adapter in {folder} does not fit its base model "
                                 f"({str(error).splitlines()[0][:200]}).") from None
    # PEFT freezes the base while the adapter is attached; merged, it is a plain model again, trainable
    # like one loaded from a full checkpoint (forget trains it).
    return model.requires_grad_(True).eval()


@dataclass
class TokenStats:
    """Teacher-forced statistics of one item's answer tokens (EOS excluded), all shape ``(n,)``.

    ``mean`` and ``std`` are the moments of log p under the model's own next-token distribution,
    μ_t = Σ_v p_v log p_v and σ_t = sqrt(Σ_v p_v (log p_v)² − μ_t²), used by Min-K%++.
    """

    targets: torch.Tensor
    logprobs: torch.Tensor
    argmax: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


def item_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` ``(B, T)`` over each row's positions in ``mask``, then over the rows.

    Every item weighs the same whatever its length, so a batch split across processes (each
    weighted by its share of items) averages to the same loss; a mean over all the batch's
    positions would not, since each process's share of tokens differs from its share of items.
    """
    weights = mask.to(values.dtype)
    return ((values * weights).sum(1) / weights.sum(1).clamp_min(1)).mean()


def _several_processes() -> bool:
    """Whether a process group of more than one process is running (DDP, FSDP or DeepSpeed training)."""
    distributed = torch.distributed
    return distributed.is_available() and distributed.is_initialized() and distributed.get_world_size() > 1


class _BlockReached(Exception):
    """Raised by a forward hook to end a forward pass once the block it needs has run."""


class CausalLMAdapter:
    """Adapter for ``AutoModelForCausalLM`` models and their tokenizer, on question/answer items."""

    kind = "causal_lm"

    def __init__(self, model: nn.Module, tokenizer: Any, max_length: int | None = None, *,
                 system_prompt: str | None = None, template_args: Mapping[str, str] | None = None) -> None:
        """``system_prompt`` and ``template_args`` (extra chat-template variables, e.g. Llama-3's
        ``date_string``) shape every prompt: give the ones the model was fine-tuned with."""
        if tokenizer.eos_token_id is None:
            raise UserInputError("The tokenizer has no EOS token; a causal-LM adapter needs one to end answers.")
        if max_length is None:
            max_length = default_max_length(model, tokenizer)
        if int(max_length) < 2:
            raise UserInputError(f"max_length must be at least 2 (one prompt and one answer token), got {max_length}.")
        if int(max_length) > (limit := _position_limit(model)):
            raise UserInputError(f"max_length {max_length} is more than the {limit} positions this model has.")
        if template_args and not getattr(tokenizer, "chat_template", None):
            raise UserInputError("Template arguments fill a chat template's variables, but this tokenizer has no chat "
                                 "template (prompts use the plain 'Question: … Answer:' format); drop --template-arg.")
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.system_prompt = system_prompt or None
        self.template_args = dict(template_args or {})
        # Token ids per (question, answer): training re-reads the same items every epoch, and tokenizing
        # them again was a fifth of a short unlearning run. Keyed on the item and the prompt format (chat
        # template included); the tokenizer object itself is assumed not to be swapped for another.
        self._encoded: dict[tuple, tuple[tuple[int, ...], tuple[int, ...]]] = {}

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, directory: str | Path, max_length: int | None = None, *, system_prompt: str | None = None,
                        template_args: Mapping[str, str] | None = None, **model_kwargs: Any) -> "CausalLMAdapter":
        """Load a causal LM and its tokenizer from a local Hugging Face folder (never from the hub).

        A PEFT adapter folder (``adapter_config.json``, as ``forget --lora ...,save=adapter`` writes) loads as
        its base model (a local folder) with the adapter merged in (:func:`adapter_chain`); only
        ``adapter_model.safetensors`` is read. The tokenizer is the base model's.
        """
        directory = Path(directory)
        if not directory.is_dir():
            what = "is a file; give the model's folder" if directory.exists() else "does not exist"
            raise UserInputError(f"The model directory {directory} {what}.")
        if is_adapter_folder(directory):
            base, adapters = adapter_chain(directory)
            loaded = cls.from_pretrained(base, max_length, system_prompt=system_prompt, template_args=template_args,
                                         **model_kwargs)
            return loaded.with_model(_merge_adapters(loaded.model, adapters))
        if not (directory / "config.json").is_file():
            raise UserInputError(f"The model directory {directory} has no config.json; expected a Hugging Face model folder.")
        check_shard_names(directory)
        check_model_config(directory)
        tokenizer = load_tokenizer(directory)
        from transformers import AutoModelForCausalLM

        from ..progress import quiet_library_bars

        quiet_library_bars()

        try:
            # never the folder's own Python (transformers would otherwise ask on stdin whether to run it); quiet:
            # its loading report would precede the one sentence below
            with quiet_transformers():
                model, info = AutoModelForCausalLM.from_pretrained(
                    directory, local_files_only=True, output_loading_info=True, ignore_mismatched_sizes=True,
                    **{"trust_remote_code": False, **model_kwargs})
        except ValueError as error:
            raise UserInputError(f"The model in {directory} is not a causal language model ({str(error).splitlines()[0]}).") from None
        except ImportError as error:
            raise UserInputError(f"Loading the model in {directory} needs a package this environment lacks "
                                 f"({str(error).splitlines()[0]}).") from None
        except OSError as error:
            raise UserInputError(f"The model weights in {directory} cannot be loaded ({str(error).splitlines()[0]}).") from None
        except pickle.UnpicklingError as error:  # torch's weights-only loader refused a pickled object
            raise UserInputError(f"The model weights in {directory} hold pickled objects that a weights-only load refuses "
                                 f"({str(error).splitlines()[0][:200]}); convert them to safetensors.") from None
        except Exception as error:  # e.g. safetensors' own error class for a corrupt file
            if type(error).__name__ != "SafetensorError":
                raise
            raise UserInputError(f"The model weights in {directory} are not a readable safetensors file ({error}).") from None
        # transformers fills weights missing from the files, or of other shapes than config.json says, at random
        wrong = sorted(info["missing_keys"]) + sorted(name for name, *_shapes in info["mismatched_keys"])
        if wrong:
            raise UserInputError(f"The model weights in {directory} lack {len(wrong)} of the weights its config.json "
                                 f"describes or hold them in other shapes (e.g. {wrong[0]}); transformers would fill "
                                 "them at random.")
        return cls(model.eval(), tokenizer, max_length, system_prompt=system_prompt, template_args=template_args)

    def save_pretrained(self, directory: str | Path, model: nn.Module | None = None) -> None:
        """Save the model (``self.model`` unless given) and the tokenizer into ``directory``; an inference-time
        method's wrapper (uld, guard, guard_it) as its base model, its own tensors and settings, which
        :func:`unlearnkit.methods.saved.load_causal_lm` reloads; a PEFT model as its adapter folder."""
        model = model or self.model
        if not hasattr(model, "save_pretrained"):
            from ..methods.saved import save_wrapper

            save_wrapper(model, self.tokenizer, Path(directory))
            return
        with warnings.catch_warnings():
            # PEFT looks for config.json where the adapter's base is; for an adapter trained on an adapter folder
            # that base is another adapter, and --lora never resizes the vocabulary it would check for
            warnings.filterwarnings("ignore", message="Could not find a config file in")
            # an adapter folder: never the base weights of a targeted lm_head, which the returned model holds merged
            # (a reload would merge the update a second time)
            model.save_pretrained(directory, **({"save_embedding_layers": False} if hasattr(model, "peft_config") else {}))
        self.tokenizer.save_pretrained(directory)

    def with_model(self, model: nn.Module, *, share_tokens: bool = True) -> "CausalLMAdapter":
        """The same adapter (tokenizer, prompt format) around another model; with ``share_tokens`` False it
        tokenizes items anew instead of reusing this adapter's token ids (a timed run that must pay for them)."""
        twin = CausalLMAdapter(model, self.tokenizer, self.max_length, system_prompt=self.system_prompt,
                               template_args=self.template_args)
        if share_tokens:
            twin._encoded = self._encoded  # same tokenizer and prompt format, so the same ids
        return twin

    # ------------------------------------------------------------------ batching
    def prompt(self, question: str) -> str:
        """The text placed before the answer: the chat template when the tokenizer has one (with the
        system prompt as a system turn), else the plain format (after the system prompt and a newline)."""
        if getattr(self.tokenizer, "chat_template", None):
            from jinja2 import TemplateError

            system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
            try:
                return self.tokenizer.apply_chat_template(
                    [*system, {"role": "user", "content": question}], tokenize=False, add_generation_prompt=True,
                    **self.template_args,
                )
            except TemplateError as error:  # e.g. Gemma's template refuses a system turn
                raise UserInputError(f"The tokenizer's chat template cannot format the prompt ({error}); check the "
                                     "system prompt and template arguments against the template.") from None
        prefix = f"{self.system_prompt}\n" if self.system_prompt else ""
        return prefix + PLAIN_PROMPT.format(question=question)

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @property
    def _plain(self) -> bool:
        return not getattr(self.tokenizer, "chat_template", None)

    @property
    def _joint(self) -> bool:
        """Whether a prompt is tokenized together with its answer (a plain prompt and a tokenizer with offsets)."""
        return self._plain and bool(getattr(self.tokenizer, "is_fast", False))

    def _bos(self) -> list[int]:
        """The BOS id the tokenizer puts before a text by default (plain prompts only; chat templates write it)."""
        bos = self.tokenizer.bos_token_id
        default = self.tokenizer("a")["input_ids"]
        return [bos] if self._plain and bos is not None and default and default[0] == bos else []

    def prompt_ids(self, question: str) -> list[int]:
        """The ids a model is prompted with: BOS when the tokenizer adds one, then the prompt, as
        :meth:`encode_item` puts them before the answer. A plain prompt tokenized with its answer leaves its
        trailing space to the answer, as tokenizing the whole text does ("Answer:" + " Alia")."""
        text = self.prompt(question)
        return self._bos() + self._encode(text.rstrip() if self._joint else text)

    def _split_ids(self, question: str, answer: str) -> tuple[list[int], list[int]]:
        """Prompt and answer ids. A plain prompt is tokenized together with its answer, as a model trained on
        the whole text saw it, and split where the prompt's text ends (when the tokenizer gives offsets)."""
        text = self.prompt(question)
        if not self._joint:  # a chat template, or a tokenizer without offsets: prompt and answer apart
            return self._bos() + self._encode(text), self._encode(answer)
        whole = self.tokenizer(text + answer, add_special_tokens=False, return_offsets_mapping=True)
        cut = len(text.rstrip())
        split = sum(1 for _, end in whole["offset_mapping"] if end <= cut)
        ids = list(whole["input_ids"])
        return self._bos() + ids[:split], ids[split:]

    def encode_item(self, item: Any) -> tuple[list[int], list[int]]:
        """Prompt ids and answer ids (answer + EOS) of one item, cut to ``max_length`` together.

        When too long, the answer keeps at most ``max_length − 1`` tokens and the prompt is cut
        from the left, so the answer (what every metric reads) survives.
        """
        question, answer = _question_answer(item)
        key = (question, answer, self.max_length, self.system_prompt, repr(sorted(self.template_args.items())),
               getattr(self.tokenizer, "chat_template", None), self.tokenizer.eos_token_id)
        if key in self._encoded:
            prompt, target = self._encoded[key]
            return list(prompt), list(target)
        prompt, answer_ids = self._split_ids(question, answer)
        target = answer_ids + [self.tokenizer.eos_token_id]
        self._refuse_unknown_ids(prompt + target)
        if len(prompt) + len(target) > self.max_length:
            target = target[: self.max_length - 1]
            prompt = prompt[len(prompt) - (self.max_length - len(target)) :]
        if len(self._encoded) < ENCODED_ITEMS_KEPT:
            self._encoded[key] = (tuple(prompt), tuple(target))
        return prompt, target

    def _refuse_unknown_ids(self, ids: Sequence[int], name: str | None = None) -> None:
        """Refuse token ids the model's embedding has no row for (an index error in the forward, a device-side
        assert on a GPU); ``name`` says which item holds them."""
        rows, largest = _embedding_rows(self.model), max(ids)
        if rows is not None and largest >= rows:
            where = f" for {name}" if name else ""
            raise UserInputError(f"The tokenizer gives token id {largest}{where}, but the model's embedding has {rows} "
                                 "rows; tokens were added to the tokenizer without resizing the model's embeddings "
                                 "(model.resize_token_embeddings) before it was saved.")

    def refuse_unreadable(self, items: Sequence[Any], names: Sequence[str]) -> None:
        """Refuse the first of ``items`` (named by ``names``) that the model cannot read whole: one longer than
        ``max_length`` (what is cut off would be neither unlearned nor scored) or holding a token id beyond the
        embedding. Every process checks every item before they are shared out, so all refuse together (a refusal
        on one process alone would leave the others waiting for its scores)."""
        for item, name in zip(items, names):
            prompt, answer = self._split_ids(*_question_answer(item))
            self._refuse_unknown_ids(prompt + answer + [self.tokenizer.eos_token_id], name)
            if (length := len(prompt) + len(answer) + 1) > self.max_length:
                limit = _position_limit(self.model)
                fix = (f"give --max-length {length} or more (this model takes up to {limit})" if length <= limit
                       else f"shorten or split it (this model takes at most {limit})")
                raise UserInputError(f"{name} takes {length} tokens with its prompt, more than the {self.max_length} "
                                     f"read per item; {fix}.")

    @property
    def pad_id(self) -> int:
        """The padding id: the tokenizer's pad token, else EOS."""
        pad = self.tokenizer.pad_token_id
        return self.tokenizer.eos_token_id if pad is None else pad

    def collate(self, items: Sequence[Any]) -> dict[str, torch.Tensor]:
        """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (−100 on prompt and padding)."""
        if not items:
            raise UserInputError("Cannot build a batch from an empty list of items.")
        encoded = [self.encode_item(item) for item in items]
        width = max(len(p) + len(a) for p, a in encoded)
        ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
        for row, (prompt, answer) in enumerate(encoded):
            n = len(prompt) + len(answer)
            ids[row, :n] = torch.tensor(prompt + answer)
            mask[row, :n] = 1
            labels[row, len(prompt) : n] = torch.tensor(answer)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    # ------------------------------------------------------------------ losses
    def logits(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Next-token logits ``(B, T, V)``.

        A model that declares ``reads_prompt_mask`` (an inference-time method deciding per prompt, as
        ``generate`` does) is also given ``prompt_mask``: the real tokens that are not answer labels.
        """
        batch = _on_device(model, batch)
        extra = {}
        if getattr(model, "reads_prompt_mask", False) and "labels" in batch:
            extra["prompt_mask"] = batch["attention_mask"].bool() & (batch["labels"] == IGNORE)
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **extra).logits

    def token_nll(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-position NLL ``(B, T−1)`` of the shifted labels and the answer mask (EOS included)."""
        batch = _on_device(model, batch)
        logits = self.logits(model, batch)[:, :-1].float()
        targets = batch["labels"][:, 1:]
        mask = targets != IGNORE
        # 0 at ignored positions, never computed there: a model that gives some token −inf (a wrapper banning it)
        # made their loss inf, and inf · 0 = NaN for every item
        nll = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE, reduction="none")
        return nll, mask

    def per_item_sum_nll(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed NLL over each item's answer tokens incl. EOS, shape ``(B,)`` (−log π(y|x), for NPO)."""
        nll, _ = self.token_nll(model, batch)
        return nll.sum(dim=1)

    def answer_lengths(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Number of labelled answer tokens per item (incl. EOS), shape ``(B,)``."""
        return (batch["labels"][:, 1:] != IGNORE).sum(dim=1)

    def per_item_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean NLL over each item's answer tokens incl. EOS, shape ``(B,)``; differentiable."""
        nll, mask = self.token_nll(model, batch)
        return nll.sum(dim=1) / mask.sum(dim=1).clamp_min(1)

    # ------------------------------------------------------------------ token statistics
    def _answer_positions(self, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Per item, the shifted positions of its answer tokens without the final EOS (an answer cut to
        ``max_length`` has none: all its tokens are kept)."""
        targets = batch["labels"][:, 1:]
        eos = self.tokenizer.eos_token_id
        positions = []
        for row in targets:
            where = torch.nonzero(row != IGNORE).flatten()
            ends_with_eos = len(where) > 0 and int(row[where[-1]]) == eos
            positions.append(where[:-1] if ends_with_eos else where)
        return positions

    def token_stats(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> list[TokenStats]:
        """Teacher-forced per-token statistics of each item's answer, EOS excluded."""
        batch = _on_device(model, batch)
        log_probs = torch.log_softmax(self.logits(model, batch)[:, :-1].float(), dim=-1)
        targets = batch["labels"][:, 1:]
        stats = []
        for row, where in enumerate(self._answer_positions(batch)):
            lp = log_probs[row, where]
            y = targets[row, where]
            mean, std = _moments(lp)
            stats.append(TokenStats(y, lp.gather(1, y[:, None]).squeeze(1), lp.argmax(dim=-1), mean, std))
        return stats

    def token_logprobs(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Per item, log p(y_t) of each answer token (EOS excluded), shape ``(n_i,)``."""
        return [s.logprobs for s in self.token_stats(model, batch)]

    def vocab_log_softmax(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Per item, the full log-softmax ``(n_i, V)`` at the answer positions (EOS excluded).

        This is n × V floats per item: prefer :meth:`vocab_moments` when only μ and σ are needed.
        """
        batch = _on_device(model, batch)
        log_probs = torch.log_softmax(self.logits(model, batch)[:, :-1].float(), dim=-1)
        return [log_probs[row, where] for row, where in enumerate(self._answer_positions(batch))]

    def vocab_moments(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per item, the Min-K%++ moments ``(μ_t, σ_t)`` at each answer position (EOS excluded)."""
        return [(s.mean, s.std) for s in self.token_stats(model, batch)]

    # ------------------------------------------------------------------ hidden states
    def layer_names(self, model: nn.Module | None = None) -> list[str]:
        """Module names of the decoder blocks (for ``hidden_states(..., layer=name)``)."""
        return block_names(model or self.model)

    def hidden_states(self, model: nn.Module, batch: dict[str, torch.Tensor], layer: int | str) -> torch.Tensor:
        """Hidden states ``(B, T, H)`` at ``layer``; differentiable.

        ``layer`` is either an index into the model's ``hidden_states`` output (0 = embeddings,
        i = after block i, except the last index, which Hugging Face gives after the final norm;
        negative counts from the end) or a block name from :meth:`layer_names`, whose output is
        captured with a forward hook (the residual stream RMU edits).
        """
        batch = _on_device(model, batch)
        if isinstance(layer, str):
            return self._hooked_output(model, batch, layer)
        count = hidden_state_count(model)
        if not isinstance(layer, int) or not -count <= layer < count:
            raise UserInputError(
                f"Unknown layer {layer!r}; valid: indices {-count}..{count - 1} or names {', '.join(block_names(model))}."
            )
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
        return out.hidden_states[layer]

    def _hooked_output(self, model: nn.Module, batch: dict[str, torch.Tensor], name: str) -> torch.Tensor:
        modules = dict(model.named_modules())
        if name not in modules or name == "":
            raise UserInputError(f"Unknown layer {name!r}; valid block names: {', '.join(block_names(model))}.")
        captured: list[torch.Tensor] = []
        # Nothing after the block is needed, so the forward pass stops there, but only in a single process:
        # a DDP/FSDP/DeepSpeed wrapper (which losses see through a ModelView) arms its gradient reduction
        # after the forward pass returns.
        stop_early = not _several_processes()

        def grab(_module: nn.Module, _inputs: Any, output: Any) -> None:
            captured.append(output[0] if isinstance(output, (tuple, list)) else output)
            if stop_early:
                raise _BlockReached

        handle = modules[name].register_forward_hook(grab)
        try:
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        except _BlockReached:
            pass
        finally:
            handle.remove()
        return captured[0]

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(
        self, model: nn.Module, questions: Sequence[str], max_new_tokens: int = 64, batch_size: int = 32,
        on_batch: Callable[[int], None] | None = None,
    ) -> list[str]:
        """Greedy answers to ``questions`` (left-padded prompts), decoded and cut at the first end token: the
        tokenizer's EOS or one the model's saved generation config names (Llama 3 ends a turn with another).

        Where the position table would cut an answer short, prompts are batched with prompts of their own
        length, so how long an answer may grow never depends on the other questions of its batch.
        ``on_batch`` is called with the number of answers of each batch once it is generated (a progress bar).
        """
        limit = _position_limit(model)
        prompts = [self.prompt_ids(q)[-min(self.max_length, limit - 1) :] for q in questions]
        order = list(range(len(prompts)))
        if max((len(p) for p in prompts), default=0) + max_new_tokens > limit:
            order.sort(key=lambda i: len(prompts[i]))
        answers: dict[int, str] = {}
        stop = _end_tokens(model, self.tokenizer.eos_token_id)  # read before the saved configs are set aside
        with eval_mode(model), _plain_generation_configs(model):
            while order:
                chunk = order[:batch_size]
                if len(prompts[chunk[-1]]) + max_new_tokens > limit:  # the cap binds: same-length prompts only
                    chunk = [i for i in chunk if len(prompts[i]) == len(prompts[chunk[0]])]
                order = order[len(chunk):]
                texts = self._generate_batch(model, [prompts[i] for i in chunk], max_new_tokens, limit, stop)
                answers.update(zip(chunk, texts))
                if on_batch is not None:
                    on_batch(len(chunk))
        return [answers[i] for i in range(len(prompts))]

    def _generate_batch(self, model: nn.Module, prompts: Sequence[list[int]], max_new_tokens: int,
                        limit: int, stop: list[int]) -> list[str]:
        width = max(len(p) for p in prompts)
        max_new_tokens = min(max_new_tokens, limit - width)  # past the position table the model fails
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt)
            mask[row, width - len(prompt) :] = 1
        device = device_of(model)
        out = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
            pad_token_id=self.pad_id, eos_token_id=stop or None, **GREEDY,
        )
        return [self._decode_until(row[width:].tolist(), stop) for row in out]

    def _decode_until(self, ids: list[int], stop: list[int]) -> str:
        """The text of ``ids`` before the first of the ``stop`` tokens."""
        end = next((k for k, token in enumerate(ids) if token in stop), len(ids))
        return self.tokenizer.decode(ids[:end], skip_special_tokens=True).strip()


# ---------------------------------------------------------------------- helpers
def _end_tokens(model: nn.Module, eos: int | None) -> list[int]:
    """``eos`` and every end token the generation configs saved with the Hugging Face models inside ``model``
    name (one id or a list), in that order, each once."""
    ids = [] if eos is None else [eos]
    for module in model.modules():
        saved = getattr(getattr(module, "generation_config", None), "eos_token_id", None)
        for token in saved if isinstance(saved, (list, tuple)) else [saved]:
            if isinstance(token, int) and token not in ids:
                ids.append(token)
    return ids


@contextmanager
def _plain_generation_configs(model: nn.Module) -> Iterator[None]:
    """Give each Hugging Face model inside ``model`` (a wrapper's base and copies included) a generation config
    holding only its special token ids for the block. ``generate`` fills every setting it is not passed from
    the model's own config, saved with it: Qwen2.5's sets ``repetition_penalty=1.05``, others beams, a minimum
    length, suppressed tokens, a guidance scale, or contrastive search, which it refuses to run. Greedy answers
    must not depend on them."""
    from transformers import GenerationConfig

    saved = [(m, m.generation_config) for m in model.modules() if isinstance(getattr(m, "generation_config", None),
                                                                              GenerationConfig)]
    for module, config in saved:
        module.generation_config = GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                                                    pad_token_id=config.pad_token_id)
    try:
        yield
    finally:
        for module, config in saved:
            module.generation_config = config


def default_max_length(model: nn.Module, tokenizer: Any, cap: int = 512) -> int:
    """The longest sequence the model and tokenizer accept, at most ``cap``."""
    limits = [cap, _position_limit(model)]
    declared = getattr(tokenizer, "model_max_length", None)
    if isinstance(declared, int) and declared < 10**6:  # tokenizers without a limit declare ~1e30
        limits.append(declared)
    return min(limits)


def _position_limit(model: nn.Module) -> int:
    """The model's position-table size (a very large number when it declares none)."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 10**9


def load_tokenizer(directory: str | Path) -> Any:
    """The tokenizer saved in a local folder; a folder without tokenizer files is an error.

    (transformers 5 silently builds an empty tokenizer from ``config.json`` alone, hence the check.)
    """
    directory = Path(directory)
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise UserInputError(
            f"The model directory {directory} has no tokenizer (expected one of {', '.join(TOKENIZER_FILES)})."
        )
    from transformers import AutoTokenizer

    if (directory / "tokenizer.model").is_file() and not (directory / "tokenizer.json").is_file():
        try:
            import google.protobuf  # noqa: F401
            import sentencepiece  # noqa: F401
        except ImportError:  # transformers would fall back to reading it as a tiktoken file, and ask for tiktoken
            raise UserInputError(f"The tokenizer in {directory} is a SentencePiece tokenizer.model alone, which needs the "
                                 "sentencepiece and protobuf packages (pip install sentencepiece protobuf); or save "
                                 "the tokenizer with its tokenizer.json.") from None
    try:
        with quiet_transformers():  # its notices would precede the one sentence below
            return AutoTokenizer.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, ImportError) as error:
        raise UserInputError(f"The tokenizer in {directory} cannot be loaded ({str(error).splitlines()[0]}).") from None


def check_model_config(directory: Path) -> None:
    """Refuse, in one sentence, a config.json that unlearnkit cannot or will not load: not readable JSON or not an
    object of settings; a quantized checkpoint (a ``quantization_config``: GPTQ, AWQ, bitsandbytes, ...), since
    unlearning trains and saves full-precision weights; attention code named by a Hub repository, which transformers
    would fetch and run; and settings transformers refuses (a wrong type, an unknown model type)."""
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # unreadable, not UTF-8, not JSON, nested too deep
        raise UserInputError(f"The config.json in {directory} is not a readable JSON file.") from None
    if not isinstance(config, dict):
        held = {list: "an array", str: "a string", bool: "true or false", type(None): "null"}.get(type(config), "a number")
        raise UserInputError(f"The config.json in {directory} holds {held}, not an object of model settings.")
    quantization = config.get("quantization_config")
    if quantization:
        method = quantization.get("quant_method", "unknown method") if isinstance(quantization, dict) else "unknown method"
        raise UserInputError(f"The model in {directory} is quantized ({method}); unlearnkit trains and saves "
                             "full-precision weights: give the unquantized checkpoint.")
    for key in ("_attn_implementation", "attn_implementation"):
        if isinstance(config.get(key), str) and "/" in config[key]:  # a Hub repository of kernels
            raise UserInputError(f"The config.json in {directory} asks for attention code from the Hugging Face Hub "
                                 f"({key} {config[key]}), which unlearnkit never fetches or runs; set it to sdpa or eager.")
    from transformers import AutoConfig

    try:
        with quiet_transformers():
            AutoConfig.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
    except Exception as error:  # huggingface_hub's StrictDataclassFieldValidationError is no TypeError
        line = str(error).splitlines()[0] if str(error) else type(error).__name__
        if isinstance(error, ValueError):
            raise UserInputError(f"The model in {directory} is not a causal language model ({line}).") from None
        if isinstance(error, TypeError) or "StrictDataclass" in type(error).__name__:
            detail = " ".join(str(error).split())[:300]
            raise UserInputError(f"The config.json in {directory} holds a setting transformers refuses ({detail}).") from None
        raise


def block_names(model: nn.Module) -> list[str]:
    """Names of the decoder blocks: the longest ``ModuleList`` of the model (e.g. ``transformer.h.0``)."""
    lists = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.ModuleList)]
    if not lists:
        return []
    name, blocks = max(lists, key=lambda pair: len(pair[1]))
    return [f"{name}.{i}" for i in range(len(blocks))]


def hidden_state_count(model: nn.Module) -> int:
    """How many hidden states the model's ``output_hidden_states`` gives: the embeddings and one per block."""
    config = getattr(model, "config", None)
    layers = getattr(config, "num_hidden_layers", None) if config is not None else None
    if layers is None:
        layers = len(block_names(model))
    return int(layers) + 1


def _on_device(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch on the model's device (a no-op when it is already there)."""
    device = device_of(model)
    if batch["input_ids"].device == device:
        return batch
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _moments(log_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """μ = Σ p log p and σ = sqrt(max(Σ p (log p)² − μ², 1e-6)) over the last dimension, with 0·log 0 = 0
    (a token banned with a −inf logit adds nothing, where 0·(−inf) would make both NaN)."""
    probs = log_probs.exp()
    log_probs = log_probs.masked_fill(log_probs == float("-inf"), 0.0)  # its weight exp(−inf) is 0 already
    mean = (probs * log_probs).sum(-1)
    variance = (probs * log_probs.square()).sum(-1) - mean.square()
    return mean, variance.clamp_min(1e-6).sqrt()


def _question_answer(item: Any) -> tuple[str, str]:
    if not isinstance(item, dict) or not isinstance(item.get("question"), str) or not isinstance(item.get("answer"), str):
        raise UserInputError(
            f"A causal-LM item must be a dict with string fields 'question' and 'answer', got {_describe(item)}."
        )
    return item["question"], item["answer"]


def _embedding_rows(model: nn.Module | None) -> int | None:
    """How many token ids the model's input embedding has rows for; None where it does not say."""
    try:
        return int(model.get_input_embeddings().num_embeddings)
    except (AttributeError, NotImplementedError, TypeError):  # no model, a wrapper, or an embedding of another kind
        return None


def _describe(item: Any) -> str:
    if isinstance(item, dict):
        return f"a dict with keys {sorted(item)}"
    return f"a {type(item).__name__}"


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Transformers' warnings off inside the block (its loading reports, where unlearnkit says what matters)."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)
