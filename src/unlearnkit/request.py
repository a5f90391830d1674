"""ForgetRequest: what must go, what may be used, and why."""

from __future__ import annotations

import numbers
import operator
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from .errors import UserInputError


@dataclass(frozen=True)
class ForgetRequest:
    """A request to remove the influence of some training items.

    ``data`` is any indexable collection of items (a torch ``Dataset``, a list of dicts, ...);
    ``forget`` and ``retain`` are item indices into it. ``neighbours`` holds optional named sets
    (for example the ``direct`` and ``indirect`` neighbours of the forgotten people) that some
    methods and samplers use; ``links`` optionally maps a neighbour's id to the forgotten entities (the
    forget items' ``"person"``) it is linked to, which MELU's modular sampling groups by. ``holdout`` holds optional items *not* in ``data`` and never trained
    on, of the same kind as the forget items (TOFU's ``holdout`` split): methods never train on
    them; an early stop compares the forget set with them (``unlearnkit.train.stopping``).
    ``reason`` is free text for the ledger; it never reaches the model.
    The request validates itself on construction, so no work starts on a malformed request.
    """

    data: Any
    forget: Sequence[int]
    retain: Sequence[int] | None = None
    neighbours: Mapping[str, Sequence[int]] = field(default_factory=dict)
    reason: str = ""
    holdout: Sequence[Any] = ()
    links: Mapping[int, Sequence[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (isinstance(self.data, (str, bytes, Mapping))
            or not (hasattr(self.data, "__len__") and hasattr(self.data, "__getitem__"))):
            raise UserInputError(f"The request's data must be an indexable collection of items with a length "
                                 f"(a list or a Dataset), got {type(self.data).__name__}.")
        if hasattr(self.data, "iloc"):  # a DataFrame: data[i] is a column, not the i-th item
            raise UserInputError("The request's data is a DataFrame, whose [i] is a column; pass its rows, e.g. "
                                 "df.to_dict('records').")
        object.__setattr__(self, "forget", _ids(self.forget, "forget"))
        if self.retain is not None:
            object.__setattr__(self, "retain", _ids(self.retain, "retain"))
        if not isinstance(self.neighbours, Mapping):
            raise UserInputError(f"The request's neighbours must map set names to item ids, got {type(self.neighbours).__name__}.")
        object.__setattr__(
            self, "neighbours", {k: _ids(v, f"neighbours[{k!r}]") for k, v in dict(self.neighbours).items()}
        )
        object.__setattr__(self, "holdout", _holdout(self.holdout))
        object.__setattr__(self, "links", _links(self.links, self.neighbours))
        self.validate()

    @property
    def size(self) -> int:
        """Number of items in ``data``."""
        return len(self.data)

    def validate(self) -> None:
        """Raise :class:`UserInputError` for an empty forget set, ids out of range, or overlaps."""
        n = self.size
        if not self.forget:
            raise UserInputError("The forget set is empty: name at least one item to forget.")
        if n == 0:
            raise UserInputError("The request's data holds no items, so no item id can be valid.")
        named = {"forget": self.forget, **({"retain": self.retain} if self.retain is not None else {})}
        named.update({f"neighbours[{k}]": v for k, v in self.neighbours.items()})
        for name, ids in named.items():
            bad = [i for i in ids if i < 0 or i >= n]
            if bad:
                raise UserInputError(
                    f"The {name} set has item id {bad[0]} but the data has only {n} items (valid ids: 0..{n - 1})."
                )
        if len(set(self.forget)) != len(self.forget):
            raise UserInputError("The forget set lists the same item more than once.")
        forget = set(self.forget)
        for name, ids in named.items():
            if name == "forget":
                continue
            overlap = forget.intersection(ids)
            if overlap:
                raise UserInputError(
                    f"The forget and {name} sets overlap (item {min(overlap)}): an item cannot be both forgotten and kept."
                )

    def forget_items(self) -> list[Any]:
        """The items to forget, in request order."""
        return [self.data[i] for i in self.forget]

    def retain_items(self) -> list[Any]:
        """The items that may be used to preserve utility (empty when none were given)."""
        return [self.data[i] for i in (self.retain or ())]

    def neighbour_items(self, name: str) -> list[Any]:
        """The items of one named neighbour set."""
        if name not in self.neighbours:
            raise UserInputError(f"The request has no neighbour set {name!r} (it has: {sorted(self.neighbours) or 'none'}).")
        return [self.data[i] for i in self.neighbours[name]]


def _links(links: Any, neighbours: Mapping[str, Sequence[int]]) -> dict[int, tuple[Any, ...]]:
    """``links`` as {neighbour id: entities}; each key must be in a neighbour set, each value a list of entities."""
    if not isinstance(links, Mapping):
        raise UserInputError(f"The request's links must map neighbour ids to entities, got {type(links).__name__}.")
    known = {i for ids in neighbours.values() for i in ids}
    checked = {}
    for key, entities in links.items():
        try:  # a numpy or torch integer is an id as in the neighbour sets (see _ids)
            if isinstance(key, bool) or _boolean(key):
                raise TypeError
            key = operator.index(key)
        except TypeError:
            # the type only: a key that is no id may be a forgotten entity's name
            raise UserInputError(f"The request's links name a {type(key).__name__} key; its keys must be ids of its "
                                 "neighbour sets.") from None
        if key not in known:
            raise UserInputError(f"The request's links name {key}, which is no id of its neighbour sets.")
        if isinstance(entities, (str, bytes)) or not isinstance(entities, Iterable):
            # the type only: the entities are the forgotten people or things, which errors do not repeat
            raise UserInputError(f"The links of neighbour {key} must be a list of entities, got {type(entities).__name__}.")
        checked[key] = tuple(entities)
    return checked


def _holdout(items: Any) -> tuple[Any, ...]:
    """The holdout items as a tuple; text or a non-collection is refused, never split into characters."""
    if items is None:
        return ()
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise UserInputError(f"The request's holdout must be a sequence of items, got {type(items).__name__}.")
    try:
        return tuple(items)
    except TypeError:  # a 0-d array or tensor declares iteration but refuses it
        raise UserInputError(f"The request's holdout must be a sequence of items, got a single "
                             f"{type(items).__name__} value.") from None


def _ids(values: Any, name: str) -> tuple[int, ...]:
    """Item ids as ints; a float, bool, string or other non-integer is refused, never rounded or split."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise UserInputError(f"The {name} ids must be a sequence of integers, got {type(values).__name__}.")
    if _boolean(values):  # a torch bool tensor's elements would pass as the ids 0 and 1
        raise UserInputError(f"The {name} ids must be integers (not a mask); an array of booleans is a mask.")
    try:
        values = list(values)
    except TypeError:  # a 0-d array or tensor declares iteration but refuses it
        raise UserInputError(f"The {name} ids must be a sequence of integers, got a single "
                             f"{type(values).__name__} value.") from None
    ids = []
    for position, value in enumerate(values):
        try:
            if isinstance(value, bool) or _boolean(value):
                raise UserInputError(f"The {name} ids must be integers (not a mask); {value!r} is not one.")
            ids.append(operator.index(value))
        except TypeError:
            if isinstance(value, numbers.Number):
                raise UserInputError(f"The {name} ids must be integers; {value!r} is not one.") from None
            # the type only: a name or text given where an id belongs may be what is to be forgotten
            raise UserInputError(f"The {name} ids must be integers; the one at position {position} is a "
                                 f"{type(value).__name__}.") from None
    return tuple(ids)


def _boolean(value: Any) -> bool:
    """Whether a numpy or torch array or scalar holds booleans."""
    return str(getattr(value, "dtype", "")) in ("bool", "torch.bool")
