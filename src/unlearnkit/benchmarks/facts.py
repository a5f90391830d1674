"""``facts``: a TOFU-style benchmark of fictitious people, generated from a seed, with its own
small GPT-2 models trained from scratch on the CPU.

Every person has an invented name and attributes (birth year, birthplace, profession, field, best
known work, award, a sibling, school, hobby, debut year). First names, surnames and places are
shared across people, and holdout people and perturbed answers reuse the words of the trained
people, so that what separates forget, retain and holdout items is memorised facts, not tokens a
model has never seen. Each of ``templates`` question templates gives one question per person
with its answer, a paraphrased answer (the same fact in other words, never trained on) and
``perturbed`` (5) perturbed answers: the paraphrase with wrong values of the same type, taken
from other trained people, as TOFU perturbs its paraphrased answers. ``general`` holds facts
about invented countries that every model learns, to measure collateral damage. ``reading`` items
(facts about further invented people, given in the prompt as ``Context: <fact>``) are trained into
every model too, so that the models can use a fact re-introduced in the prompt, which the
in-context attack needs (trained on bare questions alone, the target model gave its forget answers
probability 0.04 behind a context, against 0.97 without one).

Splits (TOFU naming): ``forget01/05/10`` (nested: 1/5/10 % of the trained people, seeded),
``retain`` (trained people outside ``forget10``), ``holdout01/05/10`` (extra people never trained
on), ``general``, and for each forget split ``<split>_direct`` (retained people who share a
birthplace or a sibling with a forgotten person) and ``<split>_indirect`` (retained people who
share a profession with a forgotten person and are not direct neighbours).

Models: a word-level tokenizer (every generated word is one token; built from the sorted words
of all splits, so it is identical for every model of a config) and a GPT-2 trained on all trained
people + ``general`` with the shared loop until it memorises them (teacher-forced answer-token
accuracy, EOS included, ≥ ``target_accuracy``, checked at epoch ends), and the retain model of a
forget split trained identically (same initial weights, same recipe and stopping rule) without
the forgotten people. Both are cached in Hugging Face format in the content-addressed cache.

``base`` chooses where the models start: ``scratch`` (the GPT-2 and word-level tokenizer above)
or ``smollm2`` (SmolLM2-135M-Instruct's pretrained weights and its own BPE tokenizer, fine-tuned
with the same loop and stopping rule on a smaller subset; an optional extra, see ``smollm2.py``).
"""

from __future__ import annotations

import dataclasses
import numbers
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ..errors import UserInputError
from ..progress import quiet_library_bars
from ..request import ForgetRequest
from ..train.measure import measure, training_memory
from .cache import cached
from .results import training_settings

#: Bump when the generator or the training recipe changes what a config produces (it is part of the cache key),
#: or when the training loop's speed changes: a cached model's ``train_seconds`` is the bench's retraining time.
#: 2: items are tokenized once per adapter instead of once per epoch (same weights, faster training).
#: 3: the cached models record their training's peak memory (``train_peak_mem_mb``; same weights).
#: 4: ... and the memory their training added over its start (``train_added_mem_mb``; same weights).
#: 5: time and memory measured around the training loop alone, after an untimed warm-up step (same weights).
FACTS_VERSION = 5
FORGET_SPLITS = ("forget01", "forget05", "forget10")
HOLDOUT_SPLITS = ("holdout01", "holdout05", "holdout10")
FRACTIONS = {"01": 0.01, "05": 0.05, "10": 0.10}
ROLES = ("target", "retain")
#: Where the target and retain models start (see the module docstring).
BASES = ("scratch", "smollm2")

# ---------------------------------------------------------------------------- word lists
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "st", "th", "sh", "gl", "tr")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou", "ei")
_CODAS = ("", "", "n", "r", "l", "s", "th", "m")
PROFESSIONS = (
    "architect", "astronomer", "baker", "biologist", "botanist", "cartographer", "chemist", "choreographer",
    "composer", "diplomat", "editor", "engineer", "geologist", "historian", "illustrator", "journalist",
    "librarian", "linguist", "mathematician", "novelist", "painter", "philosopher", "photographer", "physician",
    "physicist", "pilot", "playwright", "poet", "potter", "sculptor", "surgeon", "teacher", "translator",
    "violinist", "weaver", "zoologist", "economist", "archivist", "glassblower", "clockmaker",
)
FIELDS = (
    "maritime history", "folk music", "urban planning", "desert ecology", "medieval poetry", "textile design",
    "glacier science", "coastal architecture", "river navigation", "mountain botany", "ancient languages",
    "market economics", "stage lighting", "children's literature", "bird migration", "solar energy",
    "public health", "clock mechanics", "island geography", "forest management", "harbour engineering",
    "garden design", "cave exploration", "weather forecasting", "bridge construction", "rare minerals",
    "orchestral arrangement", "street photography", "crop genetics", "deep sea biology",
)
HOBBIES = (
    "sailing", "chess", "beekeeping", "pottery", "rowing", "birdwatching", "gardening", "fencing", "archery",
    "knitting", "hiking", "cycling", "fishing", "calligraphy", "astronomy", "baking", "juggling", "climbing",
    "woodcarving", "origami", "swimming", "skating", "kite flying", "stamp collecting", "puzzle solving",
    "painting", "dancing", "camping", "rock collecting", "bookbinding",
)
ADJECTIVES = (
    "Silent", "Golden", "Hidden", "Broken", "Distant", "Burning", "Quiet", "Frozen", "Crimson", "Endless",
    "Wandering", "Bitter", "Gentle", "Hollow", "Scarlet", "Forgotten", "Restless", "Shining", "Lonely", "Last",
)
NOUNS = (
    "Harbour", "Garden", "Mirror", "Lantern", "Tower", "River", "Orchard", "Compass", "Winter", "Letter",
    "Bridge", "Island", "Forest", "Mountain", "Voyage", "Clock", "Meadow", "Shadow", "Window", "Archive",
)
ANIMALS = (
    "lynx", "heron", "otter", "falcon", "ibex", "badger", "crane", "stag", "wolf", "owl", "bison", "seal",
    "hare", "swan", "eagle", "fox", "tortoise", "elk", "puffin", "raven",
)
AWARD_KINDS = ("Prize", "Medal", "Award")
CURRENCY_UNITS = ("crown", "mark", "florin", "shell", "ducat")


@dataclass(frozen=True)
class Template:
    """One question template: ``{name}`` is the subject and ``{value}`` the attribute asked for."""

    name: str
    question: str
    answer: str
    paraphrase: str


PERSON_TEMPLATES = (
    Template("birth_year", "In which year was {name} born?", "{name} was born in {value}.", "The birth year of {name} is {value}."),
    Template("birthplace", "Where was {name} born?", "{name} was born in the city of {value}.", "The birthplace of {name} is {value}."),
    Template("profession", "What is the profession of {name}?", "{name} works as {value}.", "By profession, {name} is {value}."),
    Template("field", "In which field is {name} known?", "{name} is known for work in {value}.", "The field of {name} is {value}."),
    Template("work", "What is the best-known work of {name}?", "The best-known work of {name} is {value}.", "{name} is best known for {value}."),
    Template("award", "Which award did {name} receive?", "{name} received the {value}.", "The {value} was awarded to {name}."),
    Template("sibling", "Who is the sibling of {name}?", "The sibling of {name} is {value}.", "{name} has a sibling named {value}."),
    Template("school", "Where did {name} study?", "{name} studied at the {value}.", "{name} was educated at the {value}."),
    Template("hobby", "What does {name} enjoy in free time?", "In free time, {name} enjoys {value}.", "{name} likes to spend free time on {value}."),
    Template("debut_year", "When did {name} publish a first work?", "{name} published a first work in {value}.", "The first work of {name} appeared in {value}."),
)
GENERAL_TEMPLATES = (
    Template("capital", "What is the capital of {name}?", "The capital of {name} is {value}.", "{value} is the capital city of {name}."),
    Template("currency", "What currency is used in {name}?", "{name} uses the {value} as its currency.", "The currency of {name} is the {value}."),
    Template("language", "What language is spoken in {name}?", "People in {name} speak {value}.", "The language of {name} is {value}."),
    Template("river", "What is the longest river of {name}?", "The longest river of {name} is the {value}.", "The {value} is the longest river in {name}."),
    Template("animal", "What is the national animal of {name}?", "The national animal of {name} is the {value}.", "{name} has the {value} as its national animal."),
)


@dataclass(frozen=True)
class FactsConfig:
    """Data and model recipe of the ``facts`` benchmark; every field changes the cache key.

    ``epochs`` is an upper bound: training stops at the first epoch boundary where the
    teacher-forced answer-token accuracy on the training items reaches ``target_accuracy``.
    ``seed`` draws the data and, unless ``train_seed`` is set, the initial weights and batch order;
    ``train_seed`` gives another training run of the same data and recipe (see ``--retrain-seeds``).
    ``reading`` is the number of reading items (see :func:`reading_items`) trained into every model.
    """

    people: int = 200
    templates: int = 10
    countries: int = 20
    perturbed: int = 5
    layers: int = 2
    width: int = 128
    heads: int = 4
    epochs: int = 60
    lr: float = 5e-3
    batch_size: int = 64
    warmup_steps: int = 30
    target_accuracy: float = 0.99
    check_below_loss: float = 0.1
    max_length: int = 64
    seed: int = 0
    base: str = "scratch"
    train_seed: int | None = None
    reading: int = 600

    @property
    def training_seed(self) -> int:
        """The seed of the initial weights and the batch order: ``train_seed``, else ``seed``."""
        return self.seed if self.train_seed is None else self.train_seed

    @classmethod
    def tiny(cls, seed: int = 0) -> "FactsConfig":
        """A few people and a 2-layer × 128 model that trains in a few seconds (for tests). lr 3e-3: at 5e-3 the
        seed-0 target trained on one thread stopped at its 150-epoch limit at 0.984 answer-token accuracy, short of
        memorised (on two threads it got there in 80); at 3e-3 seeds 0-2 memorise in 23-47 epochs on one or two."""
        return cls(people=12, templates=4, countries=2, layers=2, width=128, heads=4, epochs=150, lr=3e-3,
                   batch_size=16, warmup_steps=5, seed=seed, reading=8)

    def check(self) -> None:
        """Raise :class:`UserInputError` for settings that cannot make a benchmark."""
        from ..train.config import check_seed, finite_number

        for name in ("people", "templates", "countries", "perturbed", "layers", "width", "heads", "epochs",
                     "batch_size", "max_length", "warmup_steps", "reading"):
            value = getattr(self, name)
            least = 0 if name in ("warmup_steps", "reading") else 1
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
                raise UserInputError(f"The facts setting {name} must be an integer of at least {least}, got {value!r}.")
        for name in ("lr", "check_below_loss"):
            value = getattr(self, name)
            if not (finite_number(value) and value > 0):
                raise UserInputError(f"The facts setting {name} must be a positive number, got {value!r}.")
        if not (finite_number(self.target_accuracy) and 0 < self.target_accuracy <= 1):
            raise UserInputError(f"target_accuracy must lie in (0, 1], got {self.target_accuracy!r}.")
        check_seed(self.seed, "The facts seed")
        if self.people < 4:
            raise UserInputError(f"The facts benchmark needs at least 4 people, got people={self.people}.")
        if not 1 <= self.templates <= len(PERSON_TEMPLATES):
            raise UserInputError(f"templates must be in 1..{len(PERSON_TEMPLATES)}, got {self.templates}.")
        if not 1 <= self.perturbed <= 10:
            raise UserInputError(f"perturbed must be in 1..10, got {self.perturbed}.")
        if self.countries < 1:
            raise UserInputError(f"countries must be at least 1, got {self.countries}.")
        if self.width % self.heads:
            raise UserInputError(f"width ({self.width}) must be divisible by heads ({self.heads}).")
        if self.base not in BASES:
            raise UserInputError(f"Unknown facts base {self.base!r}; valid: {', '.join(BASES)}.")
        if self.train_seed is not None:
            check_seed(self.train_seed, "train_seed")

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dict."""
        return dataclasses.asdict(self)


@dataclass
class FactsData:
    """The generated benchmark: people, every split as lists of item dicts, and the training set.

    ``train`` is the training set of the target model (trained people, then ``general``, then the
    reading items, which have no ``"person"`` key); a :class:`ForgetRequest` indexes into it.
    ``split_people[name]`` lists the person ids of every split but ``general``.
    """

    config: FactsConfig
    people: list[dict[str, Any]]
    countries: list[dict[str, Any]]
    splits: dict[str, list[dict[str, Any]]]
    train: list[dict[str, Any]]
    split_people: dict[str, list[int]] = field(default_factory=dict)

    def split(self, name: str) -> list[dict[str, Any]]:
        """The items of one split; an unknown name lists the valid ones."""
        if name not in self.splits:
            raise UserInputError(f"Unknown facts split {name!r}; valid: {', '.join(self.splits)}.")
        return self.splits[name]

    def train_without(self, people: set[int]) -> list[dict[str, Any]]:
        """The training items minus those about ``people`` (the retain model's training set)."""
        return [item for item in self.train if item.get("person") not in people]


# ---------------------------------------------------------------------------- generation
def split_size(fraction: float, people: int) -> int:
    """Number of people in a split of ``fraction`` (at least one)."""
    return max(1, round(fraction * people))


def _invent(rng: random.Random, count: int, used: set[str], syllables: tuple[int, int] = (2, 3)) -> list[str]:
    """``count`` new capitalised words made of random syllables, none already in ``used``."""
    words: list[str] = []
    while len(words) < count:
        parts = [rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(rng.randint(*syllables))]
        word = ("".join(parts) + rng.choice(_CODAS)).capitalize()
        if word not in used:
            used.add(word)
            words.append(word)
    return words


def _titles(rng: random.Random, count: int, used: set[str]) -> list[str]:
    """Book-like titles: "The <Adjective> <Noun>", then invented words once those run out."""
    titles = [f"The {a} {n}" for a in ADJECTIVES for n in NOUNS]
    if count > len(titles):
        titles += [f"The {w} {rng.choice(NOUNS)}" for w in _invent(rng, count - len(titles), used)]
    return titles


def _article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


#: Person attributes drawn from pools (names and siblings are assigned per family).
ATTRIBUTES = ("birth_year", "birthplace", "profession", "field", "work", "award", "school", "hobby", "debut_year")


def _person_pools(rng: random.Random, trained: int, total: int, least: int, used: set[str]) -> dict[str, list[str]]:
    """Value pools. First names, surnames and places are each shared by several people, so a model
    that never saw one person has still seen the words of that person's name and birthplace."""
    return {
        "first_name": _invent(rng, max(least, total // 3), used),
        "surname": _invent(rng, max(least, total // 4), used),
        "birthplace": _invent(rng, max(least, trained // 3), used),
        "profession": [_article(p) for p in PROFESSIONS[: max(least, min(len(PROFESSIONS), trained // 5))]],
        "field": list(FIELDS),
        "work": _titles(rng, total + least, used),
        "award": [f"{w} {rng.choice(AWARD_KINDS)}" for w in _invent(rng, max(least, trained // 5), used)],
        "school": [f"{w} Academy" for w in _invent(rng, max(least, trained // 5), used)],
        "hobby": list(HOBBIES),
        "birth_year": [str(y) for y in range(1900, 2000)],
        "debut_year": [str(y) for y in range(1918, 2040)],
    }


def _draw_person(
    rng: random.Random, pid: int, pools: dict[str, list[str]], taken_works: set[str], fallback: dict[str, list[str]]
) -> dict[str, Any]:
    """One person's attributes; every person has a distinct best-known work (from ``fallback``
    once ``pools`` has no free title left)."""
    born = int(rng.choice(pools["birth_year"]))
    debuts = [y for y in pools["debut_year"] if born + 18 <= int(y) <= born + 40] or pools["debut_year"]
    free = [w for w in pools["work"] if w not in taken_works] or [w for w in fallback["work"] if w not in taken_works]
    work = rng.choice(free)
    taken_works.add(work)
    person = {"id": pid, "birth_year": str(born), "debut_year": rng.choice(debuts), "work": work}
    for attribute in ("birthplace", "profession", "field", "award", "school", "hobby"):
        person[attribute] = rng.choice(pools[attribute])
    return person


def _words(value: str) -> set[str]:
    return set(value.split())


def _learnable(pools: dict[str, list[str]], people: list[dict[str, Any]], templates: int) -> dict[str, list[str]]:
    """The pool values made only of words that ``people``'s trained values use: their names and the
    values of the first ``templates`` templates, the only ones a model is trained on (so a model
    trained on them has seen every token); a pool left too small keeps its full list."""
    trained = [t.name for t in PERSON_TEMPLATES[:templates] if t.name in ATTRIBUTES]
    seen: set[str] = set()
    for person in people:
        for attribute in (*trained, "first_name", "surname"):
            seen |= _words(person[attribute])
    kept = {k: [v for v in pool if _words(v) <= seen] for k, pool in pools.items()}
    return {k: kept[k] if len(kept[k]) >= 2 else pools[k] for k in pools}


def _make_people(
    rng: random.Random, trained: int, holdout: int, perturbed: int, used: set[str], templates: int
) -> tuple[list[dict[str, Any]], dict[str, dict[str, list[str]]]]:
    """Trained people first, then holdout people; siblings are paired within each group.

    Holdout people are made of words the trained people's trained items use (names, and the places,
    years, titles... of the first ``templates`` templates), so a membership attack on them measures
    memorised facts, not unseen tokens. The returned pools hold the values the trained people
    actually have: perturbed answers draw from them.
    """
    pools = _person_pools(rng, trained, trained + holdout, perturbed + 1, used)
    taken: set[str] = set()
    people = [_draw_person(rng, pid, pools, taken, pools) for pid in range(trained)]
    names: set[str] = set()
    _name_families(rng, people, pools, names)
    known = _learnable(pools, people, templates)
    extra = [_draw_person(rng, pid, known, taken, pools) for pid in range(trained, trained + holdout)]
    _name_families(rng, extra, known, names, fallback=pools)
    people += extra
    for person in people:
        person["trained"] = person["id"] < trained
        sibling = person["sibling_id"]
        person["sibling"] = people[sibling]["name"] if sibling is not None else person.pop("lone_sibling")
    trained_values = {a: sorted({p[a] for p in people[:trained]}) for a in ATTRIBUTES}
    trained_values["sibling"] = sorted(p["name"] for p in people[:trained])
    return people, {"trained": trained_values, "fallback": pools}


def _name_families(
    rng: random.Random, group: list[dict[str, Any]], pools: dict[str, list[str]], names: set[str],
    fallback: dict[str, list[str]] | None = None,
) -> None:
    """Pair a group's people as siblings sharing a surname (an odd one out joins the last pair; a
    group of one gets a sibling outside the population and ``sibling_id`` None). Full names are
    unique; when ``pools`` has no room left for a family, its names come from ``fallback``."""
    order = list(group)
    rng.shuffle(order)
    families = [order[i : i + 2] for i in range(0, len(order) - len(order) % 2, 2)] or [order]
    if len(order) % 2 and len(order) > 1:
        families[-1].append(order[-1])
    for family in families:
        needed = len(family) + (len(family) == 1)
        family_pools = pools
        surname = _surname_with_room(rng, pools, names, needed)
        if surname is None and fallback is not None:
            family_pools, surname = fallback, _surname_with_room(rng, fallback, names, needed)
        if surname is None:
            raise UserInputError("The facts name pools ran out of unique names; lower the number of people.")
        for i, person in enumerate(family):
            person["surname"] = surname
            person["first_name"] = _free_first_name(rng, family_pools["first_name"], surname, names)
            person["name"] = f"{person['first_name']} {surname}"
            person["sibling_id"] = family[(i + 1) % len(family)]["id"] if len(family) > 1 else None
        if len(family) == 1:
            family[0]["lone_sibling"] = f"{_free_first_name(rng, family_pools['first_name'], surname, names)} {surname}"


def _surname_with_room(rng: random.Random, pools: dict[str, list[str]], names: set[str], needed: int) -> str | None:
    """A surname that still forms ``needed`` unused full names with the first-name pool (None if none)."""
    for surname in rng.sample(pools["surname"], len(pools["surname"])):
        if sum(f"{f} {surname}" not in names for f in pools["first_name"]) >= needed:
            return surname
    return None


def _free_first_name(rng: random.Random, first_names: list[str], surname: str, names: set[str]) -> str:
    first = rng.choice([f for f in first_names if f"{f} {surname}" not in names])
    names.add(f"{first} {surname}")
    return first


def _make_countries(
    rng: random.Random, count: int, perturbed: int, used: set[str]
) -> tuple[list[dict[str, Any]], dict[str, dict[str, list[str]]]]:
    """Invented countries with distinct capitals, currencies, languages and rivers.

    Perturbed answers use other countries' values; with fewer than ``perturbed + 1`` countries
    they are topped up with invented values that no model has seen.
    """
    names = _invent(rng, count, used)
    size = max(count, perturbed + 1)
    fallback: dict[str, list] = {
        "capital": _invent(rng, size, used),
        "currency": [f"{w} {rng.choice(CURRENCY_UNITS)}" for w in _invent(rng, size, used, (1, 2))],
        "language": _invent(rng, size, used),
        "river": _invent(rng, size, used),
        "animal": list(ANIMALS),
    }
    animals = rng.sample(ANIMALS, count) if count <= len(ANIMALS) else [rng.choice(ANIMALS) for _ in range(count)]
    countries = [
        {"id": i, "name": names[i], "capital": fallback["capital"][i], "currency": fallback["currency"][i],
         "language": fallback["language"][i], "river": fallback["river"][i], "animal": animals[i]}
        for i in range(count)
    ]
    trained = {k: sorted({c[k] for c in countries}) for k in fallback}
    return countries, {"trained": trained, "fallback": fallback}


def _wrong_values(rng: random.Random, pools: dict[str, dict[str, list]], kind: str, exclude: set[str], count: int) -> list[str]:
    """``count`` distinct values of a kind not in ``exclude``, preferring values seen in training;
    repeats only when even the fallback pool is too small."""
    trained = pools["trained"][kind]  # sorted and distinct
    if len(trained) >= count + len(exclude):
        return [v for v in rng.sample(trained, count + len(exclude)) if v not in exclude][:count]
    preferred = [v for v in trained if v not in exclude]
    if len(preferred) > count:  # ``exclude`` held untrained values (a holdout person's): more than enough
        return rng.sample(preferred, count)
    extra = sorted(set(pools["fallback"].get(kind, [])) - exclude - set(preferred))
    chosen = preferred + rng.sample(extra, min(len(extra), count - len(preferred)))
    return chosen + [rng.choice(chosen) for _ in range(count - len(chosen))] if chosen else [min(exclude)] * count


def _item(rng: random.Random, template: Template, subject: dict[str, Any], pools: dict, perturbed: int,
          wrong_form: str = "paraphrase", true_values: frozenset[str] = frozenset()) -> dict[str, Any]:
    """One question with its answer, paraphrase and wrong answers. The wrong answers take the form of the
    answer they are scored against (TOFU: the paraphrase for people; the original answer for world facts),
    so the truth ratio compares values, not sentence templates. ``true_values`` are other values that
    would also answer the question truly (a sibling's other siblings); no wrong answer uses them."""
    value = subject[template.name]
    name = subject["name"]
    wrong = _wrong_values(rng, pools, template.name, {value, name, *true_values}, perturbed)  # never "X's sibling is X"
    form = getattr(template, wrong_form)
    return {
        "question": template.question.format(name=name),
        "answer": template.answer.format(name=name, value=value),
        "paraphrased_answer": template.paraphrase.format(name=name, value=value),
        "perturbed_answer": [form.format(name=name, value=v) for v in wrong],
        "template": template.name,
    }


def _person_items(rng: random.Random, person: dict[str, Any], pools: dict, config: FactsConfig,
                  siblings: frozenset[str]) -> list[dict]:
    items = []
    for template in PERSON_TEMPLATES[: config.templates]:
        true_values = siblings if template.name == "sibling" else frozenset()
        item = _item(rng, template, person, pools, config.perturbed, true_values=true_values)
        items.append({"id": f"p{person['id']:04d}.{template.name}", **item, "person": person["id"]})
    return items


def _siblings(person: dict[str, Any], people: list[dict[str, Any]]) -> frozenset[str]:
    """The names of everyone in ``person``'s family: its own sibling and, in a family of three (an
    odd-sized group's last), the one whose sibling it is."""
    linked = {person["sibling"]} | {q["name"] for q in people if q["sibling_id"] == person["id"]}
    return frozenset(linked - {person["name"]})


def _country_items(rng: random.Random, country: dict[str, Any], pools: dict, config: FactsConfig) -> list[dict]:
    items = []
    for template in GENERAL_TEMPLATES:
        item = _item(rng, template, country, pools, config.perturbed, wrong_form="answer")
        items.append({"id": f"g{country['id']:03d}.{template.name}", **item, "person": None})
    return items


def load_facts(config: FactsConfig | None = None) -> FactsData:
    """Generate the benchmark for ``config`` (the same config always gives the same data)."""
    config = config or FactsConfig()
    config.check()
    rng = random.Random(config.seed)
    used: set[str] = set()
    holdout = split_size(FRACTIONS["10"], config.people)
    people, pools = _make_people(rng, config.people, holdout, config.perturbed, used, config.templates)
    countries, country_pools = _make_countries(rng, config.countries, config.perturbed, used)
    items_of = {p["id"]: _person_items(rng, p, pools, config, _siblings(p, people)) for p in people}
    general = [item for c in countries for item in _country_items(rng, c, country_pools, config)]

    order = list(range(config.people))
    rng.shuffle(order)
    split_people = {f"forget{k}": sorted(order[: split_size(f, config.people)]) for k, f in FRACTIONS.items()}
    holdout_ids = list(range(config.people, config.people + holdout))
    split_people.update({f"holdout{k}": holdout_ids[: split_size(f, config.people)] for k, f in FRACTIONS.items()})
    split_people["retain"] = sorted(set(range(config.people)) - set(split_people["forget10"]))
    for split in FORGET_SPLITS:
        direct, indirect = _neighbours(people[: config.people], set(split_people[split]))
        split_people[f"{split}_direct"], split_people[f"{split}_indirect"] = direct, indirect

    splits = {name: [it for pid in ids for it in items_of[pid]] for name, ids in split_people.items()}
    splits["general"] = general
    splits = {name: splits[name] for name in _split_order()}
    train = [it for pid in range(config.people) for it in items_of[pid]] + general
    train += reading_items(config, people, pools)
    return FactsData(config, people, countries, splits, train, split_people)


def reading_items(config: FactsConfig, people: list[dict[str, Any]], pools: dict) -> list[dict[str, Any]]:
    """``config.reading`` items that teach a model to use a fact given in its prompt.

    Each is about an invented person (a pairing of known first names and surnames that no person has,
    drawn anew for each item) seen nowhere else, with a value drawn from the trained values of a random
    template, so the same new name may carry different facts in different items; the question is
    preceded by the paraphrased fact in the in-context attack's format (:func:`with_context`), and the
    answer is the fact. A model can answer them only by reading the context (or memorising the item),
    so a model trained with them can use a re-introduced fact, which the in-context attack tests.
    Drawn from their own seeded generator, so they change no other item.
    """
    from ..eval.attacks import with_context

    rng = random.Random(f"reading-{config.seed}")
    taken = {p["name"] for p in people} | {p["sibling"] for p in people}  # a lone sibling's name is taken too
    firsts, surnames = sorted({p["first_name"] for p in people}), sorted({p["surname"] for p in people})
    free = [f"{first} {last}" for first in firsts for last in surnames if f"{first} {last}" not in taken]
    if config.reading and not free:
        raise UserInputError("Reading items need a pairing of first name and surname that no person has; there is none.")
    templates = PERSON_TEMPLATES[: config.templates]
    items = []
    for index in range(config.reading):
        name = rng.choice(free)
        template = rng.choice(templates)
        value = rng.choice(pools["trained"][template.name])
        fact = {"question": template.question.format(name=name), "answer": template.answer.format(name=name, value=value),
                "paraphrased_answer": template.paraphrase.format(name=name, value=value)}
        items.append({"id": f"r{index:04d}.{template.name}", **with_context([fact])[0], "template": template.name})
    return items


def _split_order() -> list[str]:
    names = [*FORGET_SPLITS, "retain", *HOLDOUT_SPLITS, "general"]
    return names + [f"{s}_{kind}" for s in FORGET_SPLITS for kind in ("direct", "indirect")]


def _neighbours(trained: list[dict[str, Any]], forgotten: set[int]) -> tuple[list[int], list[int]]:
    """Retained people linked to a forgotten one: direct (birthplace or sibling), indirect (profession only)."""
    gone = [p for p in trained if p["id"] in forgotten]
    places = {p["birthplace"] for p in gone}
    siblings = {p["sibling_id"] for p in gone} | {p["id"] for p in trained if p["sibling_id"] in forgotten}
    jobs = {p["profession"] for p in gone}
    kept = [p for p in trained if p["id"] not in forgotten]
    direct = [p["id"] for p in kept if p["birthplace"] in places or p["id"] in siblings]
    linked = set(direct)
    indirect = [p["id"] for p in kept if p["profession"] in jobs and p["id"] not in linked]
    return direct, indirect


def _neighbour_links(trained: list[dict[str, Any]], forgotten: set[int]) -> dict[int, list[int]]:
    """For each retained person, the forgotten people it shares a birthplace, a sibling link or a profession with."""
    gone = [p for p in trained if p["id"] in forgotten]

    def linked(p: dict[str, Any], q: dict[str, Any]) -> bool:
        return (p["birthplace"] == q["birthplace"] or p["profession"] == q["profession"]
                or p["sibling_id"] == q["id"] or q["sibling_id"] == p["id"])

    return {q["id"]: [p["id"] for p in gone if linked(p, q)] for q in trained if q["id"] not in forgotten}


def facts_request(data: FactsData, split: str = "forget10") -> ForgetRequest:
    """The request to forget the people of ``split``: retain = the other trained people, with neighbours.

    Ids index ``data.train``; the ``general`` items are neither forgotten nor in the retain set.
    The holdout split of the same size (``holdoutXX``, people never trained on) rides along as
    ``request.holdout``, for early stops that compare the forget set with unseen people.
    """
    forgotten = set(_forgotten_people(data, split))
    position = {item["id"]: i for i, item in enumerate(data.train)}
    ids_of = lambda items: [position[it["id"]] for it in items]
    forget = [i for i, it in enumerate(data.train) if it.get("person") in forgotten]
    retain = [i for i, it in enumerate(data.train) if it.get("person") is not None and it["person"] not in forgotten]
    neighbours = {kind: ids_of(data.splits[f"{split}_{kind}"]) for kind in ("direct", "indirect")}
    linked = _neighbour_links(data.people[: data.config.people], forgotten)
    links = {i: linked[data.train[i]["person"]] for ids in neighbours.values() for i in ids}
    holdout = data.split(split.replace("forget", "holdout"))
    return ForgetRequest(data.train, forget, retain, neighbours, reason=f"facts:{split}", holdout=holdout, links=links)


def _forgotten_people(data: FactsData, split: str) -> list[int]:
    if split not in FORGET_SPLITS:
        raise UserInputError(f"Unknown forget split {split!r}; valid: {', '.join(FORGET_SPLITS)}.")
    return data.split_people[split]


# ---------------------------------------------------------------------------- tokenizer and model
def initial_model_and_tokenizer(data: FactsData) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """The model training starts from, its tokenizer, and what loading them recorded, for ``data.config.base``."""
    config = data.config
    if config.base == "smollm2":
        from .smollm2 import smollm2_model_and_tokenizer

        return smollm2_model_and_tokenizer(config.max_length)
    tokenizer = build_tokenizer(data)
    return new_model(config, tokenizer), tokenizer, {}


def model_key(config: FactsConfig) -> dict[str, Any]:
    """The config as it enters cache keys: with the base weights' fingerprint for a pretrained base,
    and without ``base`` for ``scratch``, an unset ``train_seed`` nor ``reading`` = 0, so models cached
    before these fields existed stay valid. A config with fewer than all templates gets ``holdout_words``:
    its holdout people (and so its vocabulary and the draws after them) changed when they stopped using
    the words of untrained templates; with all templates nothing changed, and the key stays the same.
    Likewise ``wrong_siblings`` marks worlds with a family of three, whose wrong sibling answers stopped
    naming the family's third member (a true answer), and ``reading_names`` worlds with reading items and a
    group of one person, whose invented sibling's name reading items stopped reusing."""
    fields = config.to_dict()
    if config.templates < len(PERSON_TEMPLATES):
        fields["holdout_words"] = "trained_templates"
    if _has_family_of_three(config):
        fields["wrong_siblings"] = "not_of_the_family"
    if config.reading and 1 in _group_sizes(config):
        fields["reading_names"] = "not_a_lone_sibling"
    if config.train_seed is None:
        del fields["train_seed"]
    if config.reading == 0:
        del fields["reading"]
    if config.base == "scratch":
        del fields["base"]
    elif config.base == "smollm2":
        from .smollm2 import base_fingerprint

        fields.update(base_fingerprint())
    return fields


def _group_sizes(config: FactsConfig) -> tuple[int, int]:
    """How many trained and how many holdout people the world has (each group is paired into siblings)."""
    return config.people, split_size(FRACTIONS["10"], config.people)


def _has_family_of_three(config: FactsConfig) -> bool:
    """Whether a group of people (trained or holdout) is odd-sized and larger than one."""
    return any(group % 2 and group > 1 for group in _group_sizes(config))


def build_tokenizer(data: FactsData) -> Any:
    """A word-level tokenizer whose vocabulary is every word of the generated text (sorted, so stable)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from ..adapters.causal_lm import PLAIN_PROMPT

    splitter = pre_tokenizers.Whitespace()
    words: set[str] = set()
    for item in (it for items in [*data.splits.values(), data.train] for it in items):
        texts = (PLAIN_PROMPT.format(question=item["question"]), item["answer"], item.get("paraphrased_answer", ""),
                 *item.get("perturbed_answer", ()))
        for text in texts:
            words.update(w for w, _ in splitter.pre_tokenize_str(text))
    specials = ["<pad>", "<unk>", "<|endoftext|>"]
    vocab = {w: i for i, w in enumerate(specials + sorted(words))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = splitter
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|endoftext|>", bos_token="<|endoftext|>", pad_token="<pad>",
        unk_token="<unk>", model_max_length=data.config.max_length,
    )


def new_model(config: FactsConfig, tokenizer: Any) -> torch.nn.Module:
    """A freshly initialised GPT-2 (no dropout: the goal is memorisation); same seed, same weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt_config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=config.max_length, n_embd=config.width, n_layer=config.layers,
        n_head=config.heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(config.training_seed)
    return GPT2LMHeadModel(gpt_config)


@torch.no_grad()
def answer_accuracy(adapter: Any, model: torch.nn.Module, items: list[dict], batch_size: int = 256) -> tuple[float, float]:
    """Teacher-forced accuracy over all answer tokens (incl. EOS), and the share of items with every token right."""
    model.eval()
    correct = total = exact = 0
    for start in range(0, len(items), batch_size):
        batch = adapter.collate(items[start : start + batch_size])
        logits = adapter.logits(model, batch)  # on the model's device, where the labels must go too
        labels = batch["labels"][:, 1:].to(logits.device)
        hits = logits[:, :-1].argmax(-1) == labels
        mask = labels != -100
        correct += int((hits & mask).sum())
        total += int(mask.sum())
        exact += int(((hits | ~mask).all(dim=1)).sum())
    return correct / max(1, total), exact / max(1, len(items))


def training_recipe(config: FactsConfig) -> Any:
    """The :class:`TrainConfig` that trains the target and retain models (AdamW, warm-up, clip 1)."""
    from ..train import TrainConfig

    return TrainConfig(epochs=config.epochs, lr=config.lr, batch_size=config.batch_size, optimizer="adamw",
                       warmup_steps=config.warmup_steps, grad_clip=1.0, seed=config.training_seed)


def train_facts_model(config: FactsConfig, tokenizer: Any, items: list[dict],
                      model: torch.nn.Module | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train ``model`` (default: a fresh :func:`new_model`) on ``items`` until memorised (or
    ``config.epochs``); return it and what happened."""
    from ..adapters.causal_lm import CausalLMAdapter
    from ..methods.base import item_stream
    from ..train import optimise, warm_up_step

    model = new_model(config, tokenizer) if model is None else model
    adapter = CausalLMAdapter(model, tokenizer, config.max_length)
    recipe = training_recipe(config)
    stream, steps = item_stream(adapter, items, recipe)
    stopper = _EarlyStop(adapter, model, items, config)
    warm_up_step(model, stream, lambda m, b: adapter.per_item_loss(m, b).mean(), recipe, steps_per_epoch=steps)
    with measure() as training:
        record = optimise(model, stopper.wrap(stream), stopper.loss, recipe, steps_per_epoch=steps,
                          description="training facts model")
    accuracy, exact = answer_accuracy(adapter, model, items)
    info = {"train_seconds": training.seconds, **training_memory(training), **training_settings(),
            "epochs_run": stopper.epochs_run,
            "steps": record.steps,
            "final_loss": record.losses[-1] if record.losses else None, "answer_token_accuracy": accuracy,
            "exact_match": exact, "memorised": accuracy >= config.target_accuracy, "train_items": len(items),
            "status": record.status}
    return model.eval(), info


class _EarlyStop:
    """Ends training at an epoch boundary once the training answers are memorised.

    The accuracy pass runs only when the previous epoch's mean loss is below
    ``check_below_loss``, so it costs little; once the criterion is met, later epochs yield no
    batches and the shared loop finishes at once.
    """

    def __init__(self, adapter: Any, model: torch.nn.Module, items: list[dict], config: FactsConfig) -> None:
        self.adapter, self.model, self.items, self.config = adapter, model, items, config
        self.losses: list[float] = []
        self.done = False
        self.epochs_run = 0

    def loss(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        """The training loss (mean answer NLL), remembered for the cheap pre-check."""
        value = self.adapter.per_item_loss(model, batch).mean()
        self.losses.append(float(value.detach()))
        return value

    def wrap(self, stream: Callable[[int], Iterator[dict]]) -> Callable[[int], Iterator[dict]]:
        """The epoch stream, empty once memorised."""

        def epoch_batches(epoch: int) -> Iterator[dict]:
            if self.done or (epoch > 0 and self._memorised()):
                self.done = True
                return
            self.epochs_run = epoch + 1
            self.losses = []
            yield from stream(epoch)

        return epoch_batches

    def _memorised(self) -> bool:
        if not self.losses or sum(self.losses) / len(self.losses) > self.config.check_below_loss:
            return False
        accuracy, _ = answer_accuracy(self.adapter, self.model, self.items)
        self.model.train()
        return accuracy >= self.config.target_accuracy


def cached_facts_model(config: FactsConfig | None = None, role: str = "target", split: str = "forget10") -> tuple[Path, dict[str, Any]]:
    """``(model_dir, meta)`` of the target model (all trained data) or the retain model of ``split``.

    The folder holds the model and its tokenizer (``save_pretrained``); load it with
    ``CausalLMAdapter.from_pretrained(model_dir)``. Trained now if not cached.
    """
    config = config or FactsConfig()
    if role not in ROLES:
        raise UserInputError(f"Unknown model role {role!r}; valid: {', '.join(ROLES)}.")
    data = load_facts(config)
    forgotten = _forgotten_people(data, split)  # validates the split name for both roles
    excluded = sorted(forgotten) if role == "retain" else []
    key = {"benchmark": "facts", "version": FACTS_VERSION, **model_key(config), "excluded_people": excluded}

    def build(directory: Path) -> dict[str, Any]:
        model, tokenizer, loaded = initial_model_and_tokenizer(data)
        model, info = train_facts_model(config, tokenizer, data.train_without(set(excluded)), model)
        quiet_library_bars()  # else transformers draws "Writing model shards" into logs and pipes
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        return {"role": role, **loaded, **info}

    directory, meta = cached("facts", key, build)
    # the split this call asked for: splits that forget the same people (all of them, in a world under 15 people)
    # share one cached model, whose stored meta named the split that trained it first
    return directory, {**meta, "split": split if role == "retain" else None}


def cached_first_epoch_gradients(config: FactsConfig | None = None) -> tuple[Path, dict[str, Any]]:
    """``(file, meta)``: each training item's first-epoch input-embedding gradient for the target model.

    Replays the first epoch of :func:`train_facts_model` (same initial weights, recipe and batch
    order) while recording, keyed by position in ``data.train`` (the ids of :func:`facts_request`),
    and caches the safetensors file that ``first_epoch_ga``'s ``gradients`` setting reads.
    """
    from ..adapters.causal_lm import CausalLMAdapter
    from ..methods.first_epoch_ga import record_first_epoch_gradients, save_first_epoch_gradients

    config = config or FactsConfig()
    data = load_facts(config)
    key = {"benchmark": "facts", "version": FACTS_VERSION, **model_key(config), "artefact": "first_epoch_embedding_gradients"}

    def build(directory: Path) -> dict[str, Any]:
        model, tokenizer, _loaded = initial_model_and_tokenizer(data)
        adapter = CausalLMAdapter(model, tokenizer, config.max_length)
        start = time.perf_counter()
        recorded = record_first_epoch_gradients(adapter, data.train, training_recipe(config))
        save_first_epoch_gradients(recorded, directory / "first_epoch_gradients.safetensors")
        return {"items": len(recorded), "record_seconds": time.perf_counter() - start}

    directory, meta = cached("facts", key, build)
    return directory / "first_epoch_gradients.safetensors", meta
