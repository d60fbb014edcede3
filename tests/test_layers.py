"""The layers stay apart: the engine imports no history code and the history no engine code."""

import ast
from pathlib import Path

import pytest

STUDIO = Path(__file__).resolve().parent.parent / "studio"


def studio_imports(path: Path) -> set[str]:
    """Every studio.* module a file imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("studio"):
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names if alias.name.startswith("studio"))
    return names


@pytest.mark.parametrize(("package", "forbidden"), [("engine", "studio.history"), ("history", "studio.engine")])
def test_a_layer_does_not_import_the_other(package, forbidden):
    offenders = {f"{path.relative_to(STUDIO)} imports {name}"
                 for path in (STUDIO / package).rglob("*.py")
                 for name in studio_imports(path) if name == forbidden or name.startswith(forbidden + ".")}
    assert not offenders, sorted(offenders)
