"""The CLI starts without torch: --version, --help and the ledger commands answer in a fraction of a second."""

import os
import subprocess
import sys

import pytest

LOADED = "import sys; from unlearnkit.cli import main; code = main({argv!r}); print(sorted(m for m in {heavy} if m in sys.modules))"


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["continual", "--help"], ["ledger", "verify", "--help"]])
def test_commands_that_need_no_model_load_no_torch(argv):
    """Every command paid torch's import (about 2 s and 230 MB) before it started: the continual package's
    __init__ imported its runner, and the multi-process check imported the training package."""
    heavy = ("torch", "sqlalchemy", "transformers", "sklearn")
    env = {k: v for k, v in os.environ.items() if k != "WORLD_SIZE"}
    shown = subprocess.run([sys.executable, "-c", LOADED.format(argv=argv, heavy=heavy)], capture_output=True,
                           text=True, env=env, check=True)
    assert shown.stdout.strip().splitlines()[-1] == "[]", shown.stdout[-500:]


def test_the_continual_package_still_exports_its_names():
    import unlearnkit.continual as continual

    assert callable(continual.run_stream) and "split-digits" in continual.SCENARIOS
    assert set(continual.__all__) == set(continual._MODULE_OF)
    assert all(getattr(continual, name) is not None for name in continual.__all__)
    with pytest.raises(AttributeError):
        continual.no_such_name
    assert set(continual.__all__) <= set(dir(continual))  # tab completion still offers them, unloaded
