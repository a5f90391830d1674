"""The causal-LM track end to end: facts bench, export to TOFU layout, evaluate, and their bad inputs."""

import dataclasses
import json
import shutil

import pytest
import torch

from unlearnkit.cli import main
from unlearnkit.eval.attacks import RELEARN_LR_FRACTION


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "facts-tofu"
    assert main(["export", "--benchmark", "facts", "--format", "tofu", "--preset", "tiny", "--out", str(out),
                 "--split", "forget10", "--split", "forget05"]) == 0
    return out


#: The relearning settings each of the bench's attack calls was given (see the ``bench`` fixture).
ATTACK_SETTINGS: list = []


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from unlearnkit.benchmarks import lm_bench

    out = tmp_path_factory.mktemp("bench") / "facts"
    real = lm_bench.run_attacks

    def spying(*args, relearn_settings=None, **kwargs):
        ATTACK_SETTINGS.append(relearn_settings)
        return real(*args, relearn_settings=relearn_settings, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lm_bench, "run_attacks", spying)
        assert main(["bench", "--benchmark", "facts", "--preset", "tiny", "--methods", "gradient_ascent,npo,first_epoch_ga",
                     "--attacks", "relearn,quantize", "--relearn-steps", "5", "--retrain-seeds", "1", "--out", str(out)]) == 0
    return out


def test_facts_bench_rows_metrics_and_items(bench):
    results = json.loads((bench / "results.json").read_text())
    runs = {run["method"]: run for run in results["runs"]}
    assert list(runs) == ["target", "retain", "retain_seed1", "gradient_ascent", "npo", "first_epoch_ga"]
    # first_epoch_ga ascends the forget items' gradients recorded in the target's first epoch (the paper's g₁)
    assert runs["first_epoch_ga"]["info"]["source"] == "first_epoch"
    assert runs["first_epoch_ga"]["params"]["gradients"].endswith("first_epoch_gradients.safetensors")
    # their recording is not part of the method's seconds, and the page says what it took
    assert any(n.startswith("first_epoch_ga's seconds leave out recording") and n.endswith(" s).") for n in results["notes"])
    assert runs["retain"]["metrics"]["forget_quality"] == 1.0 and runs["retain"]["metrics"]["privleak"] == 0.0
    reseeded = runs["retain_seed1"]
    assert reseeded["reference"] and reseeded["params"]["train_seed"] == 1 and runs["retain"]["params"].get("train_seed") is None
    # another training run of the same recipe: scored against the retain model, not identical to it
    assert 0 < reseeded["metrics"]["forget_quality"] <= 1
    assert any(reseeded["metrics"][k] != runs["retain"]["metrics"][k] for k in ("model_utility", "forget_truth_ratio"))
    for key in results["metric_keys"]:
        assert key in runs["npo"]["metrics"]
    assert "relearn_recovery" in runs["npo"]["metrics"] and "relearn_recovery_control" in runs["npo"]["metrics"]
    # the attack's lr is scaled to the lr the models were trained with; the settings are recorded and stated
    # every attack ran with the settings the page reports (without them it ran the default 50 steps, unnoticed)
    assert ATTACK_SETTINGS and all(dataclasses.asdict(s) == results["relearn"] for s in ATTACK_SETTINGS)
    assert results["relearn"] == {"steps": 5, "lr": pytest.approx(RELEARN_LR_FRACTION * results["config"]["lr"]),
                                  "batch_size": 8, "seed": 0}
    assert "Relearning attack: 5 steps of Adam at lr" in (bench / "results.md").read_text()
    # recoveries are no fractions in [0, 1]: the page says how to read them
    assert "a recovery is the share of what unlearning removed" in (bench / "results.md").read_text()
    rows = [json.loads(l) for l in (bench / "items" / "npo.jsonl").read_text().splitlines()]
    forget_rows = [r for r in rows if r["split"] == "forget"]
    import math
    prob = sum(math.exp(-r["answer_nll"]) for r in forget_rows) / len(forget_rows)
    assert prob == pytest.approx(runs["npo"]["metrics"]["forget_prob"], rel=1e-9)
    # one attack row per forget item, behind the quantized aggregate (no rows for the retain model: it is no method)
    attack_rows = [r for r in rows if r["split"] == "attack"]
    assert sorted(r["item"] for r in attack_rows) == sorted(r["item"] for r in forget_rows)
    quantized = sum(math.exp(-r["quantized_nll"]) for r in attack_rows) / len(attack_rows)
    assert quantized == pytest.approx(runs["npo"]["metrics"]["quantized_forget_prob"], rel=1e-6)
    assert all(("relearn_nll" in r) == r["measured"] for r in attack_rows)
    assert not any(r["split"] == "attack" for r in map(json.loads, (bench / "items" / "retain.jsonl").read_text().splitlines()))
    assert (bench / "report.html").stat().st_size < 2_000_000


def test_evaluate_on_exported_data_reproduces_bench_numbers(exported, bench, tmp_path):
    out = tmp_path / "eval"
    assert main(["evaluate", "--data", str(exported), "--model", str(exported / "models" / "target"),
                 "--retain-model", str(exported / "models" / "retain90"), "--out", str(out)]) == 0
    evaluated = {r["method"]: r["metrics"] for r in json.loads((out / "results.json").read_text())["runs"]}
    benched = {r["method"]: r["metrics"] for r in json.loads((bench / "results.json").read_text())["runs"]}
    for key in ("forget_quality", "model_utility", "forget_truth_ratio", "mia_loss_auc"):
        assert evaluated["model"][key] == pytest.approx(benched["target"][key], rel=1e-6, abs=1e-9), key
        assert evaluated["retain"][key] == pytest.approx(benched["retain"][key], rel=1e-6, abs=1e-9), key
    assert "no real_authors_perturbed file (six components" in json.loads((out / "results.json").read_text())["notes"][0]
    page = (out / "results.md").read_text()
    assert "(seed None)" not in page and "time_vs_retrain" not in page.split("| method")[0]  # nothing was timed


def test_evaluate_scores_the_retain_model_once_and_its_row_is_what_a_second_scoring_gives(exported, tmp_path,
                                                                                          monkeypatch):
    """The retain model's statistics are the reference: its row reuses them (2 evaluate_lm calls, not 3), and
    its metrics and items are exactly those a second collection on the retain model gives."""
    from unlearnkit.benchmarks import lm_bench
    from unlearnkit.eval.language import evaluate_lm

    calls = []

    def counting(adapter, splits, reference=None, **options):
        result = evaluate_lm(adapter, splits, reference, **options)
        calls.append((adapter, splits, options, result))
        return result

    monkeypatch.setattr(lm_bench, "evaluate_lm", counting)
    out = tmp_path / "eval"
    assert main(["evaluate", "--data", str(exported), "--model", str(exported / "models" / "target"),
                 "--retain-model", str(exported / "models" / "retain90"), "--out", str(out)]) == 0
    assert len(calls) == 2
    retain, splits, options, (_, reference) = calls[0]
    assert "retain90" in str(retain.model.name_or_path)
    metrics, stats = evaluate_lm(retain, splits, reference, **options)  # what evaluate used to run for the row
    runs = {r["method"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    assert runs["retain"]["metrics"] == pytest.approx(metrics, rel=0, abs=0, nan_ok=True)
    rows = [json.loads(line) for line in (out / "items" / "retain.jsonl").read_text().splitlines()]
    assert rows == [json.loads(json.dumps(row)) for name, s in stats.items() for row in s.rows(name)]


def test_evaluate_adds_real_authors_to_model_utility_when_the_folder_has_them(exported, tmp_path):
    data = tmp_path / "with-authors"
    data.mkdir()
    for path in exported.glob("*.json"):
        (data / path.name).symlink_to(path)
    (data / "real_authors_perturbed.json").symlink_to(exported / "world_facts_perturbed.json")
    runs = {}
    for name, folder in (("without", exported), ("with", data)):
        out = tmp_path / name
        assert main(["evaluate", "--data", str(folder), "--model", str(exported / "models" / "target"),
                     "--retain-model", str(exported / "models" / "retain90"), "--out", str(out),
                     "--max-new-tokens", "24"]) == 0
        runs[name] = json.loads((out / "results.json").read_text())
    assert "nine components" in runs["with"]["notes"][0]
    with_authors, without = (runs[k]["runs"][0]["metrics"] for k in ("with", "without"))
    for metrics, count in ((with_authors, 9), (without, 6)):  # each component is reported, and MU is their mean
        components = [v for k, v in metrics.items() if k.startswith("model_utility_")]
        assert len(components) == count and "model_utility_retain_truth_ratio_score" in metrics
        assert metrics["model_utility"] == pytest.approx(len(components) / sum(1 / v for v in components), rel=1e-9)
    assert with_authors["forget_quality"] == without["forget_quality"]
    assert with_authors["model_utility"] != without["model_utility"]  # three more components joined the mean


def _tofu_layout(exported, folder, keep: dict[str, tuple[str, ...]]):
    """The exported folder with some files cut down to the fields TOFU itself ships in them."""
    folder.mkdir()
    for path in exported.glob("*.json"):
        if path.stem in keep:
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            (folder / path.name).write_text("".join(json.dumps({k: r[k] for k in keep[path.stem]}) + "\n" for r in rows))
        else:
            (folder / path.name).symlink_to(path)
    return folder


def test_evaluate_reads_tofus_own_fields_per_file(exported, tmp_path):
    """TOFU's holdout files have only question and answer, its world facts no paraphrase: evaluate needs no more,
    and the scores equal those of the fuller export (those fields are not used there)."""
    data = _tofu_layout(exported, tmp_path / "tofu", {
        "holdout10": ("question", "answer"),
        "world_facts_perturbed": ("question", "answer", "perturbed_answer"),
    })
    metrics = {}
    for name, folder in (("export", exported), ("tofu", data)):
        out = tmp_path / f"scores-{name}"
        assert main(["evaluate", "--data", str(folder), "--model", str(exported / "models" / "target"),
                     "--retain-model", str(exported / "models" / "retain90"), "--out", str(out),
                     "--max-new-tokens", "24"]) == 0
        metrics[name] = json.loads((out / "results.json").read_text())["runs"][0]["metrics"]
    assert metrics["tofu"] == metrics["export"]


def test_evaluate_names_an_empty_split_file_before_loading_models(exported, tmp_path, capsys, monkeypatch):
    import unlearnkit.adapters.causal_lm as causal_lm

    data = _tofu_layout(exported, tmp_path / "empty", {})
    (data / "holdout10.json").unlink()
    (data / "holdout10.json").write_text("[]")
    monkeypatch.setattr(causal_lm.CausalLMAdapter, "from_pretrained", lambda *a, **k: pytest.fail("loaded a model"))
    code, err = _error(capsys, ["evaluate", "--data", str(data), "--model", str(exported / "models" / "target"),
                                "--retain-model", str(exported / "models" / "retain90"), "--out", str(tmp_path / "never")])
    assert code == 2 and "holdout10.json holds no items (needed as the holdout set)" in err, err
    assert not (tmp_path / "never").exists()


def _error(capsys, args):
    code = main(args)
    return code, capsys.readouterr().err


def test_export_writes_the_retain_model_of_each_split_asked(exported):
    assert sorted(p.name for p in (exported / "models").iterdir()) == ["retain90", "retain95", "target"]


@pytest.mark.parametrize("split, message", [
    (["--split", "forget33"], "Unknown forget split 'forget33'"),
    (["--split", "forget05", "--split", "forget05"], "--split 'forget05' is given twice"),
    (["--seed", "-1"], "--seed must be an integer from 0 to 4294967295, got -1"),  # it trained and wrote seed -1
    (["--seed", "99999999999999999999"], "--seed must be an integer from 0"),  # it was torch's overflow traceback
])
def test_export_refuses_a_bad_split_before_training(tmp_path, capsys, monkeypatch, split, message):
    import unlearnkit.benchmarks.facts as facts

    monkeypatch.setattr(facts, "cached_facts_model", lambda *a, **k: pytest.fail("trained before checking --split"))
    code, err = _error(capsys, ["export", "--benchmark", "facts", "--preset", "tiny", "--out", str(tmp_path / "x"), *split])
    assert code == 2 and message in err, err
    assert not (tmp_path / "x").exists()


def test_export_refuses_an_existing_output_before_training_anything(tmp_path, capsys, monkeypatch):
    import unlearnkit.benchmarks.facts as facts

    monkeypatch.setattr(facts, "cached_facts_model", lambda *a, **k: pytest.fail("trained before checking --out"))
    (tmp_path / "taken").mkdir()
    code, err = _error(capsys, ["export", "--benchmark", "facts", "--preset", "tiny", "--out", str(tmp_path / "taken")])
    assert code == 2 and "already exists" in err


def test_evaluate_bad_inputs(exported, tmp_path, capsys):
    base = ["evaluate", "--data", str(exported), "--retain-model", str(exported / "models" / "retain90"),
            "--out", str(tmp_path / "never")]
    cases = [
        (["--model", str(tmp_path / "missing")], "does not exist"),
        (["--model", str(exported)], "hugging face model folder"),  # a data folder, not a model
        (["--model", str(exported / "models" / "target"), "--max-new-tokens", "0"], "max_new_tokens must be a positive"),
        # the export's retain90 scored as the reference of forget05, whose people it was trained on
        (["--model", str(exported / "models" / "target"), "--split", "forget05"],
         "is the data folder's retain90, trained without forget10, not without forget05; give"),
        (["--model", str(exported / "models" / "target"), "--max-length", "8"],  # every item is longer: the first named
         "forget10_perturbed:0 (answer) takes"),
        (["--model", str(exported / "models" / "target"), "--out", str(exported / "models"), "--overwrite"],
         "lies inside the input folder"),  # the later --out wins: inside --data, holding both models
    ]
    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(exported / "models" / "target", no_tokenizer)
    for f in no_tokenizer.iterdir():
        if "token" in f.name or f.name in ("vocab.json", "merges.txt"):
            f.unlink()
    cases.append((["--model", str(no_tokenizer)], "tokenizer"))
    corrupt = tmp_path / "corrupt-weights"
    shutil.copytree(exported / "models" / "target", corrupt)
    (corrupt / "model.safetensors").write_bytes(b"not a safetensors file at all")
    cases.append((["--model", str(corrupt)], "not a readable safetensors file"))
    pickled = tmp_path / "pickled-weights"
    shutil.copytree(exported / "models" / "target", pickled)
    (pickled / "model.safetensors").unlink()
    torch.save({"weights": shutil.copytree}, pickled / "pytorch_model.bin")  # a pickled callable, not tensors
    cases.append((["--model", str(pickled)], "weights-only load refuses"))
    for extra, message in cases:
        code, err = _error(capsys, base + extra)
        assert code == 2 and message in err.lower(), err
        assert not (tmp_path / "never").exists()
    broken = tmp_path / "broken-data"
    shutil.copytree(exported, broken, ignore=shutil.ignore_patterns("models"))
    lines = (broken / "retain_perturbed.json").read_text().splitlines()
    record = json.loads(lines[0]); del record["paraphrased_answer"]
    (broken / "retain_perturbed.json").write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")
    code, err = _error(capsys, ["evaluate", "--data", str(broken), "--model", str(exported / "models" / "target"),
                                "--retain-model", str(exported / "models" / "retain90"), "--out", str(tmp_path / "never")])
    assert code == 2 and "paraphrased_answer" in err and "retain_perturbed.json" in err, err
    (broken / "retain_perturbed.json").write_bytes(b"\xff\xfe not utf-8")
    code, err = _error(capsys, ["evaluate", "--data", str(broken), "--model", str(exported / "models" / "target"),
                                "--retain-model", str(exported / "models" / "retain90"), "--out", str(tmp_path / "never")])
    assert code == 2 and "is not text in UTF-8" in err, err
    code, err = _error(capsys, base + ["--model", str(exported / "models" / "target"), "--split", "forget33"])
    assert code == 2 and "forget33" in err
    code, err = _error(capsys, ["evaluate", "--data", str(exported / "forget10.json"), "--model",
                                str(exported / "models" / "target"), "--retain-model",
                                str(exported / "models" / "retain90"), "--out", str(tmp_path / "never")])
    assert code == 2 and "forget10.json is a file, not a folder" in err, err  # it said the file does not exist
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("args, message", [
    (["--split", "forget77"], "Unknown forget split 'forget77'"),
    (["--preset", "huge"], "Unknown facts preset 'huge'"),
    (["--methods", "npo", "--attacks", "bribe"], "Unknown attack 'bribe'"),
    (["--methods", "npo", "--attacks", "relearn,quantize,relearn"], "Attack 'relearn' is named twice in --attacks"),
    (["--methods", "ssd", "--param", "ssd.project=gu"], "needs a gradient-based method"),
    (["--methods", "ssd", "--project", "gu"], "Method 'ssd' does not support --project gu"),
    (["--project", "gu"], "--project needs --methods"),
    (["--methods", " , "], "--methods has an empty item"),  # it ran every method
    (["--methods", " "], "--methods names no method"),
    (["--methods", "npo", "--attacks", ","], "--attacks has an empty item"),  # it ran without attacks
    (["--methods", "npo", "--attacks", ""], "--attacks names no attack"),
    (["--methods", "npo, ,graddiff"], "--methods has an empty item in 'npo, ,graddiff'"),  # the item was dropped
    (["--methods", "npo", "--attacks", "relearn,,quantize"], "--attacks has an empty item"),
    # it said scrub "is not in --methods", with no --methods given: the default methods leave scrub out for its kind
    (["--param", "scrub.lr=0.1"], "scrub', which works on classifier models, not on this causal_lm model"),
    (["--methods", "npo", "--sampling", "modular", "--param", "npo.sampling=cyclic"], "give it once"),
    (["--methods", "rmu", "--param", "rmu.layer=99"], "valid"),
    (["--methods", "npo", "--retrain-seeds", "0"], "must differ from the retain model's own training seed 0"),
    (["--methods", "npo", "--retrain-seeds", "1,1"], "must be distinct non-negative integers"),
    (["--methods", "npo", "--retrain-seeds", "one"], "'one' is not one"),
    (["--methods", "npo", "--retrain-seeds", "--5"], "'--5' is not one"),
    (["--methods", "npo", "--retrain-seeds", "1,\u00b2"], "'\u00b2' is not one"),
    (["--methods", "npo", "--retrain-seeds", "1,,2"], "--retrain-seeds has an empty item in '1,,2'"),
    (["--methods", "idk_dpo"], "has words this model's tokenizer does not know"),
    # it said idk_dpo "is not in --methods", with no --methods given
    (["--param", "idk_dpo.beta=0.2"], "Settings were given for idk_dpo, which this bench cannot run: IdkDPO's refusal"),
    (["--methods", "gradient_ascent,kfade", "--lora", "r=2"], "Method 'kfade' does not train the model's own weights"),
    (["--methods", "npo", "--relearn-lr", "1e-4"], "add relearn to --attacks"),
    (["--methods", "npo", "--attacks", "relearn", "--relearn-steps", "0"], "steps must be a positive integer, got 0"),
    (["--methods", "npo", "--attacks", "relearn", "--relearn-lr", "-1"], "lr must be a positive number, got -1.0"),
    (["--methods", "npo", "--attacks", "relearn", "--relearn-lr", "nan"], "lr must be a positive number, got nan"),
])
def test_facts_bench_bad_inputs(tmp_path, capsys, args, message):
    out = tmp_path / "never"
    code, err = _error(capsys, ["bench", "--benchmark", "facts", "--preset", "tiny", "--out", str(out), *args])
    assert code == 2 and message in err, err
    assert not out.exists()


def test_evaluate_scores_an_inference_time_model_that_forget_wrote(exported, tmp_path):
    """A uld output folder (its target as base/, the assistant beside it) is scored as the logit-difference model,
    not as its unchanged base: the forget answers' probability is the one forget reported, below the target's."""
    from unlearnkit.benchmarks.tofu_format import read_tofu_file

    for role, stem in (("forget", "forget10_perturbed"), ("retain", "retain_perturbed")):
        rows = read_tofu_file(exported / f"{stem}.json")
        (tmp_path / f"{role}.jsonl").write_text("".join(json.dumps({"question": r["question"], "answer": r["answer"]}) + "\n"
                                                       for r in rows))
    unlearned = tmp_path / "uld"
    assert main(["forget", "--model", str(exported / "models" / "target"), "--forget", str(tmp_path / "forget.jsonl"),
                 "--retain", str(tmp_path / "retain.jsonl"), "--method", "uld", "--param", "epochs=2",
                 "--out", str(unlearned), "--ledger", str(tmp_path / "ledger.db")]) == 0
    scores = {}
    for name, model in (("uld", unlearned), ("target", exported / "models" / "target")):
        assert main(["evaluate", "--data", str(exported), "--model", str(model), "--retain-model",
                     str(exported / "models" / "retain90"), "--out", str(tmp_path / f"eval-{name}"),
                     "--max-new-tokens", "8"]) == 0
        scores[name] = json.loads((tmp_path / f"eval-{name}" / "results.json").read_text())["runs"][0]["metrics"]
    reported = json.loads((unlearned / "run.json").read_text())["metrics_after"]
    assert scores["uld"]["forget_prob"] < scores["target"]["forget_prob"]
    # evaluate's forget_prob is the mean of exp(−mean answer NLL), forget's the same over the same items
    assert scores["uld"]["forget_prob"] == pytest.approx(reported["forget_prob"], rel=1e-4)


def test_an_id_field_in_a_users_tofu_records_does_not_replace_the_generated_ids(tmp_path):
    """Item rows are keyed by file and position; a record's own "id" (text a user chose, possibly repeated) must not
    take over: it would reach items/*.jsonl unhashed and merge the rows of items that share it."""
    from unlearnkit.benchmarks.lm_bench import tofu_evaluation_splits

    record = {"question": "Q?", "answer": "A.", "paraphrased_answer": "A!", "perturbed_answer": ["B."],
              "id": "Jane Doe's address"}
    for stem in ("forget10_perturbed", "retain_perturbed", "holdout10", "world_facts_perturbed"):
        (tmp_path / f"{stem}.json").write_text("".join(json.dumps(record) + "\n" for _ in range(2)))
    splits = tofu_evaluation_splits(tmp_path, "forget10")
    assert [it["id"] for it in splits["forget"]] == ["forget10_perturbed:0", "forget10_perturbed:1"]
    assert [it["id"] for it in splits["holdout"]] == ["holdout10:0", "holdout10:1"]
