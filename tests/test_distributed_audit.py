"""Audit of the multi-process path: a failure while the main process writes reaches every process."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from unlearnkit.adapters.classifier_spec import MLP, save_classifier
from unlearnkit.train import distributed as D

SPEC = {"kind": "classifier", "architecture": "mlp", "input_dim": 4, "hidden": [8], "num_classes": 2}

# Runs `unlearnkit forget` through unlearnkit.cli.main with the main process's write failing, and prints
# each process's outcome (torchrun only reports that some worker failed).
FAILING_WRITE = textwrap.dedent("""
    import sys
    import time
    from pathlib import Path
    from unlearnkit import forget_job
    from unlearnkit.errors import UserInputError
    from unlearnkit.train import distributed

    work, kind = Path(sys.argv[1]), sys.argv[2]

    def failing_save(*args, **kwargs):
        if distributed.is_main_process():
            raise UserInputError("The disk refused the output.") if kind == "user" else OSError("disk gone")
        raise AssertionError("only the main process writes")

    forget_job._save_model = failing_save
    from unlearnkit.cli import main

    rank = distributed.process_index()

    def report(line):  # a file per process: torchrun may interleave the processes' stdout within a line
        with open(work / f"rank{rank}.report", "a") as out:
            out.write(line + "\\n")

    try:
        code = main(["forget", "--model", str(work / "model"), "--forget", str(work / "forget.jsonl"), "--retain",
                     str(work / "retain.jsonl"), "--method", "gradient_ascent", "--out", str(work / "out"),
                     "--ledger", str(work / "ledger.db")])
    except Exception as error:
        report(f"rank {rank} raised {type(error).__name__}: {error}")
        code = 1
    report(f"rank {rank} exit {code}")
    if rank == 0:  # torchrun stops the other workers once one fails: let them report first
        deadline = time.monotonic() + 60
        while not (work / "rank1.reported").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    else:
        (work / "rank1.reported").touch()
    sys.exit(code)
""")


@pytest.fixture()
def workspace(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 4, generator=g)
    rows = [{"input": r.tolist(), "label": int(r[0] > 0)} for r in x]
    torch.manual_seed(0)
    save_classifier(MLP(4, [8], 2), SPEC, tmp_path / "model")
    for name, part in (("forget", rows[:4]), ("retain", rows[4:])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    (tmp_path / "failing_write.py").write_text(FAILING_WRITE)
    return tmp_path


def _two_processes(work: Path, kind: str) -> subprocess.CompletedProcess:
    # gloo on the CPU: on a one-GPU machine both processes would take that GPU, which NCCL refuses
    env = {**os.environ, "OMP_NUM_THREADS": "1", "UNLEARNKIT_PROGRESS": "0", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(work / "failing_write.py"), str(work), kind], env=env, capture_output=True, text=True,
                          timeout=180)


def _reports(work: Path) -> list[str]:
    """Every line the processes reported, sorted."""
    return sorted(line for path in work.glob("rank*.report") for line in path.read_text().splitlines())


def test_on_main_in_one_process_returns_the_value_and_raises_the_error():
    def fail():
        raise OSError("gone")

    assert D.on_main(lambda: 7) == 7
    with pytest.raises(OSError, match="gone"):
        D.on_main(fail)


def test_a_refused_write_on_the_main_process_gives_every_process_the_sentence_and_status_2(workspace):
    """Before: the main process's error left the others waiting in on_main's barrier, which the main
    process's shutdown barrier then matched; they went on as if the write had succeeded and crashed in the
    next barrier with a gloo "Connection closed by peer" traceback."""
    done = _two_processes(workspace, "user")
    assert _reports(workspace) == ["rank 0 exit 2",
                                                                                         "rank 1 exit 2"]
    assert done.stderr.count("error: The disk refused the output.") == 2
    assert not (workspace / "out").exists() and not (workspace / "ledger.db").exists()
    assert not [p for p in workspace.iterdir() if p.name.startswith(".out")]  # no temporary folder left


def test_a_crash_while_writing_on_the_main_process_is_named_by_the_others(workspace):
    """Before: the other process failed in a later barrier with gloo's "Connection closed by peer"."""
    done = _two_processes(workspace, "os")
    assert done.returncode != 0
    assert _reports(workspace) == [
        "rank 0 exit 1", "rank 0 raised OSError: disk gone",
        "rank 1 exit 1", "rank 1 raised RuntimeError: the main process failed: OSError: disk gone"]
    assert not (workspace / "out").exists() and not (workspace / "ledger.db").exists()


def test_random_wrong_labels_travel_with_their_rows_so_process_shares_give_the_one_process_gradient():
    """random_label and salun drew each forget row's wrong label inside the loss from one seeded generator, so
    under N processes every process drew the same sequence for different rows (2-process runs on a 4-class MLP
    missed the one-process weights by up to 0.24). The draws now come with the batch and split with its rows."""
    from unlearnkit.adapters.classifier import ClassifierAdapter
    from unlearnkit.methods.base import paired_stream
    from unlearnkit.methods.random_label import relabelled_loss, with_label_draws
    from unlearnkit.train import TrainConfig

    torch.manual_seed(0)
    adapter = ClassifierAdapter(MLP(4, [8], 4))
    items = [(torch.randn(4), i % 4) for i in range(24)]
    stream, _ = paired_stream(adapter, items[:8], items[8:], TrainConfig(batch_size=8))
    batch = next(with_label_draws(stream, seed=0, part="forget")(0))

    def gradient(part, weight=1.0):
        adapter.model.zero_grad()
        loss = relabelled_loss(adapter, adapter.model, part["forget"]) + adapter.per_item_loss(adapter.model, part["retain"]).mean()
        (weight * loss).backward()
        return torch.cat([p.grad.flatten() for p in adapter.model.parameters()])

    one_process = gradient(batch)
    for world in (2, 4):
        averaged = sum(gradient(*D.split_batch(batch, rank, world)) for rank in range(world)) / world
        assert torch.allclose(averaged, one_process, atol=1e-6), world


@pytest.mark.parametrize("command", ["continual", "continual-sweep", "export", "cards", "ledger"])
def test_commands_not_written_for_several_processes_are_refused_under_a_launcher(command, monkeypatch, capsys,
                                                                                  tmp_path):
    """Under torchrun `unlearnkit continual` ran whole on every process and each wrote --out (one failed with
    'created by something else'); such commands are refused in one sentence before any work."""
    from unlearnkit.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main([command, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: The {command} command runs in one process") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
