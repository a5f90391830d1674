"""How forget items are paired with retain items: standard, cyclic or modular (MELU) sampling.

Bushipaka et al., "Standard vs. Modular Sampling: Best Practices for Reliable LLM Unlearning"
(arXiv 2509.05316, 2025). A sampler for any method whose loss reads ``{"forget", "retain"}``
batches; it returns the same ``(epoch_batches, steps_per_epoch)`` as ``base.paired_stream``.

- ``standard``: the shared ``base.paired_stream``: one pass over the forget set per epoch
  (reshuffled), each forget batch paired with the next batch of a cycling, reshuffled pass over the
  retain set, so every forget item meets a random retain item (1:1). TOFU / OpenUnlearning's
  ``ForgetRetainDataset`` draws that retain item with replacement; the cycle draws it without
  replacement within a pass, so every retain item is seen before any is seen twice.
- ``cyclic``: an epoch is max(|D_f|, |D_r|) pairs, pair k being forget item k mod |D_f| with
  retain item k mod |D_r| (both in their given order), and the pairs are shuffled each epoch (the
  authors' ``DualDataset`` under a shuffling loader). Every retain item is seen once per epoch and
  the smaller set is cycled, so with a large retain set an epoch holds many passes over D_f.
- ``modular`` (MELU): each entity's forget items are cycled against that entity's own neighbours,
  and every general-knowledge item is paired with a random forget item (drawn anew each epoch), so
  each general item is seen once per epoch and each neighbour once per epoch for each entity it
  serves (an epoch is max(|F_e|, |N_e|) pairs per entity plus one pair per general item, not one
  pass over the forget set). An entity is an item's ``"person"``; its neighbours are the items in
  the request's ``direct`` and ``indirect`` sets linked to it in ``request.links`` (as the authors'
  data gives each neighbour question the title of the entity it belongs to; the facts bench links a
  retained person to every forgotten one sharing a birthplace, sibling or profession, so a neighbour
  may serve several entities, where each of the authors' serves one), or, for a neighbour without
  links, the items of the same person (when only some of a person's facts are forgotten). A
  neighbour that serves no forgotten entity (unlinked, about a retained person) is cycled against
  all forget items, and so are forget items whose entity has no neighbour, against all ``direct``
  and ``indirect`` neighbours. General items are the items of ``request.data`` whose ``"person"``
  is None (the key present), outside the forget set, whether or not ``request.retain`` holds them:
  on the facts bench it does not, so there standard and cyclic sampling never train on the general
  items, and modular sampling does (MELU's retain file holds its general items for every sampler).

Other configs opt in by inheriting :class:`SamplingConfig` (it adds ``sampling`` and checks it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch

from ..errors import UserInputError
from ..train import TrainConfig

SAMPLINGS = ("standard", "cyclic", "modular")
Pair = tuple[int, int]


def check_sampling(name: Any) -> None:
    """Raise :class:`UserInputError` unless ``name`` is a known sampling strategy."""
    if name not in SAMPLINGS:
        raise UserInputError(f"Unknown sampling {name!r}; valid: {', '.join(SAMPLINGS)}.")


@dataclass
class SamplingConfig(TrainConfig):
    """Adds ``sampling``: how forget items are paired with retain items (standard, cyclic, modular)."""

    sampling: str = "standard"

    def check(self) -> None:
        """Also validate the sampling strategy."""
        super().check()
        check_sampling(self.sampling)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


T = TypeVar("T")


def _shuffled(values: Sequence[T], seed: int) -> list[T]:
    order = torch.randperm(len(values), generator=_generator(seed)).tolist()
    return [values[i] for i in order]


def _person(item: Any) -> Any:
    """The item's entity (its ``"person"``), or None."""
    return item.get("person") if isinstance(item, dict) else None


def _require_retain(request) -> list[int]:
    if not request.retain:
        raise UserInputError("Standard and cyclic sampling need retain data, but the request has none.")
    return list(request.retain)


def cyclic_pairs(request, seed: int, epoch: int) -> list[Pair]:
    """Pairs (forget k mod |F|, retain k mod |R|) for k < max(|F|, |R|), shuffled for the epoch."""
    retain, forget = _require_retain(request), list(request.forget)
    pairs = [(forget[k % len(forget)], retain[k % len(retain)]) for k in range(max(len(forget), len(retain)))]
    return _shuffled(pairs, seed + 7919 * epoch)


#: The group key of the neighbours that serve no forgotten entity (cycled against every forget item).
UNASSIGNED = "unassigned neighbours"


def entity_groups(request) -> dict[Any, tuple[list[int], list[int]]]:
    """Forget ids grouped with their neighbour pools: per entity when neighbours belong to it (linked to it in
    ``request.links``, else of the same person), else one group (key None) against every ``direct`` and
    ``indirect`` neighbour; neighbours that serve no forgotten entity form one more group (key
    :data:`UNASSIGNED`) against every forget item."""
    neighbours = list(dict.fromkeys([*request.neighbours.get("direct", ()), *request.neighbours.get("indirect", ())]))
    forgotten = {_person(request.data[f]) for f in request.forget} - {None}
    own: dict[Any, list[int]] = {}
    unassigned: list[int] = []
    for i in neighbours:
        served = [e for e in request.links.get(i) or (_person(request.data[i]),) if e in forgotten]
        for entity in served:
            own.setdefault(entity, []).append(i)
        if not served:
            unassigned.append(i)
    groups: dict[Any, tuple[list[int], list[int]]] = {}
    for f in request.forget:
        person = _person(request.data[f])
        key = person if person in own else None
        groups.setdefault(key, ([], own.get(key, neighbours)))[0].append(f)
    if None in groups and not groups[None][1]:
        raise UserInputError("Modular sampling needs the request's 'direct' or 'indirect' neighbour sets, "
                             "but it has none for some forgotten items.")
    if unassigned and None not in groups:  # (the None group already cycles every neighbour)
        groups[UNASSIGNED] = (list(request.forget), unassigned)
    return groups


def general_items(request) -> list[int]:
    """Ids of the general-knowledge items: ``"person"`` present and None, not in the forget set."""
    forget = set(request.forget)
    return [i for i in range(len(request.data))
            if i not in forget and isinstance(request.data[i], dict) and "person" in request.data[i]
            and request.data[i]["person"] is None]


def modular_pairs(request, seed: int, epoch: int) -> list[Pair]:
    """MELU: per entity, forget items cycled against its neighbours; each general item with a random
    forget item; all pairs shuffled."""
    pairs: list[Pair] = []
    for index, (forget, pool) in enumerate(entity_groups(request).values()):
        forget = _shuffled(forget, seed + 7919 * epoch + 31 * index)
        pool = _shuffled(pool, seed + 104729 * (epoch + 1) + 31 * index)
        pairs += [(forget[k % len(forget)], pool[k % len(pool)]) for k in range(max(len(forget), len(pool)))]
    general = general_items(request)
    chooser = _generator(seed + 3571 * (epoch + 1))
    draws = torch.randint(len(request.forget), (len(general),), generator=chooser).tolist()
    pairs += [(request.forget[d], g) for d, g in zip(draws, general)]
    return _shuffled(pairs, seed + 15485863 * (epoch + 1))


_PAIRINGS: dict[str, Callable[[Any, int, int], list[Pair]]] = {"cyclic": cyclic_pairs, "modular": modular_pairs}


def sampled_pairs(request, config: TrainConfig, epoch: int) -> list[Pair]:
    """The (forget id, retain id) pairs of one epoch in training order, for cyclic or modular ``config.sampling``."""
    sampling = getattr(config, "sampling", None)
    if sampling not in _PAIRINGS:
        raise UserInputError(f"Pairs are listed for cyclic and modular sampling, not {sampling!r}.")
    return _PAIRINGS[sampling](request, config.seed, epoch)


def paired_stream_with_sampling(adapter: Any, request, config: TrainConfig,
                                forget_item: Callable[[int], Any] | None = None,
                                ) -> tuple[Callable[[int], Iterator[dict]], int]:
    """Batches ``{"forget": ..., "retain": ...}`` of the pairs ``config.sampling`` makes, and the steps per epoch;
    ``forget_item`` maps a forget id to what is collated for it (default: the request's item)."""
    size = len(sampled_pairs(request, config, 0))
    data = request.data
    forget_item = forget_item or data.__getitem__

    def epoch_batches(epoch: int) -> Iterator[dict]:
        pairs = sampled_pairs(request, config, epoch)
        for start in range(0, len(pairs), config.batch_size):
            chunk = pairs[start : start + config.batch_size]
            yield {"forget": adapter.collate([forget_item(f) for f, _ in chunk]),
                   "retain": adapter.collate([data[r] for _, r in chunk])}

    return epoch_batches, -(-size // config.batch_size)


def retain_pairing(adapter: Any, request, config: TrainConfig, forget_item: Callable[[int], Any] | None = None,
                   ) -> tuple[Callable[[int], Iterator[dict]], int]:
    """The forget/retain batch stream a retain-using method trains on, as ``config.sampling`` asks.

    ``standard`` keeps the shared ``paired_stream`` (each forget batch with the next batch of a
    reshuffled retain cycle: 1:1 random pairing); ``cyclic`` and ``modular`` use MELU's pairings.
    ``forget_item`` maps a forget id to what is collated for it (default: the request's item).
    """
    from .base import paired_stream

    sampling = getattr(config, "sampling", "standard")
    check_sampling(sampling)
    if sampling == "standard":
        forget = [forget_item(i) for i in request.forget] if forget_item else request.forget_items()
        return paired_stream(adapter, forget, request.retain_items(), config)
    return paired_stream_with_sampling(adapter, request, config, forget_item)
