"""The house rules of the source tree: imports run downward only, and no source file grows past 700 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "tuneloop"

#: The rooms, lowest first. A room may import its own modules and those of any lower layer, never
#: a room of its own layer or a higher one (the top-level modules of layer 0 may import each other).
LAYERS: list[set[str]] = [
    {"__init__", "config", "cpu", "errors", "fileio", "retry"},
    {"models", "data", "store"},
    {"train", "evals", "engine"},
    {"jobs"},
    {"api", "distill"},
    {"ui", "quickstart"},
    {"cli"},
]
LAYER = {room: i for i, rooms in enumerate(LAYERS) for room in rooms}
MAX_LINES = 700


def _room(path: Path) -> str:
    parts = path.relative_to(SRC).parts
    return parts[0].removesuffix(".py")


def _imported_rooms(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, room) for every import of a tuneloop module, at any depth (functions and TYPE_CHECKING too)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[1]) for a in node.names if a.name.startswith("tuneloop.")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] != "tuneloop":
                continue
            if len(parts) > 1:
                found.append((node.lineno, parts[1]))
            else:  # from tuneloop import x: a room, or something of the package's own __init__
                found += [(node.lineno, a.name if a.name in LAYER else "__init__") for a in node.names]
    return found


def _sources(*suffixes: str) -> list[Path]:
    return sorted(p for p in SRC.rglob("*") if p.is_file() and p.suffix in suffixes)


def test_every_room_has_a_layer():
    rooms = {_room(p) for p in _sources(".py")}
    assert rooms <= set(LAYER), f"rooms without a layer in LAYERS: {sorted(rooms - set(LAYER))}"


@pytest.mark.parametrize("path", _sources(".py"), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_run_downward(path: Path):
    room = _room(path)
    upward = [
        f"{path.relative_to(SRC)}:{line}: {room} (layer {LAYER[room]}) imports {target} (layer {LAYER[target]})"
        for line, target in _imported_rooms(ast.parse(path.read_text(encoding="utf-8")))
        if target != room
        and target in LAYER
        and (LAYER[target] > LAYER[room] or (LAYER[target] == LAYER[room] and LAYER[room] != 0))
    ]
    assert not upward, "\n".join(upward)


def test_the_rule_catches_an_upward_import():
    tree = ast.parse(
        "from tuneloop.api.state import AppState\nimport tuneloop.cli.main\nfrom tuneloop import __version__\n"
    )
    assert _imported_rooms(tree) == [(1, "api"), (2, "cli"), (3, "__init__")]


def test_no_source_file_exceeds_the_limit():
    long = {
        str(p.relative_to(SRC)): n
        for p in _sources(".py", ".c", ".h", ".j2", ".html", ".js", ".css")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"files over {MAX_LINES} lines: {long}"
