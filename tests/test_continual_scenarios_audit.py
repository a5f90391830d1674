"""Continual scenarios audit: CLOFAI image modes and input checks, heatmap rows."""


import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from unlearnkit.continual import clofai
from unlearnkit.continual.cli import register
from unlearnkit.continual.clofai import load_clofai
from unlearnkit.errors import UserInputError


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def _write_task(folder, count=3, write=None):
    for label, level in (("real", 60), ("fake", 200)):
        (folder / label).mkdir(parents=True)
        for i in range(count):
            path = folder / label / f"{i}.png"
            if write is None:
                Image.fromarray(np.full((6, 6, 3), level, dtype=np.uint8)).save(path)
            else:
                write(path, label, i)


def test_a_16_bit_greyscale_png_keeps_its_intensities(tmp_path):
    # convert("RGB") clips 16-bit greyscale values at 255: every pixel above 255/65535 came out white (1.0).
    levels = {"real": 16384, "fake": 49152}

    def write(path, label, i):
        Image.fromarray(np.full((6, 6), levels[label], dtype=np.uint16)).save(path)

    _write_task(tmp_path / "gen_a", write=write)
    assert Image.open(tmp_path / "gen_a" / "real" / "0.png").mode.startswith("I")
    scenario = load_clofai(tmp_path, image_size=4, test_fraction=0.5)
    for label, level in levels.items():
        values = scenario.train_x[scenario.train_y == (label == "fake")]
        expected = 2 * level / 65535 - 1  # pixels in [-1, 1], as the authors' loader gives them
        assert values.numel() and float(values.min()) == float(values.max()) == pytest.approx(expected, abs=2 / 255)


def test_an_image_too_large_to_decode_safely_is_one_sentence(tmp_path, monkeypatch):
    # Pillow refuses an image of more than 2 × MAX_IMAGE_PIXELS pixels with DecompressionBombError, which is
    # not an OSError: it escaped as a traceback.
    _write_task(tmp_path / "gen_a")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    with pytest.raises(UserInputError, match=r"The image .*gen_a/(real|fake)/[0-9]\.png cannot be read \(Image size"):
        load_clofai(tmp_path, image_size=4, test_fraction=0.5)


@pytest.mark.parametrize("extra, message", [
    (["--stream", "learn:0,lern:1"], "Stream token 2 'lern:1' is not valid"),
    (["--stream", "learn:0,unlearn:1"], "unlearns task 1, which is not learned"),
    (["--stream", "learn:2"], "has tasks 0..1"),
    (["--strategy", "ewk"], "Unknown strategy 'ewk'"),
    (["--param", "hidden=0"], "hidden-layer width must be a positive integer"),
    (["--stream", "learn:0,unlearn:ids=0", "--unlearner", "amnesiac"], "removes whole tasks only"),
])
def test_clofai_bad_input_is_refused_before_any_image_is_read(tmp_path, monkeypatch, extra, message):
    # Every such mistake was found only after every image of the folder had been read (seconds to minutes).
    for task in ("gen_a", "gen_b"):
        _write_task(tmp_path / "C" / task)
    read = []
    monkeypatch.setattr(clofai, "_read_image", lambda path, size: read.append(path))
    out = tmp_path / "run"
    args = ["continual", "--scenario", "clofai", "--data", str(tmp_path / "C"), "--scenario-param", "test_fraction=0.5",
            "--out", str(out), *extra]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert read == [] and not out.exists()


def _fake_run(num_steps, num_tasks, kl=None):
    from unlearnkit.continual.runner import ContinualRun, StepResult

    steps = [StepResult(i, "learn", i % num_tasks, f"learn:{i % num_tasks}", 0.1, np.full(num_tasks, 0.5)) for i in range(num_steps)]
    if kl is not None:
        steps[-1].action, steps[-1].token, steps[-1].retrain_gap, steps[-1].retrain_output_kl = "unlearn", "unlearn:0", 0.0, kl
    metrics = {"avg_acc": 0.5, "bwt": 0.0, "fwt": 0.0, "forgetting_last": 0.0, "forgetting_max": 0.0, "relapse": None,
               "spillover": 0.0, "retrain_output_kl": kl}
    return ContinualRun("split-digits", "acu", "acu", 0, np.zeros(num_tasks), steps, metrics, None)


def test_heatmap_rows_of_a_long_stream_are_labelled_by_step(tmp_path, monkeypatch):
    # Beyond 40 rows the y axis kept matplotlib's row numbers, but row r is the state after step r - 1 (row 0 is
    # the untrained model): every tick named the step after the one it marked.
    from matplotlib.figure import Figure

    from unlearnkit.continual.report import save_heatmap

    ticks = {}
    save = Figure.savefig

    def capture(figure, *args, **kwargs):
        figure.canvas.draw()
        ticks.update({round(t.get_position()[1]): t.get_text() for t in figure.axes[0].get_yticklabels()})
        return save(figure, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", capture)
    save_heatmap(_fake_run(60, 10), tmp_path / "heatmap.png")
    shown = {row: text for row, text in ticks.items() if 0 <= row <= 60}
    assert shown[0] == "untrained" and len(shown) > 3
    assert all(text == str(row - 1) for row, text in shown.items() if row > 0), shown
