"""Many responses of the hybrid loop decoded together: :class:`BatchedSession`.

The batch is left-padded into both models' KV caches once; every step feeds each active
response's last output token to the SLM *and* to the LLM (one batched forward each), so the
LLM's distribution ``p`` of every position is known whether the policy sends the draft or
skips it. That is the catch-up pass of :class:`hlm_gym.lm.decoding.HybridSession` done one
position at a time (the LLM's logits at a position depend only on the prefix, so they are the
same), and it gives each skipped draft its exact rejection probability
``beta = max(0, 1 - p(d)/q(d))`` and a realised verdict from a drawn uniform. Which compute
the LLM really spends is the cost model's business (:mod:`hlm_gym.wireless.cost`), not this
loop's.

Random numbers per response are those of :func:`hlm_gym.lm.draft_verify.prompt_generators`,
drawn in the same order as :class:`~hlm_gym.lm.decoding.HybridSession` (draft, signals, then
the verification uniform; a skip draws its uniform too, the residual draw happens only for a
sent, rejected draft), so a response decoded here equals the same seed's response decoded
alone for the same decisions (up to float-level differences of batched matmuls). The trace
builder is this session with every draft sent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from hlm_gym.lm.decoding import DecoderConfig, DecodingError
from hlm_gym.lm.draft_verify import prompt_generators, sample_draft, verify_draft
from hlm_gym.lm.model_types import ModelPair
from hlm_gym.lm.speculative import nucleus, truncated_draft
from hlm_gym.lm.uncertainty import SIGNAL_NAMES

__all__ = ["BatchedSession", "StepDrafts", "StepResult"]


@dataclass
class StepDrafts:
    """The current drafts of the active responses (``rows``: their indices in the batch)."""

    rows: np.ndarray
    tokens: np.ndarray
    q_draft: np.ndarray
    p_draft: np.ndarray
    beta: np.ndarray
    signals: dict[str, np.ndarray]
    q_probs: list[torch.Tensor]
    p_probs: torch.Tensor


@dataclass
class StepResult:
    """What happened at one position of each active response (arrays over ``rows``).

    ``accepted``/``beta``: the verdict and rejection probability with the distribution the LLM
    saw (after a top-k upload; a skip: ``True`` and the full ``beta``); ``accepted_full``/
    ``beta_full``: with the full distribution, the same uniform (for a skip: whether the LLM
    would have accepted the kept draft); ``uniform``: the verification draw (NaN in greedy mode).
    """

    rows: np.ndarray
    draft: np.ndarray
    token: np.ndarray
    sent: np.ndarray
    accepted: np.ndarray
    accepted_full: np.ndarray
    beta: np.ndarray
    beta_full: np.ndarray
    uniform: np.ndarray
    q_draft: np.ndarray
    p_draft: np.ndarray
    end: np.ndarray
    signals: dict[str, np.ndarray]


def _rejection(p_d: float, q_d: float) -> float:
    return max(0.0, 1.0 - p_d / q_d) if q_d > 0 else 0.0


class BatchedSession:
    """``B`` responses of the hybrid loop, one position of every active response per step.

    Use :meth:`drafts` (computed once per position), then :meth:`commit` with a send/skip
    decision (and optionally a top-k upload size) per active response.
    """

    def __init__(self, pair: ModelPair, prompts: Sequence[Sequence[int]], seeds: Sequence[int],
                 config: DecoderConfig, eos_token_id: Optional[int] = None) -> None:
        if len(prompts) != len(seeds) or not prompts:
            raise DecodingError(f"need one seed per prompt and at least one prompt, got {len(prompts)} prompts "
                                f"and {len(seeds)} seeds")
        lens = [len(p) for p in prompts]
        if min(lens) < 1:
            raise DecodingError("empty prompt: at least one token is needed")
        self.pair, self.config = pair, config
        self.device = pair.device
        self.eos_token_id = eos_token_id if eos_token_id is not None else getattr(pair.tokenizer, "eos_token_id", None)
        self.B = len(prompts)
        self._gens = [prompt_generators(int(s)) for s in seeds]
        self.outputs: list[list[int]] = [[] for _ in range(self.B)]
        L = max(lens)
        ids = torch.zeros((self.B, L), dtype=torch.long)
        mask = torch.zeros((self.B, L), dtype=torch.long)
        for b, p in enumerate(prompts):
            ids[b, L - lens[b]:] = torch.as_tensor(list(p), dtype=torch.long)
            mask[b, L - lens[b]:] = 1
        self._active = list(range(self.B))  # batch indices of the rows still in the caches
        self._mask = mask
        self._pos = (mask.cumsum(-1) - 1).clamp_min(0)
        self._slm_cache = self._llm_cache = None
        self._drafts: Optional[StepDrafts] = None
        self._forward(ids, self._pos)

    # ------------------------------------------------------------------ state
    @property
    def active(self) -> np.ndarray:
        """Batch indices of the responses still being decoded."""
        return np.asarray(self._active, dtype=np.int64)

    @property
    def done(self) -> bool:
        """Every response has ended (EOS or the length limit)."""
        return not self._active

    # ------------------------------------------------------------------ models
    def _forward(self, inp: torch.Tensor, pos: torch.Tensor) -> None:
        dev, T = self.device, self.config.temperature
        with torch.inference_mode():
            m, ps = self._mask.to(dev), pos.to(dev)
            so = self.pair.slm(inp.to(dev), attention_mask=m, position_ids=ps, cache=self._slm_cache,
                               use_cache=True, output_hidden_states=True)
            lo = self.pair.llm(inp.to(dev), attention_mask=m, position_ids=ps, cache=self._llm_cache, use_cache=True)
            self._slm_cache, self._llm_cache = so.cache, lo.cache
            self._s_logits = (so.logits[:, -1].float() / T).cpu()
            self._h_prev = so.hidden_states[-2][:, -1].cpu()
            self._h_last = so.hidden_states[-1][:, -1].cpu()
            self._p_all = nucleus(torch.softmax(lo.logits[:, -1].float() / T, dim=-1), self.config.top_p).cpu()
        self._drafts = None

    def drafts(self) -> StepDrafts:
        """The SLM's draft of every active response at its next position, with its signals and the
        LLM's probability of it."""
        if self.done:
            raise DecodingError("every response is finished; start a new session")
        if self._drafts is not None:
            return self._drafts
        c = self.config
        n = len(self._active)
        tokens, q_d, p_d = np.empty(n, np.int64), np.empty(n), np.empty(n)
        sig = {name: np.empty(n) for name in SIGNAL_NAMES}
        q_probs = []
        with torch.inference_mode():
            for j, b in enumerate(self._active):
                s = sample_draft(self._s_logits[j], self._h_prev[j], self._h_last[j], c.mode, self._gens[b],
                                 k=c.k, theta_max=c.theta_max, top_p=c.top_p)
                tokens[j], q_d[j], p_d[j] = s.token, s.q_draft, float(self._p_all[j, s.token])
                for name in SIGNAL_NAMES:
                    sig[name][j] = s.signals[name]
                q_probs.append(s.q_probs)
        beta = np.array([_rejection(p, q) for p, q in zip(p_d, q_d)])
        self._drafts = StepDrafts(self.active, tokens, q_d, p_d, beta, sig, q_probs, self._p_all)
        return self._drafts

    def commit(self, send: Sequence[bool], topk: Optional[Sequence[Optional[int]]] = None) -> StepResult:
        """Apply one decision per active response (``send[j]`` for ``rows[j]`` of :meth:`drafts`);
        ``topk[j]``: the top-k size of a sent upload (``None``/``0``: the full distribution; no
        ``topk``: the config's ``topk_upload``).
        Feeds the output tokens to both models and drops the responses that ended."""
        d = self.drafts()
        c = self.config
        n = len(d.rows)
        send = np.asarray(send, dtype=bool).reshape(-1)
        if send.shape != (n,):
            raise DecodingError(f"expected {n} decisions (one per active response), got {send.shape[0]}")
        if topk is not None and len(topk) != n:
            raise DecodingError(f"expected {n} top-k sizes (one per active response), got {len(topk)}")
        token = d.tokens.copy()
        acc, acc_full = np.ones(n, bool), np.ones(n, bool)
        beta = d.beta.copy()
        uniform = np.full(n, math.nan)
        with torch.inference_mode():
            for j, b in enumerate(self._active):
                g = self._gens[b].verify
                dj, q, p = int(d.tokens[j]), d.q_probs[j], d.p_probs[j]
                if send[j]:
                    k = c.topk_upload if topk is None else topk[j]
                    q_seen = truncated_draft(q, int(k)) if k else q
                    v = verify_draft(q_seen, p, dj, c.mode, g)
                    token[j], acc[j], beta[j], uniform[j] = v.token, v.accepted, v.beta, v.uniform
                    if c.mode == "greedy":
                        acc_full[j] = v.accepted
                    else:
                        acc_full[j] = bool(v.uniform * d.q_draft[j] < d.p_draft[j] or d.q_draft[j] <= 0.0)
                elif c.mode == "greedy":
                    acc_full[j] = dj == int(torch.argmax(p))
                else:  # the uniform a verification would have used: the skip's realised verdict
                    u = float(torch.rand((), generator=g, device=g.device))
                    uniform[j] = u
                    acc_full[j] = bool(u * d.q_draft[j] < d.p_draft[j] or d.q_draft[j] <= 0.0)
        end = np.zeros(n, bool)
        for j, b in enumerate(self._active):
            self.outputs[b].append(int(token[j]))
            end[j] = ((c.stop_at_eos and int(token[j]) == self.eos_token_id)
                      or len(self.outputs[b]) >= c.max_new_tokens)
        result = StepResult(d.rows, d.tokens, token, send, acc, acc_full, beta, d.beta, uniform, d.q_draft,
                            d.p_draft, end, d.signals)
        with torch.inference_mode():
            self._advance(token, end)
        return result

    def _advance(self, token: np.ndarray, end: np.ndarray) -> None:
        keep = np.flatnonzero(~end)
        if keep.size < len(self._active):
            self._active = [self._active[j] for j in keep]
            if not self._active:
                self._slm_cache = self._llm_cache = None
                self._drafts = None
                return
            sel = torch.as_tensor(keep, dtype=torch.long, device=self.device)
            self._slm_cache.batch_select_indices(sel)
            self._llm_cache.batch_select_indices(sel)
            kt = torch.as_tensor(keep, dtype=torch.long)
            self._mask, self._pos = self._mask[kt], self._pos[kt]
        inp = torch.as_tensor(token[keep], dtype=torch.long).unsqueeze(1)
        self._mask = torch.cat([self._mask, torch.ones((len(self._active), 1), dtype=torch.long)], dim=1)
        self._pos = self._pos[:, -1:] + 1
        self._forward(inp, self._pos)
