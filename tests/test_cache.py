"""The reference-model cache: concurrent processes build an entry once."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fcntl")

BUILDER = """
import json, sys, time
from pathlib import Path
from unlearnkit.benchmarks.cache import cached

work = Path(sys.argv[1])

def build(directory):
    with open(work / "builds", "a") as log:
        log.write("built\\n")
    while not (work / "release").exists():  # held open until the test has seen the other process wait
        time.sleep(0.05)
    (directory / "weights").write_text("w")
    return {"builder": sys.argv[2]}

folder, meta = cached("test", {"entry": 1}, build)
print(json.dumps({"folder": str(folder), "meta": meta}))
"""


def wait_for(condition, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_two_processes_asking_for_one_entry_build_it_once(tmp_path):
    env = {**os.environ, "UNLEARNKIT_CACHE": str(tmp_path / "cache")}
    script = tmp_path / "builder.py"
    script.write_text(BUILDER)
    processes = []
    for name in ("a", "b"):
        with open(tmp_path / f"{name}.err", "w") as err:
            processes.append(subprocess.Popen([sys.executable, str(script), str(tmp_path), name], env=env,
                                              stdout=subprocess.PIPE, stderr=err, text=True))
    try:
        wait_for(lambda: (tmp_path / "builds").exists(), "no process started building")
        wait_for(lambda: any("waiting for it" in (tmp_path / f"{n}.err").read_text() for n in "ab"),
                 "the second process did not wait for the first")
        (tmp_path / "release").touch()
        outputs = [json.loads(p.communicate(timeout=60)[0]) for p in processes]
    finally:
        for p in processes:
            p.kill()
    assert [p.returncode for p in processes] == [0, 0]
    assert (tmp_path / "builds").read_text() == "built\n"  # one build, not two
    assert outputs[0] == outputs[1]
    assert (Path(outputs[0]["folder"]) / "weights").read_text() == "w"
    assert [p.name for p in (tmp_path / "cache" / "test").iterdir()] == [Path(outputs[0]["folder"]).name]


def test_a_failed_build_leaves_no_entry_and_the_next_call_builds_it(tmp_path, monkeypatch):
    from unlearnkit.benchmarks.cache import cached

    monkeypatch.setenv("UNLEARNKIT_CACHE", str(tmp_path))

    def failing(directory):
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        cached("test", {"entry": 2}, failing)
    assert list(tmp_path.iterdir()) == []  # neither a lock file nor the folder made for it
    folder, meta = cached("test", {"entry": 2}, lambda directory: {"built": True})
    assert meta == {"config": {"entry": 2}, "built": True} and (folder / "meta.json").is_file()
    assert [p.name for p in (tmp_path / "test").iterdir()] == [folder.name]
