"""Layering: the engine and the CLI never load a GUI toolkit, and the import graph of the
package's top-level modules has no cycle (function-level imports included)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import napari_medsegdiff

PACKAGE = Path(napari_medsegdiff.__file__).parent
NAME = "napari_medsegdiff"
GUI_TOOLKITS = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui")
FRONT_END = {"cli", "commands", "__main__", "gui", "_reader", "_writer", "_sample_data"}
FORBIDDEN_FOR_ENGINE = {"cli", "commands", "__main__", "gui", "_sample_data"}


def _top_level_nodes() -> dict[str, list[Path]]:
    """Top-level module name -> its source files (a subpackage is one node)."""
    nodes: dict[str, list[Path]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        key = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        if key == "__init__":
            continue
        nodes.setdefault(key, []).append(path)
    return nodes


def _imported_nodes(path: Path, nodes: set[str]) -> set[str]:
    """Top-level package modules imported anywhere in ``path`` (any depth, any scope)."""
    rel = path.relative_to(PACKAGE)
    here = [NAME, *rel.parts[:-1]]  # the package this file lives in
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                mod = ".".join([*base, *([node.module] if node.module else [])])
            else:
                mod = node.module or ""
            modules = [mod] + [f"{mod}.{alias.name}" for alias in node.names]
        else:
            continue
        for mod in modules:
            parts = mod.split(".")
            if parts[0] == NAME and len(parts) > 1 and parts[1] in nodes:
                found.add(parts[1])
    return found


def import_graph() -> dict[str, set[str]]:
    nodes = _top_level_nodes()
    graph = {}
    for key, files in nodes.items():
        deps = set().union(*(_imported_nodes(f, set(nodes)) for f in files))
        graph[key] = deps - {key}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of nodes, or None (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_parser_sees_function_level_imports():
    graph = import_graph()
    assert "training" in graph["finetune"]  # module level
    assert "model" in graph["training"]  # inside functions
    assert "gui" not in graph["segmenter"]


def test_no_import_cycle_among_top_level_modules():
    cycle = _cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_engine_never_imports_the_front_end():
    graph = import_graph()
    bad = {
        (module, dep)
        for module, deps in graph.items()
        if module not in FRONT_END
        for dep in deps & FORBIDDEN_FOR_ENGINE
    }
    assert not bad, f"engine modules import the front end: {sorted(bad)}"


def test_engine_and_cli_load_no_gui_toolkit():
    """In a fresh interpreter: import every non-GUI module (and build the CLI parser)."""
    modules = sorted(
        f"{NAME}.{key}" for key in _top_level_nodes() if key not in {"gui", "__main__"}
    )
    modules += [
        f"{NAME}.{sub.parent.name}.{sub.stem}"
        for sub in sorted(PACKAGE.glob("*/*.py"))
        if sub.parent.name != "gui" and sub.stem != "__init__"
    ]
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "from napari_medsegdiff.cli import build_parser\n"
        "build_parser()\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    gui = [m for m in loaded if m.split(".")[0] in GUI_TOOLKITS]
    assert not gui, f"non-GUI modules loaded {gui[:10]}"


#: The ground layer: what every other layer may use; it imports only itself.
GROUND = {"errors", "config", "progress", "seeds", "paths", "launch_env", "devices", "cpu_share"}


def ground_violations(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{low} -> {high}" for low in GROUND for high in graph.get(low, set()) - GROUND)


def test_the_ground_layer_imports_nothing_above_it():
    assert ground_violations(import_graph()) == []
    # and the check bites: progress reaching up into the engine (as it once did) is caught
    wrong = {**import_graph(), "progress": {"errors", "distributed"}}
    assert ground_violations(wrong) == ["progress -> distributed"]


def test_the_command_line_never_imports_the_gui():
    graph = import_graph()
    assert "gui" not in graph["commands"] and "gui" not in graph["cli"]
