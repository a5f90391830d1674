"""The version a user reports: ``unlearnkit --version``, ``python -m unlearnkit``, and results.json's machine info."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import unlearnkit
from unlearnkit.benchmarks.results import machine_info
from unlearnkit.cli import main


def test_version_is_printed_from_the_one_source_the_package_metadata_reads(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"unlearnkit {unlearnkit.__version__}\n"
    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" in project["project"]["dynamic"] and "version" not in project["project"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "unlearnkit.__version__"}


def test_python_dash_m_runs_the_command_line_with_its_exit_status():
    ran = subprocess.run([sys.executable, "-m", "unlearnkit", "--version"], capture_output=True, text=True, timeout=120)
    assert (ran.returncode, ran.stdout) == (0, f"unlearnkit {unlearnkit.__version__}\n")
    refused = subprocess.run([sys.executable, "-m", "unlearnkit", "forget", "--bogus"], capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 2 and refused.stderr.startswith("error: No such option: --bogus")


def test_bench_results_name_the_unlearnkit_version_that_made_them():
    assert machine_info()["unlearnkit"] == unlearnkit.__version__


def test_no_command_prints_the_help_without_an_empty_error_line(capsys):
    assert main([]) == 2  # click's status for a usage without a command
    captured = capsys.readouterr()
    assert "Usage:" in captured.out and "error:" not in captured.err
