"""Domain-incremental real-vs-fake image folders in the CLOFAI layout.

Doherty et al., "CLOFAI: A Dataset of Real And Fake Image Classification Tasks for Continual
Learning" (arXiv 2501.11140, 2025): each task is one generator; a task folder holds ``real/`` and
``fake/`` images. Layouts read here::

    ROOT/<task folder>/real/*.png|jpg|...          (split here: seeded, stratified)
    ROOT/<task folder>/fake/*.png|jpg|...
    ROOT/<task folder>/{train,test}/{real,fake}/*  (the data set's own split, used as given)

Tasks are taken in natural folder-name order (``task2`` before ``task10``; the order is written to
``results.json`` as ``task_names``); label 0 is real and 1 is fake. Images are converted to RGB
(16-bit greyscale scaled to 8 bits first), resized bilinearly to ``image_size`` × ``image_size``
(32 by default, the images' own size) and scaled to [−1, 1], as the authors' loader does
(``Resize(32)``, ``ToTensor``, ``Normalize(0.5, 0.5)``). A task folder without ``train/`` and
``test/`` is split into train and test with a seeded stratified split (``test_fraction``, 0.2).
:func:`clofai_outline` gives the same tasks, labels and split without reading a pixel, so that a
run's requests can be checked before the images are read.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch

from ..errors import UserInputError
from .scenarios import Scenario, Task

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
LABELS = {"real": 0, "fake": 1}


def _image_files(folder: Path) -> list[Path]:
    """The images of ``folder``, hidden files left out as hidden task folders are (macOS writes a ``._name.png``
    of metadata beside each image it copies to another file system)."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _read_image(path: Path, image_size: int) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.mode.startswith("I;16") or (image.mode == "I" and image.format == "PNG"):  # 16-bit greyscale:
                # convert("RGB") would clip every value above 255 to white instead of scaling it
                image = Image.fromarray((np.asarray(image).astype(np.uint32) // 257).astype(np.uint8), "L")
            resized = image.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR)
            pixels = np.asarray(resized, dtype=np.float32) / 127.5 - 1.0
    except (OSError, Image.DecompressionBombError) as error:
        raise UserInputError(f"The image {path} cannot be read ({error}).") from None
    return torch.from_numpy(pixels).permute(2, 0, 1)


def natural_key(name: str) -> tuple:
    """Sort key that compares runs of ASCII digits as numbers, ``task2`` before ``task10``, and breaks the ties
    this leaves (``task01`` and ``task1``, ``Task1`` and ``task1``) by the name itself, so the order never
    depends on the order the file system lists the folders in."""
    parts = re.split(r"([0-9]+)", name)  # odd positions are the digit runs
    runs = [(0, int(part), "") if k % 2 else (1, 0, part.lower()) for k, part in enumerate(parts) if part]
    return runs, name


def _split_folders(folder: Path) -> dict[str, Path] | None:
    """``{"train": ..., "test": ...}`` when the task folder holds the data set's own split, else None."""
    parts = {name: folder / name for name in ("train", "test")}
    return parts if all(p.is_dir() for p in parts.values()) else None


def _label_folders(folder: Path) -> list[Path]:
    """The ``real/`` and ``fake/`` folders a task folder must hold, under ``train/`` and ``test/`` when split."""
    split = _split_folders(folder)
    return [part / label for part in (split.values() if split else [folder]) for label in LABELS]


def task_folders(root: str | Path) -> list[Path]:
    """The task folders of a CLOFAI root, each checked to hold non-empty ``real/`` and ``fake/`` folders."""
    root = Path(root)
    if not root.is_dir():
        raise UserInputError(f"The CLOFAI folder {root} does not exist or is not a folder.")
    folders = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: natural_key(p.name))
    if not folders:
        raise UserInputError(f"The CLOFAI folder {root} has no task sub-folders (expected ROOT/<task>/real and ROOT/<task>/fake).")
    for folder in folders:
        for sub in _label_folders(folder):
            if not sub.is_dir():
                raise UserInputError(f"The CLOFAI task folder {folder} has no {sub.relative_to(folder)}/ sub-folder "
                                     "(each task needs real/ and fake/).")
            if not _image_files(sub):
                raise UserInputError(f"The CLOFAI folder {sub} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    return folders


def check_split(folder: Path, test_fraction: float) -> None:
    """Refuse a task folder too small for the stratified split: it needs two images of each label, and
    ``test_fraction`` must leave at least two images (one per label) on each side."""
    real, fake = (len(_image_files(folder / label)) for label in LABELS)
    total = real + fake
    test = math.ceil(test_fraction * total)  # scikit-learn's rounding of a float test_size
    if min(real, fake) < 2 or min(test, total - test) < 2:
        raise UserInputError(
            f"The CLOFAI task folder {folder} ({real} real, {fake} fake images) cannot be split with "
            f"test_fraction={test_fraction} into {total - test} train and {test} test images: a stratified split "
            "needs at least 2 images of each label and at least 2 images on each side."
        )


def _layout(root: str | Path, seed: int, test_fraction: float) -> tuple[list[Path], list[tuple[list[Path], list[int], np.ndarray, np.ndarray]]]:
    """The task folders and, per task, its image files, their labels and the sorted train and test positions."""
    from sklearn.model_selection import train_test_split

    folders = task_folders(root)
    for folder in folders:  # all checked before any task is split
        if _split_folders(folder) is None:
            check_split(folder, test_fraction)
    tasks = []
    for folder in folders:
        parts = _split_folders(folder) or {"": folder}
        paths, labels, part_of = [], [], []
        for part, where in parts.items():
            for name, label in LABELS.items():
                files = _image_files(where / name)
                paths += files
                labels += [label] * len(files)
                part_of += [part] * len(files)
        positions, part_of = np.arange(len(labels)), np.array(part_of)
        if len(parts) == 2:  # the data set's own split
            train, test = positions[part_of == "train"], positions[part_of == "test"]
        else:
            train, test = train_test_split(positions, test_size=test_fraction, random_state=seed, stratify=labels)
        tasks.append((paths, labels, np.sort(train), np.sort(test)))
    return folders, tasks


def _scenario(root: str | Path, seed: int, image_size: int, test_fraction: float, read: bool) -> Scenario:
    folders, layout = _layout(root, seed, test_fraction)
    shape = (3, image_size, image_size)
    sizes = [len(train) for _, _, train, _ in layout]
    if read:
        train_x = torch.empty(sum(sizes), *shape)
        test_x = [torch.empty(len(test), *shape) for _, _, _, test in layout]
    else:  # every pixel zero, held in memory once: a view with zero strides
        train_x = torch.zeros(()).expand(sum(sizes), *shape)
        test_x = [torch.zeros(()).expand(len(test), *shape) for _, _, _, test in layout]
    train_y, test_y, tasks = [], [], []
    offset = 0
    for index, (paths, labels, train, test) in enumerate(layout):
        if read:  # each image straight into its row: no second copy of the data set
            for row, position in enumerate(train):
                train_x[offset + row] = _read_image(paths[position], image_size)
            for row, position in enumerate(test):
                test_x[index][row] = _read_image(paths[position], image_size)
        y = torch.tensor(labels)
        train_y.append(y[torch.from_numpy(train)])
        test_y.append(y[torch.from_numpy(test)])
        tasks.append(Task(index, torch.arange(len(train)) + offset, (0, 1), index, torch.arange(len(test))))
        offset += len(train)
    info = {"root": str(root), "task_names": [f.name for f in folders]}
    return Scenario("clofai", "domain-il", 2, train_x, torch.cat(train_y), test_x, test_y, tasks, seed, epochs=3, info=info)


def load_clofai(root: str | Path, seed: int = 0, *, image_size: int = 32, test_fraction: float = 0.2) -> Scenario:
    """Read a CLOFAI-layout folder into a domain-incremental two-class scenario (one domain per task)."""
    return _scenario(root, seed, image_size, test_fraction, read=True)


def clofai_outline(root: str | Path, seed: int = 0, *, image_size: int = 32, test_fraction: float = 0.2) -> Scenario:
    """The scenario :func:`load_clofai` returns (same tasks, labels, split and sample ids) with no image read:
    every pixel is zero (a read-only view). For checking a run's input before the images are read."""
    return _scenario(root, seed, image_size, test_fraction, read=False)
