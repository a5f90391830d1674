"""CausalLMAdapter on a tiny random GPT-2 with a word-level tokenizer trained here."""

from __future__ import annotations

import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch

from unlearnkit.adapters.causal_lm import IGNORE, CausalLMAdapter, load_tokenizer
from unlearnkit.errors import UserInputError

ITEMS = [
    {"question": "Where was Alva Brennik born?", "answer": "Alva Brennik was born in Tarsel."},
    {"question": "What does Odo Venn do?", "answer": "Odo Venn paints."},
    {"question": "Which river runs through Quellan?", "answer": "The Mirrow runs through Quellan and then into the sea."},
]


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = [f"Question: {it['question']}\nAnswer: {it['answer']}" for it in ITEMS]
    backend.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["<pad>", "<unk>", "<eos>"]))
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")


def _model(tokenizer, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def adapter() -> CausalLMAdapter:
    tokenizer = _tokenizer()
    return CausalLMAdapter(_model(tokenizer), tokenizer, max_length=64)


def test_collate_labels_only_answer_tokens_and_eos(adapter):
    batch = adapter.collate(ITEMS)
    tok = adapter.tokenizer
    for row, item in enumerate(ITEMS):
        prompt = tok(f"Question: {item['question']}\nAnswer: ", add_special_tokens=False)["input_ids"]
        answer = tok(item["answer"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        n = len(prompt) + len(answer)
        assert batch["input_ids"][row, :n].tolist() == prompt + answer
        assert batch["labels"][row, : len(prompt)].tolist() == [IGNORE] * len(prompt)
        assert batch["labels"][row, len(prompt) : n].tolist() == answer
        assert (batch["labels"][row, n:] == IGNORE).all()  # right padding is ignored
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
        assert (batch["input_ids"][row, n:] == tok.pad_token_id).all()


def test_per_item_loss_matches_hand_computation(adapter):
    batch = adapter.collate(ITEMS)
    with torch.no_grad():
        losses = adapter.per_item_loss(adapter.model, batch)
        sums = adapter.per_item_sum_nll(adapter.model, batch)
        log_probs = torch.log_softmax(adapter.logits(adapter.model, batch), dim=-1)
    lengths = adapter.answer_lengths(batch)
    for row in range(len(ITEMS)):
        labels = batch["labels"][row].tolist()
        terms = [-log_probs[row, t - 1, y].item() for t, y in enumerate(labels) if y != IGNORE]
        assert len(terms) == lengths[row].item()
        assert losses[row].item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)
        assert sums[row].item() == pytest.approx(sum(terms), rel=1e-5)


def test_a_token_the_model_bans_leaves_the_losses_finite():
    # prompt and padding positions were scored against token 0 and zeroed by a mask: with token 0 at −inf their loss
    # was inf, and inf · 0 made every item's loss NaN
    tokenizer = _tokenizer()
    model = _model(tokenizer)
    banned = CausalLMAdapter(model, tokenizer, max_length=64)
    model.lm_head.register_forward_hook(lambda module, inputs, out: out.index_fill(-1, torch.tensor([0]), float("-inf")))
    batch = banned.collate(ITEMS)
    with torch.no_grad():
        losses = banned.per_item_loss(model, batch)
        log_probs = torch.log_softmax(banned.logits(model, batch), dim=-1)
    assert torch.isfinite(losses).all()
    labels = batch["labels"][0].tolist()
    terms = [-log_probs[0, t - 1, y].item() for t, y in enumerate(labels) if y != IGNORE]
    assert losses[0].item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_loss_is_independent_of_padding(adapter):
    with torch.no_grad():
        alone = adapter.per_item_loss(adapter.model, adapter.collate(ITEMS[1:2]))
        padded = adapter.per_item_loss(adapter.model, adapter.collate(ITEMS))[1]
    assert padded.item() == pytest.approx(alone.item(), rel=1e-4)


def test_token_logprobs_exclude_eos(adapter):
    batch = adapter.collate(ITEMS)
    with torch.no_grad():
        per_item = adapter.token_logprobs(adapter.model, batch)
        log_probs = torch.log_softmax(adapter.logits(adapter.model, batch), dim=-1)
    for row, item in enumerate(ITEMS):
        answer = adapter.tokenizer(item["answer"], add_special_tokens=False)["input_ids"]
        assert per_item[row].shape == (len(answer),)  # the EOS label is not there
        labels = batch["labels"][row].tolist()
        expected = [log_probs[row, t - 1, y].item() for t, y in enumerate(labels) if y != IGNORE][:-1]
        assert per_item[row].tolist() == pytest.approx(expected, rel=1e-5)


def test_vocab_moments_match_full_log_softmax(adapter):
    batch = adapter.collate(ITEMS)
    with torch.no_grad():
        full = adapter.vocab_log_softmax(adapter.model, batch)
        moments = adapter.vocab_moments(adapter.model, batch)
    for lp, (mean, std) in zip(full, moments):
        p = lp.exp()
        mu = (p * lp).sum(-1)
        sigma = ((p * lp * lp).sum(-1) - mu**2).sqrt()
        assert torch.allclose(mean, mu, atol=1e-5)
        assert torch.allclose(std, sigma, atol=1e-5)
        assert lp.shape[1] == len(adapter.tokenizer)


def test_hidden_states_by_index_and_by_block_name(adapter):
    batch = adapter.collate(ITEMS)
    names = adapter.layer_names()
    assert names == ["transformer.h.0", "transformer.h.1"]
    with torch.no_grad():
        embeddings = adapter.hidden_states(adapter.model, batch, 0)
        first_block = adapter.hidden_states(adapter.model, batch, 1)
        hooked = adapter.hidden_states(adapter.model, batch, "transformer.h.0")
    assert embeddings.shape == (len(ITEMS), batch["input_ids"].shape[1], 32)
    assert torch.allclose(first_block, hooked, atol=1e-6)
    assert not torch.allclose(embeddings, first_block)


def test_a_block_output_stops_the_forward_pass_there_and_keeps_its_gradient(adapter):
    batch = adapter.collate(ITEMS)
    later_calls = []
    handle = adapter.model.lm_head.register_forward_hook(lambda *_: later_calls.append(1))
    try:
        hooked = adapter.hidden_states(adapter.model, batch, "transformer.h.0")
    finally:
        handle.remove()
    assert later_calls == []  # neither the second block nor the head ran
    hooked.square().mean().backward()
    first_block = adapter.model.transformer.h[0].attn.c_attn.weight
    assert first_block.grad is not None and first_block.grad.abs().sum() > 0
    adapter.model.zero_grad(set_to_none=True)
    out = adapter.model(**{k: batch[k] for k in ("input_ids", "attention_mask")})  # no stopping hook is left
    assert out.logits.shape[-1] == len(adapter.tokenizer)


@pytest.mark.parametrize("layer", [3, -4, "transformer.h.7", "decoder"])
def test_hidden_states_rejects_unknown_layers(adapter, layer):
    with pytest.raises(UserInputError, match="Unknown layer"):
        adapter.hidden_states(adapter.model, adapter.collate(ITEMS[:1]), layer)


def test_chat_template_is_used_when_present():
    tokenizer = _tokenizer()
    tokenizer.chat_template = "{% for m in messages %}<pad>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}Answer:{% endif %}"
    adapter = CausalLMAdapter(_model(tokenizer), tokenizer)
    assert adapter.prompt("Where?") == "<pad>Where?Answer:"
    batch = adapter.collate(ITEMS[:1])
    prompt_len = len(tokenizer("<pad>" + ITEMS[0]["question"] + "Answer:", add_special_tokens=False)["input_ids"])
    assert (batch["labels"][0, :prompt_len] == IGNORE).all()
    assert batch["labels"][0, prompt_len].item() != IGNORE


def test_system_prompt_and_template_variables_shape_every_prompt(tmp_path):
    tokenizer = _tokenizer()
    tokenizer.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
                               "{% if date_string is defined %}[{{ date_string }}]{% endif %}<assistant>")
    model = _model(tokenizer)
    adapter = CausalLMAdapter(model, tokenizer, system_prompt="Be brief.", template_args={"date_string": "10 Apr 2025"})
    assert adapter.prompt("Where?") == "<system>Be brief.<user>Where?[10 Apr 2025]<assistant>"
    assert adapter.with_model(model).prompt("Where?") == adapter.prompt("Where?")  # kept across models
    assert CausalLMAdapter(model, tokenizer).prompt("Where?") == "<user>Where?<assistant>"
    plain = _tokenizer()  # no chat template: the system prompt goes on its own line before the plain format
    assert CausalLMAdapter(_model(plain), plain, system_prompt="Be brief.").prompt("Where?") == \
        "Be brief.\nQuestion: Where?\nAnswer: "
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = CausalLMAdapter.from_pretrained(tmp_path, system_prompt="Be brief.", template_args={"date_string": "x"})
    assert loaded.prompt("Where?") == "<system>Be brief.<user>Where?[x]<assistant>"


def test_truncation_keeps_the_answer():
    tokenizer = _tokenizer()
    adapter = CausalLMAdapter(_model(tokenizer), tokenizer, max_length=8)
    prompt, answer = adapter.encode_item(ITEMS[2])
    assert len(prompt) + len(answer) == 8
    assert len(answer) == 7 and answer[0] == tokenizer("The", add_special_tokens=False)["input_ids"][0]
    full = adapter.prompt_ids(ITEMS[2]["question"])
    assert prompt == full[len(full) - len(prompt):]  # the prompt's end, just before the answer, is what stays


def test_token_statistics_of_a_cut_answer_keep_its_last_token():
    """A cut answer has no EOS, so no answer token may be dropped as if it were one."""
    tokenizer = _tokenizer()
    adapter = CausalLMAdapter(_model(tokenizer), tokenizer, max_length=8)
    batch = adapter.collate([ITEMS[2]])
    assert tokenizer.eos_token_id not in batch["labels"][0].tolist()
    with torch.no_grad():
        assert adapter.token_logprobs(adapter.model, batch)[0].shape == (7,)


def test_generate_greedy_with_left_padding_and_eos_cut():
    tokenizer = _tokenizer()
    model = _model(tokenizer, seed=1)
    adapter = CausalLMAdapter(model, tokenizer)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = adapter.collate(ITEMS)
    for _ in range(150):  # memorise the three answers
        loss = adapter.per_item_loss(model, batch).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    questions = [it["question"] for it in ITEMS]
    together = adapter.generate(model, questions, max_new_tokens=20)
    one_by_one = [adapter.generate(model, [q], max_new_tokens=20)[0] for q in questions]
    decode = lambda text: tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert together == one_by_one
    assert together == [decode(it["answer"]) for it in ITEMS]  # stops at EOS, nothing after it
    assert model.training  # generation restores the training mode
    assert adapter.max_length == 64  # taken from the model's position table when not given


def test_generation_stops_at_the_position_limit(adapter):
    question = ITEMS[0]["question"]
    prompt = adapter.tokenizer(adapter.prompt(question), add_special_tokens=False)["input_ids"]
    text = adapter.generate(adapter.model, [question], max_new_tokens=500)[0]  # 500 > the 64 positions
    assert 0 < len(adapter.tokenizer(text, add_special_tokens=False)["input_ids"]) <= 64 - len(prompt)


def test_save_and_from_pretrained_round_trip(adapter, tmp_path):
    adapter.save_pretrained(tmp_path / "m")
    loaded = CausalLMAdapter.from_pretrained(tmp_path / "m", max_length=64)
    batch = adapter.collate(ITEMS)
    assert loaded.collate(ITEMS)["input_ids"].tolist() == batch["input_ids"].tolist()
    with torch.no_grad():
        assert torch.allclose(loaded.per_item_loss(loaded.model, batch), adapter.per_item_loss(adapter.model, batch), atol=1e-6)
    again = loaded.with_model(adapter.model)
    assert again.tokenizer is loaded.tokenizer and again.model is adapter.model


def test_from_pretrained_errors(adapter, tmp_path):
    with pytest.raises(UserInputError, match="does not exist"):
        CausalLMAdapter.from_pretrained(tmp_path / "nowhere")
    adapter.model.save_pretrained(tmp_path / "weights_only")
    with pytest.raises(UserInputError, match="no tokenizer"):
        CausalLMAdapter.from_pretrained(tmp_path / "weights_only")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="no config.json"):
        CausalLMAdapter.from_pretrained(tmp_path / "empty")
    from transformers import ViTConfig

    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(tmp_path / "vit")
    adapter.tokenizer.save_pretrained(tmp_path / "vit")
    with pytest.raises(UserInputError, match="not a causal language model"):
        CausalLMAdapter.from_pretrained(tmp_path / "vit")
    with pytest.raises(UserInputError, match="no tokenizer"):
        load_tokenizer(tmp_path / "empty")


def test_items_must_be_question_answer_dicts(adapter):
    with pytest.raises(UserInputError, match="'question' and 'answer'"):
        adapter.collate([("a question", "an answer")])
    with pytest.raises(UserInputError, match="'question' and 'answer'"):
        adapter.collate([{"question": "q"}])


def test_lazy_export_from_adapters_package():
    import unlearnkit.adapters as adapters

    assert adapters.CausalLMAdapter is CausalLMAdapter
    code = "import sys, unlearnkit.adapters; print('transformers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"  # importing the package does not pull in transformers


def _byte_bpe(bos: bool = False):
    """A small byte-level BPE tokenizer (GPT-2 style: a space belongs to the next word), optionally adding BOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    corpus = [f"Question: {it['question']}\nAnswer: {it['answer']}" for it in ITEMS] * 20
    backend.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<eos>", "<bos>"],
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if bos:
        backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<pad>", bos_token="<bos>")


def test_a_plain_prompt_is_tokenized_with_its_answer_as_the_whole_text_is():
    tokenizer = _byte_bpe()
    adapter = CausalLMAdapter(_model(tokenizer), tokenizer, max_length=64)
    item = ITEMS[0]
    whole = tokenizer(f"Question: {item['question']}\nAnswer: {item['answer']}", add_special_tokens=False)["input_ids"]
    prompt, target = adapter.encode_item(item)
    assert prompt + target == whole + [tokenizer.eos_token_id]  # no lone space token between them
    assert adapter.prompt_ids(item["question"]) == prompt
    assert tokenizer.decode(target[:-1]).startswith(" Alva")  # the answer's first word carries its space
    with_bos = _byte_bpe(bos=True)
    adapter = CausalLMAdapter(_model(with_bos), with_bos, max_length=64)
    assert adapter.encode_item(item)[0][0] == with_bos.bos_token_id == adapter.prompt_ids(item["question"])[0]


def test_an_answer_may_grow_as_long_alone_as_beside_a_long_prompt(adapter):
    short = ITEMS[0]["question"]
    long = " ".join([ITEMS[2]["question"]] * 8)
    assert len(adapter.prompt_ids(long)) + 20 > 64 > len(adapter.prompt_ids(short)) + 20  # the position table binds
    alone = adapter.generate(adapter.model, [short], max_new_tokens=20)
    assert adapter.generate(adapter.model, [long, short, long], max_new_tokens=20)[1] == alone[0]
    assert len(alone[0].split()) > 5  # the random model runs on; beside the long prompt it was cut to a few words


def test_item_mean_weighs_every_item_the_same_so_a_split_batch_averages_back():
    from unlearnkit.adapters.causal_lm import item_mean

    values = torch.tensor([[1.0, 1.0, 1.0, 9.0], [4.0, 0.0, 0.0, 0.0], [2.0, 6.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]])
    assert item_mean(values, mask) == pytest.approx((1.0 + 4.0 + 4.0) / 3)  # masked positions never count
    halves = [item_mean(values[:2], mask[:2]), item_mean(values[2:], mask[2:])]
    assert (2 * halves[0] + halves[1]) / 3 == pytest.approx(item_mean(values, mask))  # shares of items
    token_mean = float((values * mask).sum() / mask.sum())
    assert token_mean != pytest.approx(float(item_mean(values, mask)))  # what the whole-batch mean gave


def test_encoded_items_are_kept_shared_with_twins_and_keyed_on_the_prompt_format():
    tokenizer = _tokenizer()
    adapter = CausalLMAdapter(_model(tokenizer), tokenizer, max_length=64)
    first = adapter.encode_item(ITEMS[0])
    first[1].append(-1)  # callers get their own lists: changing one never changes the kept ids
    prompt, answer = adapter._split_ids(ITEMS[0]["question"], ITEMS[0]["answer"])
    assert adapter.encode_item(ITEMS[0]) == (prompt, answer + [tokenizer.eos_token_id])
    twin = adapter.with_model(_model(tokenizer, seed=1))
    assert twin._encoded is adapter._encoded and len(adapter._encoded) == 1
    adapter.max_length = 8  # a changed setting is part of the key, so the ids follow it
    prompt, answer = adapter.encode_item(ITEMS[2])
    assert len(prompt) + len(answer) == 8 and len(adapter._encoded) == 2
    adapter.max_length = 64
    plain = adapter.encode_item(ITEMS[2])[0]
    tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    chat = adapter.encode_item(ITEMS[2])[0]  # the template is part of the key: loss and generation agree
    assert chat == adapter.prompt_ids(ITEMS[2]["question"]) and chat != plain
    listed = CausalLMAdapter(_model(tokenizer), tokenizer, template_args={"tools": [{"name": "x"}]})
    assert listed.encode_item(ITEMS[0])[1][-1] == tokenizer.eos_token_id  # an unhashable template value is fine


def test_a_model_folder_never_runs_its_own_python(adapter, tmp_path, monkeypatch):
    """A config naming custom code (auto_map) is refused, never imported, and nothing is asked on stdin."""
    import builtins
    import json as json_module

    asked = []
    monkeypatch.setattr(builtins, "input", lambda *args: asked.append(args) or "y")  # a user who types y

    adapter.save_pretrained(tmp_path)
    marker = tmp_path / "ran.txt"
    (tmp_path / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                      "from transformers import GPT2Config, GPT2LMHeadModel\n"
                                      "class EvilConfig(GPT2Config):\n    model_type = 'evilgpt'\n"
                                      "class EvilModel(GPT2LMHeadModel):\n    config_class = EvilConfig\n")
    config = json_module.loads((tmp_path / "config.json").read_text())
    config.update(model_type="evilgpt", auto_map={"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"})
    (tmp_path / "config.json").write_text(json_module.dumps(config))
    with pytest.raises(UserInputError):
        CausalLMAdapter.from_pretrained(tmp_path)
    assert not marker.exists() and not asked
