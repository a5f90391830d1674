"""The public API is typed for users' type checkers and IDEs (PEP 561)."""

import ast
import tomllib
import typing
from pathlib import Path

import unlearnkit

PACKAGE = Path(unlearnkit.__file__).parent


def test_every_public_function_has_a_resolvable_return_type():
    for name in unlearnkit.__all__:
        exported = getattr(unlearnkit, name)
        if callable(exported) and not isinstance(exported, type):
            hints = typing.get_type_hints(exported)  # a name only imported for type checkers would raise here
            assert "return" in hints, f"unlearnkit.{name} has no return annotation"
    unlearn_returns = typing.get_type_hints(unlearnkit.unlearn)["return"]
    assert typing.get_args(unlearn_returns)[1] is unlearnkit.api.RunRecord


def test_type_checkers_see_every_lazy_export():
    """``__init__`` imports its exports lazily; its TYPE_CHECKING block must name each of them for checkers."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    block = next(node for node in tree.body
                 if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING")
    seen = {alias.asname or alias.name for node in block.body for alias in node.names}
    assert seen == set(unlearnkit.__all__)
    assert set(unlearnkit.__all__) <= set(dir(unlearnkit))  # tab completion offers them before first use


def test_the_package_ships_its_typed_marker():
    assert (PACKAGE / "py.typed").is_file()
    project = tomllib.loads((PACKAGE.parents[1] / "pyproject.toml").read_text())
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["unlearnkit"]


def test_load_benchmark_is_typed_per_name():
    """The README's example hands load_benchmark("digits") to the image helpers: a type checker must see a
    VisionBenchmark there, not a union with the facts data (mypy refused the example with three errors)."""
    from unlearnkit.benchmarks.facts import FactsData
    from unlearnkit.benchmarks.vision import VISION_BENCHMARKS, VisionBenchmark

    returns = {}
    for overload in typing.get_overloads(unlearnkit.load_benchmark):
        hints = typing.get_type_hints(overload)
        returns.update({name: hints["return"] for name in typing.get_args(hints["name"])})
    assert returns == {**{name: VisionBenchmark for name in VISION_BENCHMARKS}, "facts": FactsData}


def test_the_api_module_is_reachable_right_after_import():
    """The README tells users to call ``unlearnkit.api.warm_up(model, request)`` before timing methods; after a
    plain ``import unlearnkit`` that raised AttributeError until something else had imported ``unlearnkit.api``."""
    import subprocess
    import sys

    code = "import unlearnkit; print(callable(unlearnkit.api.warm_up))"
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == "True"
