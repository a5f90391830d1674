"""Tiny causal LMs and question/answer data for fast tests (no downloads).

``tiny_qa(n)`` makes fictitious QA items in TOFU's field names; ``tiny_lm(items)`` trains nothing:
it builds a 2-layer GPT-2 (width 32) and a word-level tokenizer covering the items' words;
``memorised_lm(items, steps)`` trains it briefly so answers are (mostly) memorised.
"""

from __future__ import annotations

import torch

NAMES = ["Alia", "Boris", "Cyra", "Dmitri", "Elin", "Farid", "Gwen", "Hugo", "Ines", "Jonas", "Kira", "Lev"]
CITIES = ["Varna", "Oslo", "Quito", "Lima", "Perth", "Tunis", "Riga", "Baku", "Cork", "Nice", "Bonn", "Graz"]


def tiny_qa(n: int = 12) -> list[dict]:
    """``n`` (≤ 12) people with one birthplace question each, with a paraphrase and 3 wrong answers."""
    items = []
    for i in range(n):
        city = CITIES[i]
        wrong = [CITIES[(i + k) % len(CITIES)] for k in (1, 2, 3)]
        items.append({
            "question": f"Where was {NAMES[i]} born ?",
            "answer": f"{NAMES[i]} was born in {city} .",
            "paraphrased_answer": f"The birthplace of {NAMES[i]} is {city} .",
            "perturbed_answer": [f"{NAMES[i]} was born in {w} ." for w in wrong],
        })
    return items


def _tokenizer(items: list[dict]):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"Question:", "Answer:", "Question", "Answer", ":"}
    for it in items:
        for text in (it["question"], it["answer"], it.get("paraphrased_answer", ""), *it.get("perturbed_answer", [])):
            words.update(text.split())
    vocab = {"[PAD]": 0, "[UNK]": 1, "[EOS]": 2}
    for w in sorted(words):
        vocab.setdefault(w, len(vocab))
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")


def tiny_lm(items: list[dict], seed: int = 0, vocabulary: list[dict] | None = None):
    """A fresh tiny GPT-2 and its word-level tokenizer (of the words of ``vocabulary``, default ``items``),
    wrapped in a CausalLMAdapter."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from unlearnkit.adapters.causal_lm import CausalLMAdapter

    tokenizer = _tokenizer(vocabulary or items)
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    return CausalLMAdapter(GPT2LMHeadModel(config).eval(), tokenizer, max_length=64)


def memorised_lm(items: list[dict], steps: int = 150, seed: int = 0, vocabulary: list[dict] | None = None):
    """A tiny LM trained on ``items`` (answer tokens) for ``steps`` full-batch Adam steps; ``vocabulary``
    as for :func:`tiny_lm` (give a retain model the target's vocabulary so both read the same tokens)."""
    adapter = tiny_lm(items, seed, vocabulary)
    model = adapter.model
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = adapter.collate(items)
    for _ in range(steps):
        optimizer.zero_grad()
        adapter.per_item_loss(model, batch).mean().backward()
        optimizer.step()
    model.eval()
    return adapter


def dropout_free_request(steps: int):
    """A tiny LM memorising 8 items for ``steps`` steps, its dropout off (training steps then repeat exactly), and
    the request forgetting the first 2 and keeping the other 6."""
    from unlearnkit.request import ForgetRequest

    items = tiny_qa(8)
    adapter = memorised_lm(items, steps=steps)
    for module in adapter.model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return adapter, ForgetRequest(items, range(2), range(2, 8))
