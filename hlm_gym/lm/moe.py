"""A mixture of experts carved out of a dense model's gated MLPs (the MoE of ``WDMoE-v0``).

Every decoder layer's MLP ``down(act(gate(x)) * up(x))`` has ``I`` hidden neurons. An
:class:`MoESpec` assigns them to ``E`` equal experts through a per-layer permutation: expert
``e`` owns the permuted neurons ``perm[e*S:(e+1)*S]`` (``S = I / E``), and its output is

    y_e = W_down[:, n_e] (act(W_gate[n_e] x) * W_up[n_e] x),    sum_e y_e = MLP(x)   (exactly).

The experts are a *partition* of the dense MLP, so a selection ``S`` of experts gives the MLP
output ``sum_{e in S} y_e`` with no gate reweighting; selecting all experts is the dense model.
A small router per layer scores the experts from the MLP's input ``x`` (the post-attention
RMSNorm of the residual stream): ``scores = softmax(router(x))``, trained to predict each
expert's share of ``||y_e||`` (:mod:`hlm_gym.lm.moefication` builds the spec).

:class:`MoEModel` swaps each layer's MLP for a :class:`MoEMLP` (which computes exactly the dense
output while no selection is active, so the model is unchanged for other callers) and runs

* :meth:`MoEModel.logits` with a selection given per (batch, position, layer, expert), by the
  router's top-k, by the "oracle" top-k of the true expert output norms, or by a callback per
  layer;
* :meth:`MoEModel.expert_records`: one dense pass recording, per token and layer, the router's
  scores, the Gram matrix ``G_ij = y_i . y_j`` of the expert outputs and the squared norm of
  the residual stream the MLP output is added to. The MLP error of dropping the experts
  ``D`` follows exactly: ``||sum_{e in D} y_e||^2 = u^T G u`` with ``u`` the indicator of ``D``.

The spec ships in ``hlm_gym/data/moe/`` as ``moe.safetensors`` (permutation, router weights)
and ``moe.json`` (metadata: recipe settings, seed, the model's fingerprint, tokens used, the
weights' SHA-256); :func:`load_moe_spec` reads and checks it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
from torch import nn

from hlm_gym.errors import HLMGymError
from hlm_gym.lm.model_types import LoadedModel
from hlm_gym.paths import atomic_write_bytes, atomic_write_text, data_dir

__all__ = ["ExpertRecords", "MoEError", "MoEMLP", "MoEModel", "MoEOutput", "MoESpec", "RANK_BY", "SPEC_FORMAT",
           "SPEC_JSON", "SPEC_WEIGHTS", "Selector", "decoder_layers", "expert_outputs", "make_spec", "load_moe_spec", "moefy", "save_moe_spec", "split_expert_outputs",
           "spec_dir"]

SPEC_JSON = "moe.json"
SPEC_WEIGHTS = "moe.safetensors"
SPEC_FORMAT = 1
#: How :meth:`MoEModel.logits` ranks experts for a top-k selection: the router's scores, or the
#: true norms ``||y_e||`` of the expert outputs (an oracle, for judging the router).
RANK_BY = ("router", "norm")
_WEIGHT_KEYS = ("permutation", "router.w1", "router.b1", "router.w2", "router.b2")

#: A per-layer selection callback: ``(layer, scores (B, T, E)) -> bool mask (B, T, E)``.
Selector = Callable[[int, torch.Tensor], torch.Tensor]


class MoEError(HLMGymError, ValueError):
    """A bad MoE spec (missing, broken, or not made for this model) or a bad selection."""


def spec_dir() -> Path:
    """Folder of the shipped MoE spec (``hlm_gym/data/moe``)."""
    return data_dir() / "moe"


# ----------------------------------------------------------------------------- the spec
@dataclass(frozen=True)
class MoESpec:
    """Experts (a neuron permutation per layer) and routers of an MoE made from a dense model.

    ``permutation`` is ``(L, I)`` int64: row ``l`` lists layer ``l``'s MLP neurons, expert ``e``
    owning entries ``e*S .. (e+1)*S - 1`` (``S = I // E``). The router of layer ``l`` is
    ``w2[l] @ silu(w1[l] @ x + b1[l]) + b2[l]`` (float32; ``w1``: ``(L, H, D)``, ``w2``:
    ``(L, E, H)``), its scores the softmax of that over the ``E`` experts. ``meta`` holds the
    recipe's settings and provenance (``model_fingerprint``, ``seed``, ``tokens``, ...);
    ``fingerprint`` is the SHA-256 of the serialised weights (what the shipped JSON records).
    """

    n_experts: int
    permutation: torch.Tensor
    router_w1: torch.Tensor
    router_b1: torch.Tensor
    router_w2: torch.Tensor
    router_b2: torch.Tensor
    meta: dict = field(default_factory=dict)
    fingerprint: str = ""

    @property
    def n_layers(self) -> int:
        """Number of MoE layers (one per decoder layer)."""
        return int(self.permutation.shape[0])

    @property
    def intermediate_size(self) -> int:
        """Neurons of each dense MLP (``I``)."""
        return int(self.permutation.shape[1])

    @property
    def expert_size(self) -> int:
        """Neurons per expert (``I // E``)."""
        return self.intermediate_size // self.n_experts

    @property
    def hidden_size(self) -> int:
        """Width of the router's input (the model's hidden size ``D``)."""
        return int(self.router_w1.shape[2])

    @property
    def router_hidden(self) -> int:
        """Hidden width ``H`` of each router MLP."""
        return int(self.router_w1.shape[1])

    @property
    def model_fingerprint(self) -> str:
        """Fingerprint of the dense model the spec was built from (``meta['model_fingerprint']``)."""
        return str(self.meta.get("model_fingerprint", ""))

    def expert_neurons(self, layer: int, expert: int) -> torch.Tensor:
        """The MLP neuron indices expert ``expert`` of layer ``layer`` owns."""
        s = self.expert_size
        return self.permutation[layer, expert * s:(expert + 1) * s]

    def expert_of_neuron(self) -> torch.Tensor:
        """``(L, I)``: the expert each neuron belongs to."""
        owner = torch.empty_like(self.permutation)
        blocks = torch.arange(self.intermediate_size, device=self.permutation.device) // self.expert_size
        owner.scatter_(1, self.permutation, blocks.expand_as(self.permutation).contiguous())
        return owner

    def router_logits(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """The router's logits ``(..., E)`` of layer ``layer`` for MLP inputs ``x`` ``(..., D)``."""
        x = x.float()
        h = torch.nn.functional.silu(x @ self.router_w1[layer].T + self.router_b1[layer])
        return h @ self.router_w2[layer].T + self.router_b2[layer]

    def router_scores(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """The router's gate weights ``(..., E)`` (non-negative, summing to 1) for MLP inputs ``x``."""
        return torch.softmax(self.router_logits(layer, x), dim=-1)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The weights as stored: the permutation (int32) and the router (float32)."""
        return {"permutation": self.permutation.to(torch.int32).contiguous(),
                "router.w1": self.router_w1.float().contiguous(), "router.b1": self.router_b1.float().contiguous(),
                "router.w2": self.router_w2.float().contiguous(), "router.b2": self.router_b2.float().contiguous()}

    def to(self, device: str | torch.device) -> "MoESpec":
        """The same spec with its tensors on ``device``."""
        return MoESpec(self.n_experts, self.permutation.to(device), self.router_w1.to(device),
                       self.router_b1.to(device), self.router_w2.to(device), self.router_b2.to(device),
                       self.meta, self.fingerprint)


def _check_shapes(spec: MoESpec, where: str) -> None:
    """Raise :class:`MoEError` unless the spec's tensors are mutually consistent."""
    perm, e = spec.permutation, spec.n_experts
    if perm.ndim != 2 or perm.shape[0] < 1 or perm.shape[1] < 1:
        raise MoEError(f"{where}: permutation must be a (layers, neurons) matrix, got shape {tuple(perm.shape)}")
    n_layers, n_neurons = perm.shape
    if not isinstance(e, int) or e < 1 or n_neurons % e:
        raise MoEError(f"{where}: n_experts {e!r} must be a positive divisor of the {n_neurons} MLP neurons")
    want = torch.arange(n_neurons, device=perm.device)
    if not bool((perm.sort(dim=1).values == want).all()):
        raise MoEError(f"{where}: every permutation row must hold each of 0..{n_neurons - 1} exactly once")
    w1, b1, w2, b2 = spec.router_w1, spec.router_b1, spec.router_w2, spec.router_b2
    if w1.ndim != 3 or w1.shape[0] != n_layers:
        raise MoEError(f"{where}: router.w1 must be (layers={n_layers}, hidden, inputs), got {tuple(w1.shape)}")
    h = w1.shape[1]
    for name, t, shape in (("router.b1", b1, (n_layers, h)), ("router.w2", w2, (n_layers, e, h)),
                           ("router.b2", b2, (n_layers, e))):
        if tuple(t.shape) != shape:
            raise MoEError(f"{where}: {name} has shape {tuple(t.shape)}, expected {shape}")
    for name, t in (("router.w1", w1), ("router.b1", b1), ("router.w2", w2), ("router.b2", b2)):
        if not bool(torch.isfinite(t).all()):
            raise MoEError(f"{where}: {name} holds non-finite values")


def _serialise(spec: MoESpec) -> bytes:
    from safetensors.torch import save

    return save({k: v.cpu() for k, v in spec.tensors().items()}, metadata={"format": str(SPEC_FORMAT)})


def make_spec(n_experts: int, permutation: torch.Tensor, router_w1: torch.Tensor, router_b1: torch.Tensor,
              router_w2: torch.Tensor, router_b2: torch.Tensor, meta: Optional[dict] = None) -> MoESpec:
    """A checked :class:`MoESpec` whose ``fingerprint`` is the SHA-256 of its serialised weights."""
    spec = MoESpec(int(n_experts), permutation.long().cpu(), router_w1.float().cpu(), router_b1.float().cpu(),
                   router_w2.float().cpu(), router_b2.float().cpu(), dict(meta or {}))
    _check_shapes(spec, "MoE spec")
    sha = hashlib.sha256(_serialise(spec)).hexdigest()
    return MoESpec(spec.n_experts, spec.permutation, spec.router_w1, spec.router_b1, spec.router_w2,
                   spec.router_b2, spec.meta, sha)


def save_moe_spec(spec: MoESpec, folder: str | Path) -> Path:
    """Write ``moe.safetensors`` and ``moe.json`` into ``folder`` (each atomically; weights first)."""
    folder = Path(folder)
    data = _serialise(spec)
    sha = hashlib.sha256(data).hexdigest()
    meta = {**spec.meta, "format": SPEC_FORMAT, "n_experts": spec.n_experts, "n_layers": spec.n_layers,
            "intermediate_size": spec.intermediate_size, "expert_size": spec.expert_size,
            "hidden_size": spec.hidden_size, "router_hidden": spec.router_hidden, "weights_sha256": sha}
    try:
        atomic_write_bytes(folder / SPEC_WEIGHTS, data)
        atomic_write_text(folder / SPEC_JSON, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        raise MoEError(f"cannot write the MoE spec into {folder} ({exc.strerror or exc})") from None
    return folder


def load_moe_spec(path: str | Path | None = None) -> MoESpec:
    """Read an MoE spec folder (``None``: the shipped one; a path to its ``moe.json`` also works).

    Raises :class:`MoEError` (one line) for a missing file, bad JSON, unreadable or inconsistent
    weights, or weights that are not the ones the JSON was written with.
    """
    from safetensors.torch import load

    folder = spec_dir() if path is None else Path(path)
    if folder.suffix == ".json" or folder.name == SPEC_WEIGHTS:
        folder = folder.parent
    if not folder.is_dir():
        raise MoEError(f"MoE spec folder {folder} not found; build one with 'hlm-gym moe build --out {folder}'")
    json_path, w_path = folder / SPEC_JSON, folder / SPEC_WEIGHTS
    for p in (json_path, w_path):
        if not p.is_file():
            raise MoEError(f"MoE spec file {p} is missing; build the spec with 'hlm-gym moe build --out {folder}'")
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise MoEError(f"MoE spec {json_path} is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise MoEError(f"MoE spec {json_path} must hold a JSON object")
    if meta.get("format") != SPEC_FORMAT:
        raise MoEError(f"MoE spec {json_path} has format {meta.get('format')!r}; this hlm-gym reads format "
                       f"{SPEC_FORMAT}")
    n_experts = meta.get("n_experts")
    if not isinstance(n_experts, int) or isinstance(n_experts, bool) or n_experts < 1:
        raise MoEError(f"MoE spec {json_path}: 'n_experts' must be a positive integer, got {n_experts!r}")
    data = w_path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    if meta.get("weights_sha256") != sha:
        raise MoEError(f"MoE spec {folder}: {SPEC_WEIGHTS} (sha256 {sha[:12]}...) is not the file {SPEC_JSON} was "
                       f"written with ({str(meta.get('weights_sha256'))[:12]}...); rebuild or restore the pair")
    try:
        t = load(data)
    except Exception as exc:  # safetensors raises its own error types
        raise MoEError(f"cannot read MoE weights {w_path}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    missing = [k for k in _WEIGHT_KEYS if k not in t]
    if missing:
        raise MoEError(f"MoE weights {w_path} lack {', '.join(missing)}")
    spec = MoESpec(n_experts, t["permutation"].long(), t["router.w1"].float(), t["router.b1"].float(),
                   t["router.w2"].float(), t["router.b2"].float(), meta, sha)
    _check_shapes(spec, f"MoE spec {folder}")
    for key, value in (("n_layers", spec.n_layers), ("intermediate_size", spec.intermediate_size),
                       ("hidden_size", spec.hidden_size)):
        if meta.get(key) != value:
            raise MoEError(f"MoE spec {json_path}: {key!r} is {meta.get(key)!r} but the weights say {value}")
    return spec


# ----------------------------------------------------------------------------- expert outputs
def expert_outputs(mlp: nn.Module, perm: torch.Tensor, n_experts: int, x: torch.Tensor) -> torch.Tensor:
    """Each expert's output ``(..., E, D)`` for MLP inputs ``x`` ``(..., D)``; they sum to ``mlp(x)``."""
    a = mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)
    return split_expert_outputs(a, mlp.down_proj.weight, perm, n_experts)


def split_expert_outputs(a: torch.Tensor, w_down: torch.Tensor, perm: torch.Tensor, n_experts: int) -> torch.Tensor:
    """``(..., E, D)`` expert outputs from the MLP activations ``a`` ``(..., I)``."""
    s = a.shape[-1] // n_experts
    a_p = a[..., perm].reshape(*a.shape[:-1], n_experts, s)
    w_p = w_down[:, perm].reshape(w_down.shape[0], n_experts, s)
    return torch.einsum("...es,des->...ed", a_p, w_p)


@dataclass
class _Plan:
    """What the MoE layers do during one :class:`MoEModel` call (set and cleared by the model)."""

    selection: Optional[torch.Tensor] = None   # (B, T, L, E) bool
    top_k: Optional[int] = None
    rank_by: str = "router"
    selector: Optional[Selector] = None
    record: bool = False                        # expert_records: keep scores and Gram matrices
    scores: dict = field(default_factory=dict)  # layer -> (B, T, E) router scores seen
    masks: dict = field(default_factory=dict)   # layer -> (B, T, E) selections used
    grams: dict = field(default_factory=dict)   # layer -> (B, T, E, E)


class MoEMLP(nn.Module):
    """A decoder layer's MLP split into experts; while no plan is active it is the dense MLP, exactly.

    Holds the original MLP (``dense``, weights shared), the layer's permutation and the spec;
    :class:`MoEModel` sets ``plan`` for the duration of one forward pass.
    """

    def __init__(self, dense: nn.Module, spec: MoESpec, layer: int) -> None:
        super().__init__()
        self.dense = dense
        self.spec = spec
        self.layer = layer
        self.register_buffer("perm", spec.permutation[layer].clone(), persistent=False)
        self.register_buffer("owner", spec.expert_of_neuron()[layer].clone(), persistent=False)
        self.plan: Optional[_Plan] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP output: dense without a plan, else the sum of the selected experts' outputs."""
        mlp, plan = self.dense, self.plan
        a = mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)
        if plan is None:
            return mlp.down_proj(a)
        e = self.spec.n_experts
        scores = self.spec.router_scores(self.layer, x)
        plan.scores[self.layer] = scores
        need_outputs = plan.record or (plan.selection is None and plan.top_k is not None and plan.rank_by == "norm")
        y = split_expert_outputs(a, mlp.down_proj.weight, self.perm, e) if need_outputs else None
        if plan.record:
            yf = y.float()
            plan.grams[self.layer] = yf @ yf.transpose(-1, -2)
        if plan.selection is not None:
            mask = plan.selection[:, :, self.layer]
        elif plan.selector is not None:
            mask = plan.selector(self.layer, scores)
            if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != scores.shape:
                raise MoEError(f"selector must return a bool tensor of shape {tuple(scores.shape)} "
                               f"for layer {self.layer}, got "
                               f"{getattr(mask, 'dtype', type(mask).__name__)} {tuple(getattr(mask, 'shape', ()))}")
        elif plan.top_k is not None:
            rank = scores if plan.rank_by == "router" else y.float().norm(dim=-1)
            mask = torch.zeros_like(scores, dtype=torch.bool)
            mask.scatter_(-1, rank.topk(plan.top_k, dim=-1).indices, True)
        else:
            mask = None
        if mask is None:
            return mlp.down_proj(a)
        plan.masks[self.layer] = mask
        return mlp.down_proj(a * mask[..., self.owner].to(a.dtype))


# ----------------------------------------------------------------------------- the model
@dataclass(frozen=True)
class ExpertRecords:
    """Per token and layer, from one dense pass: what any expert selection would cost in MLP error.

    ``scores`` ``(B, T, L, E)``: the router's gate weights; ``gram`` ``(B, T, L, E, E)``: the Gram
    matrix ``y_i . y_j`` of the expert outputs; ``residual_norm2`` ``(B, T, L)``: the squared
    norm of the residual stream the MLP output is added to; ``logits`` ``(B, T, V)``: the dense
    model's logits (None when not asked for). All float32 torch tensors.
    """

    scores: torch.Tensor
    gram: torch.Tensor
    residual_norm2: torch.Tensor
    logits: Optional[torch.Tensor] = None


@dataclass(frozen=True)
class MoEOutput:
    """One MoE forward pass: ``logits`` ``(B, T, V)``; the router ``scores`` ``(B, T, L, E)`` seen at
    the actual (MoE) inputs of each layer; the ``selection`` ``(B, T, L, E)`` used (all True for a
    dense layer); ``model_output``: the underlying model's output (its ``cache`` etc.)."""

    logits: torch.Tensor
    scores: torch.Tensor
    selection: torch.Tensor
    model_output: object


class MoEModel:
    """A dense causal LM run as the mixture of experts of ``spec`` (see the module docstring).

    ``model`` is a Llama-style ``PreTrainedModel`` or a :class:`LoadedModel` (whose fingerprint
    must then match the spec's ``model_fingerprint``, unless ``check_fingerprint=False``). Each
    decoder layer's ``mlp`` is replaced in place by a :class:`MoEMLP` that is exactly the dense
    MLP outside this class's calls; :meth:`restore` puts the original modules back.
    """

    def __init__(self, model, spec: MoESpec, check_fingerprint: bool = True) -> None:
        if isinstance(model, LoadedModel):
            if check_fingerprint and spec.model_fingerprint and spec.model_fingerprint != model.fingerprint:
                raise MoEError(f"the MoE spec was built from model {spec.model_fingerprint[:12]}..., but the loaded "
                               f"model is {model.fingerprint[:12]}... ({model.name})")
            self.tokenizer = model.tokenizer
            model = model.model
        else:
            self.tokenizer = None
        layers = decoder_layers(model)
        if len(layers) != spec.n_layers:
            raise MoEError(f"the MoE spec has {spec.n_layers} layers, the model {len(layers)}")
        mlps = [layer.mlp.dense if isinstance(layer.mlp, MoEMLP) else layer.mlp for layer in layers]
        for i, mlp in enumerate(mlps):
            if not all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj", "act_fn")):
                raise MoEError(f"layer {i}'s MLP is not a gated MLP (gate_proj, up_proj, down_proj)")
            if mlp.down_proj.in_features != spec.intermediate_size or mlp.down_proj.out_features != spec.hidden_size:
                raise MoEError(f"the MoE spec is for MLPs of {spec.intermediate_size} neurons and hidden size "
                               f"{spec.hidden_size}; layer {i} has {mlp.down_proj.in_features} and "
                               f"{mlp.down_proj.out_features}")
            if mlp.down_proj.bias is not None:
                raise MoEError(f"layer {i}'s MLP has a bias: it cannot be split into experts that sum to it")
        device = next(model.parameters()).device
        self.model = model
        self.spec = spec.to(device)
        self._layers = layers
        self._dense = mlps
        self.moe_layers = [MoEMLP(mlp, self.spec, i) for i, mlp in enumerate(mlps)]
        for layer, moe in zip(layers, self.moe_layers):
            layer.mlp = moe

    @property
    def n_layers(self) -> int:
        """Number of MoE layers."""
        return self.spec.n_layers

    @property
    def n_experts(self) -> int:
        """Experts per layer."""
        return self.spec.n_experts

    def restore(self) -> None:
        """Put the original dense MLP modules back into the model."""
        for layer, mlp in zip(self._layers, self._dense):
            layer.mlp = mlp

    def router_scores(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """The router's gate weights ``(..., E)`` of ``layer`` for MLP inputs ``x`` ``(..., D)``."""
        return self.spec.router_scores(layer, x)

    @contextlib.contextmanager
    def _planned(self, plan: _Plan) -> Iterator[_Plan]:
        for moe in self.moe_layers:
            moe.plan = plan
        try:
            yield plan
        finally:
            for moe in self.moe_layers:
                moe.plan = None

    def _check_call(self, input_ids: torch.Tensor, selection, top_k, rank_by, selector) -> None:
        if input_ids.ndim != 2:
            raise MoEError(f"input_ids must be (batch, positions), got shape {tuple(input_ids.shape)}")
        if sum(x is not None for x in (selection, top_k, selector)) > 1:
            raise MoEError("give at most one of selection, top_k and selector")
        if selection is not None:
            want = (*input_ids.shape, self.n_layers, self.n_experts)
            if not isinstance(selection, torch.Tensor) or selection.dtype != torch.bool or tuple(selection.shape) != want:
                raise MoEError(f"selection must be a bool tensor of shape (batch, positions, layers, experts) = {want}, "
                               f"got {getattr(selection, 'dtype', type(selection).__name__)} "
                               f"{tuple(getattr(selection, 'shape', ()))}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)
                                  or not 1 <= top_k <= self.n_experts):
            raise MoEError(f"top_k must be an integer in 1..{self.n_experts}, got {top_k!r}")
        if rank_by not in RANK_BY:
            raise MoEError(f"rank_by must be one of {', '.join(RANK_BY)}, got {rank_by!r}")

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                selection: Optional[torch.Tensor] = None, top_k: Optional[int] = None, rank_by: str = "router",
                selector: Optional[Selector] = None, **model_kwargs) -> MoEOutput:
        """One forward pass of the MoE; see :meth:`logits` for the selection arguments.

        ``model_kwargs`` go to the underlying model (e.g. ``cache`` and ``use_cache=True`` for
        incremental decoding; ``selection`` then covers the new positions only).
        """
        self._check_call(input_ids, selection, top_k, rank_by, selector)
        device = self.spec.permutation.device
        if selection is not None:
            selection = selection.to(device)
        plan = _Plan(selection=selection, top_k=top_k, rank_by=rank_by, selector=selector)
        model_kwargs.setdefault("use_cache", False)
        with self._planned(plan):
            out = self.model(input_ids=input_ids.to(device),
                             attention_mask=None if attention_mask is None else attention_mask.to(device),
                             **model_kwargs)
        scores = torch.stack([plan.scores[i] for i in range(self.n_layers)], dim=2).float()
        sel = torch.ones_like(scores, dtype=torch.bool)
        for i, m in plan.masks.items():
            sel[:, :, i] = m
        return MoEOutput(out.logits, scores, sel, out)

    def logits(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
               selection: Optional[torch.Tensor] = None, top_k: Optional[int] = None, rank_by: str = "router",
               selector: Optional[Selector] = None) -> torch.Tensor:
        """Logits ``(B, T, V)`` of the MoE with the experts chosen by one of:

        * ``selection``: a bool tensor ``(B, T, L, E)``, True = expert used;
        * ``top_k``: the ``k`` best experts of every (position, layer) by the router's scores
          (``rank_by="router"``) or by the true norms of the expert outputs (``"norm"``, an oracle);
        * ``selector(layer, scores) -> mask``: called at each layer with the router's scores
          ``(B, T, E)`` at that layer's actual input;
        * none of these: every expert, i.e. exactly the dense model.

        An all-False row is allowed (the MLP then adds nothing); choosing a fallback is the caller's rule.
        """
        return self.forward(input_ids, attention_mask, selection, top_k, rank_by, selector).logits

    @torch.no_grad()
    def expert_records(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                       with_logits: bool = True) -> ExpertRecords:
        """Router scores, expert-output Gram matrices and residual norms from ONE dense pass
        (``with_logits=False`` skips the LM head; ``logits`` is then None)."""
        self._check_call(input_ids, None, None, "router", None)
        device = self.spec.permutation.device
        plan = _Plan(record=True)
        resid: dict[int, torch.Tensor] = {}
        hooks = []
        for i, layer in enumerate(self._layers):
            def pre(_mod, args, i=i):
                resid[i] = args[0].float().pow(2).sum(-1)
            hooks.append(layer.post_attention_layernorm.register_forward_pre_hook(pre))
        try:
            with self._planned(plan):
                run = self.model if with_logits else self.model.model
                out = run(input_ids=input_ids.to(device),
                          attention_mask=None if attention_mask is None else attention_mask.to(device),
                          use_cache=False)
        finally:
            for h in hooks:
                h.remove()
        rng = range(self.n_layers)
        return ExpertRecords(scores=torch.stack([plan.scores[i] for i in rng], dim=2).float(),
                             gram=torch.stack([plan.grams[i] for i in rng], dim=2).float(),
                             residual_norm2=torch.stack([resid[i] for i in rng], dim=2).float(),
                             logits=out.logits.float() if with_logits else None)


def moefy(model, spec: MoESpec, check_fingerprint: bool = True) -> MoEModel:
    """``MoEModel(model, spec)``: run ``model`` as the mixture of experts of ``spec``."""
    return MoEModel(model, spec, check_fingerprint)


def decoder_layers(model) -> list:
    """The decoder layers of a Llama-style causal LM."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise MoEError(f"cannot find the decoder layers of a {type(model).__name__} (expected model.model.layers)")
    return list(layers)
