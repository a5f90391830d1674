"""Several processes, one result: the helpers that let the shared loop and the evaluators scale out.

Everything here rests on accelerate (which rests on ``torch.distributed``); nothing implements its
own communication. Started by ``accelerate launch`` or ``torchrun``, every process runs the same
command; without a launcher there is one process and every helper is a no-op.

- Training (``optimise``): every process walks the same seeded batch stream; each takes its rows
  of every batch (:func:`split_batch`, :func:`split_parts`), and the model prepared by accelerate (DDP, or FSDP /
  DeepSpeed on GPUs) averages the gradients. ``config.batch_size`` is therefore the *global*
  batch size and a run on N processes takes the same steps on the same items as on one.
- Evaluation: items are cut into contiguous shards (:func:`shard`), each process scores its
  shard, and :func:`gather_in_order` puts the per-item statistics back in item order.
- Only the main process writes outputs and ledger rows (:func:`on_main`, which also makes a failed
  write fail every process); :func:`end` shuts the process group down (runs that skip it crash at
  exit now and then).

Choice (a batch that does not split evenly, or whose parts, forget and retain, split unevenly): each
process weights its loss so that DDP's average over the W processes is the one-process gradient. The
update then equals the one-process update, up to the order of float sums, for every loss that is a
weighted sum of per-part means over items, whatever the split:

- A loss given as ``LossParts`` (forget, retain) over a batch ``{"forget": ..., "retain": ...}``: each
  part is split evenly on its own and each term is multiplied by its part's weight n_r,part·W/N_part
  (:func:`split_parts`), so a process with no forget row still trains on its retain rows.
- Any other loss is one tensor that cannot be taken apart, so its batch is split in proportion: every
  process holds the same fraction of every part, and one weight fits them all (:func:`split_batch`).
  The price is uneven work: with g the greatest common divisor of the parts' row counts, at most g
  processes hold rows (e.g. 1 or 3 forget rows beside 32 retain rows: one process does the whole
  batch, in time and memory). The loop learns whether the loss gives ``LossParts`` at its first step,
  so that step is split in proportion too.

A process whose share is empty runs a placeholder row weighted 0 (DDP needs its forward and backward).
What remains approximate: a loss that is not a mean over items (e.g. a token mean over the whole
batch, which weighs long answers more) is weighted by row counts all the same, so it is close, not
exact, unless every process holds as many tokens.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Mapping, Sequence, TypeVar

import torch
from torch import nn

from ..errors import UserInputError

T = TypeVar("T")


# ---------------------------------------------------------------------------- who am I
def launched_processes(variable: str = "WORLD_SIZE") -> int:
    """How many processes the launcher started (``WORLD_SIZE``; ``LOCAL_WORLD_SIZE``: on this machine), without
    starting anything."""
    try:
        return max(1, int(os.environ.get(variable, "1")))
    except ValueError:
        return 1


def state():
    """accelerate's process state, created on first use (it joins the process group when launched)."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def process_count() -> int:
    """Number of processes working on this run (1 without a launcher)."""
    return state().num_processes if launched_processes() > 1 else 1


def process_index() -> int:
    """This process's rank, 0..count−1."""
    if launched_processes() > 1:
        return state().process_index
    return 0


def is_main_process() -> bool:
    """True on the process that writes outputs, ledger rows and logs."""
    return process_index() == 0


def training_device() -> torch.device:
    """The device this process trains on (its GPU, else the CPU)."""
    if launched_processes() > 1 or torch.cuda.is_available():
        return torch.device(state().device)
    return torch.device("cpu")


def barrier() -> None:
    """Wait until every process gets here (a no-op for one process)."""
    if launched_processes() > 1:
        state().wait_for_everyone()


def end(wait: bool = True) -> None:
    """Shut the process group down at the end of a command (a no-op when there is none).

    ``wait`` first lets every process arrive, so none tears down a connection another still
    uses; a process leaving on an unexpected error skips it (its peers may never arrive).
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if wait:
            state().wait_for_everyone()
        state().destroy_process_group()


def on_main(action: Callable[[], T]) -> T | None:
    """Run ``action`` on the main process only, then wait for it everywhere; return its value there.

    A failure of ``action`` reaches every process: the main one raises its error, the others an error
    that says so (the same sentence for a :class:`UserInputError`, so every process exits with status 2).
    A plain barrier would let the others carry on as if the write had succeeded, their next barrier
    matched by the failed main process's shutdown.
    """
    if process_count() == 1:
        return action()
    from accelerate.utils import broadcast_object_list

    value, failure = None, None
    if is_main_process():
        try:
            value = action()
        except Exception as error:  # sent to the others below, then raised here
            failure = error
    user_error = isinstance(failure, UserInputError)
    message = None if failure is None else str(failure) if user_error else f"{type(failure).__name__}: {failure}"
    user_error, message = broadcast_object_list([(user_error, message)], from_process=0)[0]
    if failure is not None:
        raise failure
    if message is not None:
        raise UserInputError(message) if user_error else RuntimeError(f"the main process failed: {message}")
    return value


def describe_launch() -> dict[str, Any]:
    """How this run was launched, for its record: empty for one plain process."""
    mixed = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if launched_processes() == 1 and mixed == "no":
        return {}
    kind = state().distributed_type
    return {"processes": process_count(), "distributed_type": getattr(kind, "name", str(kind)), "mixed_precision": mixed}


# ---------------------------------------------------------------------------- evaluation shards
def shard_bounds(total: int, index: int | None = None, count: int | None = None) -> tuple[int, int]:
    """``(start, stop)`` of process ``index``'s contiguous share of ``total`` items.

    Shares differ by at most one item, the larger ones first (as accelerate's
    ``split_between_processes``), so concatenating them in rank order restores the item order.
    """
    index = process_index() if index is None else index
    count = process_count() if count is None else count
    if not 0 <= index < count:
        raise ValueError(f"process index {index} is outside 0..{count - 1}")
    base, extra = divmod(total, count)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


def shard(items: Sequence[T], index: int | None = None, count: int | None = None) -> list[T]:
    """This process's contiguous share of ``items`` (all of them for one process)."""
    start, stop = shard_bounds(len(items), index, count)
    return list(items[start:stop])


def gather_in_order(local: Sequence[T]) -> list[T]:
    """Every process's ``local`` list, concatenated in rank order (the input itself for one process)."""
    if process_count() == 1:
        return list(local)
    from accelerate.utils import gather_object

    return list(gather_object(list(local)))


def gather_fields(local: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
    """Per-item fields (equal-length lists) from every process, each concatenated in rank order."""
    if process_count() == 1:
        return {name: list(values) for name, values in local.items()}
    parts = gather_in_order([dict(local)])
    return {name: [value for part in parts for value in part[name]] for name in local}


# ---------------------------------------------------------------------------- training batches
#: The parts of a paired batch that a :class:`~unlearnkit.train.gu.LossParts` loss's two fields are computed
#: from, in field order (forget term from ``batch["forget"]``, retain term from ``batch["retain"]``).
PARTS = ("forget", "retain")


def _first_rows(batch: Any) -> int | None:
    """Rows of the first tensor in a (nested) batch, depth first; None when it holds no tensor."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.dim() else None
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else ()
    for value in values:
        rows = _first_rows(value)
        if rows is not None:
            return rows
    return None


def _row_counts(batch: Any) -> set[int]:
    """The distinct non-zero row counts of the tensors in a (nested) batch."""
    if isinstance(batch, torch.Tensor):
        return {batch.shape[0]} if batch.dim() and batch.shape[0] else set()
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else ()
    return set().union(*(_row_counts(value) for value in values))


def _map_tensors(batch: Any, take: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``batch`` with ``take`` applied to every tensor of at least one dimension."""
    if isinstance(batch, torch.Tensor):
        return take(batch) if batch.dim() else batch
    if isinstance(batch, Mapping):
        return {key: _map_tensors(value, take) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_map_tensors(value, take) for value in batch)
    return batch


def _rows_or_placeholder(tensor: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows ``start:stop``, or the first row when that is empty (a placeholder its weight 0 cancels)."""
    return tensor[start:stop] if stop > start else tensor[:1]


def split_batch(batch: Any, index: int, count: int) -> tuple[Any, float]:
    """Process ``index``'s rows of every tensor in ``batch``, in the same proportion for every part, and its
    loss weight n_r·W/N (the same for every part).

    With g the greatest common divisor of the tensors' row counts, the batch is cut into g units, a unit
    holding N/g contiguous rows of each tensor of N rows, and the process takes its contiguous run of
    units (:func:`shard_bounds` over g). Its share of every part is then the same fraction u_r/g, so one
    weight u_r·W/g makes any loss that is a weighted sum of per-part means exact. A process with no unit
    gets each tensor's first row as a placeholder (its forward pass, and DDP's gradient averaging, still
    run) and weight 0.
    """
    counts = _row_counts(batch)
    if not counts:
        return batch, 1.0
    units = math.gcd(*counts)
    start, stop = shard_bounds(units, index, count)
    split = _map_tensors(batch, lambda t: _rows_or_placeholder(t, start * t.shape[0] // units, stop * t.shape[0] // units))
    return split, (stop - start) * count / units


def has_parts(batch: Any) -> bool:
    """True for a paired batch, a mapping of exactly the :data:`PARTS` (``forget`` and ``retain``)."""
    return isinstance(batch, Mapping) and set(batch) == set(PARTS)


def split_parts(batch: Mapping[str, Any], index: int, count: int) -> tuple[dict[str, Any], tuple[float, ...]]:
    """Process ``index``'s contiguous rows of each part of a paired batch, and one weight per part in
    :data:`PARTS` order: n_r,part·W/N_part, for a loss given as ``LossParts`` (forget, retain).

    Each part is split on its own (shares differ by at most one row), so the work stays even across
    processes; a process whose share of a part is empty gets that part's first row as a placeholder and
    weight 0 for that part.
    """
    split = {name: _map_tensors(batch[name], lambda t: _rows_or_placeholder(t, *shard_bounds(t.shape[0], index, count)))
             for name in PARTS}
    return split, tuple(_part_weight(_first_rows(batch[name]), index, count) for name in PARTS)


def _part_weight(total: int | None, index: int, count: int) -> float:
    """n_r·W/N for process ``index``'s contiguous share of a part of ``total`` rows (1 for a part with none)."""
    if not total:
        return 1.0
    start, stop = shard_bounds(total, index, count)
    return (stop - start) * count / total


def mean_across(value: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over the processes (the tensor itself for one process)."""
    if process_count() == 1:
        return value
    from accelerate.utils import reduce

    return reduce(value.detach().clone(), reduction="mean")


def touch_parameters(loss: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """``loss`` plus 0 × one entry of every trainable parameter, so each one takes part in backward.

    DDP waits for a gradient of every trainable parameter; a loss that reads an inner block's
    output (RMU) leaves the later blocks without one, which ``find_unused_parameters`` cannot see
    (they did produce the forward's outputs). The added term changes no gradient value.
    """
    touched = [p.reshape(-1)[:1].sum().float() for p in model.parameters() if p.requires_grad]
    return loss + 0.0 * torch.stack(touched).sum().to(loss.dtype) if touched else loss


def every_process(flag: bool) -> bool:
    """True when ``flag`` is true on every process (one all-reduce; the flag itself for one process)."""
    if process_count() == 1:
        return flag
    from accelerate.utils import reduce

    value = torch.tensor([1.0 if flag else 0.0], device=state().device)
    return bool(reduce(value, reduction="sum").item() == process_count())


class ModelView:
    """What a loss function sees of a prepared (e.g. DDP-wrapped) model.

    Calling it runs the prepared wrapper, so gradients are synchronised; every attribute
    (``named_modules``, ``get_input_embeddings``, ``config``...) comes from the plain model, so
    module names, hooks and helpers work as they do in one process.
    """

    def __init__(self, prepared: nn.Module, plain: nn.Module) -> None:
        self._prepared, self._plain = prepared, plain

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._prepared(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._plain, name)


# ---------------------------------------------------------------------------- launch settings
SHARDED = ("FSDP", "DEEPSPEED")


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


def sharded_launch() -> str | None:
    """"FSDP" or "DeepSpeed" when the accelerate launch asks for one (the parameters are then sharded), else None."""
    wants = [name for name, flag in (("FSDP", "ACCELERATE_USE_FSDP"), ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED"))
             if _flag(flag)]
    return wants[0] if wants else None


def check_launch() -> None:
    """Raise :class:`UserInputError` for accelerate settings that unlearnkit cannot honour.

    Checked before any work: more processes on this machine than it has GPUs (NCCL refuses two
    processes on one GPU, deep in the first collective; not checked when ``CUDA_VISIBLE_DEVICES`` is set,
    since a launcher such as Slurm's ``--gpus-per-task=1`` may give each process a GPU of its own that
    it alone sees), FSDP or DeepSpeed without a GPU (accelerate
    would silently run plain DDP on the CPU), DeepSpeed without its package, and gradient accumulation
    (the loop takes one optimiser step per batch; raise the batch size instead).
    """
    local = launched_processes("LOCAL_WORLD_SIZE")
    bound_per_process = "CUDA_VISIBLE_DEVICES" in os.environ
    if local > 1 and not bound_per_process and torch.cuda.is_available() and local > torch.cuda.device_count():
        gpus = torch.cuda.device_count()
        raise UserInputError(f"This launch starts {local} processes on this machine, which has {gpus} GPU(s), and each "
                             f"process needs a GPU of its own; launch at most {gpus} per machine, or hide the GPUs "
                             "(CUDA_VISIBLE_DEVICES=) to run the processes on the CPU.")
    wants = sharded_launch()
    if wants and not torch.cuda.is_available():
        raise UserInputError(f"The accelerate config asks for {wants}, which needs GPUs, but none is visible; "
                             "use the DDP config (configs/accelerate/ddp.yaml) or torchrun on the CPU.")
    if wants == "DeepSpeed":
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise UserInputError("The accelerate config asks for DeepSpeed, but the deepspeed package is not installed.")
    steps = os.environ.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "1")
    if steps not in ("", "1"):
        raise UserInputError(f"The accelerate config sets gradient_accumulation_steps={steps}, which unlearnkit does "
                             "not use (one optimiser step per batch); set it to 1 and raise batch_size instead.")


def check_one_process(processes: int, *, gu: bool, sam: bool, early_stop: bool) -> None:
    """Raise when a run on ``processes`` processes asks for what the loop runs in one process only."""
    single = ((gu, "GU projection (project=gu)", "drop project=gu"), (sam, "SAM on the forget term (sam_rho)",
              "set sam_rho=0"), (early_stop, "The early stop", "set early_stop=none"))
    for wanted, what, fix in single:
        if wanted and processes > 1:
            raise UserInputError(f"{what} runs in one process only, but this run has {processes}; launch it "
                                 f"without accelerate/torchrun or {fix}.")


def check_config_launch(config: Any) -> None:
    """:func:`check_one_process` for a method's config, before any work (the loop checks again when it starts)."""
    check_one_process(launched_processes(), gu=getattr(config, "project", None) is not None,
                      sam=bool(getattr(config, "sam_rho", 0.0)), early_stop=getattr(config, "early_stop", "none") != "none")


def check_loop_support(accelerator: Any, *, projector: Any, callbacks: bool, sam: bool = False,
                       stop: bool = False) -> None:
    """Raise when this loop's run cannot be honoured by the accelerate setup it was launched with."""
    check_one_process(accelerator.num_processes, gu=projector is not None, sam=sam, early_stop=stop)
    if is_sharded(accelerator) and callbacks:
        raise UserInputError(f"This method edits gradients or weights between steps, which {_kind(accelerator)} shards "
                             "across processes; run it with the DDP config (configs/accelerate/ddp.yaml).")


def _kind(accelerator: Any) -> str:
    return getattr(accelerator.distributed_type, "name", str(accelerator.distributed_type))


def is_sharded(accelerator: Any) -> bool:
    """True when accelerate shards the parameters themselves (FSDP, DeepSpeed)."""
    return _kind(accelerator) in SHARDED


#: DeepSpeed settings unlearnkit fills per run, and whether the user's config left each to it ("auto").
_DEEPSPEED_FILLED: dict[str, bool] = {}


def prepare_sharded(accelerator: Any, batch_size: int, grad_clip: float | None) -> None:
    """Fill DeepSpeed's batch and clipping settings that it cannot infer (no DataLoader is prepared).

    Settings the config left as ``auto`` (or unset) follow each run's ``batch_size`` and
    ``grad_clip``; values the config gives are kept.
    """
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    ds = plugin.deepspeed_config
    for key in ("train_micro_batch_size_per_gpu", "train_batch_size", "gradient_clipping"):
        _DEEPSPEED_FILLED.setdefault(key, ds.get(key, "auto") == "auto")
    micro = max(1, math.ceil(batch_size / accelerator.num_processes))
    wanted = {"train_micro_batch_size_per_gpu": micro, "train_batch_size": micro * accelerator.num_processes,
              "gradient_clipping": float(grad_clip or 0.0)}
    ds.update({key: value for key, value in wanted.items() if _DEEPSPEED_FILLED[key]})


def copy_back_sharded(accelerator: Any, prepared: nn.Module, plain: nn.Module) -> None:
    """Load the trained weights of a sharded (FSDP / ZeRO-3) model into ``plain`` on every process.

    accelerate gathers the full state on the main process; it is loaded there and broadcast from
    it into the same tensors everywhere else. Keys missing from the gathered state must be tied to
    a loaded tensor (e.g. GPT-2's output embedding).
    """
    from accelerate.utils import broadcast

    plain.to(accelerator.device)  # the broadcast runs on the process's device (NCCL needs GPU tensors)
    full = accelerator.get_state_dict(prepared)
    if accelerator.is_main_process:
        missing, unexpected = plain.load_state_dict(full, strict=False)
        own = plain.state_dict()
        loaded = {own[k].data_ptr() for k in own if k in full}
        untied = [k for k in missing if own[k].data_ptr() not in loaded]
        if untied or unexpected:
            raise RuntimeError(f"gathered weights do not fit the model (missing {untied[:3]}, unexpected {unexpected[:3]})")
    tensors = {k: v for k, v in plain.state_dict().items() if v.is_floating_point()}
    broadcast(tensors, from_process=0)
