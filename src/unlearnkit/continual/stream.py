"""Request streams: ``learn:<task>``, ``unlearn:<task>``, ``unlearn:ids=<id;id;a-b>`` and ``evaluate``.

A stream is written as comma-separated tokens, for example
``"learn:0,learn:1,learn:2,unlearn:1,learn:3,evaluate"``. ``unlearn:ids=3;17;40-45`` forgets
individual training samples by their sample id (a range ``a-b`` includes both ends).
:func:`parse_stream` checks the syntax (and, given the training pool's size, that every sample id
lies in it, before a range is expanded); :func:`check_stream` checks it against a scenario before
any work starts (tasks exist, nothing is unlearned that the stream has not learned).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from ..errors import UserInputError
from .scenarios import Scenario

ACTIONS = ("learn", "unlearn", "evaluate")
_SYNTAX = "expected learn:<task>, unlearn:<task>, unlearn:ids=<id;id;a-b> or evaluate"


@dataclass(frozen=True)
class Request:
    """One stream item. ``task`` is set for learn and task-unlearn; ``ids`` for sample unlearning."""

    action: str
    task: int | None = None
    ids: tuple[int, ...] = ()
    token: str = ""
    position: int = 0

    def describe(self) -> str:
        """The token as written, with its 1-based position, for error messages."""
        return f"stream token {self.position + 1} {self.token!r}"


def _bad(position: int, token: str, why: str) -> UserInputError:
    return UserInputError(f"Stream token {position + 1} {token!r} is not valid: {why}.")


def _integer(digits: str, position: int, token: str) -> int:
    """``int(digits)``, refused in one sentence past Python's limit on the digits it converts (4300)."""
    try:
        return int(digits)
    except ValueError:
        raise _bad(position, token, f"a number of {len(digits)} digits is far too large") from None


def _parse_ids(text: str, position: int, token: str, pool: int | None) -> tuple[int, ...]:
    ids: list[int] = []
    for part in text.split(";"):
        match = re.fullmatch(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?", part)
        if not match:
            raise _bad(position, token, "sample ids must be non-negative integers or ranges a-b separated by ';'")
        low = _integer(match.group(1), position, token)
        high = _integer(match.group(2), position, token) if match.group(2) else low
        if high < low:
            raise _bad(position, token, f"the range {low}-{high} is empty")
        if pool is not None and high >= pool:  # before expanding: a huge range would exhaust memory
            raise _bad(position, token, f"sample id {high} lies outside the training pool (ids 0..{pool - 1})")
        ids.extend(range(low, high + 1))
    if len(set(ids)) != len(ids):
        raise _bad(position, token, "it lists the same sample id more than once")
    return tuple(ids)


def parse_token(token: str, position: int, pool: int | None = None) -> Request:
    """Parse one token (``position`` is 0-based and only used in messages; ``pool`` bounds sample ids)."""
    text = token.strip()
    if text in ("evaluate", "eval"):
        return Request("evaluate", token=text, position=position)
    action, colon, argument = text.partition(":")
    if action not in ("learn", "unlearn") or not colon or not argument.strip():
        raise _bad(position, text, _SYNTAX)
    argument = argument.strip()
    if action == "unlearn" and argument.startswith("ids="):
        return Request("unlearn", ids=_parse_ids(argument[4:], position, text, pool), token=text, position=position)
    if not re.fullmatch(r"[0-9]+", argument):
        raise _bad(position, text, f"the task must be a non-negative integer ({_SYNTAX})")
    return Request(action, task=_integer(argument, position, text), token=text, position=position)


def parse_stream(stream: str | Sequence[str], pool: int | None = None) -> list[Request]:
    """Parse a comma-separated stream (or a list of tokens) into requests; syntax errors name the token.

    ``pool`` (the number of training samples) refuses a sample id outside ``0..pool−1`` before its
    range is expanded; without it ``unlearn:ids`` ranges are expanded unchecked.
    """
    tokens = stream.split(",") if isinstance(stream, str) else list(stream)
    if not any(t.strip() for t in tokens):
        raise UserInputError("The stream is empty: give comma-separated tokens such as learn:0,learn:1,unlearn:0.")
    requests = []
    for position, token in enumerate(tokens):
        if not token.strip():
            raise _bad(position, token, "it is empty (two commas in a row or a trailing comma)")
        requests.append(parse_token(token, position, pool))
    return requests


def default_stream(scenario: Scenario) -> list[Request]:
    """Learn every task of the scenario in order."""
    return parse_stream([f"learn:{t}" for t in range(scenario.num_tasks)])


def check_stream(requests: Sequence[Request], scenario: Scenario) -> list[int]:
    """Raise :class:`UserInputError` when a request names a missing task or unlearns what is not learned;
    return the number of distinct learned samples left after each request (what an unlearner may retain).

    A task or sample can be unlearned only while it is learned: after a ``learn`` of a task holding
    it and before it was unlearned (learning the task again makes it learnable-unlearnable again). A task
    whose own learn requests an unlearn request leaves with no sample counts as unlearned, as the runner
    counts it, even if another task learns the same samples again (only a ``learn`` of the task itself
    brings them back to it).
    """
    learned: dict[int, int] = {}  # sample id -> number of learned tasks holding it
    held: list[tuple[int, set[int]]] = []  # each learn request's task and the samples it still contributes
    task_learned: set[int] = set()
    emptied: set[int] = set()  # tasks an unlearn request left with no sample of their own, not learned again since
    pool = len(scenario.train_y)
    remaining = []
    for request in requests:
        if request.task is not None and not 0 <= request.task < scenario.num_tasks:
            raise UserInputError(
                f"The {request.describe()} names task {request.task}, but scenario {scenario.name} has tasks 0..{scenario.num_tasks - 1}."
            )
        if request.action == "learn":
            task_learned.add(request.task)
            emptied.discard(request.task)
            held.append((request.task, set(scenario.tasks[request.task].train_ids.tolist())))
            for i in held[-1][1]:
                learned[i] = learned.get(i, 0) + 1
        elif request.action == "unlearn" and request.task is not None:
            if request.task in emptied:
                raise UserInputError(f"The {request.describe()} unlearns task {request.task}, but all its samples "
                                     "were already unlearned earlier in the stream.")
            if request.task not in task_learned:
                raise UserInputError(
                    f"The {request.describe()} unlearns task {request.task}, which is not learned at that point of the stream."
                )
            _forget(learned, held, scenario.tasks[request.task].train_ids.tolist())
            task_learned.discard(request.task)
        elif request.action == "unlearn":
            bad = [i for i in request.ids if i >= pool or i not in learned]
            if bad:
                raise UserInputError(
                    f"The {request.describe()} unlearns sample {bad[0]}, which is not learned at that point of the stream."
                )
            _forget(learned, held, request.ids)
        if request.action == "unlearn":  # a task whose learn requests hold no sample is forgotten whole (the runner's rule)
            gone = {t for t in task_learned if not any(ids for task, ids in held if task == t)}
            task_learned -= gone
            emptied |= gone
        remaining.append(len(learned))
    return remaining


def _forget(learned: dict[int, int], held: list[tuple[int, set[int]]], ids: Sequence[int]) -> None:
    """Remove the samples ``ids`` from the learned ones and from every learn request holding them."""
    for i in ids:
        learned.pop(i, None)
    gone = set(ids)
    for _, contributed in held:
        contributed -= gone
