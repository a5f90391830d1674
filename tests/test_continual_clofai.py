"""The CLOFAI folder loader on images the test writes."""

import numpy as np
import pytest
from PIL import Image

from unlearnkit.continual.clofai import load_clofai, natural_key
from unlearnkit.continual.runner import run_stream
from unlearnkit.continual.scenarios import build_scenario
from unlearnkit.errors import UserInputError


def _write_task(folder, brightness_real, brightness_fake, count=6, seed=0):
    rng = np.random.default_rng(seed)
    for label, level in (("real", brightness_real), ("fake", brightness_fake)):
        (folder / label).mkdir(parents=True)
        for i in range(count):
            pixels = np.clip(level + rng.normal(0, 10, size=(12, 12, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / label / f"{i}.png")


@pytest.fixture()
def clofai_root(tmp_path):
    _write_task(tmp_path / "gen_a_vae", 60, 200, seed=1)
    _write_task(tmp_path / "gen_b_gan", 200, 60, seed=2)  # the generator flips the cue: a new domain
    return tmp_path


def test_loads_one_domain_per_task_with_real_0_and_fake_1(clofai_root):
    scenario = load_clofai(clofai_root, seed=0, image_size=8)
    assert scenario.setting == "domain-il" and scenario.num_tasks == 2 and scenario.num_classes == 2
    assert scenario.info["task_names"] == ["gen_a_vae", "gen_b_gan"]
    assert tuple(scenario.train_x.shape[1:]) == (3, 8, 8)
    assert float(scenario.train_x.max()) <= 1.0
    task = scenario.tasks[0]
    labels = scenario.train_y[task.train_ids]
    real = scenario.train_x[task.train_ids][labels == 0].mean()
    fake = scenario.train_x[task.train_ids][labels == 1].mean()
    assert real < fake  # real images of task 0 are the dark ones we wrote
    assert len(task.train_ids) + len(task.test_index) == 12
    assert len(set(scenario.tasks[0].train_ids.tolist()) & set(scenario.tasks[1].train_ids.tolist())) == 0


def test_pixels_are_scaled_to_minus_one_one_and_the_default_size_is_32(tmp_path):
    # the authors' loader: Resize(32), ToTensor, Normalize(0.5, 0.5)
    for label, value in (("real", 0), ("fake", 255)):
        (tmp_path / "t" / label).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((32, 32, 3), value, dtype=np.uint8)).save(tmp_path / "t" / label / f"{i}.png")
    scenario = load_clofai(tmp_path, test_fraction=0.5)
    assert tuple(scenario.train_x.shape[1:]) == (3, 32, 32)
    real = scenario.train_y == 0
    assert bool((scenario.train_x[real] == -1).all()) and bool((scenario.train_x[~real] == 1).all())


def test_images_are_resized_bilinearly_as_the_authors_loader_does(tmp_path):
    # a smooth gradient, so that bilinear, bicubic and nearest resampling give different pixels
    ramp = np.add.outer(np.arange(12) * 20, np.arange(12) * 3).astype(np.uint8)
    pixels = np.stack([ramp, ramp.T, 255 - ramp], axis=-1)
    for label in ("real", "fake"):
        (tmp_path / "t" / label).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(pixels).save(tmp_path / "t" / label / f"{i}.png")
    scenario = load_clofai(tmp_path, test_fraction=0.5, image_size=8)
    expected = np.asarray(Image.fromarray(pixels).resize((8, 8), Image.Resampling.BILINEAR), dtype=np.float32) / 127.5 - 1
    np.testing.assert_array_equal(scenario.train_x[0].permute(1, 2, 0).numpy(), expected)


def test_the_natural_order_is_total_and_takes_only_ascii_digits_as_numbers():
    names = ["task10", "task1", "task2", "Task1", "task01", "gan1\u00b2"]
    assert sorted(names, key=natural_key) == ["gan1\u00b2", "Task1", "task01", "task1", "task2", "task10"]


def test_task_folders_come_in_natural_order_and_results_name_them(tmp_path):
    for index, name in enumerate(["task10", "task2", "Task1"]):
        _write_task(tmp_path / name, 60, 200, seed=index)
    scenario = load_clofai(tmp_path, image_size=4)
    assert scenario.info["task_names"] == ["Task1", "task2", "task10"]
    run = run_stream(scenario, "naive", "learn:0", params={"epochs": 1})
    assert run.to_dict()["task_names"] == ["Task1", "task2", "task10"]


def test_a_task_with_its_own_train_and_test_folders_is_used_as_given(tmp_path):
    _write_task(tmp_path / "gan" / "train", 60, 200, count=5, seed=1)
    _write_task(tmp_path / "gan" / "test", 60, 200, count=2, seed=2)
    split = {seed: load_clofai(tmp_path, seed=seed, image_size=4) for seed in (0, 1)}
    task = split[0].tasks[0]
    assert len(task.train_ids) == 10 and len(task.test_index) == 4  # 5 + 5 and 2 + 2, whatever the seed
    assert bool((split[1].train_x == split[0].train_x).all())  # no seeded re-split
    (tmp_path / "gan" / "test" / "fake" / "0.png").unlink()
    (tmp_path / "gan" / "test" / "fake" / "1.png").unlink()
    with pytest.raises(UserInputError, match=r"gan/test/fake holds no images"):
        load_clofai(tmp_path)


def test_a_stream_runs_on_the_folder(clofai_root):
    scenario = build_scenario("clofai", 0, data=str(clofai_root), image_size=8)
    run = run_stream(scenario, "er", "learn:0,learn:1,unlearn:0", params={"epochs": 40, "lr": 0.01}, unlearner="gradient_ascent")
    assert run.steps[0].accuracy[0] == 1.0  # brightness separates real from fake
    assert run.steps[2].retrain_gap is not None


def test_a_task_folder_without_fake_is_refused(tmp_path):
    _write_task(tmp_path / "gen_a", 60, 200)
    (tmp_path / "gen_b" / "real").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(tmp_path / "gen_b" / "real" / "0.png")
    with pytest.raises(UserInputError, match=r"gen_b has no fake/ sub-folder"):
        load_clofai(tmp_path)
    with pytest.raises(UserInputError, match="does not exist"):
        load_clofai(tmp_path / "missing")
    with pytest.raises(UserInputError, match="needs a data folder"):
        build_scenario("clofai", 0)


@pytest.mark.parametrize("count, test_fraction, sizes", [
    (2, 0.2, "into 3 train and 1 test images"),  # 1 test image cannot hold both labels
    (1, 0.9, "into 0 train and 2 test images"),
    (1, 0.5, "into 1 train and 1 test images"),  # one image per label: none left for the other side
])
def test_a_task_folder_too_small_for_the_stratified_split_is_refused(tmp_path, count, test_fraction, sizes):
    _write_task(tmp_path / "gen_a", 60, 200, count=10)  # large enough for every fraction here
    _write_task(tmp_path / "gen_b", 60, 200, count=count)
    with pytest.raises(UserInputError, match=f"gen_b \\({count} real, {count} fake images\\) cannot be split with "
                                             f"test_fraction={test_fraction} {sizes}: a stratified split needs at least 2"):
        load_clofai(tmp_path, test_fraction=test_fraction, image_size=4)
    _write_task(tmp_path / "gen_c", 60, 200, count=2)
    (tmp_path / "gen_b").rename(tmp_path / ".gen_b")  # hidden folders are not tasks
    scenario = load_clofai(tmp_path, test_fraction=0.5, image_size=4)  # 2 + 2 images split 2/2
    labels = scenario.train_y[scenario.tasks[1].train_ids].tolist()
    assert sorted(labels) == [0, 1] and len(scenario.tasks[1].test_index) == 2


def test_hidden_files_beside_the_images_are_not_images(clofai_root):
    """macOS leaves ``._0.png`` metadata files beside copied images: they were read as images and refused."""
    reference = load_clofai(clofai_root, seed=0, image_size=8)
    for label in ("real", "fake"):
        (clofai_root / "gen_a_vae" / label / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble metadata")
    scenario = load_clofai(clofai_root, seed=0, image_size=8)
    assert scenario.train_x.shape == reference.train_x.shape and bool((scenario.train_x == reference.train_x).all())
