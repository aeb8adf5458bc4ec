"""The student architecture shared by the SLM artifact loader and the distillation recipe.

A *student* is made of deep copies of chosen decoder layers of a teacher LLM, sharing its token
embeddings (and, unless trimmed, its LM head), optionally

* with MLP width pruning: each copied MLP keeps listed intermediate neurons;
* with a trimmed LM head (:class:`TrimmedLMHead`, a VocabTrim-style draft head);
* with low-rank adapters ``W + (alpha/r) B A`` on every linear map of the copied layers
  (:class:`LoRALinear`), trained by :mod:`hlm_gym.lm.distill` and folded into the weights by
  :func:`merge_student` when :mod:`hlm_gym.lm.slm` loads the shipped artifact.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from hlm_gym.errors import HLMGymError

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class DistillError(HLMGymError, ValueError):
    """Bad distillation settings (layer indices, rank, budget) or a broken run folder."""


class LoRALinear(nn.Module):
    """``y = x W^T (+ b) + scale * (x A^T) B^T`` with ``W`` frozen and ``A``, ``B`` trainable."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator):
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.rank = rank
        self.scale = alpha / rank
        a = torch.empty(rank, base.in_features)
        bound = 1.0 / math.sqrt(base.in_features)
        a.uniform_(-bound, bound, generator=generator)
        self.lora_A = nn.Parameter(a)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The adapted linear map."""
        return self.base(x) + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scale

    def merged_weight(self, a: torch.Tensor | None = None, b: torch.Tensor | None = None) -> torch.Tensor:
        """``W + scale * B A`` (with ``a``/``b`` in place of the adapters when given)."""
        a = self.lora_A if a is None else a
        b = self.lora_B if b is None else b
        w = self.base.weight
        return w + (b.to(w.dtype) @ a.to(w.dtype)) * self.scale


class TrimmedLMHead(nn.Module):
    """An LM head over a subset ``ids`` of the vocabulary (a VocabTrim-style draft head).

    Holds the rows ``W[ids]`` of the full head, so a decode step costs ``h x len(ids)``
    multiply-accumulates instead of ``h x V``. :meth:`forward` returns full-vocabulary logits
    (``FILL`` outside the kept set, so those tokens get probability 0 but stay finite in
    log space), which keeps the SLM a drop-in causal LM for verification; :meth:`kept_logits`
    gives the ``len(ids)`` logits alone (training).
    """

    FILL = -1.0e4

    def __init__(self, full_weight: torch.Tensor, ids: torch.Tensor):
        super().__init__()
        ids = torch.as_tensor(ids, dtype=torch.long)
        self.vocab_size = int(full_weight.shape[0])
        self.register_buffer("ids", ids.clone(), persistent=False)
        self.weight = nn.Parameter(full_weight.detach()[ids].clone(), requires_grad=False)

    @property
    def out_rows(self) -> int:
        """Number of vocabulary rows the head multiplies by (for FLOP counts)."""
        return int(self.ids.numel())

    def kept_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Logits of the kept tokens only, ``(..., len(ids))``."""
        return F.linear(h, self.weight)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary logits, :attr:`FILL` outside the kept set."""
        z = self.kept_logits(h)
        out = z.new_full((*z.shape[:-1], self.vocab_size), self.FILL)
        out[..., self.ids] = z
        return out


def validate_vocab(ids, vocab_size: int) -> torch.Tensor:
    """Check a kept-vocabulary id list (unique, in range) and return it as a sorted long tensor."""
    t = torch.as_tensor(ids, dtype=torch.long).flatten()
    if t.numel() == 0:
        raise DistillError("the kept vocabulary is empty")
    if int(t.min()) < 0 or int(t.max()) >= vocab_size:
        raise DistillError(f"kept vocabulary ids must lie in 0..{vocab_size - 1}, "
                           f"got range {int(t.min())}..{int(t.max())}")
    if torch.unique(t).numel() != t.numel():
        raise DistillError("kept vocabulary ids must be unique")
    return torch.sort(t).values


def slice_linear(lin: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    """A bias-free frozen copy of ``lin`` keeping the output ``rows`` and input ``cols`` given."""
    w = lin.weight.detach()
    if rows is not None:
        w = w[rows]
    if cols is not None:
        w = w[:, cols]
    out = nn.Linear(w.shape[1], w.shape[0], bias=False, device=w.device, dtype=w.dtype)
    out.weight = nn.Parameter(w.clone(), requires_grad=False)
    return out


def validate_layers(layers: list[int], n_total: int) -> list[int]:
    """Check a list of teacher layer indices (in range, unique, increasing)."""
    if not layers:
        raise DistillError("at least one layer is needed")
    bad = [i for i in layers if not isinstance(i, int) or not 0 <= i < n_total]
    if bad:
        raise DistillError(f"layer indices {bad} out of range 0..{n_total - 1}")
    if sorted(set(layers)) != list(layers):
        raise DistillError(f"layer indices must be unique and increasing, got {layers}")
    return list(layers)


def validate_rank(rank: int) -> int:
    """Check a LoRA rank (a positive integer)."""
    if not isinstance(rank, int) or rank <= 0:
        raise DistillError(f"rank must be a positive integer, got {rank!r}")
    return rank


def build_student(llm, layers: list[int], rank: int | None, alpha: float | None = None,
                  seed: int = 0, vocab_ids=None, mlp_keep=None) -> nn.Module:
    """A student made of deep copies of ``llm``'s ``layers``, sharing embeddings and LM head.

    With ``rank`` set, every linear map of the copied layers is wrapped in a
    :class:`LoRALinear`. Only adapters and RMSNorm weights of the student are trainable.
    With ``vocab_ids`` set, the LM head is a :class:`TrimmedLMHead` over those tokens. With
    ``mlp_keep`` (``(len(layers), width)`` neuron indices, see
    :func:`hlm_gym.lm.distill.top_neurons`), each copied MLP keeps only those intermediate
    neurons (width pruning; ``config.intermediate_size`` becomes ``width``).
    """
    n_total = llm.config.num_hidden_layers
    layers = validate_layers(list(layers), n_total)
    if rank is not None:
        validate_rank(rank)
    alpha = float(alpha if alpha is not None else (rank or 1))
    config = copy.deepcopy(llm.config)
    config.num_hidden_layers = len(layers)
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [llm.config.layer_types[i] for i in layers]
    if vocab_ids is not None:
        vocab_ids = validate_vocab(vocab_ids, int(llm.lm_head.weight.shape[0]))
        config.tie_word_embeddings = False
    if mlp_keep is not None:
        mlp_keep = torch.as_tensor(mlp_keep, dtype=torch.long)
        inter = int(llm.config.intermediate_size)
        if mlp_keep.ndim != 2 or mlp_keep.shape[0] != len(layers) or mlp_keep.numel() == 0:
            raise DistillError(f"kept MLP neurons must have shape ({len(layers)}, width), "
                               f"got {tuple(mlp_keep.shape)}")
        if int(mlp_keep.min()) < 0 or int(mlp_keep.max()) >= inter:
            raise DistillError(f"kept MLP neuron indices must lie in 0..{inter - 1}")
        config.intermediate_size = int(mlp_keep.shape[1])
    with torch.device("meta"):
        student = type(llm)(config)
    student.model.embed_tokens = llm.model.embed_tokens
    if vocab_ids is None:
        student.lm_head = llm.lm_head
    else:
        student.lm_head = TrimmedLMHead(llm.lm_head.weight, vocab_ids)
    student.model.rotary_emb = llm.model.rotary_emb
    student.model.norm = copy.deepcopy(llm.model.norm)
    student.model.layers = nn.ModuleList(copy.deepcopy(llm.model.layers[i]) for i in layers)
    for p in student.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    for new_idx, layer in enumerate(student.model.layers):
        layer.self_attn.layer_idx = new_idx
        if mlp_keep is not None:
            k = mlp_keep[new_idx].to(layer.mlp.down_proj.weight.device)
            layer.mlp.gate_proj = slice_linear(layer.mlp.gate_proj, rows=k)
            layer.mlp.up_proj = slice_linear(layer.mlp.up_proj, rows=k)
            layer.mlp.down_proj = slice_linear(layer.mlp.down_proj, cols=k)
            layer.mlp.intermediate_size = int(k.numel())
        if rank is not None:
            for parent in (layer.self_attn, layer.mlp):
                for name in LORA_TARGETS:
                    if hasattr(parent, name):
                        setattr(parent, name, LoRALinear(getattr(parent, name), rank, alpha, gen))
    for name, p in student.named_parameters():
        if "lora_" in name or "norm" in name and "embed" not in name:
            if name.startswith("lm_head") or "embed_tokens" in name:
                continue
            p.requires_grad_(True)
    student.hlm_mlp_keep = None if mlp_keep is None else mlp_keep.cpu()  # exported with the delta
    return student.eval()


def delta_state(student) -> dict[str, torch.Tensor]:
    """The trainable tensors (adapters and norms) of a student, by parameter name."""
    return {n: p.detach() for n, p in student.named_parameters() if p.requires_grad}


def merge_student(student) -> None:
    """Fold every :class:`LoRALinear` of ``student`` into a plain ``nn.Linear`` (in place)."""
    for layer in student.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name in LORA_TARGETS:
                mod = getattr(parent, name, None)
                if isinstance(mod, LoRALinear):
                    with torch.no_grad():
                        lin = mod.base
                        lin.weight = nn.Parameter(mod.merged_weight(), requires_grad=False)
                    setattr(parent, name, lin)
    for p in student.parameters():
        p.requires_grad_(False)

