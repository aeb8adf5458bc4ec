"""Live mode of the WDMoE family: the real MoE in the loop, the true next-token loss measured.

For each sequence of the trace's split (a held-out prompt and its reference reply), the prompt
is run densely and then the reply is teacher-forced one token at a time through the MoE of
:mod:`hlm_gym.lm.moe` with the KV cache. At every (token, MoE layer) the router's gate weights
at the layer's *actual* input (which depends on the experts dropped before) and the devices'
current call times form the observation; the policy's action selects the experts that run
(an empty selection: the live top-1), and the env's kernel
(:class:`~hlm_gym.environments.wdmoe.kernel.WDMoEKernel`) charges the latency, energy and the
trace's quality proxy of that decision exactly as in trace mode. After the last layer the
logits give the negative log-likelihood of the reference token.

Per episode: the trace-mode metrics (latency, tokens/s, ``quality_loss`` proxy, ...), plus
``perplexity`` (``exp`` of the mean NLL of the reply tokens with the policy's selections),
``dense_perplexity`` (the same with every expert) and ``nll_increase`` (the mean NLL difference);
:func:`run_live` also returns, per token, the proxy (mean over layers of the decision's quality
loss) and the true NLL increase, for the proxy-vs-loss correlation.

Sequences are decoded in batches (left-padded prompts, explicit position ids), so the whole test
split takes minutes on a CPU.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

__all__ = ["LiveSequence", "LiveRun", "run_live", "sequences_from_traces"]


@dataclass(frozen=True)
class LiveSequence:
    """One live episode's text: the ``context`` token ids (the chat-templated prompt) and the
    reference ``reply`` token ids (one decision per reply token and layer), and the trace prompt
    whose rows (quality proxy) and start the episode uses."""

    context: tuple[int, ...]
    reply: tuple[int, ...]
    prompt: int


@dataclass
class LiveRun:
    """What :func:`run_live` measured: per-episode metrics and per-token (proxy, NLL increase) pairs."""

    episodes: list[dict[str, float]]
    token_proxy: np.ndarray
    token_nll_increase: np.ndarray
    wall_s: float
    extra: dict[str, Any] = field(default_factory=dict)


def sequences_from_traces(traces: Any) -> list[LiveSequence]:
    """The live sequences of a WDMoE trace: each prompt's chat-templated context
    (``meta["prompt_token_ids"]``) and its reply token ids, as recorded."""
    off = np.asarray(traces.prompt_offsets, dtype=np.int64) // int(traces.n_layers)
    out = []
    for p in range(len(off) - 1):
        context = tuple(int(t) for t in traces.meta["prompt_token_ids"][p])
        reply = tuple(int(t) for t in np.asarray(traces.token_ids)[off[p]:off[p + 1]])
        out.append(LiveSequence(context, reply, p))
    return out


def _left_pad(seqs: Sequence[Sequence[int]], pad: int) -> tuple[Any, Any]:
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids, mask


def _cache_of(output: Any) -> Any:
    """The KV cache of a model output (``cache`` in newer transformers, ``past_key_values`` before)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _dense_nll(moe: Any, batch: Sequence[LiveSequence], pad: int) -> list[np.ndarray]:
    """Per sequence, the dense model's NLL of each reply token (one teacher-forced pass)."""
    import torch

    full = [list(s.context) + list(s.reply) for s in batch]
    ids, mask = _left_pad(full, pad)
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = moe.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
    logp = torch.log_softmax(logits.float(), -1)
    out = []
    W = ids.shape[1]
    for i, s in enumerate(batch):
        n = len(s.reply)
        # position j predicts token j + 1: the reply's tokens are the last n of the row
        tgt = ids[i, W - n:]
        lp = logp[i, W - n - 1:W - 1].gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
        out.append((-lp).double().numpy())
    return out


def run_live(moe: Any, sim: Any, policy: Any, sequences: Sequence[LiveSequence], seed: int,
             batch_size: int = 32, progress: Optional[Callable[[int], None]] = None) -> LiveRun:
    """Run ``policy`` live on ``sequences`` (one episode each) in the MoE ``moe`` with the env state of
    ``sim`` (a WDMoE :class:`~hlm_gym.environments.wdmoe.simulation.Simulation`); ``seed`` draws each
    episode's channel realisation and start time (episode ``j``: generator ``seed + j``)."""
    import torch

    from hlm_gym.environments.backends import NumpyOps
    from hlm_gym.environments.episodes import EpisodeDraw
    from hlm_gym.environments.wdmoe.kernel import WDMoEKernel
    from hlm_gym.environments.wdmoe.observation import obs_bounds

    tok = moe.tokenizer
    pad = int(tok.pad_token_id if tok is not None and tok.pad_token_id is not None else 0)
    E, L = sim.n_experts, sim.tables.n_layers
    draw = EpisodeDraw(sim.n_prompts, sim.bank_size, sim.points)
    episodes: list[dict[str, float]] = []
    proxies, increases = [], []
    t0 = time.perf_counter()
    done_count = 0
    for b0 in range(0, len(sequences), batch_size):
        batch = list(sequences[b0:b0 + batch_size])
        B = len(batch)
        lengths = np.array([len(s.reply) for s in batch])
        dense = _dense_nll(moe, batch, pad)
        kernel = WDMoEKernel(sim, NumpyOps(), B)
        gens = [np.random.default_rng(seed + b0 + i) for i in range(B)]
        _, real, phase = draw.draw(gens, range(B))
        kernel.reset(np.arange(B), np.array([s.prompt for s in batch]), real, phase)
        obs = np.zeros((B, len(obs_bounds(E)[0])), dtype=np.float32)
        # the context but its last token, densely, into the cache
        ctx_ids, ctx_mask = _left_pad([s.context[:-1] for s in batch], pad)
        with torch.no_grad():
            out = moe.model(input_ids=ctx_ids, attention_mask=ctx_mask,
                            position_ids=(ctx_mask.cumsum(1) - 1).clamp(min=0), use_cache=True)
        cache, mask = _cache_of(out), ctx_mask
        next_pos = ctx_mask.sum(1)
        nll = np.full((B, int(lengths.max())), np.nan)
        q_token = np.zeros((B, int(lengths.max())))
        finals: list[Optional[dict[str, float]]] = [None] * B
        policy.reset(B)
        for t in range(int(lengths.max())):
            active = t < lengths
            feed = [pad if not a else (s.context[-1] if t == 0 else s.reply[t - 1]) for s, a in zip(batch, active)]
            q_sum = np.zeros(B)

            def select(layer: int, scores: Any) -> Any:
                s = scores[:, 0].float().cpu().numpy()
                kernel.row = np.minimum(kernel.row, len(kernel.denom) - 1)
                kernel.observe(obs, np.arange(B), scores=s)
                _, _, info = kernel.step(np.asarray(policy.act(obs), dtype=np.int64), scores=s)
                q_sum[:] += info["step_quality_loss"]
                if layer == L - 1:
                    for i in np.flatnonzero(active & (t == lengths - 1)):
                        finals[i] = {k: float(v[0]) for k, v in kernel.episode_metrics(np.array([i])).items()}
                return torch.as_tensor(info["selection"][:, None, :])

            mask = torch.cat([mask, torch.ones((B, 1), dtype=mask.dtype)], 1)
            with torch.no_grad():
                o = moe.forward(torch.tensor(feed, dtype=torch.long)[:, None], mask, selector=select,
                                cache=cache, use_cache=True, position_ids=next_pos[:, None])
            cache = _cache_of(o.model_output)
            next_pos = next_pos + 1
            logp = torch.log_softmax(o.logits[:, -1].float(), -1)
            for i in np.flatnonzero(active):
                nll[i, t] = -float(logp[i, batch[i].reply[t]])
                q_token[i, t] = q_sum[i] / L
        for i, s in enumerate(batch):
            n = lengths[i]
            m = finals[i] or {}
            inc = nll[i, :n] - dense[i][:n]
            ep = {"prompt": s.prompt, **m, "perplexity": math.exp(float(np.mean(nll[i, :n]))),
                  "dense_perplexity": math.exp(float(np.mean(dense[i][:n]))), "nll_increase": float(np.mean(inc))}
            episodes.append(ep)
            proxies.append(q_token[i, :n])
            increases.append(inc)
            done_count += 1
            if progress:
                progress(done_count)
    return LiveRun(episodes=episodes, token_proxy=np.concatenate(proxies) if proxies else np.zeros(0),
                   token_nll_increase=np.concatenate(increases) if increases else np.zeros(0),
                   wall_s=time.perf_counter() - t0)
