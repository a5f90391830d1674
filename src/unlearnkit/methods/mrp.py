"""MRP: Metamorphosis Representation Projection.

Wu et al., "Reliable Unlearning Harmful Information in LLMs with Metamorphosis Representation
Projection" (arXiv 2508.15449, 2025). At chosen decoder blocks ℓ the block output is projected
onto the orthogonal complement of a learned subspace,

    h_ℓ ← h_ℓ − h_ℓ QᵀQ,   Q = orthonormal rows of QR(Wᵀ),   W = [W_old; W_new],

and only W_new (``directions`` rows per layer) is trained, with L = −NLL̄(D_f) + c·NLL̄(D_r),
c = 1.2, gradients flowing through the QR. Every other weight is frozen. Continual requests stack
their directions on top of the earlier ones (W_old is kept fixed), so the removal is cumulative
and, by design, not undone by later requests.

How it lives in the model: each projected block gets a child module ``mrp_projection``
(:class:`Projection`) holding the orthonormal basis as a persistent buffer (``…mrp_projection.basis``,
so a relearning attack that trains parameters cannot rotate it away) and a forward hook that
applies it. ``state_dict`` / ``save_pretrained`` therefore save the basis with the weights; a
plain ``from_pretrained`` drops the unknown key with a warning, so reload the folder with
:func:`unlearnkit.methods.saved.load_causal_lm` (as ``evaluate`` and ``forget`` do), or install the saved
bases on a model built as usual with :func:`saved_projections` and :func:`install_projections`.

Choices where the paper is vague or its code looks wrong:

- Layers: ``layers`` names blocks by index (negative counts from the end) or by name
  (``transformer.h.1``), comma-separated; the default is the middle block (paper: two random
  layers of Llama-2-7b's 32).
- Initialisation: the paper's code uses retain principal components after projecting out the
  forget span, which looks reversed. Here W_new starts at the directions v with the largest ratio
  vᵀC_f v / vᵀ(C_r + ρI)v (a generalised eigenproblem), where C_f and C_r are the uncentred second
  moments of the block's output over the forget and the retain answer positions and ρ is a tenth of
  the median channel's retain energy (C_r's median diagonal entry): the directions where the forget
  set carries the most energy *relative to* the retain set. An earlier version took the top
  eigenvectors of the difference C_f − C_r. In a pretrained model that difference is dominated by the
  few massive-activation channels that both sets share: in SmolLM2-135M's middle block two channels
  hold E[h²] ≈ 11,700 and 10,600 against a median of 11. Its top eigenvector loaded on them and
  carried 30 % of the retain states' energy, so removing it, before any training, left the model's
  utility at 0. The ratio's two directions there carry 0.002 % of it.
  The moments are taken with dropout off, in the model as the request finds it (earlier requests'
  projections acting, none of this request's), for every chosen layer before any of them trains.
- The loss is the mean NLL over all answer tokens (EOS included; each item's mean, then the
  items') rather than one answer letter; Adam at lr 1e-2 for 10 epochs with batch 8 instead of SGD
  at 2e-4 for 2 epochs with batch 5 (sized for 7B models). The authors' LoRA has learning rate 0,
  so leaving it out trains the same parameters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..adapters.base import batches, device_of, eval_mode
from ..adapters.causal_lm import IGNORE, block_names
from ..errors import UserInputError
from ..train import optimise
from ._sampling import SamplingConfig, retain_pairing
from .base import Method, Outcome

#: Name of the projection child module inside each projected block.
CHILD = "mrp_projection"


class Projection(nn.Module):
    """Removes a learned subspace from a block's output: h ← h − h QᵀQ.

    ``basis`` holds fixed orthonormal rows (earlier requests); ``fresh`` holds the trainable rows
    of the request being learned (``None`` otherwise).
    """

    def __init__(self, width: int, basis: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("basis", torch.zeros(0, width) if basis is None else basis.clone())
        self.register_parameter("fresh", None)

    def directions(self) -> torch.Tensor:
        """Q: orthonormal rows spanning ``[basis; fresh]``, shape ``(k, width)``."""
        stacked = self.basis if self.fresh is None else torch.cat([self.basis, self.fresh.to(self.basis.dtype)])
        if stacked.shape[0] == 0:
            return stacked
        # at least float32: QR has no bfloat16 kernel on the CPU (an MRP folder loaded under --bf16)
        q, _ = torch.linalg.qr(stacked.t().to(torch.promote_types(stacked.dtype, torch.float32)))
        return q.t().to(stacked.dtype)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """h − h QᵀQ."""
        q = self.directions().to(hidden.dtype)
        return hidden - (hidden @ q.t()) @ q if q.shape[0] else hidden

    def hook(self, _module: nn.Module, _inputs: Any, output: Any) -> Any:
        """Forward hook for the owning block: project its hidden-state output."""
        if isinstance(output, tuple):
            return (self(output[0]), *output[1:])
        return self(output)

    def start(self, init: torch.Tensor) -> nn.Parameter:
        """Begin a request: trainable rows initialised to ``init`` ``(k, width)``."""
        self.fresh = nn.Parameter(init.to(self.basis.dtype).clone())
        return self.fresh

    @torch.no_grad()
    def bake(self) -> None:
        """End a request: fold the trained rows into the fixed orthonormal basis."""
        self.basis = self.directions().detach().clone()
        self.fresh = None


def projection_of(block: nn.Module, width: int) -> Projection:
    """The block's projection, installed (child module + forward hook) the first time."""
    existing = getattr(block, CHILD, None)
    if isinstance(existing, Projection):
        return existing
    projection = Projection(width).to(device_of(block))  # the basis joins GPU hidden states
    block.add_module(CHILD, projection)
    # A bound method of the child: deep copies of the model re-bind it to the copied child.
    block.register_forward_hook(projection.hook)
    return projection


def resolve_layers(model: nn.Module, spec: str) -> list[str]:
    """Block names for ``spec`` (comma-separated indices or names; empty: the middle block)."""
    names = block_names(model)
    if not names:
        raise UserInputError("MRP cannot find the decoder blocks of the model.")
    tokens = [t.strip() for t in str(spec).split(",") if t.strip()] or [str(len(names) // 2)]
    chosen = []
    for token in tokens:
        # ASCII digits only: "²" is a digit to str.isdigit and "--1" passes lstrip("-"), and int() refused both
        if re.fullmatch(r"-?[0-9]+", token) and -len(names) <= int(token) < len(names):
            chosen.append(names[int(token)])
        elif token in names:
            chosen.append(token)
        else:
            raise UserInputError(f"Unknown MRP layer {token!r}; valid: indices {-len(names)}..{len(names) - 1} "
                                 f"or names {', '.join(names)}.")
    return list(dict.fromkeys(chosen))


def install_projections(model: nn.Module, bases: Mapping[str, torch.Tensor]) -> None:
    """Install, block by block, the projections whose bases are named ``<block>.mrp_projection.basis``."""
    suffix = f".{CHILD}.basis"
    for key, basis in bases.items():
        if key.endswith(suffix):
            block = model.get_submodule(key[: -len(suffix)])
            projection_of(block, basis.shape[1]).basis = basis.clone()


def restore_projections(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Install the projections named in a saved ``state`` dict and load it into ``model``."""
    install_projections(model, state)
    model.load_state_dict(state)
    return model


def saved_projections(folder: Path) -> dict[str, torch.Tensor]:
    """The projection bases in a model folder's safetensors weights (which ``from_pretrained`` drops)."""
    from safetensors import safe_open

    suffix, bases = f".{CHILD}.basis", {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as weights:
                bases |= {key: weights.get_tensor(key) for key in weights.keys() if key.endswith(suffix)}
        except Exception:  # a damaged file holds no bases we could use; loading the model names the damage
            continue
    return bases


@torch.no_grad()
def second_moment(adapter: Any, items: Sequence[Any], layer: str, batch_size: int) -> torch.Tensor:
    """E[h hᵀ] of the block output over the answer positions of ``items`` (dropout off: the statistics,
    and so the initialisation, do not depend on the model's mode or on the global random state)."""
    total, count = None, 0
    with eval_mode(adapter.model) as model:
        for chunk in batches(items, batch_size, shuffle=False, seed=0):
            batch = adapter.collate(chunk)
            hidden = adapter.hidden_states(model, batch, layer)[:, :-1][batch["labels"][:, 1:] != IGNORE].float()
            total = hidden.t() @ hidden if total is None else total + hidden.t() @ hidden
            count += hidden.shape[0]
    return total / max(count, 1)


#: The ridge added to C_r before the generalised eigenproblem, as a fraction of the median channel's energy
#: (the median, not the mean: a pretrained model's few massive channels would set the mean).
RETAIN_RIDGE = 0.1


def contrast_init(adapter: Any, forget: Sequence[Any], retain: Sequence[Any], layer: str, rows: int, batch_size: int) -> torch.Tensor:
    """The ``rows`` directions v of largest vᵀC_f v / vᵀ(C_r + ρI)v at ``layer`` (unit rows ``(rows, width)``):
    where the forget set carries the most energy relative to the retain set. ρ = :data:`RETAIN_RIDGE` × the median of
    C_r's diagonal keeps the ratio finite where the retain set has almost no energy."""
    c_f = second_moment(adapter, forget, layer, batch_size).double()
    c_r = second_moment(adapter, retain, layer, batch_size).double()
    ridge = RETAIN_RIDGE * torch.diagonal(c_r).median()
    lower = torch.linalg.cholesky(c_r + ridge * torch.eye(c_r.shape[0], dtype=c_r.dtype, device=c_r.device))
    whitened = torch.linalg.solve_triangular(lower, c_f, upper=False)  # L⁻¹ C_f L⁻ᵀ, symmetric
    whitened = torch.linalg.solve_triangular(lower, whitened.t(), upper=False)
    _, vectors = torch.linalg.eigh((whitened + whitened.t()) / 2)
    directions = torch.linalg.solve_triangular(lower.t(), vectors[:, -rows:].flip(-1), upper=True)  # v = L⁻ᵀ u
    return (directions / directions.norm(dim=0)).t().float().contiguous()


@dataclass
class MRPConfig(SamplingConfig):
    """Layers, rows per layer per request, retain weight c; Adam on the projection rows only."""

    layers: str = ""
    directions: int = 2
    retain_weight: float = 1.2
    epochs: int = 10
    lr: float = 1e-2
    batch_size: int = 8
    grad_clip: float | None = None

    def check(self) -> None:
        """Also require a positive number of directions and a non-negative retain weight."""
        super().check()
        if not (isinstance(self.directions, int) and self.directions > 0):
            raise UserInputError(f"MRP directions must be a positive integer, got directions={self.directions}.")
        if not self.retain_weight >= 0:
            raise UserInputError(f"MRP retain_weight must be non-negative, got retain_weight={self.retain_weight}.")


def hidden_width(model: nn.Module) -> int:
    """The width of the blocks' hidden states: the config's ``hidden_size`` (OPT-350m's embeddings are narrower,
    projected up before the first block), else the input embeddings' width."""
    size = getattr(getattr(model, "config", None), "hidden_size", None)
    return size if isinstance(size, int) else model.get_input_embeddings().weight.shape[1]


class MRP(Method):
    """Project learned forget directions out of chosen blocks' outputs; only the projection trains."""

    name = "mrp"
    kinds = ("causal_lm",)
    needs = frozenset({"retain", "hidden_states"})
    paper = "Wu et al., Reliable Unlearning Harmful Information in LLMs with Metamorphosis Representation Projection, 2025"
    use_when = 'Continual or repeated removal requests on LMs where resistance to relearning matters; it adds a fixed projection to the model.'
    Config = MRPConfig
    lora = False
    edits_weights = False

    def unlearn(self, adapter: Any, request, config: MRPConfig) -> Outcome:
        model = adapter.model
        layers = resolve_layers(model, config.layers)
        forget, retain = request.forget_items(), request.retain_items()
        width = hidden_width(model)
        projections = {name: projection_of(model.get_submodule(name), width) for name in layers}
        for name, projection in projections.items():
            if projection.basis.shape[0] + config.directions > width:
                raise UserInputError(f"MRP layer {name} already removes {projection.basis.shape[0]} of {width} "
                                     f"directions; it cannot remove {config.directions} more.")
        # every layer's initial rows from the model as the request finds it (earlier requests' bases only), before
        # any fresh rows act: a later block's statistics must not depend on the order the layers are named in
        inits = {name: contrast_init(adapter, forget, retain, name, config.directions, config.batch_size)
                 for name in projections}
        for name, projection in projections.items():
            projection.start(inits[name])
        trainable = [p.fresh for p in projections.values()]
        frozen = {p: p.requires_grad for p in model.parameters() if all(p is not t for t in trainable)}
        for param in frozen:
            param.requires_grad_(False)
        stream, steps = retain_pairing(adapter, request, config)

        def loss(net: nn.Module, batch: dict) -> torch.Tensor:
            forget_nll = adapter.per_item_loss(net, batch["forget"]).mean()
            return -forget_nll + config.retain_weight * adapter.per_item_loss(net, batch["retain"]).mean()

        try:
            record = optimise(model, stream, loss, config, steps_per_epoch=steps, description="mrp", params=trainable)
        finally:
            for param, flag in frozen.items():
                param.requires_grad_(flag)
            for projection in projections.values():
                projection.bake()
        info = {"layers": layers, "directions": {n: int(p.basis.shape[0]) for n, p in projections.items()}}
        return Outcome(model, record, info=info)
