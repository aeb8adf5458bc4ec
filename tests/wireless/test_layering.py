"""Inside the wireless layer, scenarios sit below channel/cost/rate/fading (the package-wide rules are in
tests/test_layers.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import hlm_gym.wireless
from hlm_gym.errors import HLMGymError
from hlm_gym.wireless.scenarios import ScenarioError, load_scenario

WIRELESS = Path(hlm_gym.wireless.__file__).parent
ABOVE = ("lm", "traces", "environments", "policies", "harness", "cli")


def _imports(path: Path) -> set[str]:
    """Every hlm_gym module a file imports, at any depth (function-local and TYPE_CHECKING ones too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: relative import"
            out.add(node.module or "")
    return {m for m in out if m.split(".")[0] == "hlm_gym"}


def test_scenarios_sit_below_the_models() -> None:
    inside = lambda p: {m.split(".")[2] for m in _imports(WIRELESS / p) if m.startswith("hlm_gym.wireless.")}  # noqa: E731
    assert inside("propagation.py") == set()
    assert inside("scenarios.py") == {"propagation"}


def test_scenario_error_is_a_user_error() -> None:
    assert issubclass(ScenarioError, HLMGymError) and issubclass(ScenarioError, ValueError)
    with pytest.raises(HLMGymError, match="unknown scenario"):
        load_scenario("no-such-scenario")
