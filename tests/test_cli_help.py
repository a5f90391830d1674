"""Every command's --help ends with example command lines, and every example parses as that command's options."""

import re
import shlex

import pytest
import typer
from typer.testing import CliRunner

from unlearnkit import cli


def _commands(group, path: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):  # a group (typer bundles its own click)
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


cli._register_subcommands()
ROOT = typer.main.get_command(cli.app)
COMMANDS = dict(_commands(ROOT))


def _example_lines(command) -> list[str]:
    head, _, body = (command.epilog or "").partition("\n\n")
    assert head in ("Example:", "Examples:"), f"no examples in the help of {command.name}"
    return body.split("\n\n")


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_help_shows_examples_that_parse(path):
    command = COMMANDS[path]
    shown = CliRunner().invoke(cli.app, [*path, "--help"], env={"COLUMNS": "80"})
    assert shown.exit_code == 0
    printed = [line.strip() for line in shown.output.splitlines()]
    for example in _example_lines(command):
        # each line printed whole at 80 columns (a line the help wraps itself can break inside quotes)
        assert all(line.strip() in printed for line in example.splitlines()), example
        words = shlex.split(example.replace("\\\n", " "), comments=True)
        assert words[0] == "unlearnkit", example
        shown_path = next(p for p in COMMANDS if tuple(words[1:1 + len(p)]) == p)  # mostly the command's own
        # parsing checks every option name, value type and required option without running the command
        COMMANDS[shown_path].make_context(shown_path[-1], words[1 + len(shown_path):])


def test_a_wrong_option_in_an_example_would_be_caught():
    forget = COMMANDS[("forget",)]
    with pytest.raises(cli._click_exceptions()):
        forget.make_context("forget", ["--model", "m", "--forgett", "f.jsonl", "--method", "npo", "--out", "o"])
    with pytest.raises(cli._click_exceptions()):  # a required option left out
        forget.make_context("forget", ["--model", "m", "--method", "npo", "--out", "o"])


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_option_help_in_square_brackets_is_shown_not_read_as_markup(path):
    """Rich reads "[...]" in help text as markup and drops it: select-images' --out help showed
    "Markdown table to write ." without the default path it named."""
    shown = CliRunner().invoke(cli.app, [*path, "--help"], env={"COLUMNS": "400"})
    for param in COMMANDS[path].params:
        for bracketed in re.findall(r"\[[^\]]*\]", param.help or ""):
            assert bracketed in shown.output, (param.name, bracketed)


def test_select_images_help_names_its_default_page():
    shown = CliRunner().invoke(cli.app, ["select-images", "--help"], env={"COLUMNS": "200"})
    assert "docs/results/image-selection-<benchmark>.md" in shown.output
