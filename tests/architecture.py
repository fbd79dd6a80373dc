"""The house rules, read from the code: which package may import which, and no circles.

Every import counts, at the top of a module or inside a function (a lazy import is still a
dependency). Floors, bottom up; a module may import its own floor or those below it:

    core ─► events ─► dataset ─► repository ─► services ─► workflows ─► dashboard ─► retrain
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

FLOORS = ("core", "events", "dataset", "repository", "services", "workflows", "dashboard",
          "retrain")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the module it imports (a submodule when ``from pkg import sub`` names one)
    line: int


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path, packages: Iterable[str] = FLOORS) -> dict[str, Path]:
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            found[module_name(root, path)] = path
    return found


def imports(root: Path, packages: Iterable[str] = FLOORS) -> list[Import]:
    """Every import of one of ``packages`` made anywhere in them."""
    packages = tuple(packages)
    known = modules(root, packages)
    found = []
    for name, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against this module's package
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[:len(base) - node.level + 1]
                    parent = ".".join(base + ([node.module] if node.module else []))
                else:
                    parent = node.module or ""
                targets = [f"{parent}.{alias.name}" if f"{parent}.{alias.name}" in known else parent
                           for alias in node.names]
            else:
                continue
            for target in targets:
                if target.split(".")[0] in packages:
                    found.append(Import(name, target, node.lineno))
    return found


def floor(module: str) -> int:
    return FLOORS.index(module.split(".")[0])


def upward(found: Iterable[Import]) -> list[str]:
    """Each import of a higher floor, as ``path:line module -> target``."""
    lines = (f"{i.module}:{i.line} imports {i.target} ({i.module.split('.')[0]} may not import "
             f"{i.target.split('.')[0]})" for i in found if floor(i.target) > floor(i.module))
    return list(dict.fromkeys(lines))


def circles(found: Iterable[Import]) -> list[list[str]]:
    """The import circles among modules (strongly connected components of more than one
    module, or a module importing itself), each sorted."""
    graph: dict[str, set[str]] = {}
    for i in found:
        graph.setdefault(i.module, set()).add(i.target)
        graph.setdefault(i.target, set())
    return [sorted(c) for c in _components(graph)
            if len(c) > 1 or next(iter(c)) in graph[next(iter(c))]]


def _components(graph: Mapping[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components, iteratively (no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                result.append(component)
    return result


# ownership and shape (the house's second step) ----------------------------------------------
SERVICES = "services"
KEY = re.compile(r"retrain:[a-z0-9_.-]+")
REGISTRATION = ("retrain.cli", "retrain.commands")  # where call statements register commands


def service_of(module: str) -> str | None:
    """The service a module belongs to (``services.<name>...``), or None."""
    parts = module.split(".")
    return parts[1] if parts[0] == SERVICES and len(parts) > 2 else None


def sideways(found: Iterable[Import]) -> list[str]:
    """Each import of one service by another."""
    lines = (f"{i.module}:{i.line} imports {i.target}" for i in found
             if service_of(i.module) and service_of(i.target)
             and service_of(i.module) != service_of(i.target))
    return list(dict.fromkeys(lines))


def key_spellings(root: Path, packages: Iterable[str] = FLOORS) -> dict[str, list[str]]:
    """Each Redis key prefix (``retrain:<word>``) spelled in a string of more than one module,
    with those modules. Docstrings are prose about the records, not code that reads them."""
    spelled: dict[str, set[str]] = {}
    for name, path in modules(root, packages).items():
        tree = ast.parse(path.read_text(), str(path))
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                           ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and id(node) not in docstrings):
                for key in KEY.findall(node.value):
                    spelled.setdefault(key, set()).add(name)
    return {key: sorted(names) for key, names in sorted(spelled.items()) if len(names) > 1}


def long_functions(root: Path, limit: int, packages: Iterable[str] = FLOORS) -> dict[str, int]:
    """``module:function`` -> lines, for each function longer than ``limit`` lines."""
    found = {}
    for name, path in modules(root, packages).items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > limit:
                    found[f"{name}:{node.name}"] = lines
    return found


def import_time_calls(root: Path, packages: Iterable[str] = FLOORS) -> list[str]:
    """Call statements a module runs when it is imported (at its top level, in a top-level
    ``if``, ``try``, ``with`` or loop, or in a class body), outside the CLI's command
    registration and ``__main__``. Assignments may call (building a router or a logger)."""
    found = []

    def visit(body: list[ast.stmt], name: str) -> None:
        for node in body:
            if isinstance(node, ast.If) and "__name__" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
                found.append(f"{name}:{node.lineno} {ast.unparse(node.value)[:60]}")
            if isinstance(node, (ast.If, ast.With, ast.Try, ast.For, ast.While, ast.ClassDef)):
                visit(node.body, name)  # a class body runs at import too
                visit(getattr(node, "orelse", []), name)
            if isinstance(node, ast.Try):
                visit(node.finalbody, name)
                for handler in node.handlers:
                    visit(handler.body, name)

    for name, path in modules(root, packages).items():
        if not name.startswith(REGISTRATION):
            visit(ast.parse(path.read_text(), str(path)).body, name)
    return found
