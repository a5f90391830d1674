"""One process or several, same numbers: evaluate and unlearn the tiny ``facts`` model.

Run it once plainly and once under a launcher, then compare the two ``--result`` files::

    python scripts/distributed_check.py --work W1 --result one.json
    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 scripts/distributed_check.py --work W2 --result two.json

Each run (1) scores the target model on the facts evaluation splits with ``evaluate_lm`` (items
sharded across processes and gathered in order; ``--skip-evaluation`` leaves it out, as it does not
depend on the method) and (2) runs ``unlearnkit forget --method npo``
through ``unlearnkit.cli.main``, exactly as ``python -m unlearnkit.cli forget`` does, which writes
``W/out`` and one row of ``W/ledger.db`` and shuts the process group down. The main process writes
the metrics, the per-item losses and the forget run's exit code to ``--result``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path


def _write_jsonl(path: Path, items: list[dict]) -> None:
    path.write_text("".join(json.dumps({"question": it["question"], "answer": it["answer"]}) + "\n" for it in items))


def check(work: Path, result: Path, method: str = "npo", extra: list[str] | None = None, *,
          evaluate: bool = True) -> int:
    """Evaluate (unless ``evaluate`` is false), then unlearn through the CLI (``extra`` options, else the facts
    models' lr for the method, as the bench runs it: its own default is the papers' for pretrained LMs); return
    the CLI's exit status."""
    from unlearnkit.adapters.causal_lm import CausalLMAdapter
    from unlearnkit.benchmarks.facts import FactsConfig, cached_facts_model, load_facts
    from unlearnkit.benchmarks.lm_bench import FACTS_SCALE_SETTINGS, evaluation_splits
    from unlearnkit.cli import main
    from unlearnkit.eval.language import evaluate_lm
    from unlearnkit.train import distributed

    config = FactsConfig.tiny()
    model_dir, _ = cached_facts_model(config, "target")
    data = load_facts(config)
    splits = evaluation_splits(data, "forget10", config.seed)
    target = CausalLMAdapter.from_pretrained(model_dir, max_length=config.max_length)
    start = time.perf_counter()
    metrics, stats = evaluate_lm(target, splits, None, max_new_tokens=16) if evaluate else ({}, {})
    evaluate_seconds = time.perf_counter() - start
    if distributed.is_main_process():
        work.mkdir(parents=True, exist_ok=True)
        _write_jsonl(work / "forget.jsonl", data.split("forget10"))
        _write_jsonl(work / "retain.jsonl", data.split("retain"))
    distributed.barrier()
    argv = ["forget", "--model", str(model_dir), "--forget", str(work / "forget.jsonl"), "--retain",
            str(work / "retain.jsonl"), "--method", method, "--out", str(work / "out"), "--ledger",
            str(work / "ledger.db")]
    scale = [a for k, v in FACTS_SCALE_SETTINGS.get(method, {}).items() for a in ("--param", f"{k}={v}")]
    argv += scale if extra is None else extra
    is_main, processes = distributed.is_main_process(), distributed.process_count()
    start = time.perf_counter()
    code = main(argv)  # ends the process group: no collective after this line
    forget_seconds = time.perf_counter() - start
    if is_main:
        result.write_text(json.dumps({
            "processes": processes, "exit_code": code, "evaluate_seconds": evaluate_seconds,
            "forget_seconds": forget_seconds,
            "metrics": {k: v for k, v in metrics.items() if not math.isnan(v)},
            "item_losses": {name: [float(v) for v in s.avg_loss] for name, s in stats.items()},
            "generations": {name: s.generations for name, s in stats.items()},
        }))
    return code


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the data files, output and ledger")
    parser.add_argument("--result", type=Path, required=True, help="JSON file the main process writes")
    parser.add_argument("--method", default="npo")
    parser.add_argument("--skip-evaluation", action="store_true", help="only the forget run")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = _arguments(sys.argv[1:])
    sys.exit(check(args.work, args.result, args.method, evaluate=not args.skip_evaluation))
