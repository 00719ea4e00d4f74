"""The import rule of docs/ARCHITECTURE.md: a package imports only packages below it,
and no module imports itself back through others.

Read from the source with ``ast`` (every import, also those inside functions), so a
new upward import or cycle fails here before anyone draws the design again.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "daemon" / "ocr_inbox"

#: top to bottom; a layer may import the layers below it, never one above, and the
#: packages of one layer never import each other
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"__main__"}),
    frozenset({"cli"}),
    frozenset({"commands"}),
    frozenset({"core"}),
    frozenset({"search"}),
    frozenset({"service"}),
    frozenset({"inbox"}),
    frozenset({"ledger"}),
    frozenset({"executors", "outbox"}),
    frozenset({"config"}),
    frozenset({"ocr"}),
    frozenset({"support", "__init__"}),
)


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(path: Path, known: set[str]) -> set[str]:
    """The ocr_inbox modules ``path`` imports (``from ocr_inbox.pkg import mod`` names ``pkg.mod``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ocr_inbox":
            base = node.module[len("ocr_inbox") :].lstrip(".")
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                found.add(sub if sub in known else (base or "__init__"))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "ocr_inbox":
                    found.add(alias.name[len("ocr_inbox") :].lstrip(".") or "__init__")
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(path, known) - {name} for name, path in modules.items()}


def _rank(module: str) -> int:
    top = module.split(".")[0]
    for i, layer in enumerate(LAYERS):
        if top in layer:
            return i
    raise AssertionError(f"ocr_inbox.{module} is in no layer of LAYERS: place its package there")


def test_every_package_imports_only_packages_below_it() -> None:
    upward = []
    for module, targets in _graph().items():
        for target in targets:
            if module.split(".")[0] == target.split(".")[0]:
                continue  # within one package
            if _rank(target) <= _rank(module):
                upward.append(f"ocr_inbox.{module} imports ocr_inbox.{target}")
    assert not upward, "imports that do not go down a layer:\n" + "\n".join(sorted(upward))


def test_no_module_imports_itself_back() -> None:
    graph = _graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the path, 2 finished
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_rule_sees_an_upward_import(tmp_path: Path) -> None:
    """The reader itself: an import of a higher layer from a lower one is found."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from ocr_inbox.core import dispatch\n    from ocr_inbox import config\n")
    found = _imports(probe, set(_modules()))
    assert {"core.dispatch", "config"} <= found
    assert _rank("core.dispatch") < _rank("support.paths")
