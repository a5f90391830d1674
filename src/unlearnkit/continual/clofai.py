"""Domain-incremental real-vs-fake image folders in the CLOFAI layout.

Doherty et al., "Continual Learning of AI-generated image detection" (CLOFAI, arXiv 2501.11140,
2025): each task is one generator; a task folder holds ``real/`` and ``fake/`` images. Layout read
here::

    ROOT/<task folder>/real/*.png|jpg|...
    ROOT/<task folder>/fake/*.png|jpg|...

Tasks are taken in sorted folder-name order; label 0 is real and 1 is fake. Images are converted
to RGB, resized to ``image_size`` × ``image_size`` and scaled to [0, 1]. Each task is split into
train and test with a seeded stratified split (CLOFAI uses 80/20).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..errors import UserInputError
from .scenarios import Scenario, Task

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
LABELS = {"real": 0, "fake": 1}


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _read_image(path: Path, image_size: int) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB").resize((image_size, image_size)), dtype=np.float32) / 255.0
    except OSError as error:
        raise UserInputError(f"The image {path} cannot be read ({error}).") from None
    return torch.from_numpy(pixels).permute(2, 0, 1)


def task_folders(root: str | Path) -> list[Path]:
    """The task folders of a CLOFAI root, each checked to hold non-empty ``real/`` and ``fake/`` folders."""
    root = Path(root)
    if not root.is_dir():
        raise UserInputError(f"The CLOFAI folder {root} does not exist or is not a folder.")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise UserInputError(f"The CLOFAI folder {root} has no task sub-folders (expected ROOT/<task>/real and ROOT/<task>/fake).")
    for folder in folders:
        for label in LABELS:
            sub = folder / label
            if not sub.is_dir():
                raise UserInputError(f"The CLOFAI task folder {folder} has no {label}/ sub-folder (each task needs real/ and fake/).")
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


def load_clofai(root: str | Path, seed: int = 0, *, image_size: int = 16, test_fraction: float = 0.2) -> Scenario:
    """Read a CLOFAI-layout folder into a domain-incremental two-class scenario (one domain per task)."""
    from sklearn.model_selection import train_test_split

    train_x, train_y, test_x, test_y, tasks = [], [], [], [], []
    offset = 0
    folders = task_folders(root)
    for folder in folders:  # all checked before any image is read
        check_split(folder, test_fraction)
    for index, folder in enumerate(folders):
        images, labels = [], []
        for name, label in LABELS.items():
            for path in _image_files(folder / name):
                images.append(_read_image(path, image_size))
                labels.append(label)
        x, y = torch.stack(images), torch.tensor(labels)
        train, test = train_test_split(np.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=labels)
        train, test = torch.from_numpy(np.sort(train)), torch.from_numpy(np.sort(test))
        train_x.append(x[train])
        train_y.append(y[train])
        test_x.append(x[test])
        test_y.append(y[test])
        ids = torch.arange(len(train)) + offset
        offset += len(train)
        tasks.append(Task(index, ids, (0, 1), index, torch.arange(len(test))))
    info = {"root": str(root), "task_names": [f.name for f in folders]}
    return Scenario("clofai", "domain-il", 2, torch.cat(train_x), torch.cat(train_y), test_x, test_y, tasks, seed, epochs=3, info=info)
