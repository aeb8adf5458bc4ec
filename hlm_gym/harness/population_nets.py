"""The networks of a population: SB3's actor-critic per agent, stacked for one batched pass
(``torch.func.stack_module_state`` + ``functional_call`` + ``vmap``)."""

from __future__ import annotations

import copy
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

__all__ = ["ActorCritic", "PopulationNets", "sb3_policy"]


class ActorCritic(nn.Module):
    """The trainable part of an SB3 ``ActorCriticPolicy`` (its own modules, so the state-dict keys
    are SB3's): ``mlp_extractor`` (separate pi/vf MLPs), ``action_net``, ``value_net``. Takes
    already normalised observations; returns ``(logits, value)``."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.mlp_extractor = policy.mlp_extractor
        self.action_net = policy.action_net
        self.value_net = policy.value_net

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        latent_pi, latent_vf = self.mlp_extractor(obs)
        return self.action_net(latent_pi), self.value_net(latent_vf).squeeze(-1)


def sb3_policy(obs_space: Any, act_space: Any, policy_kwargs: dict[str, Any], seed: int) -> nn.Module:
    """SB3's ``ActorCriticPolicy`` (MlpPolicy) built with ``seed`` as the torch seed (its init)."""
    from stable_baselines3.common.policies import ActorCriticPolicy

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ActorCriticPolicy(obs_space, act_space, (lambda _progress: 0.0), **policy_kwargs)


class PopulationNets:
    """P actor-critics as stacked parameters (``params[name]`` of shape ``(P, ...)``, leaf tensors
    with gradients) and one batched forward over them.

    The forward is ``torch.func``'s ``vmap`` of ``functional_call`` over the stacked parameters; for
    SB3's MLP (Linear layers and parameter-free activations, the only architecture the population
    trainer builds) the same arithmetic is run directly as batched matrix products
    (``torch.baddbmm``), which gives bit-identical outputs (tested) at half the per-call overhead.
    """

    def __init__(self, modules: Sequence[ActorCritic], device: str | torch.device) -> None:
        params, _ = stack_module_state([m.to(device) for m in modules])
        self.params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        self.P = len(modules)
        base = copy.deepcopy(modules[0]).to("meta")

        def one(p: dict[str, torch.Tensor], obs: torch.Tensor):
            return functional_call(base, p, (obs,))

        self._vmapped = vmap(one)
        self._plan = _mlp_plan(modules[0])
        self._tanh_plan = _tanh_plan(self._plan)

    def __call__(self, obs: torch.Tensor, params: Optional[dict[str, torch.Tensor]] = None):
        """``obs`` (P, B, obs_dim) -> ``(logits (P, B, A), values (P, B))``."""
        p = self.params if params is None else params
        if self._plan is None:
            return self._vmapped(p, obs)
        (pi, vf), h, g = self._plan, obs, obs
        for kind, what in pi:
            h = _linear(h, p, what) if kind == "linear" else what(h)
        for kind, what in vf:
            g = _linear(g, p, what) if kind == "linear" else what(g)
        return _linear(h, p, "action_net"), _linear(g, p, "value_net").squeeze(-1)

    def train_forward(self, obs: torch.Tensor, params: Optional[dict[str, torch.Tensor]] = None):
        """The forward the trainer uses (rollouts and PPO updates): the outputs of ``__call__`` up to
        float rounding (a few 1e-7), faster for SB3's default tanh MLP. On the CPU ``torch.tanh`` costs
        about four times ``torch.sigmoid``; with ``tanh(z) = 2 sigmoid(2z) - 1`` the affine parts are
        folded into the next layer's weights and bias (tensors of weight size), so each hidden layer
        is one ``baddbmm`` and one ``sigmoid``. Other architectures: ``__call__``. Evaluation and the
        exported models keep ``nn.Tanh`` (``__call__``)."""
        if self._tanh_plan is None:
            return self(obs, params)
        return _folded_forward(obs, *self._folded(self.params if params is None else params))

    def frozen_forward(self) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """:meth:`train_forward` without gradients at the parameters as they are now, its weight folding
        done once (a rollout: the parameters do not change while it runs); the same outputs."""
        if self._tanh_plan is None:
            return lambda obs: self(obs)
        with torch.no_grad():
            pi, vf = self._folded(self.params)
        return lambda obs: _folded_forward(obs, pi, vf)

    def _folded(self, p: dict[str, torch.Tensor]) -> tuple[list, list]:
        pi, vf = self._tanh_plan  # type: ignore[misc]
        return _fold(p, pi, "action_net"), _fold(p, vf, "value_net")

    def vmapped(self, obs: torch.Tensor, params: Optional[dict[str, torch.Tensor]] = None):
        """The same forward through ``vmap(functional_call)`` (any architecture)."""
        return self._vmapped(self.params if params is None else params, obs)

    def agent_state_dict(self, p: int) -> dict[str, torch.Tensor]:
        """Agent ``p``'s parameters with SB3's policy keys (on the CPU)."""
        return {k: v[p].detach().cpu().clone() for k, v in self.params.items()}


def _linear(x: torch.Tensor, p: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """``nn.Linear`` ``name`` of every agent at once: ``x`` (P, B, in) -> (P, B, out)."""
    return torch.baddbmm(p[name + ".bias"].unsqueeze(1), x, p[name + ".weight"].transpose(1, 2))


def _fold(p: dict[str, torch.Tensor], layers: Sequence[str], head: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The ``(bias (P, 1, out), weight^T (P, in, out))`` of each linear map of ``head(tanh(...tanh(
    layers[0](x))))`` with every ``tanh(z)`` written ``2 sigmoid(2z) - 1``: the hidden state is kept as
    ``h = scale * s + shift`` (``s`` the sigmoid's output) and each map absorbs ``scale`` and
    ``shift`` (``W h + b = scale W s + (b + shift W 1)``) and, before a sigmoid, the inner factor 2."""
    out, scale, shift = [], 1.0, 0.0
    for name in (*layers, head):
        w, b = p[name + ".weight"], p[name + ".bias"]
        if shift:
            b = b + shift * w.sum(-1)
        inner = 1.0 if name == head else 2.0
        out.append(((inner * b).unsqueeze(1), (inner * scale * w).transpose(1, 2)))
        scale, shift = 2.0, -1.0
    return out


def _sigmoid_mlp(x: torch.Tensor, folded: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The MLP of :func:`_fold`'s maps: ``baddbmm`` + ``sigmoid`` per hidden layer, the head linear."""
    for b, wt in folded[:-1]:
        x = torch.sigmoid(torch.baddbmm(b, x, wt))
    b, wt = folded[-1]
    return torch.baddbmm(b, x, wt)


def _folded_forward(obs: torch.Tensor, pi: Sequence, vf: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, values)`` of the folded pi and vf MLPs (:func:`_fold`)."""
    return _sigmoid_mlp(obs, pi), _sigmoid_mlp(obs, vf).squeeze(-1)


def _tanh_plan(plan: Optional[tuple[list, list]]) -> Optional[tuple[list[str], list[str]]]:
    """The linear layers of the pi and vf MLPs when each is ``(Linear, Tanh) * k`` (SB3's default), else None."""
    if plan is None:
        return None
    out = []
    for steps in plan:
        kinds = [(k, isinstance(w, nn.Tanh)) for k, w in steps]
        if kinds != [("linear", False), ("act", True)] * (len(steps) // 2) or not steps:
            return None
        out.append([w for k, w in steps if k == "linear"])
    return out[0], out[1]


def _mlp_plan(module: ActorCritic) -> Optional[tuple[list, list]]:
    """The layers of SB3's pi and vf MLPs as ``("linear", parameter prefix)`` / ``("act", module)``
    steps; None when a layer is neither a Linear nor a parameter-free module (use ``vmap``)."""
    ex = module.mlp_extractor
    plans = []
    for branch in ("policy_net", "value_net"):
        steps: list = []
        for name, layer in getattr(ex, branch).named_children():
            if isinstance(layer, nn.Linear) and layer.bias is not None:
                steps.append(("linear", f"mlp_extractor.{branch}.{name}"))
            elif not any(True for _ in layer.parameters()) and not any(True for _ in layer.buffers()):
                steps.append(("act", layer))
            else:
                return None
        plans.append(steps)
    if not all(isinstance(getattr(module, h), nn.Linear) and getattr(module, h).bias is not None
               for h in ("action_net", "value_net")):
        return None
    return plans[0], plans[1]
