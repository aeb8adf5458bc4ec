"""The package's layering: imports point down only, and no module imports itself back in a cycle.

Every ``import`` and ``from ... import`` of every module counts, at any depth (function-local
and ``TYPE_CHECKING`` ones too). Layers, bottom to top::

    paths, errors  <  parallel, wireless, lm  <  traces  <  environments  <  policies  <  harness  <  cli

A module may import its own layer or a lower one; ``parallel`` (jobs), ``wireless`` (numpy) and ``lm`` (torch) do not
import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import hlm_gym

PKG = Path(hlm_gym.__file__).resolve().parent
RANK = {"paths": 0, "errors": 0, "parallel": 1, "wireless": 1, "lm": 1, "traces": 2, "environments": 3, "policies": 4,
        "harness": 5, "cli": 6}


def _modules() -> dict[str, Path]:
    mods = {}
    for f in PKG.rglob("*.py"):
        parts = ["hlm_gym", *f.relative_to(PKG).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    return mods


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[str]:
    """The package modules ``module`` imports (ancestors of it excluded: importing a submodule runs them)."""
    path = MODULES[module]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            target = _resolve(name) if name.split(".")[0] == "hlm_gym" else None
            if target and target != module and not module.startswith(target + "."):
                out.add(target)
    return out


GRAPH = {m: _imports(m) for m in MODULES}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of ``graph`` with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """``module -> target`` for every import into a higher layer (or across wireless and lm)."""
    bad = []
    for module in sorted(graph):
        layer = _layer(module)
        if layer not in RANK:
            continue
        for target in sorted(graph[module]):
            other = _layer(target)
            if other is None or other == layer:
                continue
            if other not in RANK or RANK[other] >= RANK[layer]:
                bad.append(f"{module} ({layer}) -> {target} ({other})")
    return bad


def test_no_import_cycles():
    assert not find_cycles(GRAPH), f"import cycles: {find_cycles(GRAPH)}"


def test_imports_point_down():
    bad = upward_imports(GRAPH)
    assert not bad, f"imports must point down ({' < '.join(RANK)}): {bad}"


def test_every_module_is_in_a_layer():
    stray = sorted(m for m in MODULES if m != "hlm_gym" and _layer(m) not in RANK and not _layer(m).startswith("_"))
    assert not stray, f"modules outside the layers: {stray}"


def test_the_checks_catch_a_cycle_and_an_upward_import():
    graph = {"hlm_gym.wireless.a": {"hlm_gym.harness.b"}, "hlm_gym.harness.b": {"hlm_gym.wireless.a"},
             "hlm_gym.lm.c": {"hlm_gym.wireless.a"}}
    assert find_cycles(graph) == [["hlm_gym.harness.b", "hlm_gym.wireless.a"]]
    assert upward_imports(graph) == ["hlm_gym.lm.c (lm) -> hlm_gym.wireless.a (wireless)",
                                     "hlm_gym.wireless.a (wireless) -> hlm_gym.harness.b (harness)"]
    assert len(GRAPH) > 50 and GRAPH["hlm_gym.cli.main"], "the module graph of the package is empty"


def test_every_error_class_is_a_user_error():
    """Every ``...Error`` class of the package derives from HLMGymError (the CLI prints it as one line)."""
    import importlib
    import inspect

    from hlm_gym.errors import HLMGymError

    internal = {"hlm_gym.policies.kind.SpecArgumentError"}  # never leaves the registry: it re-raises a PolicyError
    stray = []
    for module in sorted(MODULES):
        if module.startswith("hlm_gym.cli") or "sionna" in module:
            continue
        mod = importlib.import_module(module)
        for name, obj in vars(mod).items():
            if (inspect.isclass(obj) and obj.__module__ == module and issubclass(obj, Exception)
                    and not issubclass(obj, HLMGymError) and not name.startswith("_")):
                stray.append(f"{module}.{name}")
    assert not set(stray) - internal, f"error classes outside HLMGymError: {stray}"
