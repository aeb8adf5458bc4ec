"""hlm_gym.lm is a bottom layer: no import cycle inside it, nothing imported from the layers above."""

from __future__ import annotations

import ast
from pathlib import Path

import hlm_gym.lm

LM_DIR = Path(hlm_gym.lm.__file__).parent
ALLOWED_OUTSIDE = ("hlm_gym.paths",)  # the base utility anyone may import


def _imports(path: Path) -> set[str]:
    """Every hlm_gym module named by an import statement of ``path``, function-local ones included."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against hlm_gym.lm
                base = ".".join(["hlm_gym", "lm"][: 2 - (node.level - 1)] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in out if m.split(".")[0] == "hlm_gym"}


def _graph() -> dict[str, set[str]]:
    mods = {f"hlm_gym.lm.{f.stem}": f for f in LM_DIR.glob("*.py") if f.stem != "__init__"}
    graph = {}
    for name, f in mods.items():
        targets = set()
        for imp in _imports(f):
            parts = imp.split(".")
            while parts and ".".join(parts) not in mods:
                parts.pop()
            if parts and ".".join(parts) != name:
                targets.add(".".join(parts))
        graph[name] = targets
    return graph


def test_lm_imports_nothing_from_upper_layers():
    bad = {}
    for f in LM_DIR.glob("*.py"):
        outside = {m for m in _imports(f) if not m.startswith(("hlm_gym.lm", *ALLOWED_OUTSIDE))
                   and m != "hlm_gym"}
        if outside:
            bad[f.name] = sorted(outside)
    assert not bad, f"hlm_gym.lm imports from upper layers: {bad}"


def test_no_import_cycle_inside_lm():
    graph = _graph()
    assert "hlm_gym.lm.models" in graph and "hlm_gym.lm.slm" in graph["hlm_gym.lm.models"]
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
