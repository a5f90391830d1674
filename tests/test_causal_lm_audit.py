"""Audit of the causal-LM adapter and the user data reader: prompts, generation settings, data-file edge cases."""

from __future__ import annotations

import importlib.util
import json
import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch

from lm_fixtures import memorised_lm, tiny_lm, tiny_qa
from unlearnkit.errors import UserInputError
from unlearnkit.userdata import read_records, require_fields


# ---------------------------------------------------------------------- causal_lm.py
def test_a_checkpoint_missing_weights_or_holding_other_shapes_is_refused(tmp_path):
    """transformers filled a missing output head (a base model saved without it) or weights of other shapes than
    config.json says at random, or raised a RuntimeError traceback: the run then reported 'ok' on a model that is
    not the user's, with other scores and fingerprints each time."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from unlearnkit.adapters.causal_lm import CausalLMAdapter

    adapter = tiny_lm(tiny_qa(4))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(adapter.tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False)
    LlamaForCausalLM(config).model.save_pretrained(tmp_path / "headless")  # the base model: no lm_head
    adapter.tokenizer.save_pretrained(tmp_path / "headless")
    with pytest.raises(UserInputError, match=r"headless lack 1 of the weights .* \(e.g. lm_head.weight\)"):
        CausalLMAdapter.from_pretrained(tmp_path / "headless")
    adapter.save_pretrained(tmp_path / "resized")
    settings = json.loads((tmp_path / "resized" / "config.json").read_text())
    (tmp_path / "resized" / "config.json").write_text(json.dumps({**settings, "vocab_size": settings["vocab_size"] + 10}))
    with pytest.raises(UserInputError, match="hold them in other shapes"):
        CausalLMAdapter.from_pretrained(tmp_path / "resized")


def test_a_quantized_checkpoint_and_a_sentencepiece_tokenizer_without_its_package_are_one_sentence(tmp_path, capfd):
    """A GPTQ/bitsandbytes config ended in transformers' ImportError traceback; a tokenizer.model alone (Llama-2
    style) was read as a tiktoken file, after several lines of notices, and the user was told to install tiktoken;
    an unknown model type put transformers' notice from the tokenizer load before the one sentence."""
    from unlearnkit.adapters.causal_lm import CausalLMAdapter

    adapter = tiny_lm(tiny_qa(4))
    adapter.save_pretrained(tmp_path / "unknown")
    settings = json.loads((tmp_path / "unknown" / "config.json").read_text())
    (tmp_path / "unknown" / "config.json").write_text(json.dumps({**settings, "model_type": "zzz"}))
    capfd.readouterr()
    with pytest.raises(UserInputError, match="is not a causal language model"):
        CausalLMAdapter.from_pretrained(tmp_path / "unknown")
    assert capfd.readouterr().err == ""
    adapter.save_pretrained(tmp_path / "quantized")
    settings = json.loads((tmp_path / "quantized" / "config.json").read_text())
    (tmp_path / "quantized" / "config.json").write_text(json.dumps(
        {**settings, "quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128}}))
    with pytest.raises(UserInputError, match=r"is quantized \(gptq\); unlearnkit trains and saves full-precision"):
        CausalLMAdapter.from_pretrained(tmp_path / "quantized")
    if importlib.util.find_spec("sentencepiece") and importlib.util.find_spec("google"):
        return  # the tokenizer.model would be read
    adapter.save_pretrained(tmp_path / "sentencepiece")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "sentencepiece" / name).unlink()
    (tmp_path / "sentencepiece" / "tokenizer.model").write_bytes(b"\x0a\x00")  # any bytes: never read without the package
    capfd.readouterr()
    with pytest.raises(UserInputError, match="is a SentencePiece tokenizer.model alone, which needs the sentencepiece "
                                             "and protobuf packages"):
        CausalLMAdapter.from_pretrained(tmp_path / "sentencepiece")
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("edit, message", [
    (lambda settings: [], "holds an array, not an object of model settings"),
    (lambda settings: None, "holds null, not an object of model settings"),
    (lambda settings: {**settings, "vocab_size": "many"}, "holds a setting transformers refuses (Validation error "
                                                         "for field 'vocab_size'"),
    (lambda settings: {**settings, "_attn_implementation": "kernels-community/flash-attn"},
     "asks for attention code from the Hugging Face Hub (_attn_implementation kernels-community/flash-attn), which "
     "unlearnkit never fetches or runs"),
])
def test_a_config_json_that_cannot_or_must_not_be_loaded_is_one_sentence(tmp_path, edit, message):
    """A config of the wrong shape or with a wrongly typed setting ended in a TypeError (or huggingface_hub's
    validation error) from the tokenizer load; a Hub kernel named for attention reached transformers' kernel loader."""
    from unlearnkit.adapters.causal_lm import CausalLMAdapter

    tiny_lm(tiny_qa(4)).save_pretrained(tmp_path / "lm")
    settings = json.loads((tmp_path / "lm" / "config.json").read_text())
    (tmp_path / "lm" / "config.json").write_text(json.dumps(edit(settings)))
    with pytest.raises(UserInputError, match=re.escape(message)):
        CausalLMAdapter.from_pretrained(tmp_path / "lm")


def test_a_token_beyond_the_models_embedding_is_one_sentence(tmp_path):
    """A token added to the tokenizer without resizing the embeddings ended in an IndexError in the forward."""
    items = tiny_qa(4)
    adapter = tiny_lm(items)
    adapter.tokenizer.add_tokens(["Zorblax"])
    rows = adapter.model.get_input_embeddings().num_embeddings
    adapter.collate(items)  # the items' own tokens are all covered
    with pytest.raises(UserInputError, match=f"gives token id {rows}, but the model's embedding has {rows} rows"):
        adapter.collate([{"question": items[0]["question"], "answer": "Zorblax"}])
    # checked on every item, named, before items are shared out among processes (a refusal on one alone hung)
    unknown = [items[0], {"question": items[1]["question"], "answer": "Zorblax"}]
    with pytest.raises(UserInputError, match=f"gives token id {rows} for forget.jsonl line 2, but the model"):
        adapter.refuse_unreadable(unknown, ["forget.jsonl line 1", "forget.jsonl line 2"])


def test_a_model_path_that_is_a_file_is_not_called_missing(tmp_path):
    """``--model lm/config.json`` (a file of the model, not its folder) was reported as a folder that does not exist."""
    from unlearnkit.adapters.causal_lm import CausalLMAdapter

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserInputError, match=r"config.json is a file; give the model's folder\.$"):
        CausalLMAdapter.from_pretrained(tmp_path / "config.json")
    with pytest.raises(UserInputError, match=r"missing does not exist\.$"):
        CausalLMAdapter.from_pretrained(tmp_path / "missing")


def test_a_python_tokenizer_prompts_generation_with_the_ids_its_answers_were_trained_after():
    """A tokenizer without offsets (not "fast") encodes the plain prompt apart from its answer, trailing space
    included; generation must be prompted with those same ids, not with the prompt stripped of its space."""
    from transformers import ByT5Tokenizer, GPT2Config, GPT2LMHeadModel

    from unlearnkit.adapters.causal_lm import CausalLMAdapter

    tokenizer = ByT5Tokenizer()  # byte-level, needs no files
    assert not tokenizer.is_fast
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=16, n_layer=1, n_head=2,
                                       bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                                       pad_token_id=tokenizer.pad_token_id))
    adapter = CausalLMAdapter(model.eval(), tokenizer, max_length=128)
    item = {"question": "Where was Alia born?", "answer": "Alia was born in Varna."}
    prompt, target = adapter.encode_item(item)
    assert adapter.prompt_ids(item["question"]) == prompt
    assert tokenizer.decode(prompt + target[:-1]) == f"Question: {item['question']}\nAnswer: {item['answer']}"


def test_generation_is_greedy_whatever_the_model_saved_generation_config_asks_for():
    """A saved generation_config.json (Qwen2.5's sets repetition_penalty=1.05, some set beams) must not change
    what the adapter documents as greedy decoding."""
    items = tiny_qa(6)
    adapter = tiny_lm(items, seed=3)
    questions = [it["question"] for it in items]
    greedy = adapter.generate(adapter.model, questions, max_new_tokens=12)
    config = adapter.model.generation_config
    config.repetition_penalty, config.no_repeat_ngram_size, config.num_beams, config.min_new_tokens = 4.0, 1, 3, 12
    assert adapter.generate(adapter.model, questions, max_new_tokens=12) == greedy
    first_tokens = [ids[0] for _, ids in (adapter.encode_item(it) for it in items)]
    config.suppress_tokens, config.guidance_scale = first_tokens, 3.0  # these changed the answers
    config.penalty_alpha, config.top_k = 0.6, 4  # contrastive search: generate refused to run
    assert adapter.generate(adapter.model, questions, max_new_tokens=12) == greedy
    assert adapter.model.generation_config is config and config.penalty_alpha == 0.6  # given back as it was


def test_an_answer_ends_at_any_end_token_the_models_generation_config_names():
    """Llama 3 saves several end tokens (end of text, end of turn); only the tokenizer's EOS used to stop an answer."""
    items = tiny_qa(2)
    adapter = memorised_lm(items)
    words = adapter.generate(adapter.model, [items[0]["question"]], max_new_tokens=12)[0].split()
    assert words == items[0]["answer"].split() and words[2] not in words[:2]  # the memorised answer
    adapter.model.generation_config.eos_token_id = [adapter.tokenizer.eos_token_id,
                                                    adapter.tokenizer.convert_tokens_to_ids(words[2])]
    assert adapter.generate(adapter.model, [items[0]["question"]], max_new_tokens=12)[0] == " ".join(words[:2])


def test_a_chat_template_that_refuses_the_prompt_is_a_user_error():
    """Gemma's template raises on a system turn; the user gets one sentence, not a Jinja traceback."""
    adapter = tiny_lm(tiny_qa(2))
    adapter.tokenizer.chat_template = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        "{% for m in messages %}{{ m['content'] }}{% endfor %}")
    adapter.system_prompt = "Be brief."
    with pytest.raises(UserInputError, match="chat template.*System role not supported"):
        adapter.collate(tiny_qa(1))


# ---------------------------------------------------------------------- userdata.py
def test_a_utf8_file_with_a_byte_order_mark_reads_like_one_without(tmp_path):
    """Excel's "CSV UTF-8" and Windows editors write a BOM; it is not part of the first column's name."""
    csv_file, jsonl_file = tmp_path / "forget.csv", tmp_path / "forget.jsonl"
    csv_file.write_text("question,answer\nWhere?,Here.\n", encoding="utf-8-sig")
    jsonl_file.write_text(json.dumps({"question": "Where?", "answer": "Here."}) + "\n", encoding="utf-8-sig")
    for path in (csv_file, jsonl_file):
        records = read_records(path)
        assert records == [("line 2" if path.suffix == ".csv" else "line 1", {"question": "Where?", "answer": "Here."})]
        require_fields(records, ["question", "answer"], path)


def test_jsonl_lines_are_split_at_newlines_only(tmp_path):
    """JSON keeps U+2028, U+2029 and U+0085 unescaped inside strings (json.dumps with ensure_ascii=False)."""
    rows = [{"question": "First\u2028line?", "answer": "A\x85B"}, {"question": "Q2\u2029", "answer": "A2"}]
    path = tmp_path / "forget.jsonl"
    path.write_text("\r\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\r\n", encoding="utf-8")
    assert read_records(path) == [("line 1", rows[0]), ("line 2", rows[1])]


@pytest.mark.parametrize("name", ["forget.jsonl", "forget.json"])
def test_deeply_nested_json_is_a_user_error(tmp_path, name):
    path = tmp_path / name
    path.write_text("[" * 100_000 + "\n", encoding="utf-8")
    with pytest.raises(UserInputError, match=f"{name} .*nested too deeply"):
        read_records(path)


def test_a_field_present_without_a_value_is_named_as_such(tmp_path):
    """A short CSV row and a JSON null have the field's name but no value: the message must not claim the
    field is missing while listing it among the fields found."""
    short = tmp_path / "forget.csv"
    short.write_text("question,answer\nWhere?\n", encoding="utf-8")
    null = tmp_path / "forget.jsonl"
    null.write_text(json.dumps({"question": "Where?", "answer": None}) + "\n", encoding="utf-8")
    for path in (short, null):
        with pytest.raises(UserInputError, match="line [12] has no value for the field 'answer'") as error:
            require_fields(read_records(path), ["question", "answer"], path)
        assert "fields found" not in str(error.value)
    missing = tmp_path / "other.jsonl"
    missing.write_text(json.dumps({"question": "Where?"}) + "\n", encoding="utf-8")
    with pytest.raises(UserInputError, match="line 1 has no field 'answer' \\(fields found: question\\)"):
        require_fields(read_records(missing), ["question", "answer"], missing)


def test_a_csv_header_naming_a_column_twice_is_refused(tmp_path):
    """csv.DictReader keeps the last of two same-named columns and drops the other without a word."""
    path = tmp_path / "forget.csv"
    path.write_text("question,answer,answer\nWhere?,Here.,There.\n", encoding="utf-8")
    with pytest.raises(UserInputError, match=r"line 1 gives columns 2 and 3 the same name; .* name each column once\.$"):
        read_records(path)
    headless = tmp_path / "headless.csv"  # a forget item where the header should be: its text stays out of the message
    headless.write_text("Alia Petrova,Alia Petrova\nWho?,Me.\n", encoding="utf-8")
    with pytest.raises(UserInputError) as refused:
        read_records(headless)
    assert "Alia" not in str(refused.value) and "columns 1 and 2" in str(refused.value)


def test_template_arguments_for_a_tokenizer_without_a_chat_template_are_refused():
    """They fill chat-template variables; with the plain prompt format they did nothing, silently."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from lm_fixtures import tiny_lm, tiny_qa

    from unlearnkit.adapters.causal_lm import CausalLMAdapter
    from unlearnkit.errors import UserInputError

    plain = tiny_lm(tiny_qa(2))
    with pytest.raises(UserInputError, match="this tokenizer has no chat template"):
        CausalLMAdapter(plain.model, plain.tokenizer, template_args={"date_string": "1 Jan 2026"})
    CausalLMAdapter(plain.model, plain.tokenizer, system_prompt="Be brief.")  # a system prompt still applies
