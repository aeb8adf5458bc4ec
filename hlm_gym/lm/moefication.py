"""The MoEfication recipe (``hlm-gym moe build``): experts and routers from a dense model's MLPs.

Following Zhang et al., "MoEfication: Transformer Feed-forward Layers are Mixtures of Experts"
(arXiv 2110.01786), adapted to SiLU-gated MLPs:

1. **Statistics** (one pass, no LM head): chat-templated ShareGPT **train** conversations
   (prompt + reference reply, cut to ``seq_len`` tokens) run through the dense model. At every
   real token and layer the recipe keeps the MLP input ``x`` (the post-attention RMSNorm output)
   and accumulates the co-activation matrix ``C = |A|^T |A|`` of the neuron activations
   ``a = silu(gate(x)) * up(x)`` (``A``: tokens x neurons).
2. **Experts** (per layer): neurons are grouped by co-activation. ``C`` normalised to cosine
   similarities of the neurons' activation profiles is factored (``sklearn``'s randomized SVD); its top
   ``embed_dim`` eigenvectors scaled by the square roots of their eigenvalues embed each neuron
   so that Euclidean distances approximate distances between its (unit-norm) activation profile
   and the others'. Balanced k-means on these embeddings gives ``E`` equal experts: k-means++
   centres (``sklearn.cluster.KMeans``), then Lloyd iterations whose assignment step is a
   balanced assignment (``scipy.optimize.linear_sum_assignment`` with each centre offered
   ``I / E`` times). The permutation lists the neurons expert by expert.
3. **Routers** (all layers trained together as batched matrices): a small MLP
   ``D -> H -> E`` per layer on the standardised input ``x`` (the standardisation is folded
   into the first layer at export), trained by cross-entropy to predict each expert's share
   ``||y_e|| / sum_f ||y_f||`` of the output norms (Adam, cosine learning-rate decay). The
   conversations are split by sequence into training rows and held-out rows (``holdout``).
4. **Diagnostics** on the held-out rows, in ``meta['diagnostics']``: the relative MLP error
   ``||sum_{dropped} y_e||^2 / ||sum_e y_e||^2`` of the router's top-k and of the oracle top-k
   (by true ``||y_e||``), and the oracle top-k of a random equal-size partition (what the
   clustering buys), for k = 1, 2, 4; the router's top-1 agreement with the oracle's.

Every random draw comes from generators seeded with ``seed``; on one machine the recipe is a
deterministic function of its settings.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from hlm_gym.lm.chat_examples import encode_example
from hlm_gym.lm.moe import MoEError, MoESpec, decoder_layers, split_expert_outputs, make_spec, save_moe_spec

__all__ = ["MoEBuildConfig", "balanced_clusters", "build_moe", "build_embedded_moe", "collect_statistics", "describe",
           "expert_norms", "permutation_from_labels", "relative_errors", "token_batches", "train_routers"]


@dataclass(frozen=True)
class MoEBuildConfig:
    """Settings of the MoEfication recipe (see the module docstring)."""

    n_experts: int = 8
    tokens: int = 24576          # real tokens of ShareGPT train conversations to run
    seq_len: int = 256           # tokens per conversation (prompt <= seq_len // 2, then the reply)
    batch_size: int = 8          # conversations per forward pass
    seed: int = 0
    embed_dim: int = 64          # spectral embedding dimensions for clustering
    kmeans_iters: int = 30       # balanced Lloyd iterations at most
    router_hidden: int = 32
    router_epochs: int = 30
    router_batch: int = 1024
    router_lr: float = 3e-3
    router_weight_decay: float = 1e-4
    holdout: float = 0.1         # fraction of conversations held out for the diagnostics

    def check(self, intermediate_size: Optional[int] = None) -> None:
        """Raise :class:`MoEError` (one line) for a setting out of range."""
        for name in ("n_experts", "tokens", "seq_len", "batch_size", "embed_dim", "kmeans_iters", "router_hidden",
                     "router_epochs", "router_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MoEError(f"MoE recipe setting {name} must be a positive integer, got {value!r}")
        if self.n_experts < 2:
            raise MoEError(f"an MoE needs at least 2 experts, got {self.n_experts}")
        if intermediate_size is not None and intermediate_size % self.n_experts:
            raise MoEError(f"{self.n_experts} experts do not divide the {intermediate_size} MLP neurons evenly")
        if self.seq_len < 8:
            raise MoEError(f"seq_len must be >= 8, got {self.seq_len}")
        if not 0.0 < self.holdout < 0.5:
            raise MoEError(f"holdout must be in (0, 0.5), got {self.holdout}")
        if not (self.router_lr > 0 and math.isfinite(self.router_lr)) or self.router_weight_decay < 0:
            raise MoEError("router_lr must be positive and router_weight_decay >= 0")


# ----------------------------------------------------------------------------- data
def token_batches(tokenizer, prompts, n_tokens: int, seq_len: int, batch_size: int,
                  seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Right-padded ``(ids, attention_mask)`` batches of chat-templated conversations, ``n_tokens`` real tokens.

    Conversations (prompt <= ``seq_len // 2`` tokens, then the reference reply) are taken in an
    order shuffled with ``seed`` and cut to ``seq_len`` tokens; the last one is cut so the total
    is exactly ``n_tokens`` (when the prompts hold that much).
    """
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    seqs: list[list[int]] = []
    total = 0
    for i in order:
        enc = encode_example(tokenizer, prompts[i], max_prompt_tokens=seq_len // 2, max_reply_tokens=seq_len)
        if enc is None:
            continue
        ids = enc[0][:min(seq_len, n_tokens - total)]
        if len(ids) < 2:
            break
        seqs.append(ids)
        total += len(ids)
        if total >= n_tokens:
            break
    if not seqs:
        raise MoEError("no usable conversations for the MoE recipe")
    return _pad_batches(seqs, batch_size)


def _pad_batches(seqs: list[list[int]], batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for k in range(0, len(seqs), batch_size):
        group = seqs[k:k + batch_size]
        width = max(len(s) for s in group)
        ids = torch.zeros(len(group), width, dtype=torch.long)
        mask = torch.zeros(len(group), width, dtype=torch.long)
        for r, s in enumerate(group):
            ids[r, :len(s)] = torch.tensor(s)
            mask[r, :len(s)] = 1
        out.append((ids, mask))
    return out


# ----------------------------------------------------------------------------- statistics
@torch.no_grad()
def collect_statistics(model, batches, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One dense pass over ``batches``: the MLP inputs ``(L, N, D)`` float32 at the N real tokens and
    the co-activation matrices ``(L, I, I)`` float64 ``|A|^T |A|`` of the MLP activations."""
    from tqdm.auto import tqdm

    layers = decoder_layers(model)
    n_layers = len(layers)
    d = layers[0].mlp.down_proj.out_features
    n_neurons = layers[0].mlp.down_proj.in_features
    n_total = int(sum(int(m.sum()) for _, m in batches))
    xs = torch.zeros(n_layers, n_total, d, dtype=torch.float32)
    coact = torch.zeros(n_layers, n_neurons, n_neurons, dtype=torch.float64)
    state = {"rows": None, "offset": 0}
    hooks = []
    for i, layer in enumerate(layers):
        def x_hook(_mod, args, i=i):
            x = args[0].reshape(-1, args[0].shape[-1])[state["rows"]].float()
            xs[i, state["offset"]:state["offset"] + x.shape[0]] = x

        def a_hook(_mod, args, i=i):
            a = args[0].reshape(-1, args[0].shape[-1])[state["rows"]].float().abs()
            coact[i] += (a.T @ a).double()
        hooks.append(layer.mlp.register_forward_pre_hook(x_hook))
        hooks.append(layer.mlp.down_proj.register_forward_pre_hook(a_hook))
    base = model.model
    device = next(model.parameters()).device
    try:
        for ids, mask in tqdm(batches, desc="moe: statistics", unit="batch", disable=not progress, dynamic_ncols=True):
            state["rows"] = mask.reshape(-1).bool().to(device)
            base(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
            state["offset"] += int(mask.sum())
    finally:
        for h in hooks:
            h.remove()
    return xs, coact


# ----------------------------------------------------------------------------- experts
def balanced_clusters(coact: np.ndarray, n_experts: int, embed_dim: int = 64, iters: int = 30,
                      seed: int = 0) -> np.ndarray:
    """Labels ``(I,)`` in ``0..E-1``, each used ``I / E`` times, grouping neurons that fire together.

    ``coact`` is the ``(I, I)`` co-activation matrix ``|A|^T |A|``; see the module docstring.
    """
    from scipy.optimize import linear_sum_assignment
    from sklearn.cluster import KMeans
    from sklearn.utils.extmath import randomized_svd

    c = np.asarray(coact, dtype=np.float64)
    n = c.shape[0]
    if n % n_experts:
        raise MoEError(f"{n_experts} experts do not divide {n} neurons")
    size = n // n_experts
    diag = np.sqrt(np.maximum(np.diag(c), 1e-30))
    cos = c / diag[:, None] / diag[None, :]
    k = min(embed_dim, n)
    # cos is positive semi-definite: its top singular pairs are its top eigenpairs
    evecs, evals, _ = randomized_svd(cos, k, n_iter=7, random_state=seed)
    z = evecs * np.sqrt(evals)[None, :]
    centres = KMeans(n_experts, n_init=4, random_state=seed).fit(z).cluster_centers_
    labels = None
    for _ in range(iters):  # Lloyd iterations with a greedy balanced assignment step
        new = _greedy_balanced(_sq_dist(z, centres), size)
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        centres = np.stack([z[labels == e].mean(0) for e in range(n_experts)])
    # the final assignment to the converged centres is the optimal balanced one
    _, slot = linear_sum_assignment(np.repeat(_sq_dist(z, centres), size, axis=1))
    labels = slot // size
    return labels.astype(np.int64)


def _sq_dist(z: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """``(I, E)`` squared Euclidean distances of the rows of ``z`` to the centres."""
    return (z * z).sum(1)[:, None] - 2.0 * z @ centres.T + (centres * centres).sum(1)[None, :]


def _greedy_balanced(cost: np.ndarray, size: int) -> np.ndarray:
    """Assign rows to columns, ``size`` rows per column, taking (row, column) pairs cheapest first."""
    n, e = cost.shape
    labels = np.full(n, -1, dtype=np.int64)
    free = np.full(e, size, dtype=np.int64)
    for flat in np.argsort(cost, axis=None, kind="stable"):
        i, j = divmod(int(flat), e)
        if labels[i] < 0 and free[j] > 0:
            labels[i] = j
            free[j] -= 1
    return labels


def permutation_from_labels(labels: np.ndarray, n_experts: int) -> np.ndarray:
    """Neurons listed expert by expert (ascending within an expert)."""
    return np.concatenate([np.flatnonzero(labels == e) for e in range(n_experts)]).astype(np.int64)


# ----------------------------------------------------------------------------- routers
@torch.no_grad()
def expert_norms(mlp, perm: torch.Tensor, n_experts: int, x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """``(N, E)`` norms ``||y_e||`` of the expert outputs for MLP inputs ``x`` ``(N, D)``."""
    out = []
    for k in range(0, x.shape[0], chunk):
        xc = x[k:k + chunk]
        a = mlp.act_fn(mlp.gate_proj(xc)) * mlp.up_proj(xc)
        out.append(split_expert_outputs(a, mlp.down_proj.weight, perm, n_experts).float().norm(dim=-1))
    return torch.cat(out)


def relative_errors(y: torch.Tensor, rank: torch.Tensor, ks: tuple[int, ...]) -> dict[int, float]:
    """Mean over rows of ``||sum_{dropped} y_e||^2 / ||sum_e y_e||^2`` keeping the top-k of ``rank``.

    ``y``: ``(N, E, D)`` expert outputs, ``rank``: ``(N, E)`` scores (higher = keep first).
    """
    total = y.sum(1).pow(2).sum(-1).clamp_min(1e-20)
    order = rank.argsort(dim=-1, descending=True)
    out = {}
    for k in ks:
        keep = torch.zeros_like(rank, dtype=torch.bool).scatter_(-1, order[:, :k], True)
        dropped = (y * (~keep)[..., None].to(y.dtype)).sum(1)
        out[k] = float((dropped.pow(2).sum(-1) / total).mean())
    return out


def train_routers(xs: torch.Tensor, targets: torch.Tensor, cfg: MoEBuildConfig, train_rows: torch.Tensor,
                  progress: bool = False) -> tuple[dict[str, torch.Tensor], dict]:
    """Fit every layer's router at once; returns the (folded) weights and a training summary.

    ``xs``: ``(L, N, D)`` MLP inputs, ``targets``: ``(L, N, E)`` expert output norms,
    ``train_rows``: the row indices to train on.
    """
    from tqdm.auto import tqdm

    n_layers, _, d = xs.shape
    e, h = targets.shape[-1], cfg.router_hidden
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    x_tr = xs[:, train_rows]
    mu = x_tr.mean(1)
    sd = x_tr.std(1).clamp_min(1e-6)
    p_tr = targets[:, train_rows] / targets[:, train_rows].sum(-1, keepdim=True).clamp_min(1e-20)
    w1 = (torch.randn(n_layers, h, d, generator=gen) / math.sqrt(d)).requires_grad_()
    b1 = torch.zeros(n_layers, h, requires_grad=True)
    w2 = (torch.randn(n_layers, e, h, generator=gen) / math.sqrt(h)).requires_grad_()
    b2 = torch.zeros(n_layers, e, requires_grad=True)
    params = [w1, b1, w2, b2]
    opt = torch.optim.AdamW(params, lr=cfg.router_lr, weight_decay=cfg.router_weight_decay)
    n = x_tr.shape[1]
    steps_per_epoch = max(1, math.ceil(n / cfg.router_batch))
    total = steps_per_epoch * cfg.router_epochs
    step, losses = 0, []
    bar = tqdm(total=total, desc="moe: routers", unit="step", disable=not progress, dynamic_ncols=True)
    for _ in range(cfg.router_epochs):
        order = torch.randperm(n, generator=gen)
        epoch_loss = 0.0
        for k in range(0, n, cfg.router_batch):
            idx = order[k:k + cfg.router_batch]
            xb = (x_tr[:, idx] - mu[:, None]) / sd[:, None]
            hid = torch.nn.functional.silu(torch.baddbmm(b1[:, None], xb, w1.transpose(1, 2)))
            logits = torch.baddbmm(b2[:, None], hid, w2.transpose(1, 2))
            loss = -(p_tr[:, idx] * torch.log_softmax(logits, -1)).sum(-1).mean()
            for g in opt.param_groups:
                g["lr"] = cfg.router_lr * 0.5 * (1 + math.cos(math.pi * step / total))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            epoch_loss += float(loss.detach()) * len(idx)
            step += 1
            bar.update(1)
        losses.append(epoch_loss / n)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    bar.close()
    with torch.no_grad():  # fold the standardisation into the first layer
        w1f = w1 / sd[:, None, :]
        b1f = b1 - (w1f * mu[:, None, :]).sum(-1)
    weights = {"w1": w1f.detach(), "b1": b1f.detach(), "w2": w2.detach(), "b2": b2.detach()}
    target_entropy = float(-(p_tr * p_tr.clamp_min(1e-20).log()).sum(-1).mean())
    return weights, {"epochs": cfg.router_epochs, "steps": step, "loss_by_epoch": [round(v, 5) for v in losses],
                     "target_entropy": round(target_entropy, 5)}


# ----------------------------------------------------------------------------- the recipe
def build_moe(model, batches, cfg: MoEBuildConfig, model_fingerprint: str = "", progress: bool = False,
              extra_meta: Optional[dict] = None) -> MoESpec:
    """Run the recipe on ``model`` over ``batches`` of ``(ids, attention_mask)``; return the spec."""
    from tqdm.auto import tqdm

    layers = decoder_layers(model)
    n_neurons = layers[0].mlp.down_proj.in_features
    cfg.check(n_neurons)
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    n_hold = max(1, round(len(batches) * cfg.holdout)) if len(batches) > 1 else 0
    xs, coact = collect_statistics(model, batches, progress)
    n_tokens = xs.shape[1]
    n_train = int(sum(int(m.sum()) for _, m in batches[:len(batches) - n_hold])) if n_hold else n_tokens
    t_stats = time.perf_counter() - t0

    e = cfg.n_experts
    perms = []
    for i in tqdm(range(len(layers)), desc="moe: experts", unit="layer", disable=not progress, dynamic_ncols=True):
        labels = balanced_clusters(coact[i].numpy(), e, cfg.embed_dim, cfg.kmeans_iters, cfg.seed + i)
        perms.append(permutation_from_labels(labels, e))
    del coact
    perm = torch.as_tensor(np.stack(perms))
    t_cluster = time.perf_counter() - t0 - t_stats

    mlps = [layer.mlp for layer in layers]
    device = next(model.parameters()).device
    targets = torch.stack([expert_norms(mlp, perm[i].to(device), e, xs[i].to(device)).cpu()
                           for i, mlp in enumerate(tqdm(mlps, desc="moe: targets", unit="layer",
                                                        disable=not progress, dynamic_ncols=True))])
    train_rows = torch.arange(n_train)
    hold_rows = torch.arange(n_train, n_tokens) if n_train < n_tokens else torch.arange(n_tokens)
    weights, summary = train_routers(xs, targets, cfg, train_rows, progress)
    t_router = time.perf_counter() - t0 - t_stats - t_cluster

    meta = {"recipe": "moefication: balanced k-means on co-activation embeddings, MLP routers predicting "
                      "expert output-norm shares",
            "config": asdict(cfg), "seed": cfg.seed, "model_fingerprint": model_fingerprint,
            "tokens": n_tokens, "train_tokens": n_train, "holdout_tokens": int(len(hold_rows)),
            "conversations": int(sum(b[0].shape[0] for b in batches)), "router": summary,
            "build_seconds": {"statistics": round(t_stats, 1), "experts": round(t_cluster, 1),
                              "routers": round(t_router, 1)},
            **(extra_meta or {})}
    spec = make_spec(e, perm, weights["w1"], weights["b1"], weights["w2"], weights["b2"], meta)
    meta["diagnostics"] = _diagnostics(mlps, spec, xs[:, hold_rows], cfg.seed)
    meta["build_seconds"]["total"] = round(time.perf_counter() - t0, 1)
    return make_spec(e, perm, weights["w1"], weights["b1"], weights["w2"], weights["b2"], meta)


@torch.no_grad()
def _diagnostics(mlps, spec: MoESpec, x_hold: torch.Tensor, seed: int, max_rows: int = 2048) -> dict:
    """Held-out relative MLP errors of router / oracle top-k and of a random partition's oracle top-k."""
    e = spec.n_experts
    ks = tuple(k for k in (1, 2, 4) if k < e)
    gen = torch.Generator().manual_seed(seed + 2)
    rows = torch.randperm(x_hold.shape[1], generator=gen)[:max_rows]
    router, oracle, rand, agree = [], [], [], []
    device = next(mlps[0].parameters()).device
    for i, mlp in enumerate(mlps):
        x = x_hold[i, rows].to(device)
        a = mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)
        y = split_expert_outputs(a, mlp.down_proj.weight, spec.permutation[i].to(device), e).float()
        norms = y.norm(dim=-1)
        scores = spec.to(device).router_scores(i, x)
        router.append(relative_errors(y, scores, ks))
        oracle.append(relative_errors(y, norms, ks))
        agree.append(float((scores.argmax(-1) == norms.argmax(-1)).float().mean()))
        rperm = torch.randperm(spec.intermediate_size, generator=gen).to(device)
        yr = split_expert_outputs(a, mlp.down_proj.weight, rperm, e).float()
        rand.append(relative_errors(yr, yr.norm(dim=-1), ks))

    def mean(rows_: list[dict]) -> dict:
        return {str(k): round(float(np.mean([r[k] for r in rows_])), 5) for k in ks}

    return {"rows": int(len(rows)), "relative_mlp_error": {"router_top_k": mean(router), "oracle_top_k": mean(oracle),
                                                           "random_partition_oracle_top_k": mean(rand)},
            "router_top1_agreement": round(float(np.mean(agree)), 5),
            "per_layer_router_top2_error": [round(r[2], 5) for r in router] if 2 in ks else None}


def build_embedded_moe(cfg: MoEBuildConfig, out: str | Path, progress: bool = True,
                       threads: Optional[int] = None) -> MoESpec:
    """Build the MoE of the embedded model (SmolLM2-135M-Instruct) on ShareGPT train text and save it in ``out``."""
    from hlm_gym.lm.chat_examples import train_prompts
    from hlm_gym.lm.models import EMBEDDED_LLM, load_model

    cfg.check()
    if threads:
        torch.set_num_threads(threads)
    llm = load_model(EMBEDDED_LLM)
    cfg.check(llm.model.config.intermediate_size)
    batches = token_batches(llm.tokenizer, train_prompts(), cfg.tokens, cfg.seq_len, cfg.batch_size, cfg.seed)
    spec = build_moe(llm.model, batches, cfg, llm.fingerprint, progress,
                     extra_meta={"model": llm.name, "model_spec": llm.spec, "data": "ShareGPT train split, "
                                 "chat-templated first turn + reference reply", "torch_threads": torch.get_num_threads()})
    save_moe_spec(spec, out)
    return spec


def describe(spec: MoESpec) -> str:
    """A few lines summarising a spec's provenance and held-out diagnostics."""
    m = spec.meta
    lines = [f"MoE spec {spec.fingerprint[:12]}: {spec.n_layers} layers x {spec.n_experts} experts of "
             f"{spec.expert_size} neurons, routers {spec.hidden_size}->{spec.router_hidden}->{spec.n_experts}",
             f"  built on {m.get('tokens')} tokens (seed {m.get('seed')}), model {str(m.get('model_fingerprint'))[:12]}"]
    diag = m.get("diagnostics")
    if diag:
        lines.append("  held-out relative MLP error: " + json.dumps(diag["relative_mlp_error"]))
        lines.append(f"  router top-1 agreement with the oracle: {diag['router_top1_agreement']}")
    return "\n".join(lines)
