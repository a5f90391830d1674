"""Audit of the run settings around a method: LoRA / bf16 / checkpointing (train/lora.py), wall time and memory
(train/measure.py), progress bars (progress.py) and the holdout early stop (train/stopping.py)."""

import copy
import sys
from pathlib import Path

import pytest
import torch

from unlearnkit.api import unlearn
from unlearnkit.errors import UserInputError
from unlearnkit.request import ForgetRequest
from unlearnkit.train.lora import MemoryOptions, merged_state_dict

sys.path.insert(0, str(Path(__file__).parent))
from lm_fixtures import _tokenizer, dropout_free_request, memorised_lm, tiny_qa  # noqa: E402

LORA_BF16 = dict(lora="r=4,alpha=8,targets=c_attn", bf16=True)


@pytest.fixture(scope="module")
def lm():
    return dropout_free_request(steps=40)


@pytest.fixture(scope="module")
def llama():
    """A tiny Llama, whose rotary embedding keeps ``inv_freq`` as an unsaved float32 buffer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from unlearnkit.adapters.causal_lm import CausalLMAdapter

    items = tiny_qa(8)
    tokenizer = _tokenizer(items)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.eos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    adapter = CausalLMAdapter(LlamaForCausalLM(config).eval(), tokenizer, max_length=64)
    return adapter, ForgetRequest(items, range(2), range(2, 8))


def _npo(adapter, request, memory, **settings):
    return unlearn(adapter.model, request, "npo", adapter=adapter, epochs=2, batch_size=2, lr=1e-2, memory=memory,
                   **settings)


# ---------------------------------------------------------------------------- bf16: dtypes and constants come back
@pytest.mark.parametrize("options", [dict(bf16=True), LORA_BF16], ids=["full-bf16", "lora-bf16"])
def test_bf16_gives_every_tensor_back_its_own_input_dtype(lm, options):
    """A bfloat16 model that keeps some tensors in float32 (transformers' ``_keep_in_fp32_modules``) had every
    tensor cast to the first parameter's dtype: the float32 ones came back bfloat16 (and, under LoRA, rounded)."""
    adapter, request = lm
    mixed = copy.deepcopy(adapter.model).to(torch.bfloat16)
    mixed.transformer.ln_f.float()
    own = adapter.with_model(mixed)
    model, record = _npo(own, request, MemoryOptions.from_cli(options.get("lora"), bf16=True))
    assert record.status == "ok"
    original = mixed.state_dict()
    for name, value in model.state_dict().items():
        assert value.dtype == original[name].dtype, name
    if "lora" in options:  # ln_f was not adapted: it comes back bit for bit
        assert torch.equal(model.transformer.ln_f.weight, mixed.transformer.ln_f.weight)


@pytest.mark.parametrize("options", [dict(bf16=True), LORA_BF16 | {"lora": "r=4,targets=q_proj,v_proj"}],
                         ids=["full-bf16", "lora-bf16"])
@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
def test_bf16_gives_back_the_unsaved_rotary_constants_unrounded(llama, options, input_dtype):
    """``inv_freq`` is not saved (a reload rebuilds it exactly); bf16 rounded it and the returned model kept the
    rounded value, so its metrics were not those of the model its folder reloads to (a rotary phase error that
    grows with the position), and a bfloat16 input's float32 inv_freq came back bfloat16."""
    adapter, request = llama
    model_in = copy.deepcopy(adapter.model).to(input_dtype)
    for module in model_in.modules():  # as from_pretrained(dtype=bfloat16) leaves them: float32
        for name in ("inv_freq", "original_inv_freq"):
            if isinstance(module._buffers.get(name), torch.Tensor):
                module._buffers[name] = getattr(adapter.model.model.rotary_emb, name).clone()
    own = adapter.with_model(model_in)
    model, record = _npo(own, request, MemoryOptions.from_cli(options.get("lora"), bf16=True))
    assert record.status == "ok"
    before, after = dict(model_in.named_buffers()), dict(model.named_buffers())
    assert before.keys() == after.keys() and "model.rotary_emb.inv_freq" in after
    for name, value in before.items():
        assert after[name].dtype == value.dtype == torch.float32, name
        assert torch.equal(after[name], value), name


def test_bf16_gives_a_wrappers_copy_of_the_model_its_constants_and_dtypes_back(llama):
    """ULD's assistant is a copy of the bf16-cast model: its inv_freq came back rounded (its reload rebuilds it
    exactly) and every tensor in the input's first dtype, also the ones the input kept in float32."""
    adapter, request = llama
    model_in = copy.deepcopy(adapter.model).to(torch.bfloat16)
    model_in.model.norm.float()  # kept in float32, as transformers' _keep_in_fp32_modules leaves some
    for name in ("inv_freq", "original_inv_freq"):  # as from_pretrained(dtype=bfloat16) leaves them: float32
        model_in.model.rotary_emb._buffers[name] = getattr(adapter.model.model.rotary_emb, name).clone()
    own = adapter.with_model(model_in)
    wrapper, record = unlearn(own.model, request, "uld", adapter=own, memory=MemoryOptions(bf16=True), max_steps=1,
                              batch_size=2, assistant_layers=1)
    assert record.status == "ok"
    inputs = {**dict(model_in.named_parameters()), **dict(model_in.named_buffers())}
    for copy_of_input in (wrapper.base, wrapper.assistant):
        for name, value in [*copy_of_input.named_parameters(), *copy_of_input.named_buffers()]:
            assert value.dtype == inputs[name].dtype, name
        for name in ("inv_freq", "original_inv_freq"):
            assert torch.equal(getattr(copy_of_input.model.rotary_emb, name), inputs[f"model.rotary_emb.{name}"])


@pytest.mark.parametrize("method, settings", [("mrp", {"layers": "1", "epochs": 1}), ("guard", {}), ("guard_it", {})])
def test_bf16_leaves_a_methods_own_float32_tensors_alone(llama, method, settings):
    """--bf16 on a bfloat16 checkpoint cast the tensors the input did not have (MRP's basis, GUARD's detector,
    GUARD-IT's gate) to bfloat16 after the run: scoring the result then failed (MRP's QR has no bfloat16 kernel on
    the CPU; the detectors multiplied float32 by bfloat16), after all the training was done."""
    adapter, request = llama
    model_in = copy.deepcopy(adapter.model).to(torch.bfloat16)
    own = adapter.with_model(model_in)
    model, record = unlearn(own.model, request, method, adapter=own, memory=MemoryOptions(bf16=True), batch_size=2,
                            **settings)
    assert record.status == "ok"
    inputs = {**dict(model_in.named_parameters()), **dict(model_in.named_buffers())}
    own_tensors = [(n, t) for n, t in [*model.named_parameters(), *model.named_buffers()]
                   if n.removeprefix("base.") not in inputs and t.is_floating_point()]
    assert own_tensors and all(t.dtype == torch.float32 for _, t in own_tensors), [(n, t.dtype) for n, t in own_tensors]
    losses = own.with_model(model).per_item_loss(model, own.collate(request.forget_items()))
    assert torch.isfinite(losses).all()


# ---------------------------------------------------------------------------- save=adapter: what is saved is what ran
def test_an_adapter_on_a_bf16_model_reloads_to_the_model_that_was_evaluated(lm, tmp_path):
    """The returned PEFT model computed B·A beside the bfloat16 weight, while the saved folder reloads with the adapter
    merged into it (rounded to bfloat16): run.json's metrics and the ledger's fingerprint (float32 sums) described
    another model than the one that reloads."""
    from peft import PeftModel

    from unlearnkit.io import fingerprint

    adapter, request = lm
    base = copy.deepcopy(adapter.model).to(torch.bfloat16)
    own = adapter.with_model(base)
    for bf16 in (False, True):
        model, _ = _npo(own, request, MemoryOptions.from_cli("r=4,alpha=8,targets=c_attn,save=adapter", bf16=bf16))
        folder = tmp_path / f"adapter-{bf16}"
        model.save_pretrained(folder)
        reloaded = PeftModel.from_pretrained(copy.deepcopy(base), folder, is_trainable=False).merge_and_unload().eval()
        assert fingerprint(merged_state_dict(model)) == fingerprint(reloaded.state_dict())
        batch = own.collate(request.forget_items())
        with torch.no_grad():
            assert torch.equal(own.per_item_loss(model, batch), own.per_item_loss(reloaded, batch))
            assert not torch.equal(own.per_item_loss(model, batch), own.per_item_loss(base, batch))  # it did unlearn


def test_the_fingerprint_of_an_unmerged_adapter_is_that_of_its_merge(lm):
    """merged_state_dict adds each unmerged delta as PEFT's merge does: in the base weight's dtype."""
    from peft import LoraConfig, get_peft_model

    adapter, _ = lm
    model = get_peft_model(copy.deepcopy(adapter.model).to(torch.bfloat16),
                           LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True, init_lora_weights=False))
    unmerged = merged_state_dict(model)
    merged = copy.deepcopy(model).merge_and_unload().state_dict()
    assert unmerged.keys() == merged.keys()
    for name, value in merged.items():
        assert unmerged[name].dtype == value.dtype and torch.equal(unmerged[name], value), name


# ---------------------------------------------------------------------------- checkpointing leaves nothing behind
@pytest.mark.parametrize("lora", [None, "r=4,targets=c_attn", "r=4,targets=c_attn,save=adapter"])
def test_checkpointing_leaves_no_input_grad_hook_on_the_returned_model(lm, lora):
    """transformers' checkpointing (and PEFT) hook the embeddings so their outputs require grad; the hooks stayed on
    the returned model, so even a frozen copy's outputs required grad (``.numpy()`` failed, graphs were kept)."""
    adapter, request = lm
    model, record = _npo(adapter, request, MemoryOptions.from_cli(lora, gradient_checkpointing=True))
    assert record.status == "ok"
    assert not model.get_input_embeddings()._forward_hooks
    model.requires_grad_(False)
    batch = adapter.collate(request.forget_items())
    assert not model(input_ids=batch["input_ids"]).logits.requires_grad


def test_hooks_the_input_had_on_its_embeddings_are_kept(lm):
    adapter, request = lm
    own = adapter.with_model(copy.deepcopy(adapter.model))
    own.model.enable_input_require_grads()
    model, _ = _npo(own, request, MemoryOptions.from_cli("r=4,targets=c_attn", gradient_checkpointing=True))
    assert len(model.get_input_embeddings()._forward_hooks) == 1


# ---------------------------------------------------------------------------- measurement
class _FakeCuda:
    """A GPU allocator's counters, as torch.cuda reports them."""

    def __init__(self) -> None:
        self.allocated, self.peak = 1000, 1000

    def alloc(self, size: int) -> None:
        self.allocated += size
        self.peak = max(self.peak, self.allocated)

    def install(self, monkeypatch) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
        monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a, **k: self.allocated)
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a, **k: self.peak)
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats",
                            lambda *a, **k: setattr(self, "peak", self.allocated))


def test_a_nested_block_on_cuda_does_not_erase_the_outer_blocks_peak(monkeypatch):
    """The docstring says blocks may nest; on CUDA the inner block's reset of the allocator's peak made the outer
    block report only what came after it."""
    from unlearnkit.train.measure import measure

    gpu = _FakeCuda()
    gpu.install(monkeypatch)
    mib = 2**20
    with measure() as outer:
        gpu.alloc(300 * mib)
        gpu.alloc(-300 * mib)
        with measure() as inner:
            gpu.alloc(10 * mib)
            gpu.alloc(-10 * mib)
        gpu.alloc(20 * mib)
    assert inner.added_mem_mb == pytest.approx(10)
    assert outer.added_mem_mb == pytest.approx(300)
    assert outer.peak_mem_mb == pytest.approx((1000 + 300 * mib) / mib)


# ---------------------------------------------------------------------------- progress bars
def test_the_bar_draws_on_stderr_and_never_on_stdout(monkeypatch, capsys):
    """The bar is enabled by stderr being a terminal but rich drew it on stdout: a piped stdout caught it."""
    from unlearnkit.progress import progress_bar

    monkeypatch.setenv("UNLEARNKIT_PROGRESS", "1")
    monkeypatch.delenv("RANK", raising=False)
    with progress_bar("unlearning", 2) as bar:
        bar.advance(1, loss="0.5")
        bar.advance(1, loss="0.4")
    captured = capsys.readouterr()
    assert captured.out == ""
    # asked for, it draws into a captured (non-terminal) stderr too: it drew one newline there
    assert "unlearning" in captured.err


@pytest.mark.parametrize("flag, shown", [("0", False), ("off", False), ("False", False), ("NO", False),
                                         ("", False), ("1", True), ("yes", True)])
def test_the_progress_flag_reads_the_usual_spellings(monkeypatch, flag, shown):
    from unlearnkit import progress

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("UNLEARNKIT_PROGRESS", flag)
    not_a_terminal = type("NotATerminal", (), {"isatty": lambda self: False})()
    monkeypatch.setattr(progress, "sys", type("Sys", (), {"stderr": not_a_terminal}))
    assert progress.progress_enabled() is shown


def test_only_rank_zero_draws_under_a_launcher(monkeypatch, capsys):
    """torchrun starts every process on one terminal: the others' bars (and Hugging Face's loading bars) garbled
    rank 0's."""
    from transformers.utils import logging as hf_logging

    from unlearnkit.progress import progress_bar, progress_enabled, quiet_library_bars

    monkeypatch.setenv("UNLEARNKIT_PROGRESS", "1")
    monkeypatch.setenv("RANK", "0")
    assert progress_enabled()
    monkeypatch.setenv("RANK", "1")
    assert not progress_enabled()
    was = hf_logging.is_progress_bar_enabled()
    try:
        hf_logging.enable_progress_bar()
        quiet_library_bars()
        assert not hf_logging.is_progress_bar_enabled()
    finally:
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()
    with progress_bar("unlearning", 2) as bar:
        bar.advance(2, loss="0.1")
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


# ---------------------------------------------------------------------------- the holdout early stop
@pytest.fixture(scope="module")
def holdout_request():
    items = tiny_qa(12)
    return memorised_lm(items[:9], steps=5, vocabulary=items), items


def test_a_single_wrong_answer_string_is_refused_not_read_letter_by_letter(holdout_request):
    """``perturbed_answer`` as one string passed the check and the truth ratio compared each of its letters."""
    adapter, items = holdout_request
    holdout = [{**it, "perturbed_answer": it["perturbed_answer"][0]} for it in items[9:]]
    request = ForgetRequest(items[:9], [0, 1, 2], list(range(3, 9)), holdout=holdout)
    with pytest.raises(UserInputError, match="perturbed_answer .a non-empty list of strings. on every holdout item"):
        unlearn(adapter, request, "gradient_ascent", epochs=2, batch_size=3, early_stop="holdout_truth_ratio")


@pytest.mark.parametrize("settings, message", [
    ({"early_stop": "holdout_nll", "stop_every": 7}, r"checked every 7 optimizer steps, but this run takes 2"),
    ({"early_stop": "holdout_nll", "max_steps": 1}, r"checked at each epoch's end \(2 steps\), but this run takes 1"),
    ({"early_stop": "holdout_nll", "stop_every": 3, "max_steps": 2}, "max_steps=2 ends the run first"),
    ({"stop_every": 1}, "stop_every applies to an early stop, but early_stop is 'none'"),
    ({"stop_margin": 0.5}, "stop_margin applies to an early stop, but early_stop is 'none'"),
])
def test_a_stop_setting_that_could_never_act_is_refused(holdout_request, settings, message):
    adapter, items = holdout_request
    request = ForgetRequest(items[:9], [0, 1, 2, 3], list(range(4, 9)), holdout=items[9:])
    with pytest.raises(UserInputError, match=message):
        unlearn(adapter, request, "gradient_ascent", **{"epochs": 1, "batch_size": 2, **settings})


def test_a_stop_checked_within_the_run_still_fires(holdout_request):
    adapter, items = holdout_request
    request = ForgetRequest(items[:9], [0, 1, 2, 3], list(range(4, 9)), holdout=items[9:])
    _, record = unlearn(adapter, request, "gradient_ascent", epochs=3, batch_size=2, early_stop="holdout_nll",
                        stop_every=2, stop_margin=100.0)
    assert record.info["stopped_at"] == 2 == record.steps


def test_scoring_a_language_model_advances_one_bar_to_its_total(monkeypatch):
    """Scoring is the long part of evaluating a real model (a greedy answer per item), and it showed no bar: each
    pass over the items (token statistics, answer, paraphrase and each wrong answer, generation) now advances one."""
    from contextlib import contextmanager

    from lm_fixtures import tiny_lm, tiny_qa

    from unlearnkit.eval import language

    bars = []

    @contextmanager
    def recording_bar(description, total, *, loss=True):
        bars.append({"description": description, "total": total, "loss": loss, "done": []})
        yield type("Bar", (), {"advance": lambda self, n=1, **fields: bars[-1]["done"].append(n)})()

    monkeypatch.setattr(language, "progress_bar", recording_bar)
    items = tiny_qa(5)
    adapter = tiny_lm(items)
    language.collect_lm(adapter, items, batch_size=2, max_new_tokens=3)
    language.collect_lm(adapter, [{"question": it["question"], "answer": it["answer"]} for it in items], generate=False)
    with_options, plain = bars
    assert with_options["description"] == "scoring 5 items" and not with_options["loss"]
    assert with_options["total"] == 5 * (2 + 1 + 1) + 5 * 3  # tokens, answer, paraphrase, generation; 3 wrong answers
    assert sum(with_options["done"]) == with_options["total"] and max(with_options["done"]) == 2  # per batch
    assert plain["total"] == sum(plain["done"]) == 5 * 2


def test_an_adapter_targeting_the_output_head_reloads_to_the_scored_model(llama, tmp_path):
    """PEFT saved the targeted lm_head's base weight, which the returned model already held merged: the reload
    merged the update a second time (forget_loss 4.355 on reload against the 4.036 run.json reported)."""
    import json

    from unlearnkit.cli import main
    from unlearnkit.forget_job import _scores, _summary
    from unlearnkit.methods.saved import load_causal_lm

    adapter, request = llama
    adapter.save_pretrained(tmp_path / "model")
    for name, items in (("forget", request.forget_items()), ("retain", request.retain_items())):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"question": it["question"], "answer": it["answer"]})
                                                        + "\n" for it in items))
    assert main(["forget", "--model", str(tmp_path / "model"), "--forget", str(tmp_path / "forget.jsonl"), "--retain",
                 str(tmp_path / "retain.jsonl"), "--method", "gradient_ascent", "--param", "lr=0.01",
                 "--lora", "r=2,alpha=4,targets=q_proj,lm_head,save=adapter", "--out", str(tmp_path / "out"),
                 "--ledger", str(tmp_path / "ledger.db")]) == 0
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    reloaded = load_causal_lm(tmp_path / "out")
    scores = _summary(_scores(reloaded, request.forget_items(), request.retain_items()))
    assert scores["forget_loss"] == pytest.approx(run["metrics_after"]["forget_loss"], rel=1e-5)
    assert scores["forget_loss"] != pytest.approx(run["metrics_before"]["forget_loss"], rel=1e-3)


def test_icu_with_lora_that_takes_no_step_is_not_refused(lm):
    """ICU stops before its first step when every forget item already counts as forgotten; --lora then refused it,
    after the whole run, as a method that does not train through the shared loop."""
    from lm_fixtures import tiny_lm

    _, request = lm
    untrained = tiny_lm(tiny_qa(8), seed=3)  # generates none of the answers: nothing left to forget
    _, record = unlearn(untrained.model, request, "icu", adapter=untrained, memory=MemoryOptions.from_cli("r=2,targets=c_attn"))
    assert record.status == "ok" and record.steps == 0


def test_a_model_with_mrp_projections_trains_under_bf16(lm):
    """An MRP output's basis, cast to bfloat16 with the rest, reached a QR that has no bfloat16 kernel on the CPU."""
    adapter, request = lm
    projected, first = unlearn(adapter.model, request, "mrp", adapter=adapter, layers="1", epochs=1)
    assert first.status == "ok"
    _, record = unlearn(projected, request, "npo", adapter=adapter.with_model(projected), memory=MemoryOptions(bf16=True),
                        epochs=1, batch_size=2)
    assert record.status == "ok"
