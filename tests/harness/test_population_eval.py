"""Batched evaluation of many models (:mod:`hlm_gym.harness.population_eval`): the same episodes
and metrics as ``evaluate`` of each model alone."""

from __future__ import annotations

import pytest

from tests.harness.test_population import _config, traces  # noqa: F401 - the module's trace fixture


@pytest.fixture(scope="module")
def models(traces, tmp_path_factory):  # noqa: F811
    from hlm_gym.harness.population import AgentSpec, train_population

    out = tmp_path_factory.mktemp("population-eval")
    res = train_population(_config(traces, out, [AgentSpec(1.0, None, 0), AgentSpec(10.0, 0.3, 1)],
                                   eval_episodes=4, tensorboard=False))
    return [s["files"]["model_last"] for s in res.summaries]


def test_models_evaluated_together_equal_each_evaluated_alone(models, traces):  # noqa: F811
    from hlm_gym.harness.evaluation import evaluate
    from hlm_gym.harness.family import EnvSettings
    from hlm_gym.harness.population_eval import evaluate_models

    settings = EnvSettings(scenario="vehicular", traces=str(traces))
    together = evaluate_models(models, "hlm_gym/HybridLM-v0", settings, "test", 20_000, [1.0, 10.0], [0.0, 0.0],
                               episodes=11, num_envs=4)
    assert together is not None and len(together) == 2
    for path, weight, summary in zip(models, (1.0, 10.0), together):
        alone = evaluate(f"ppo:{path}", scenario="vehicular", split="test", episodes=11, seed=20_000,
                         risk_weight=weight, traces=str(traces), num_envs=4).summary
        assert summary.keys() == alone.keys()
        for k in alone:
            assert summary[k]["n"] == alone[k]["n"] == 11
            for stat in ("mean", "ci_low", "ci_high"):
                assert summary[k][stat] == pytest.approx(alone[k][stat], rel=1e-9, abs=1e-12), (k, stat)


def test_binary_models_on_a_larger_action_space_are_left_to_evaluate(models, traces):  # noqa: F811
    """A binary model on the compressed env needs evaluate()'s action mapping: no batched result."""
    from hlm_gym.harness.family import EnvSettings
    from hlm_gym.harness.population_eval import evaluate_models

    settings = EnvSettings(scenario="vehicular", traces=str(traces))
    assert evaluate_models(models, "hlm_gym/HybridLMCompressed-v0", settings, "test", 0, [1.0, 1.0], [0.0, 0.0],
                           episodes=4) is None
