"""Live evaluation of the HybridLM family: a policy with the real SLM-LLM pair in the loop.

:func:`evaluate_live` decodes the episodes in batches
(:class:`hlm_gym.environments.hybrid_lm.live.LiveBatch`: both models' KV caches, the policy
deciding per sequence) and reports the trace-mode metrics (with the exact ``risk`` and
``error_rate`` of skipped drafts) plus ``fidelity``: the cosine similarity of the response's
sentence embedding to the LLM-alone response for the same prompt
(:func:`hlm_gym.lm.fidelity.response_fidelity`).
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Mapping, Optional

import numpy as np

from hlm_gym.harness.errors import EvaluationError
from hlm_gym.harness.family import EnvSettings
from hlm_gym.harness.results import EvaluationResult, summarize_episodes

__all__ = ["evaluate_live", "evaluate_trace_plan", "live_plan"]

DEFAULT_BATCH_SIZE = 64


def live_plan(n_prompts: int, draw: Any, episodes: int, seed: int) -> list[tuple[int, int, int]]:
    """``(prompt, channel realisation, start phase)`` of each episode: episode ``j`` decodes prompt
    ``order[j mod n]`` of a permutation of the split's prompts drawn with ``seed`` (each prompt once
    before any repeats), its channel start is the ``j``-th draw of a second generator seeded with
    ``seed`` (the stream a single env reset with ``seed`` draws from)."""
    order = np.random.default_rng(seed).permutation(n_prompts)
    rng = np.random.default_rng(seed)
    plan = []
    for j in range(episodes):
        _, brow, j0 = draw.split(int(rng.integers(0, draw.total)))
        plan.append((int(order[j % n_prompts]), int(brow), int(j0)))
    return plan


def evaluate_live(policy: Any, *, family: Any, env_id: str, settings: EnvSettings, split: str, episodes: int,
                  seed: int, policy_context: Optional[Mapping[str, Any]] = None, reference: str = "auto",
                  fidelity: bool = True, batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = False,
                  pair: Any = None) -> EvaluationResult:
    """Live mode: ``episodes`` episodes of ``policy`` on ``split`` with the real pair, ``batch_size``
    responses decoded together (sorted by prompt length).

    Fidelity reference: ``reference="live"`` decodes the LLM-alone response of each prompt in the
    same batches (always-send, same per-prompt seed: an exact LLM sample); ``"trace"`` takes the
    trace's recorded always-send response (the same sample when the trace was recorded with this
    pair, up to float-level differences of the batch); ``"auto"``: the trace's when both models'
    fingerprints are the trace's, else live. ``pair``: a loaded :class:`~hlm_gym.lm.model_types.ModelPair` (default: the trace's).
    ``progress``: a bar on stderr (responses finished). A stochastic policy (``random:R``) draws
    per batch, so its episodes depend on ``batch_size`` and on the reference rows. ``family``: the env family
    (:data:`hlm_gym.harness.hybrid_lm.HYBRID_LM`).
    """
    import gymnasium as gym

    import hlm_gym.environments.registration as reg
    from hlm_gym.environments.hybrid_lm.live import LiveBatch
    from hlm_gym.environments.hybrid_lm.simulation import EpisodeDraw

    if reference not in ("auto", "live", "trace"):
        raise EvaluationError(f"reference must be auto, live or trace, got {reference!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise EvaluationError(f"bad live batch size {batch_size!r}: expected an integer >= 1")
    reg.register_envs()
    kwargs = family.env_kwargs(settings, split) | {"mode": "live"}
    env = gym.make(env_id, **kwargs, **({"pair": pair} if pair is not None else {}))
    base = env.unwrapped
    try:
        pol, ctx = family.policy_for(policy, env, env_id, seed=seed, traces=settings.traces,
                                        overrides=policy_context)
        sim, pair = base.sim, base._live.pair
    finally:
        env.close()
    if reference == "auto":
        meta = sim.traces.meta
        same = all(meta.get(f"{r}_fingerprint") and meta.get(f"{r}_fingerprint") == getattr(pair, f"{r}_fingerprint", None)
                   for r in ("slm", "llm"))
        reference = "trace" if same else "live"
    plan = live_plan(sim.traces.n_prompts, EpisodeDraw.of(sim), episodes, seed)
    ref_prompts = sorted({p for p, _, _ in plan}) if fidelity and reference == "live" else []
    # rows: the policy's episodes, then one always-send row per prompt for the fidelity reference
    rows = [(p, b, j, False) for p, b, j in plan] + [(p, 0, 0, True) for p in ref_prompts]
    lengths = [len(sim.traces.prompt_token_ids(r[0])) for r in rows]
    order = sorted(range(len(rows)), key=lambda i: (lengths[i], i))
    tokens: list[Optional[list[int]]] = [None] * len(rows)
    eps: list[Optional[dict[str, float]]] = [None] * episodes
    bar = _bar(progress, len(rows))
    t0 = time.perf_counter()
    live = LiveBatch(sim, pair, base.compressed)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        obs = live.reset([rows[i][0] for i in chunk], [rows[i][1] for i in chunk], [rows[i][2] for i in chunk],
                         send_only=[rows[i][3] for i in chunk])
        pol.reset(len(chunk))
        tracker = family.episode_tracker(len(chunk))
        while not live.done:
            actions = np.asarray(pol.act(obs), dtype=np.int64)
            valid = live.running.copy()
            obs, rew, ended, info = live.step(actions)
            sent_actions = np.where(live.send_only, live.send_action, actions)
            tracker.step(sent_actions, rew, info, valid)
            for c in np.flatnonzero(ended):
                i = chunk[c]
                tokens[i] = live.output_tokens(c)
                if i < episodes:
                    eps[i] = {"env": 0, "episode": i, "prompt": rows[i][0]} | tracker.finish(c, live.final[c])
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    tok = pair.tokenizer
    eos = getattr(tok, "eos_token_id", None)
    text = lambda ids: tok.decode([t for t in ids if t != eos])  # noqa: E731
    responses = [text(tokens[i]) for i in range(episodes)]
    if fidelity:
        from hlm_gym.lm.fidelity import response_fidelity

        if reference == "trace":
            t = sim.tables
            refs = {p: text(t.token[t.starts[p]:t.stops[p]].tolist()) for p in {p for p, _, _ in plan}}
        else:
            refs = {rows[i][0]: text(tokens[i]) for i in range(episodes, len(rows))}
        for ep, f in zip(eps, response_fidelity(responses, [refs[p] for p, _, _ in plan])):
            ep["fidelity"] = float(f)
    wall = time.perf_counter() - t0
    config = {"policy": policy if isinstance(policy, str) else repr(policy), "env_id": env_id,
              "scenario": settings.scenario, "split": split, "episodes": episodes, "seed": seed, "mode": "live",
              "risk_weight": ctx.risk_weight, "risk_target": ctx.risk_target,
              "traces": None if settings.traces is None else str(settings.traces), "latency_ref_s": ctx.latency_ref,
              "max_tokens": ctx.max_tokens, "wall_s": round(wall, 3), "fidelity_reference": reference,
              "batch_size": batch_size, "device": str(getattr(pair, "device", "cpu"))}
    return EvaluationResult(config=config, episodes=list(eps), summary=summarize_episodes(eps, family.metrics),
                            policy=pol.describe(), responses=responses)


def evaluate_trace_plan(policy: Any, *, family: Any, env_id: str, settings: EnvSettings, split: str, episodes: int,
                        seed: int, policy_context: Optional[Mapping[str, Any]] = None,
                        decode: Optional[Callable[[list[int]], str]] = None) -> EvaluationResult:
    """Trace mode on exactly the episodes :func:`evaluate_live` runs (same prompts, channel starts and
    seed: :func:`live_plan`), for a paired trace-vs-live comparison; ``fidelity`` per episode: the cosine
    similarity of the trace response (a skipped draft kept, a sent position the LLM's recorded token)
    to the trace's always-send response. ``decode``: token ids to text (default: the trace's
    per-token texts joined; pass the pair's tokenizer's ``decode`` to match live mode)."""
    import gymnasium as gym

    import hlm_gym.environments.registration as reg
    from hlm_gym.environments.hybrid_lm.simulation import EpisodeDraw
    from hlm_gym.lm.fidelity import response_fidelity

    reg.register_envs()
    env = gym.make(env_id, **family.env_kwargs(settings, split))
    base = env.unwrapped
    try:
        pol, ctx = family.policy_for(policy, env, env_id, seed=seed, traces=settings.traces,
                                     overrides=policy_context)
        sim = base.sim
        t = sim.tables
        eos = sim.traces.meta.get("eos_token_id")
        if decode is None:
            decode = lambda ids: "".join(sim.traces.token_text(i) for i in ids)  # noqa: E731
        plan = live_plan(sim.traces.n_prompts, EpisodeDraw.of(sim), episodes, seed)
        tracker = family.episode_tracker(1)
        eps, responses, references = [], [], []
        t0 = time.perf_counter()
        for j, (p, brow, j0) in enumerate(plan):
            obs, _ = base.reset(seed=seed if j == 0 else None, options={"prompt": p})
            if (int(base._kernel.brow), int(base._kernel.j0)) != (brow, j0):  # pragma: no cover - a guard
                raise EvaluationError("trace and live episode plans disagree")
            pol.reset(1)
            while True:
                a = np.asarray(pol.act(obs[None]), dtype=np.int64).reshape(1)
                obs, rew, term, trunc, info = base.step(int(a[0]))
                tracker.step(a, np.array([rew]), {k: np.array([v]) for k, v in info.items()}, np.ones(1, bool))
                if term or trunc:
                    break
            eps.append({"env": 0, "episode": j, "prompt": p} | tracker.finish(0, info))
            tracker.clear(0)
            responses.append(decode([i for i in base.output_tokens if i != eos]))
            references.append(decode([int(i) for i in t.token[t.starts[p]:t.stops[p]] if i != eos]))
        for ep, f in zip(eps, response_fidelity(responses, references)):
            ep["fidelity"] = float(f)
        wall = time.perf_counter() - t0
    finally:
        env.close()
    config = {"policy": policy if isinstance(policy, str) else repr(policy), "env_id": env_id,
              "scenario": settings.scenario, "split": split, "episodes": episodes, "seed": seed,
              "mode": "trace (live plan)", "risk_weight": ctx.risk_weight, "risk_target": ctx.risk_target,
              "traces": None if settings.traces is None else str(settings.traces), "wall_s": round(wall, 3),
              "fidelity_reference": "trace"}
    return EvaluationResult(config=config, episodes=eps, summary=summarize_episodes(eps, family.metrics),
                            policy=pol.describe(), responses=responses)


def _bar(progress: bool, total: int) -> Any:
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="live responses", unit="resp", file=sys.stderr, dynamic_ncols=True)
