"""The package's layers: imports point one way, api -> daemon -> data/wire, never back."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import lexicons
from lexicons.daemon import aliases

PACKAGE = Path(lexicons.__file__).parent
#: The layers below the public API, and what each may import besides lexicons.errors.
ALLOWED = {
    "wire": {"wire"},
    "data": {"data", "wire"},
    "daemon": {"daemon", "data", "wire"},
}
#: Modules that do I/O, which the pure wire protocols never import.
IO_MODULES = {"socket", "threading", "selectors", "time", "asyncio", "subprocess"}


def imports(path: Path) -> set[str]:
    """Return every module *path* imports, at the top or inside a function, as a full name."""
    package = list(path.relative_to(PACKAGE.parent).parts[:-1])   # a module's own package
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def layer_of(module: str) -> str | None:
    """Return the layer a lexicons module belongs to ('api' for the top level)."""
    parts = module.split(".")
    if parts[0] != "lexicons" or len(parts) < 2:
        return None
    if parts[1] in ALLOWED:
        return parts[1]
    if parts[1] == "errors":
        return "errors"
    return "api" if (PACKAGE / f"{parts[1]}.py").exists() or (PACKAGE / parts[1]).is_dir() \
        else None


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_lower_layers_never_import_upwards(layer):
    """A wire, data or daemon module imports only its own layer, the ones below and errors."""
    wrong = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for module in imports(path):
            target = layer_of(module)
            if target is not None and target != "errors" and target not in ALLOWED[layer]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_errors_imports_nothing_of_lexicons():
    """The error tree every layer raises is a leaf."""
    assert not [m for m in imports(PACKAGE / "errors.py") if m.startswith("lexicons")]


def test_wire_modules_do_no_io():
    """The wire protocols open no socket, start no thread and read no clock."""
    wrong = [f"{path.name} imports {module}"
             for path in sorted((PACKAGE / "wire").glob("*.py"))
             for module in imports(path) if module.split(".")[0] in IO_MODULES]
    assert not wrong, "\n".join(wrong)


def test_service_does_not_import_the_manager():
    """The service base class names what it needs of its manager; only the manager imports
    the other (no import circle)."""
    assert "lexicons.daemon.manager" not in imports(PACKAGE / "daemon" / "service.py")


@pytest.mark.parametrize("old,new", sorted(aliases.MOVED.items()))
def test_former_module_names_are_the_same_modules(old, new):
    """Every former module name (``lexicons.model``, ``lexicons.filters``...) still imports,
    as the very module that now lives in a sub-package."""
    assert importlib.import_module(old) is importlib.import_module(new)


def test_public_names_import_from_the_package():
    """``from lexicons import Model, Signal, ...`` gives the classes of their modules."""
    from lexicons import ChannelManager, Database, Header, Model, Server, Signal, Task
    from lexicons.data.database import Database as DatabaseClass
    from lexicons.data.model import Model as ModelClass

    assert Model is ModelClass and Database is DatabaseClass
    assert {c.__module__ for c in (Header, Server, Signal, Task)} == {
        "lexicons.header", "lexicons.server", "lexicons.signal", "lexicons.task"}
    assert ChannelManager.__module__ == "lexicons.daemon.application"
