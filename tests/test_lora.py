"""LoRA (PEFT), bf16 and gradient checkpointing for LM methods: what trains, what is saved, what is refused."""

import json
import sys
from pathlib import Path

import pytest
import torch

from unlearnkit.api import unlearn
from unlearnkit.cli import main
from unlearnkit.errors import UserInputError
from unlearnkit.methods.base import Outcome
from unlearnkit.train.lora import LoraSpec, MemoryOptions, lora_targets, parse_lora

sys.path.insert(0, str(Path(__file__).parent))
from lm_fixtures import dropout_free_request  # noqa: E402


@pytest.fixture(scope="module")
def lm():
    return dropout_free_request(steps=60)


# ---------------------------------------------------------------------------- the --lora text
def test_parse_lora_reads_rank_scale_targets_and_options():
    assert parse_lora("r=8,alpha=16,targets=c_attn,c_proj") == LoraSpec(8, 16.0, ("c_attn", "c_proj"))
    assert parse_lora("targets=q_proj, v_proj ,save=adapter,dropout=0.05,r=4") == LoraSpec(
        4, 16.0, ("q_proj", "v_proj"), 0.05, "adapter")
    assert parse_lora("r=2").targets is None  # PEFT's default for the architecture


@pytest.mark.parametrize("text, message", [
    ("rank=8", "no setting 'rank'; valid: r, alpha, targets, dropout, save"),
    ("r=eight", "r must be an integer"),
    ("r=0", "r must be a positive integer"),
    ("r=4,save=full", "save must be one of merged, adapter"),
    ("c_attn", "is not NAME=VALUE"),
    ("alpha=inf", "alpha must be a positive finite number, got alpha=inf"),
    ("alpha=1e400", "alpha must be a positive finite number"),
    ("r=4,r=16", "gives r twice"),
    ("targets=", "targets= names no module"),
])
def test_bad_lora_text_is_one_clear_sentence(text, message):
    with pytest.raises(UserInputError, match=message):
        parse_lora(text)


def test_unknown_target_lists_the_valid_module_names(lm):
    adapter, _ = lm
    assert {"c_attn", "c_proj", "c_fc"} <= set(lora_targets(adapter.model))
    assert not {"wte", "wpe", "lm_head"} & set(lora_targets(adapter.model))  # embeddings; lm_head is tied to wte
    with pytest.raises(UserInputError, match=r"target 'q_proj' is not a LoRA-capable module.*valid: .*c_attn"):
        MemoryOptions.from_cli("r=4,targets=q_proj").check(adapter)
    with pytest.raises(UserInputError, match=r"target 'wte' is not a LoRA-capable module"):
        MemoryOptions.from_cli("r=4,targets=wte").check(adapter)
    with pytest.raises(UserInputError, match=r"target 'lm_head' shares its weight with another module"):
        MemoryOptions.from_cli("r=4,targets=lm_head").check(adapter)


def test_memory_options_refuse_a_classifier():
    from unlearnkit.adapters.classifier import ClassifierAdapter

    with pytest.raises(UserInputError, match="--lora applies to causal language models, but this is a classifier model"):
        MemoryOptions.from_cli("r=4").check(ClassifierAdapter(torch.nn.Linear(2, 2), 2))


# ---------------------------------------------------------------------------- training with LoRA
def test_lora_npo_trains_only_the_adapter_and_merges_into_the_targets(lm):
    adapter, request = lm
    before = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    model, record = unlearn(adapter.model, request, "npo", adapter=adapter, epochs=3, batch_size=2, lr=1e-3,
                            memory=MemoryOptions.from_cli("r=4,alpha=8,targets=c_attn"))  # the tiny model's scale
    width, layers = adapter.model.config.n_embd, adapter.model.config.n_layer
    assert record.info["lora"]["trainable_parameters"] == layers * 4 * (width + 3 * width)  # r·(d_in + d_out) per c_attn
    assert type(model).__name__ == "GPT2LMHeadModel" and not any("lora" in k for k in model.state_dict())
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {f"transformer.h.{i}.attn.c_attn.weight" for i in range(layers)}  # LoRA has no bias here
    assert all(torch.equal(v, adapter.model.state_dict()[k]) for k, v in before.items())  # input untouched
    batch = adapter.collate(request.forget_items())
    with torch.no_grad():
        assert adapter.per_item_loss(model, batch).mean() > adapter.per_item_loss(adapter.model, batch).mean()
    assert record.params["lora"]["targets"] == ["c_attn"] and record.params["lora"]["r"] == 4
    # PEFT froze every base weight; the merged model is trainable where the input was (a later fine-tune of a
    # frozen model would have no parameters to train)
    assert {k: p.requires_grad for k, p in model.named_parameters()} == \
        {k: p.requires_grad for k, p in adapter.model.named_parameters()}


def test_lora_runs_are_repeatable_and_follow_the_seed(lm):
    adapter, request = lm

    def weights(seed):
        model, _ = unlearn(adapter.model, request, "npo", adapter=adapter, epochs=1, batch_size=2, seed=seed,
                           memory=MemoryOptions.from_cli("r=4,targets=c_attn"))
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    first = weights(0)
    torch.rand(10)  # a different global random state must not matter
    assert torch.equal(weights(0), first)
    assert not torch.equal(weights(1), first)


def test_bf16_and_checkpointing_train_and_restore_the_input_dtype(lm):
    adapter, request = lm
    model, record = unlearn(adapter.model, request, "npo", adapter=adapter, epochs=2, batch_size=2,
                            memory=MemoryOptions.from_cli("r=4,targets=c_attn,c_proj", bf16=True,
                                                          gradient_checkpointing=True))
    assert record.status == "ok" and record.steps == 2
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert not any(getattr(m, "gradient_checkpointing", False) for m in model.modules())  # switched off again
    assert model.config.use_cache == adapter.model.config.use_cache
    assert record.params["bf16"] is True and record.params["gradient_checkpointing"] is True


def test_bf16_lora_merges_in_the_original_precision(lm):
    adapter, request = lm

    def run(save):
        return unlearn(adapter.model, request, "npo", adapter=adapter, epochs=2, batch_size=2, lr=1e-2,
                       memory=MemoryOptions.from_cli(f"r=4,targets=c_attn,save={save}", bf16=True))[0]

    merged, kept = run("merged"), run("adapter")
    reference = kept.merge_and_unload()  # the same trained adapter, merged in float32 here
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(merged.state_dict()[name], value, rtol=0, atol=1e-6)
    # only the adapted weights moved: every other weight is the input's, not its bf16 rounding
    original = adapter.model.state_dict()
    for name, value in merged.state_dict().items():
        if ".c_attn." not in name:
            assert torch.equal(value, original[name]), name
    assert any(not torch.equal(merged.state_dict()[n], original[n]) for n in original if ".c_attn." in n)


def test_bf16_lora_on_a_bf16_input_keeps_no_copy_and_leaves_the_other_weights_bit_identical(lm, monkeypatch):
    """Casting a bfloat16 model to bf16 rounds nothing, so no CPU copy of its weights is kept (a float32
    input's are); the merge still returns every weight LoRA did not adapt bit for bit."""
    import copy

    from unlearnkit.train import lora

    adapter, request = lm
    bf16 = adapter.with_model(copy.deepcopy(adapter.model).to(torch.bfloat16))
    prepared, real = [], lora.prepare_model
    monkeypatch.setattr(lora, "prepare_model", lambda *args, **kwargs: prepared.append(real(*args, **kwargs)) or prepared[-1])
    merged, record = unlearn(bf16.model, request, "npo", adapter=bf16, epochs=2, batch_size=2, lr=1e-2,
                             memory=MemoryOptions.from_cli("r=4,targets=c_attn", bf16=True))
    assert record.status == "ok" and prepared[0].base_weights == {}
    floats = [n for n, v in adapter.model.state_dict().items() if v.is_floating_point()]
    assert sorted(lora._rounded_by_bf16(adapter.model)) == sorted(floats)  # float32 input: every weight kept
    original = bf16.model.state_dict()
    assert merged.state_dict().keys() == original.keys()
    for name, value in merged.state_dict().items():
        assert value.dtype == original[name].dtype, name
        if ".c_attn." not in name:
            assert torch.equal(value, original[name]), name
    assert any(not torch.equal(merged.state_dict()[n], original[n]) for n in original if ".c_attn." in n)


def test_full_bf16_run_takes_the_same_first_step_loss_as_fp32(lm):
    adapter, request = lm
    _, fp32 = unlearn(adapter.model, request, "npo", adapter=adapter, epochs=1, batch_size=2)
    _, bf16 = unlearn(adapter.model, request, "npo", adapter=adapter, epochs=1, batch_size=2,
                      memory=MemoryOptions(bf16=True))
    assert bf16.losses[0] == pytest.approx(fp32.losses[0], rel=0.05)  # bf16 keeps ~3 significant digits
    assert bf16.losses[0] != fp32.losses[0]


@pytest.mark.parametrize("method", ["ssd", "kfade", "first_epoch_ga", "guard", "guard_it", "mrp", "uld"])
def test_a_method_that_does_not_train_the_weights_by_gradient_steps_refuses_lora_before_any_work(lm, method):
    adapter, request = lm
    before = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    with pytest.raises(UserInputError, match=f"Method '{method}' does not train the model's own weights"):
        unlearn(adapter.model, request, method, adapter=adapter, memory=MemoryOptions.from_cli("r=2"))
    assert all(torch.equal(before[k], v) for k, v in adapter.model.state_dict().items())


def test_a_method_that_trains_no_lora_weights_is_still_refused_after_its_run(lm, monkeypatch):
    """The safety net behind the declared ``lora`` flag: a method that claims to train but leaves LoRA untouched."""
    from unlearnkit.methods.registry import get_method

    adapter, request = lm
    monkeypatch.setattr(type(get_method("gradient_ascent")), "unlearn",
                        lambda self, adapter, request, config: Outcome(adapter.model))
    with pytest.raises(UserInputError, match="Method 'gradient_ascent' trained no LoRA weights"):
        unlearn(adapter.model, request, "gradient_ascent", adapter=adapter, memory=MemoryOptions.from_cli("r=2"))


# ---------------------------------------------------------------------------- the CLI
@pytest.fixture()
def files(lm, tmp_path):
    adapter, request = lm
    adapter.save_pretrained(tmp_path / "lm")
    for name, rows in (("forget", request.forget_items()), ("retain", request.retain_items())):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"question": r["question"], "answer": r["answer"]})
                                                        + "\n" for r in rows))
    return tmp_path


def _forget(tmp_path, *extra, params=("epochs=2", "batch_size=2", "lr=1e-3")):  # lr: the tiny model's scale
    return ["forget", "--model", str(tmp_path / "lm"), "--forget", str(tmp_path / "forget.jsonl"),
            "--retain", str(tmp_path / "retain.jsonl"), "--out", str(tmp_path / "out"),
            "--ledger", str(tmp_path / "ledger.db"), *[a for v in params for a in ("--param", v)], *extra]


def test_cli_saves_only_the_adapter_and_it_reloads_to_the_same_model(files):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    assert main(_forget(files, "--method", "npo", "--lora", "r=4,alpha=8,targets=c_attn,save=adapter")) == 0
    out = files / "out"
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    assert not (out / "model.safetensors").exists()
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str((files / "lm").resolve())
    run = json.loads((out / "run.json").read_text())
    assert run["params"]["lora"]["save"] == "adapter" and run["info"]["lora"]["trainable_parameters"] > 0
    from unlearnkit.adapters.causal_lm import CausalLMAdapter

    base = CausalLMAdapter.from_pretrained(files / "lm")
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(files / "lm"), out).eval()
    batch = base.collate([json.loads(line) for line in (files / "forget.jsonl").read_text().splitlines()])
    with torch.no_grad():
        loss = base.per_item_loss(reloaded, batch).mean().item()
    assert loss == pytest.approx(run["metrics_after"]["forget_loss"], rel=1e-5)


def test_an_adapter_folder_loads_as_its_base_with_the_adapter_merged_and_can_be_unlearned_again(files):
    from unlearnkit.adapters.causal_lm import CausalLMAdapter

    assert main(_forget(files, "--method", "npo", "--lora", "r=4,alpha=8,targets=c_attn,save=adapter")) == 0
    first = files / "out"
    run = json.loads((first / "run.json").read_text())
    loaded = CausalLMAdapter.from_pretrained(first)
    batch = loaded.collate([json.loads(line) for line in (files / "forget.jsonl").read_text().splitlines()])
    with torch.no_grad():
        loss = loaded.per_item_loss(loaded.model, batch).mean().item()
    assert loss == pytest.approx(run["metrics_after"]["forget_loss"], rel=1e-5)
    # a second request on the adapter folder: its own adapter names the first one, and both merge on reload
    second = files / "second"
    args = _forget(files, "--method", "npo", "--lora", "r=4,alpha=8,targets=c_attn,save=adapter")
    args[args.index("--model") + 1], args[args.index("--out") + 1] = str(first), str(second)
    assert main(args) == 0
    rerun = json.loads((second / "run.json").read_text())
    assert rerun["fingerprint_before"] == run["fingerprint_after"]
    reloaded = CausalLMAdapter.from_pretrained(second)
    with torch.no_grad():
        again = reloaded.per_item_loss(reloaded.model, batch).mean().item()
    assert again == pytest.approx(rerun["metrics_after"]["forget_loss"], rel=1e-5)
    assert again > loss
    # and without --lora: the merged model trains in full (PEFT had left it frozen: an empty optimizer)
    full = files / "full"
    args = _forget(files, "--method", "npo")
    args[args.index("--model") + 1], args[args.index("--out") + 1] = str(first), str(full)
    assert main(args) == 0
    assert json.loads((full / "run.json").read_text())["metrics_after"]["forget_loss"] > loss


@pytest.mark.parametrize("breakage, message", [
    ("base", "names the base model"),
    ("bin", "has no adapter_model.safetensors"),
    ("config", "adapter_config.json that is not a JSON object"),
    ("out_is_base", "holds the input"),
])
def test_a_broken_adapter_folder_exits_2_and_writes_nothing(files, capsys, breakage, message):
    assert main(_forget(files, "--method", "npo", "--lora", "r=4,alpha=8,targets=c_attn,save=adapter")) == 0
    adapter_dir, config_file = files / "out", files / "out" / "adapter_config.json"
    config = json.loads(config_file.read_text())
    if breakage == "base":
        config_file.write_text(json.dumps({**config, "base_model_name_or_path": str(files / "gone")}))
    elif breakage == "bin":
        (adapter_dir / "adapter_model.safetensors").rename(adapter_dir / "adapter_model.bin")
    elif breakage == "config":
        config_file.write_text("[1, 2]")
    (files / "ledger.db").unlink()
    args = _forget(files, "--method", "npo", "--overwrite")
    args[args.index("--model") + 1] = str(adapter_dir)
    args[args.index("--out") + 1] = str(files / ("lm" if breakage == "out_is_base" else "again"))
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (files / "again").exists() and not (files / "ledger.db").exists()
    assert (files / "lm" / "config.json").is_file()


@pytest.mark.parametrize("extra, message", [
    (["--method", "npo", "--lora", "r=4,targets=q_proj"], "target 'q_proj' is not a LoRA-capable module"),
    (["--method", "npo", "--lora", "r=4,width=3"], "--lora has no setting 'width'"),
    (["--method", "ssd", "--lora", "r=4"], "Method 'ssd' does not train the model's own weights"),
    (["--method", "kfade", "--lora", "r=4"], "Method 'kfade' does not train the model's own weights"),
])
def test_cli_bad_lora_exits_2_and_writes_nothing(files, capsys, extra, message):
    trains = extra[1] not in ("ssd", "kfade")  # these take no epochs (a setting they would refuse first)
    assert main(_forget(files, *extra, params=("epochs=2", "batch_size=2") if trains else ("batch_size=2",))) == 2
    assert message in capsys.readouterr().err
    assert not (files / "out").exists() and not (files / "ledger.db").exists()


def test_cli_lora_on_a_classifier_exits_2(tmp_path, capsys):
    from unlearnkit.adapters.classifier_spec import MLP, save_classifier

    spec = {"kind": "classifier", "architecture": "mlp", "input_dim": 4, "hidden": [8], "num_classes": 2}
    save_classifier(MLP(4, [8], 2), spec, tmp_path / "model")
    rows = [{"input": [0.1 * i, 0.0, 1.0, -1.0], "label": i % 2} for i in range(6)]
    for name, part in (("forget", rows[:2]), ("retain", rows[2:])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    code = main(["forget", "--model", str(tmp_path / "model"), "--forget", str(tmp_path / "forget.jsonl"),
                 "--retain", str(tmp_path / "retain.jsonl"), "--method", "finetune", "--out", str(tmp_path / "out"),
                 "--ledger", str(tmp_path / "ledger.db"), "--lora", "r=4", "--bf16"])
    assert code == 2
    assert "--lora, --bf16 apply to causal language models, but this is a classifier model" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "ledger.db").exists()


def test_a_diverged_lora_run_reports_the_divergence(lm):
    adapter, request = lm
    model, record = unlearn(adapter.model, request, "gradient_ascent", adapter=adapter, epochs=3, batch_size=2,
                            lr=1e30, grad_clip=None, memory=MemoryOptions.from_cli("r=4,targets=c_attn"))
    assert record.status == "diverged" and "restored" in record.message
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_the_lora_merge_is_timed_with_the_method(lm, monkeypatch):
    # merging the adapters back is part of making the unlearned model: the timer stops after it, not before
    import contextlib
    import time

    import unlearnkit.api as api
    import unlearnkit.train.lora as lora

    events: dict[str, float] = {}
    merge, measure = lora.finish_model, api.measure

    def timed_merge(*args, **kwargs):
        result = merge(*args, **kwargs)
        events["merged"] = time.perf_counter()
        return result

    @contextlib.contextmanager
    def watched_measure():
        with measure() as cost:
            yield cost
        events["timer_stopped"] = time.perf_counter()

    monkeypatch.setattr(lora, "finish_model", timed_merge)
    monkeypatch.setattr(api, "measure", watched_measure)
    adapter, request = lm
    unlearn(adapter.model, request, "gradient_ascent", adapter=adapter, epochs=1, batch_size=2,
            memory=MemoryOptions.from_cli("r=4,alpha=8,targets=c_attn"))
    assert events["merged"] < events["timer_stopped"]


def test_cli_bench_refuses_a_lora_save_mode_it_cannot_use(tmp_path, capsys):
    """The bench saves no model, so save=adapter was accepted and did nothing."""
    code = main(["bench", "--benchmark", "facts", "--preset", "tiny", "--methods", "npo", "--lora", "r=4,save=adapter",
                 "--out", str(tmp_path / "out")])
    assert code == 2
    assert "--lora save=adapter says how 'forget' saves its model; the bench saves none" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
