"""Per-token FLOPs of a decoder-only (llama-style) causal LM, counted from its config.

Every matrix product of one decode step is counted, at 2 FLOPs per multiply-accumulate:

* per decoder layer: the q, k, v, o projections (``h x n_heads*d``, ``h x n_kv*d`` twice,
  ``n_heads*d x h``), the gated MLP (gate, up: ``h x I``; down: ``I x h``), and the attention
  score and value products against ``context`` cached positions (``n_heads * d * context``
  each);
* the LM head (``h x V``), whether or not it is tied to the embeddings; a trimmed draft head
  over ``V' < V`` kept tokens (``head_rows``) costs ``h x V'``.

The embedding lookup, norms, rotary embedding, softmax and activations are not matrix
products and are left out (they are O(h) per token).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from hlm_gym.errors import HLMGymError


class FlopsError(HLMGymError, ValueError):
    """A config lacks the fields needed to count FLOPs, or a count argument is invalid."""


@dataclass(frozen=True)
class TokenFlops:
    """FLOPs (2 x MACs) of generating one token, with the parts it is made of."""

    attention_proj: int
    attention_context: int
    mlp: int
    lm_head: int
    n_layers: int
    context: int

    @property
    def per_layer(self) -> int:
        return (self.attention_proj + self.attention_context + self.mlp) // max(self.n_layers, 1)

    @property
    def total(self) -> int:
        return self.attention_proj + self.attention_context + self.mlp + self.lm_head

    def as_dict(self) -> dict:
        d = asdict(self)
        d["total"] = self.total
        return d


def _get(config, name: str, default=None):
    value = getattr(config, name, default)
    if value is None:
        raise FlopsError(f"config has no {name!r}; cannot count FLOPs")
    return value


def token_flops(config, context: int = 0, n_layers: int | None = None,
                head_rows: int | None = None) -> TokenFlops:
    """FLOPs of one decode step of a llama-style model described by ``config``.

    ``context`` is the number of positions attended to (cached tokens plus the new one);
    ``n_layers`` overrides ``config.num_hidden_layers`` (e.g. for a layer subset);
    ``head_rows`` overrides ``config.vocab_size`` as the LM head's output rows.
    """
    if context < 0:
        raise FlopsError(f"context must be >= 0, got {context}")
    h = int(_get(config, "hidden_size"))
    n_heads = int(_get(config, "num_attention_heads"))
    n_kv = int(getattr(config, "num_key_value_heads", None) or n_heads)
    head_dim = int(getattr(config, "head_dim", None) or h // n_heads)
    inter = int(_get(config, "intermediate_size"))
    vocab = int(head_rows if head_rows is not None else _get(config, "vocab_size"))
    if vocab < 1:
        raise FlopsError(f"head_rows must be >= 1, got {vocab}")
    layers = int(n_layers if n_layers is not None else _get(config, "num_hidden_layers"))
    if layers < 0:
        raise FlopsError(f"n_layers must be >= 0, got {layers}")
    q_out, kv_out = n_heads * head_dim, n_kv * head_dim
    attn_proj = h * q_out + 2 * h * kv_out + q_out * h
    attn_ctx = 2 * n_heads * head_dim * context
    mlp = 3 * h * inter
    return TokenFlops(
        attention_proj=2 * layers * attn_proj,
        attention_context=2 * layers * attn_ctx,
        mlp=2 * layers * mlp,
        lm_head=2 * h * vocab,
        n_layers=layers,
        context=context,
    )


def model_token_flops(model, context: int = 0) -> TokenFlops:
    """:func:`token_flops` for a loaded Hugging Face model (its config, and its head's rows).

    A head that exposes ``out_rows`` (:class:`hlm_gym.lm.student.TrimmedLMHead`) is counted
    at that many rows.
    """
    head = getattr(model, "lm_head", None)
    rows = getattr(head, "out_rows", None)
    return token_flops(model.config, context=context, head_rows=rows)


def max_context_within_ratio(draft, target, ratio: float = 0.5) -> int | None:
    """Largest context at which ``draft``'s per-token FLOPs are at most ``ratio`` x ``target``'s.

    Both counts are linear in the context (:func:`model_token_flops`), so the answer is exact.
    Returns ``None`` when the bound holds at every context, and ``0`` when it fails already
    at context 1 (the first decode step).
    """
    if not 0 < ratio:
        raise FlopsError(f"ratio must be > 0, got {ratio}")
    d0, d1 = model_token_flops(draft, 0).total, model_token_flops(draft, 1).total
    t0, t1 = model_token_flops(target, 0).total, model_token_flops(target, 1).total
    slack0 = ratio * t0 - d0  # margin at context 0
    slope = (d1 - d0) - ratio * (t1 - t0)  # how fast the margin shrinks per context position
    if slope <= 0:
        return None if slack0 >= 0 else 0
    if slack0 < slope:  # already fails at context 1
        return 0
    return int(slack0 // slope)
